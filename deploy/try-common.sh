# What deploy/try-compose.sh and deploy/try-kube-play.sh share (sourced, not run): this host's containers.conf,
# throwaway secrets, a test MQTT broker's image, and the probes, asked from inside each container (the images'
# python; no curl there). Hosts like the one deploy/build-image.sh describes: root, Debian's podman 4.3.

IMAGE=${TIMESFORMER_IMAGE:-localhost/timesformer-stream:latest}
BASE=${BASE:-localhost/debian-base:bookworm}       # deploy/build-image.sh makes it
MQTT_IMAGE=${MQTT_IMAGE:-localhost/tss-test-mosquitto:bookworm}
WAIT_S=${WAIT_S:-300}                              # how long every stage may take to become ready
T0=$(date +%s)

say() { printf '\n== [%3d s] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { echo "error: $*" >&2; exit 2; }
elapsed() { echo $(( $(date +%s) - T0 )); }

preflight() {
  [ "$(id -u)" = 0 ] || die "run as root (rootful podman: the stages' group 10001 must read the key files)"
  command -v podman >/dev/null || die "podman missing; deploy/build-image.sh names the packages"
  podman image exists "$IMAGE" || die "no image $IMAGE: build it with flock /tmp/heavy.lock deploy/build-image.sh"
  # This host's hard limits (20000 files, 32768 processes) and runc, as deploy/build-image.sh sets them.
  local conf=/etc/containers/containers.conf
  if [ -n "${CONTAINERS_CONF:-}" ]; then
    echo "containers.conf: CONTAINERS_CONF=$CONTAINERS_CONF"
  elif [ -e "$conf" ] && grep -q 'nofile=20000' "$conf" && grep -q 'runtime *= *"runc"' "$conf"; then
    echo "containers.conf: $conf (ulimits, runc)"
  else
    export CONTAINERS_CONF=$WORK/containers.conf
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
      > "$CONTAINERS_CONF"
    echo "containers.conf: $CONTAINERS_CONF (written for this run)"
  fi
  echo "image: $IMAGE $(podman image inspect -f '{{.Id}} created {{.Created}}' "$IMAGE" | cut -c1-12,65-100)"
}

# make_secrets DIR: the CurveZMQ key files (the image's own python -m streamer.transport.keys, so the host needs
# no project checkout), web.env and mqtt.env, as deploy/README.md says; the secret key files group 10001, 0640.
make_secrets() {
  local dir
  mkdir -p "$1" && chmod 0700 "$1" && dir=$(realpath "$1")
  podman run --rm --user 0 --network none --entrypoint python -v "$dir:/keys" "$IMAGE" \
    -m streamer.transport.keys /keys >/dev/null
  (umask 077; echo "WEB_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe())')" > "$dir/web.env"
   echo "MQTT_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe())')" > "$dir/mqtt.env")
  chgrp 10001 "$dir"/*.key_secret && chmod 0640 "$dir"/*.key_secret
  echo "throwaway secrets in $dir: $(cd "$dir" && ls | tr '\n' ' ')"
}

# The broker sinks needs (a host named mqtt): Debian's mosquitto in a small image from the same base, built once.
# Test only: anonymous, no persistence. mosquitto-clients for a subscriber that shows what arrives.
mqtt_image() {
  if podman image exists "$MQTT_IMAGE"; then
    echo "test broker image $MQTT_IMAGE: present"
    return
  fi
  podman image exists "$BASE" || die "no base image $BASE: deploy/build-image.sh makes it"
  mkdir -p "$WORK/mqtt-image"
  cat > "$WORK/mqtt-image/Containerfile" <<EOF
FROM $BASE
RUN apt-get -o Acquire::Check-Valid-Until=false update -qq \\
 && apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && printf 'listener 1883 0.0.0.0\\nallow_anonymous true\\npersistence false\\n' > /etc/mosquitto/test.conf
USER mosquitto
EXPOSE 1883
CMD ["mosquitto", "-c", "/etc/mosquitto/test.conf"]
EOF
  local start; start=$(date +%s)
  podman build -q -t "$MQTT_IMAGE" "$WORK/mqtt-image" >/dev/null
  echo "test broker image $MQTT_IMAGE: built in $(( $(date +%s) - start )) s"
}

# probe CONTAINER PATH [PORT]: "STATUS BODY" of GET http://127.0.0.1:PORT/PATH inside the container (0: no answer).
probe() {
  podman exec "$1" python -c '
import sys, urllib.request, urllib.error
url = "http://127.0.0.1:%s%s" % (sys.argv[2], sys.argv[1])
try:
    r = urllib.request.urlopen(url, timeout=4)
    print(r.status, r.read().decode(errors="replace").replace("\n", " ")[:400])
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode(errors="replace").replace("\n", " ")[:400])
except Exception as e:
    print(0, type(e).__name__, e)
' "$2" "${3:-9090}" 2>/dev/null || echo "0 (exec failed: container not running)"
}

# metrics CONTAINER REGEX: the lines of its /metrics (port 9090) matching REGEX.
metrics() {
  podman exec "$1" python -c '
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=4).read().decode())' 2>/dev/null \
    | grep -E "$2" || true
}

# metric_sum CONTAINER REGEX: the sum of the values of the matching samples (0 without any).
metric_sum() { metrics "$1" "$2" | awk '{s += $NF} END {printf "%d", s}'; }

# wait_ready NAME...: until every container's /readyz answers 200 (each one's time and answer printed once),
# or WAIT_S; then 0 when all are ready.
wait_ready() {
  local -A ok=()
  local deadline=$(( $(date +%s) + WAIT_S )) name answer
  while :; do
    for name in "$@"; do
      [ -n "${ok[$name]:-}" ] && continue
      answer=$(probe "$name" /readyz)
      if [ "${answer%% *}" = 200 ]; then
        ok[$name]=1
        printf '  [%3d s] %-28s /readyz -> %s\n' "$(elapsed)" "$name" "$answer"
      fi
    done
    [ "${#ok[@]}" = "$#" ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for name in "$@"; do
        [ -n "${ok[$name]:-}" ] || printf '  NOT READY after %d s: %-28s /readyz -> %s\n' "$WAIT_S" "$name" \
          "$(probe "$name" /readyz)"
      done
      return 1
    fi
    sleep 2
  done
}

# stop_each NAME...: SIGTERM to each container in turn, the way an orchestrator stops a stage (30 s grace, then
# SIGKILL); how long each took to exit and with what code. Captures, web and sinks first, the dispatcher last.
stop_each() {
  [ "$#" -gt 0 ] || return 0
  echo "podman stop -t 30, one at a time: seconds to exit after SIGTERM, exit code (137: killed after 30 s)"
  local name start
  for name in $(printf '%s\n' "$@" | grep -v dispatcher) $(printf '%s\n' "$@" | grep dispatcher); do
    start=$(date +%s.%N)
    podman stop -t 30 "$name" >/dev/null 2>&1 || true
    printf '  %-34s %5.1f s, exit %s\n' "$name" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')" \
      "$(podman inspect -f '{{.State.ExitCode}}' "$name" 2>/dev/null || echo '?')"
  done
}

# logs_of NAME...: the last lines each container wrote (after a failure).
logs_of() {
  local name
  for name in "$@"; do
    echo "--- podman logs --tail 15 $name"
    podman logs --tail 15 "$name" 2>&1 | cut -c1-220
  done
}
