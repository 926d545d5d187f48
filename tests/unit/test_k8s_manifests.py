"""The Kubernetes manifests in deploy/k8s, read statically (no cluster needed).

Every manifest is parsed (multi-document YAML) and checked for consistency
with the node it runs: the container's command line is built as the kubelet
would build it (downward-API values for a pod name and namespace, ``$(VAR)``
expansion), its shell step is run for real under /bin/sh with a stub
``ringkv`` that prints what it was given, and the result is parsed with
ringkv's own CLI parser and the node's ``config_from``. Ports, probes, the
data volume, the disruption budget and the security context must agree with
those flags and with the Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ringkv.server.config import HostPort, NodeConfig
from tests.support.deploy_files import (
    container_env,
    dockerfile_instructions,
    expand_k8s,
    final_stage,
    image_cmd,
    image_entrypoint,
    last_instruction,
    load_compose,
    load_manifests,
    node_config,
    ringkv_argv,
)

NAMESPACE = "kv-prod"
"""Any namespace: the manifests name none (``kubectl apply -n NS``)."""
CLUSTER_DOMAIN = "cluster.local"
API_VERSIONS = {
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
}
SHELL_TIMEOUT_S = 10.0

Object = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> list[Object]:
    return [document for _, document in load_manifests()]


def only(objects: list[Object], kind: str) -> Object:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def services(objects: list[Object]) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}


@pytest.fixture(scope="module")
def statefulset(objects: list[Object]) -> Object:
    return only(objects, "StatefulSet")


@pytest.fixture(scope="module")
def container(statefulset: Object) -> Object:
    containers: list[Object] = statefulset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_argv(container: Object, pod: str, tmp_path: Path) -> list[str]:
    """What the container of pod ``pod`` executes in the end, as a list of words.

    With a ``command``, it is run for real (a shell step) with a stub
    ``ringkv`` first on PATH that prints its arguments; without one, the
    image's ENTRYPOINT takes the expanded ``args`` (or the image's CMD).
    """
    env = container_env(container, {"metadata.name": pod, "metadata.namespace": NAMESPACE})
    args = [expand_k8s(str(arg), env) for arg in container.get("args", [])]
    for arg in args:
        assert "$(" not in arg, f"unresolved reference in args: {arg!r}"
    if "command" not in container:
        return [*image_entrypoint(), *(args or image_cmd())]
    command = [expand_k8s(str(word), env) for word in container["command"]]
    stubs = tmp_path / f"bin-{pod}"
    stubs.mkdir()
    stub = stubs / "ringkv"
    stub.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    stub.chmod(0o755)
    done = subprocess.run(
        [*command, *args],
        env={**env, "PATH": f"{stubs}{os.pathsep}/usr/bin{os.pathsep}/bin"},
        capture_output=True,
        timeout=SHELL_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    words = done.stdout.decode().split("\0")
    assert words[-1] == "", "the stub's output ends with a NUL"
    return ["ringkv", *words[:-1]]


def pod_config(container: Object, pod: str, tmp_path: Path) -> NodeConfig:
    return node_config(ringkv_argv(pod_argv(container, pod, tmp_path)))


def grpc_port(container: Object) -> int:
    ports = [p for p in container["ports"] if p.get("name") == "grpc"]
    assert len(ports) == 1, container["ports"]
    port: int = ports[0]["containerPort"]
    return port


def test_every_manifest_is_a_kubernetes_object(objects: list[Object]) -> None:
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["PodDisruptionBudget", "Service", "Service", "StatefulSet"]
    for o in objects:
        assert o["apiVersion"] == API_VERSIONS[o["kind"]], o["kind"]
        name = o["metadata"]["name"]
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), name
        # Applied into any namespace with kubectl -n; the peers follow it.
        assert "namespace" not in o["metadata"], name


def test_pods_are_nodes_with_stable_ids_advertised_dns_names_and_peers(
    objects: list[Object], statefulset: Object, container: Object, tmp_path: Path
) -> None:
    if shutil.which("sh") is None:
        pytest.skip("needs /bin/sh to run the container's shell step")
    name = statefulset["metadata"]["name"]
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    headless = statefulset["spec"]["serviceName"]
    assert headless in services(objects)
    domain = f"{headless}.{NAMESPACE}.svc.{CLUSTER_DOMAIN}"
    port = grpc_port(container)
    initial = [f"{name}-{i}" for i in range(replicas)]
    # The pods the set was created with, and one added later by kubectl scale.
    for ordinal in range(replicas + 1):
        pod = f"{name}-{ordinal}"
        config = pod_config(container, pod, tmp_path)
        assert config.node_id == pod
        assert config.listen.is_wildcard and config.listen.port == port
        assert config.advertise == HostPort(f"{pod}.{domain}", port)
        peers = {peer.node_id: str(peer.address) for peer in config.peers}
        assert peers == {other: f"{other}.{domain}:{port}" for other in initial if other != pod}
        # A founding pod names the other founders; a new pod names them all.
        assert len(peers) == (replicas - 1 if ordinal < replicas else replicas)
        assert config.replicas == 2
        assert config.replicas <= replicas
        assert config.engine == "lmdb"


def test_ports_and_probes_use_the_nodes_grpc_port(
    objects: list[Object], statefulset: Object, container: Object, tmp_path: Path
) -> None:
    port = grpc_port(container)
    assert pod_config(container, f"{statefulset['metadata']['name']}-0", tmp_path).listen.port == (
        port
    )
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        spec = container[probe]
        # Native gRPC probe: grpc.health.v1.Health/Check for service "".
        assert spec["grpc"]["port"] == port, probe
        assert spec["grpc"].get("service", "") == "", probe
        for other in ("httpGet", "tcpSocket", "exec"):
            assert other not in spec, probe
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    for name, service in services(objects).items():
        assert selects(service["spec"]["selector"], labels), name
        (service_port,) = service["spec"]["ports"]
        target = service_port["targetPort"]
        assert target in (port, "grpc"), name
        assert service_port["port"] == port, name
        assert service_port.get("protocol", "TCP") == "TCP"


def test_headless_service_names_pods_before_they_are_ready(
    objects: list[Object], statefulset: Object
) -> None:
    headless = services(objects)[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    # A new cluster's nodes find each other while none is ready yet.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    clients = [s for n, s in services(objects).items() if n != headless["metadata"]["name"]]
    assert len(clients) == 1
    assert clients[0]["spec"].get("clusterIP") != "None"
    assert not clients[0]["spec"].get("publishNotReadyAddresses", False)


def test_statefulset_selects_its_pods_and_starts_them_together(statefulset: Object) -> None:
    spec = statefulset["spec"]
    assert selects(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"


def test_data_is_a_claim_per_pod_mounted_at_the_data_dir(
    statefulset: Object, container: Object, tmp_path: Path
) -> None:
    config = pod_config(container, f"{statefulset['metadata']['name']}-0", tmp_path)
    assert config.data_dir == Path("/data")
    mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config.data_dir]
    assert len(mounts) == 1
    claims = {c["metadata"]["name"]: c for c in statefulset["spec"]["volumeClaimTemplates"]}
    claim = claims[mounts[0]["name"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    # The volume is not also an ephemeral pod volume of the same name.
    pod_volumes = statefulset["spec"]["template"]["spec"].get("volumes", [])
    assert mounts[0]["name"] not in {v["name"] for v in pod_volumes}
    # The image keeps its data in the same place.
    runtime = final_stage(dockerfile_instructions())
    assert any(i.keyword == "VOLUME" and "/data" in i.arguments for i in runtime)


def test_pods_request_resources_and_run_as_the_images_user(
    statefulset: Object, container: Object
) -> None:
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    pod_security = statefulset["spec"]["template"]["spec"]["securityContext"]
    user = last_instruction(final_stage(dockerfile_instructions()), "USER").arguments
    uid, _, gid = user.partition(":")
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == int(uid)
    # The claim's files belong to the node's group.
    assert pod_security["fsGroup"] == int(gid or uid)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The node shuts down within --shutdown-grace; the pod is given longer.
    assert statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5


def test_disruption_budget_allows_one_pod_down(objects: list[Object], statefulset: Object) -> None:
    budget = only(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selects(selector, statefulset["spec"]["template"]["metadata"]["labels"])
    assert selector == statefulset["spec"]["selector"]["matchLabels"]


def test_pods_run_the_image_docker_compose_builds(container: Object) -> None:
    images = {service["image"] for service in load_compose()["services"].values()}
    assert images == {container["image"]}
