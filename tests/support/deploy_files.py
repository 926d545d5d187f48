"""Reading the deployment files (Dockerfile, docker-compose.yml, deploy/k8s) the way
their tools would, and parsing the command lines in them with ringkv's own parser.

Used by the static tests (tests/unit/test_deploy_files.py,
tests/unit/test_k8s_manifests.py) and by the compose topology test
(tests/chaos/test_compose_topology.py), so that all of them read one
interpretation of the files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ringkv.cli import health_command, node_command
from ringkv.cli.main import build_parser
from ringkv.server.config import NodeConfig

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "deploy" / "k8s"


class CommandLineError(AssertionError):
    """A command line in a deployment file that ringkv's parser rejects."""


# ringkv's command line


def parse_ringkv(argv: list[str]) -> argparse.Namespace:
    """Parse ``ringkv ARGV...`` (without the program name) with the real CLI parser.

    Raises ``CommandLineError`` with the parser's message instead of exiting.
    """
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit as exit_:
        raise CommandLineError(
            f"`ringkv {shlex.join(argv)}` does not parse (exit {exit_.code}): "
            f"{errors.getvalue().strip()}"
        ) from None


def node_config(argv: list[str]) -> NodeConfig:
    """The configuration ``ringkv ARGV...`` would run a node with.

    Fails unless ARGV is a ``node`` invocation that parses and validates.
    """
    args = parse_ringkv(argv)
    if args.handler is not node_command.handle:
        raise CommandLineError(f"`ringkv {shlex.join(argv)}` does not run a node")
    return node_command.config_from(args)


def health_args(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments of a ``ringkv health`` invocation."""
    args = parse_ringkv(argv)
    if args.handler is not health_command.handle:
        raise CommandLineError(f"`ringkv {shlex.join(argv)}` is not `ringkv health`")
    return args


def ringkv_argv(argv: list[str]) -> list[str]:
    """The arguments after the ``ringkv`` program of a container command line."""
    if not argv or argv[0] != "ringkv":
        raise CommandLineError(f"{argv!r} does not run the ringkv program")
    return argv[1:]


# Dockerfile


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    """Upper case: FROM, RUN, COPY, ..."""
    arguments: str
    stage: int
    """Which build stage (0-based, by FROM) it belongs to."""


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped too
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, arguments.strip(), stage))
    if pending:
        raise AssertionError(f"{path} ends inside a continued instruction")
    return instructions


def exec_form(arguments: str) -> list[str]:
    """An instruction's JSON (exec form) argument list; fails for the shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError as error:
        raise AssertionError(f"not in exec (JSON) form: {arguments!r}") from error
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise AssertionError(f"not a JSON list of strings: {arguments!r}")
    return value


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def last_instruction(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    if not found:
        raise AssertionError(f"no {keyword} instruction")
    return found[-1]


def image_entrypoint() -> list[str]:
    """The final stage's ENTRYPOINT (exec form)."""
    return exec_form(
        last_instruction(final_stage(dockerfile_instructions()), "ENTRYPOINT").arguments
    )


def image_cmd() -> list[str]:
    """The final stage's CMD (exec form)."""
    return exec_form(last_instruction(final_stage(dockerfile_instructions()), "CMD").arguments)


def healthcheck_command(arguments: str) -> list[str]:
    """The command of ``HEALTHCHECK [OPTIONS] CMD [...]`` (exec form)."""
    _, sep, command = arguments.partition("CMD ")
    if not sep:
        raise AssertionError(f"HEALTHCHECK without CMD: {arguments!r}")
    return exec_form(command.strip())


def healthcheck_options(arguments: str) -> dict[str, str]:
    """``--interval=10s`` and friends of a HEALTHCHECK instruction."""
    options = arguments.partition("CMD ")[0]
    found: dict[str, str] = {}
    for word in shlex.split(options):
        name, _, value = word.removeprefix("--").partition("=")
        found[name] = value
    return found


# docker-compose.yml


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise AssertionError(f"{path} is not a YAML mapping")
    return document


def compose_argv(service: dict[str, Any]) -> list[str]:
    """What a service's container runs, as Docker Compose assembles it.

    The service's ``entrypoint`` (else the image's ENTRYPOINT) followed by its
    ``command`` (else the image's CMD; an entrypoint set on the service drops
    the image's CMD, as in Docker).
    """
    entrypoint = _argv(service.get("entrypoint"))
    command = _argv(service.get("command"))
    if entrypoint is None:
        entrypoint = image_entrypoint()
        if command is None:
            command = image_cmd()
    return [*entrypoint, *(command or [])]


def _argv(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(item) for item in value]
    raise AssertionError(f"unexpected command value {value!r}")


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_ip: str
    host_port: int
    container_port: int
    protocol: str


def port_mappings(service: dict[str, Any]) -> list[PortMapping]:
    """A service's published ports, short (``"50052:50051"``) or long syntax."""
    mappings = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            mappings.append(
                PortMapping(
                    str(entry.get("host_ip", "")),
                    int(entry["published"]),
                    int(entry["target"]),
                    str(entry.get("protocol", "tcp")),
                )
            )
            continue
        text, _, protocol = str(entry).partition("/")
        parts = text.rsplit(":", 2)
        if len(parts) == 1:
            raise AssertionError(f"port {entry!r} publishes no fixed host port")
        host_ip = parts[0] if len(parts) == 3 else ""
        mappings.append(PortMapping(host_ip, int(parts[-2]), int(parts[-1]), protocol or "tcp"))
    return mappings


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str
    kind: str
    """"volume" (named), "bind" or "tmpfs"."""


def mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's volumes, short (``"node1-data:/data"``) or long syntax."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found.append(
                Mount(str(entry.get("source", "")), str(entry["target"]), str(entry["type"]))
            )
            continue
        source, _, rest = str(entry).partition(":")
        target = rest.split(":", 1)[0]
        if not target:
            found.append(Mount("", source, "volume"))  # anonymous volume
            continue
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        found.append(Mount(source, target, kind))
    return found


# Kubernetes


def load_manifests(directory: Path = K8S_DIR) -> list[tuple[Path, dict[str, Any]]]:
    """Every object in every YAML file of ``directory`` (multi-document files too)."""
    objects = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            if not isinstance(document, dict):
                raise AssertionError(f"{path}: a document is not a mapping")
            objects.append((path, document))
    return objects


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_k8s(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command, args and env values.

    ``$(VAR)`` becomes VAR's value when VAR is defined, and stays as written
    otherwise; ``$$`` is an escaped ``$``.
    """

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1]
        return env[name] if name in env else match[0]

    return _REFERENCE.sub(replace, text)


def container_env(container: dict[str, Any], field_values: dict[str, str]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: in order, each value
    expanded against the variables defined before it; ``fieldRef`` values
    from ``field_values`` (e.g. ``{"metadata.name": "ringkv-0"}``)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand_k8s(str(item["value"]), env)
        elif "valueFrom" in item and "fieldRef" in item["valueFrom"]:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in field_values:
                raise AssertionError(f"no test value for fieldRef {path!r}")
            env[item["name"]] = field_values[path]
        else:
            raise AssertionError(f"unsupported env entry {item!r}")
    return env
