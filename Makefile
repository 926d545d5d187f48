# Convenience targets; each is a script under scripts/ (which need only bash).
.PHONY: run test proto bootstrap clean

run:        ## the main job: a local 3-node cluster on 50051..50053
	scripts/cluster

test:       ## the whole suite
	scripts/test

proto:      ## regenerate src/ringkv/api from kv.proto
	scripts/bootstrap && scripts/gen-proto

bootstrap:  ## create .venv
	scripts/bootstrap

clean:
	rm -rf .venv data .pytest_cache .mypy_cache .ruff_cache
