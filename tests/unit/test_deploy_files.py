"""The Dockerfile, .dockerignore and docker-compose.yml, read statically.

No Docker engine is needed: the files are parsed (PyYAML for the compose
file, a small reader for the Dockerfile) and every command line in them is
parsed with ringkv's own CLI parser and the node's ``config_from``, so a
container would run exactly the node, or the health check, intended.

This is the guard against the seed's bug: its compose file passed an extra
word to an entrypoint that already said ``node``, so every container ran with
default flags (id node1, no peers). Here ENTRYPOINT + command must parse as a
valid ``ringkv node`` invocation whose id, peers and replicas are the seed's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ringkv.server.config import HostPort, NodeConfig
from tests.support.deploy_files import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    CommandLineError,
    Instruction,
    PortMapping,
    compose_argv,
    dockerfile_instructions,
    exec_form,
    final_stage,
    health_args,
    healthcheck_command,
    healthcheck_options,
    image_cmd,
    image_entrypoint,
    last_instruction,
    load_compose,
    mounts,
    node_config,
    port_mappings,
    ringkv_argv,
)

SEED_NODES = {"node1": 50051, "node2": 50052, "node3": 50053}
"""The seed's services and the host port each is published on."""
SEED_REPLICAS = 2
CONTAINER_PORT = 50051
DATA_DIR = Path("/data")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def service_config(service: dict[str, Any]) -> NodeConfig:
    return node_config(ringkv_argv(compose_argv(service)))


def seconds(duration: str) -> float:
    """A compose/Docker duration such as ``10s``, ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


# docker-compose.yml


def test_compose_file_is_yaml_with_the_seeds_three_services(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert COMPOSE_FILE.name == "docker-compose.yml"
    assert set(services) == set(SEED_NODES)
    # Every service is built from this repository's Dockerfile, as one image.
    images = {service["image"] for service in services.values()}
    assert len(images) == 1
    for service in services.values():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
        assert (COMPOSE_FILE.parent / context).resolve() == REPO
        assert (REPO / (dockerfile or "Dockerfile")).resolve() == DOCKERFILE


def test_each_service_runs_its_node_with_the_seeds_flags(
    services: dict[str, dict[str, Any]],
) -> None:
    """ENTRYPOINT + command is a ``ringkv node`` invocation with the intended flags."""
    for name, service in services.items():
        command = service["command"]
        # YAML would turn an unquoted 2 into an int; Compose wants strings.
        assert isinstance(command, list), name
        assert all(isinstance(word, str) for word in command), (name, command)
        config = service_config(service)
        assert config.node_id == name
        assert config.listen.is_wildcard, (name, config.listen)
        assert config.listen.port == CONTAINER_PORT
        # Peers and clients inside the compose network reach it by service name.
        assert config.advertise == HostPort(name, CONTAINER_PORT)
        assert {peer.node_id: str(peer.address) for peer in config.peers} == {
            other: f"{other}:{CONTAINER_PORT}" for other in SEED_NODES if other != name
        }
        assert config.replicas == SEED_REPLICAS
        assert config.engine == "lmdb"
        assert config.data_dir == DATA_DIR


def test_the_guard_rejects_the_seeds_extra_word(services: dict[str, dict[str, Any]]) -> None:
    """The seed's mistake, ``command: ["node", "-id", ...]`` under an ENTRYPOINT that
    already says ``ringkv node``, fails the parse instead of running defaults."""
    assert image_entrypoint()[-1] == "node"
    service = services["node1"]
    broken = {**service, "command": ["node", *service["command"]]}
    with pytest.raises(CommandLineError, match="unrecognized arguments: node"):
        service_config(broken)
    # And a service without its command would run the image's single default
    # node, which the id check above catches.
    defaults = {key: value for key, value in service.items() if key != "command"}
    assert service_config(defaults).peers == ()


def test_each_service_publishes_its_seed_port_on_the_nodes_port(
    services: dict[str, dict[str, Any]],
) -> None:
    exposed = {
        int(port.split("/")[0])
        for instruction in final_stage(dockerfile_instructions())
        if instruction.keyword == "EXPOSE"
        for port in instruction.arguments.split()
    }
    for name, host_port in SEED_NODES.items():
        service = services[name]
        # Unquoted, YAML 1.1 reads 50051:50051 as a base-60 integer.
        assert all(isinstance(entry, str | dict) for entry in service["ports"]), name
        assert port_mappings(service) == [PortMapping("", host_port, CONTAINER_PORT, "tcp")]
        assert service_config(service).listen.port == CONTAINER_PORT
    assert exposed == {CONTAINER_PORT}


def test_each_service_keeps_its_data_in_its_own_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    sources = []
    for name, service in services.items():
        data_dir = service_config(service).data_dir
        assert data_dir is not None
        at_data = [m for m in mounts(service) if Path(m.target) == data_dir]
        assert len(at_data) == 1, (name, mounts(service))
        mount = at_data[0]
        assert mount.kind == "volume", (name, mount)
        assert mount.source in declared, (name, mount.source, declared)
        sources.append(mount.source)
    assert len(set(sources)) == len(sources), f"services share a volume: {sources}"


def test_each_service_restarts_and_checks_its_health(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped"), name
        check = service["healthcheck"]
        assert not check.get("disable", False), name
        test = check["test"]
        assert test[0] == "CMD", (name, test)
        args = health_args(ringkv_argv(test[1:]))
        endpoint = HostPort.parse(args.endpoint)
        assert endpoint == HostPort("127.0.0.1", service_config(service).listen.port)
        assert args.service == ""
        # The command gives up before Docker kills it.
        assert args.timeout < seconds(check["timeout"]), name
        for key in ("interval", "timeout", "start_period"):
            assert seconds(check[key]) > 0, (name, key)
        assert int(check["retries"]) >= 1


def test_each_service_stops_gracefully(services: dict[str, dict[str, Any]]) -> None:
    """Docker's grace period outlasts the node's own (--shutdown-grace)."""
    for name, service in services.items():
        grace = seconds(service.get("stop_grace_period", "10s"))
        assert grace > service_config(service).shutdown_grace_s, name


# Dockerfile


def resolved_from(instructions: list[Instruction]) -> list[str]:
    """Each stage's base image, with global ARG defaults substituted."""
    defaults: dict[str, str] = {}
    bases = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and instruction.stage == -1:
            name, _, value = instruction.arguments.partition("=")
            defaults[name] = value
        elif instruction.keyword == "FROM":
            image = instruction.arguments.split()[0]
            for name, value in defaults.items():
                image = image.replace(f"${{{name}}}", value).replace(f"${name}", value)
            bases.append(image)
    return bases


