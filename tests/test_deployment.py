"""The deployment files as their tools read them: kustomize and the Kubernetes API's schemas, the
Compose specification, HAProxy's own check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
#: The Kubernetes release the manifests are checked against (kubectl here is 1.32).
KUBERNETES_VERSION = "1.32"


def rendered(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/kubernetes"
    out = subprocess.run([kubectl, "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(documents: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (doc for doc in documents if doc["kind"] == kind)


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return rendered(KUBERNETES / "overlays" / "example")


@pytest.mark.parametrize("folder", ["base", "overlays/example", "overlays/example-sandbox"])
def test_every_manifest_renders_and_is_valid_against_the_kubernetes_schemas(folder: str) -> None:
    documents = rendered(KUBERNETES / folder)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)  # raises on any unknown field


def test_a_manifest_with_a_mistake_is_refused_by_the_check() -> None:
    """The check above can fail: a misspelt field is an error."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"port": [80]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_the_nodes_probe_drain_and_find_each_other_as_the_server_expects(example: list[dict[str, Any]]) -> None:
    (nodes,) = (s for s in of_kind(example, "StatefulSet") if s["metadata"]["name"] == "claude-sessions")
    pod = nodes["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert pod["terminationGracePeriodSeconds"] >= 15 + 5 + 15  # a turn's drain, the interrupt, closing CLIs
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CLAUDE_SESSIONS_NODE_URL"]["value"] == "http://$(POD_IP):8000"
    assert pod["securityContext"]["runAsNonRoot"] and not container["securityContext"]["allowPrivilegeEscalation"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config,) = (c for c in of_kind(example, "ConfigMap") if c["metadata"]["name"] == "claude-sessions")
    assert mounts["workspaces"] == config["data"]["WORKSPACE_ROOT"]
    assert mounts["data"] == config["data"]["CLAUDE_SESSIONS_DATA_DIR"]
    (claim,) = of_kind(example, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    secret_names = {s["metadata"]["name"] for s in of_kind(example, "Secret")}
    assert {ref["secretRef"]["name"] for ref in container["envFrom"] if "secretRef" in ref} <= secret_names
    labels = nodes["spec"]["template"]["metadata"]["labels"]
    for selecting in (*of_kind(example, "Service"), *of_kind(example, "PodDisruptionBudget")):
        selector = selecting["spec"]["selector"]
        wanted = selector.get("matchLabels", selector)
        if selecting["metadata"]["name"].startswith("claude-sessions"):
            assert wanted.items() <= labels.items(), selecting["metadata"]["name"]


def test_the_nodes_meet_the_restricted_pod_security_level_unless_the_sandbox_is_on() -> None:
    """bubblewrap needs namespaces and a fresh /proc: only the sandbox component asks for them."""

    def nodes(folder: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        documents = rendered(KUBERNETES / "overlays" / folder)
        (stateful,) = (s for s in of_kind(documents, "StatefulSet") if s["metadata"]["name"] == "claude-sessions")
        (config,) = (c for c in of_kind(documents, "ConfigMap") if c["metadata"]["name"] == "claude-sessions")
        pod = stateful["spec"]["template"]["spec"]
        return pod, pod["containers"][0]["securityContext"], config["data"]

    pod, container, config = nodes("example")
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault" and "hostUsers" not in pod
    assert container["capabilities"]["drop"] == ["ALL"] and "procMount" not in container
    assert config["SANDBOX"] == "auto"  # off where it cannot run, and said so at start
    pod, container, config = nodes("example-sandbox")
    assert pod["securityContext"]["seccompProfile"]["type"] == "Unconfined" and pod["hostUsers"] is False
    assert container["procMount"] == "Unmasked" and container["capabilities"]["drop"] == ["ALL"]
    assert config["SANDBOX"] == "on"


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    spec = jsonschema.Draft7Validator(schema)
    spec.validate(compose)
    with pytest.raises(jsonschema.ValidationError):  # the check can fail
        spec.validate({**compose, "services": {"node1": {"restart": ["always"]}}})
    nodes = {name: s for name, s in compose["services"].items() if name.startswith("node")}
    assert len(nodes) == 3
    urls = {s["environment"]["CLAUDE_SESSIONS_NODE_URL"] for s in nodes.values()}
    assert urls == {f"http://{name}:8000" for name in nodes}
    assert all("workspaces:/var/lib/claude-sessions/workspaces" in s["volumes"] for s in nodes.values())
    assert (DEPLOY / compose["x-node"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()
    assert {"seccomp=unconfined", "systempaths=unconfined"} <= set(compose["x-node"]["security_opt"])  # bubblewrap
    haproxy = compose["services"]["haproxy"]
    assert haproxy["volumes"][0].startswith("./haproxy.cfg:")
    assert {haproxy["environment"][f"NODE{i}"] for i in (1, 2, 3)} == {f"{name}:8000" for name in nodes}


def test_haproxys_config_passes_haproxys_own_check() -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    nodes = {f"NODE{i}": f"127.0.0.1:{8000 + i}" for i in (1, 2, 3)}
    env = {**os.environ, **nodes, "LISTEN": "127.0.0.1:8080"}
    check = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "GET /readyz" in (DEPLOY / "haproxy.cfg").read_text()  # out of rotation at once when draining