def test_dockerfile_builds_wheels_then_installs_only_them() -> None:
    instructions = dockerfile_instructions()
    bases = resolved_from(instructions)
    assert len(bases) == 2, bases
    assert re.fullmatch(r"python:3\.11(-\w+)*", bases[0]), bases[0]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", bases[1]), bases[1]
    build = [i.arguments for i in instructions if i.stage == 0 and i.keyword == "RUN"]
    assert any(re.search(r"\bpip wheel\b.*--wheel-dir[= ]/wheels", run) for run in build), build
    runtime = final_stage(instructions)
    installs = [i.arguments for i in runtime if i.keyword == "RUN" and "pip install" in i.arguments]
    assert len(installs) == 1, installs
    assert "--no-index" in installs[0]
    assert "from=build" in installs[0] and "/wheels" in installs[0]
    # Nothing else is fetched or compiled in the runtime stage.
    for instruction in runtime:
        assert "pip wheel" not in instruction.arguments
        assert not re.search(r"\bapt(-get)? install\b", instruction.arguments)


def test_image_runs_a_node_as_a_non_root_user_with_data_in_a_volume() -> None:
    runtime = final_stage(dockerfile_instructions())
    user = last_instruction(runtime, "USER").arguments
    uid, _, gid = user.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    volumes = [
        path
        for i in runtime
        if i.keyword == "VOLUME"
        for path in (exec_form(i.arguments) if i.arguments.startswith("[") else i.arguments.split())
    ]
    assert str(DATA_DIR) in volumes

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ringkv"] == "ringkv.cli.main:main"
    assert image_entrypoint() == ["ringkv", "node"]
    # The default CMD alone runs a valid single node with its data in the volume.
    config = node_config(ringkv_argv([*image_entrypoint(), *image_cmd()]))
    assert config.data_dir == DATA_DIR
    assert config.listen.is_wildcard and config.listen.port == CONTAINER_PORT


def test_image_health_check_asks_the_grpc_health_service() -> None:
    instruction = last_instruction(final_stage(dockerfile_instructions()), "HEALTHCHECK")
    args = health_args(ringkv_argv(healthcheck_command(instruction.arguments)))
    assert HostPort.parse(args.endpoint) == HostPort("127.0.0.1", CONTAINER_PORT)
    options = healthcheck_options(instruction.arguments)
    assert args.timeout < seconds(options["timeout"])
    assert seconds(options["interval"]) > 0


# .dockerignore


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern
    matching the path or one of its parents decides; ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_dockerignore_sends_only_the_package_sources() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    copied = [
        source
        for i in dockerfile_instructions()
        if i.keyword == "COPY" and "--from" not in i.arguments
        for source in i.arguments.split()[:-1]
    ]
    assert copied, "the build stage copies nothing"
    for source in copied:
        assert not dockerignore_excludes(source.rstrip("/"), patterns), source
    sources = [
        str(path.relative_to(REPO))
        for path in (REPO / "src").rglob("*")
        if path.is_file()
        and path.suffix != ".pyc"
        and not any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
    ]
    assert sources
    for source in sources:
        assert not dockerignore_excludes(source, patterns), source
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/node1/data.mdb",
        "tests/conftest.py",
        "src/ringkv/__pycache__/main.cpython-311.pyc",
    ):
        assert dockerignore_excludes(left_out, patterns), left_out
