#!/usr/bin/env bash
# Run deploy/compose.yaml for real, from the image, and check it end to end: every service ready (/readyz 200),
# the web view and API answering with the token, predictions flowing from the workers to the dispatcher's event
# log and the MQTT broker, the captures serving window frames to the workers; then down, and nothing left.
# CI need not run it (it needs podman, podman-compose and the image: deploy/build-image.sh).
#
#   flock /tmp/heavy.lock deploy/try-compose.sh        # from anywhere, as root
#
# Secrets are throwaway: made in deploy/keys when there is no such folder (removed at the end), else in a
# temporary folder that a compose override names (a user's deploy/keys is never read or changed). The sinks
# service needs a broker named mqtt, which compose.yaml leaves to the user: the override adds a test one
# (Debian's mosquitto in a small image built once from deploy/build-image.sh's base; MQTT=0 runs without
# broker and sinks). Environment: WORKERS (2), WAIT_S (300), FLOW_S (how long predictions may take to show,
# 120), PROJECT (the compose project, default the file's name), TIMESFORMER_WEB (127.0.0.1:8080),
# TIMESFORMER_IMAGE, KEEP=1 (leave it running, print how to take it down).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /var/tmp/tss-try-compose.XXXXXX)
source deploy/try-common.sh

WORKERS=${WORKERS:-2}
FLOW_S=${FLOW_S:-120}
MQTT=${MQTT:-1}
PROJECT=${PROJECT:-timesformer-stream}
export TIMESFORMER_WEB=${TIMESFORMER_WEB:-127.0.0.1:8080} TIMESFORMER_IMAGE=$IMAGE
URL=http://${TIMESFORMER_WEB/0.0.0.0/127.0.0.1}
command -v podman-compose >/dev/null || die "podman-compose missing: pip install podman-compose"

say "preflight"
preflight
[ -z "$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")" ] \
  || die "compose project $PROJECT has containers already: take it down first, or set PROJECT"
! ss -ltnH "sport = :${TIMESFORMER_WEB##*:}" | grep -q . \
  || die "port ${TIMESFORMER_WEB##*:} is taken: set TIMESFORMER_WEB=127.0.0.1:PORT"

files=(-f deploy/compose.yaml)
stages=()
made_keys=""
compose() { podman-compose -p "$PROJECT" "${files[@]}" "$@"; }
cleanup() {
  local rc=$?
  if [ "${KEEP:-}" = 1 ] && [ "$rc" = 0 ]; then
    echo "KEEP=1: running; take it down with: podman-compose -p $PROJECT ${files[*]} down -v; rm -rf $WORK ${made_keys}"
    return
  fi
  say "down"
  stop_each "${stages[@]}"
  # podman-compose 1.6's down knows one container a service (it ignores up's --scale): the other workers go
  # first, as deploy/README.md says, or down cannot remove what they depend on.
  printf '%s\n' "${stages[@]}" | grep '_worker_' | grep -v '_worker_1$' | xargs -r podman rm -f -t 0 >/dev/null
  compose down -v -t 30 >"$WORK/down.log" 2>&1 || { echo "podman-compose down failed:"; tail -5 "$WORK/down.log"; }
  echo "podman-compose down left: $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | wc -l) containers"
  podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
  podman pod rm -f "pod_$PROJECT" >/dev/null 2>&1 || true
  podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm -f >/dev/null 2>&1 || true
  podman network ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman network rm >/dev/null 2>&1 || true
  [ -n "$made_keys" ] && rm -rf "$made_keys"
  rm -rf "$WORK"
  echo "left: containers $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | wc -l)," \
       "volumes $(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | wc -l)," \
       "networks $(podman network ls -q --filter "label=io.podman.compose.project=$PROJECT" | wc -l)" \
       "(rc $rc, $(elapsed) s in all)"
}
trap cleanup EXIT

say "secrets"
if [ -e deploy/keys ]; then
  echo "deploy/keys exists (yours): left alone; this run's secrets go elsewhere"
  keys=$WORK/keys
  make_secrets "$keys"
  cat > "$WORK/keys.yaml" <<EOF
# this run's throwaway secrets in place of deploy/keys
secrets:
  server_key: {file: $keys/server.key}
  server_key_secret: {file: $keys/server.key_secret}
  client_key: {file: $keys/client.key}
  client_key_secret: {file: $keys/client.key_secret}
services:
  web: {env_file: !override [$keys/web.env]}
  sinks: {env_file: !override [$keys/mqtt.env]}
EOF
  files+=(-f "$WORK/keys.yaml")
else
  made_keys=$PWD/deploy/keys
  make_secrets deploy/keys
fi
token=$(sed -n 's/^WEB_TOKEN=//p' "${keys:-deploy/keys}/web.env")

services=(dispatcher worker capture-0 capture-1 web)
if [ "$MQTT" = 1 ]; then
  say "test MQTT broker"
  mqtt_image
  cat > "$WORK/mqtt.yaml" <<EOF
# a test broker for the sinks service: [mqtt] url = mqtt://mqtt:1883
services:
  mqtt:
    image: $MQTT_IMAGE
    read_only: true
    cap_drop: [ALL]
EOF
  files+=(-f "$WORK/mqtt.yaml")
  services=(mqtt "${services[@]}" sinks)
else
  echo "MQTT=0: no broker, so no sinks service"
fi

say "podman-compose ${files[*]} up -d --scale worker=$WORKERS ${services[*]}"
start=$(date +%s)
compose up -d --scale "worker=$WORKERS" "${services[@]}" >"$WORK/up.log" 2>&1 \
  || { tail -30 "$WORK/up.log"; die "podman-compose up failed"; }
echo "up took $(( $(date +%s) - start )) s"
mapfile -t stages < <(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' \
  | grep -v '_mqtt_' | sort)
echo "stage containers: ${stages[*]}"
[ "${#stages[@]}" = $(( ${#services[@]} - 1 + WORKERS - (MQTT == 1 ? 1 : 0) )) ] \
  || { podman ps -a --filter "label=io.podman.compose.project=$PROJECT"; die "not every container is running"; }

say "readiness: GET /readyz on each stage's --health port 9090 (from inside its container)"
if ! wait_ready "${stages[@]}"; then
  logs_of "${stages[@]}"
  exit 1
fi
# Health checks need systemd's timers, which a host without systemd lacks (podman ps then says starting):
# compose.yaml's healthcheck, run once.
echo "compose healthcheck (GET /healthz by python), run once: podman healthcheck run"
for name in "${stages[@]}"; do
  printf '  %-34s %s\n' "$name" "$(podman healthcheck run "$name" 2>&1 && echo healthy || true)"
done
echo "podman ps:"
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '  {{.Names}}\t{{.Status}}'

say "the web view at $URL (token from web.env, ${#token} characters, not shown)"
echo "GET / without the token -> $(curl -s -o /dev/null -w '%{http_code}' "$URL/")"
code=$(curl -s -o "$WORK/page.html" -w '%{http_code}' -H "Authorization: Bearer $token" "$URL/")
echo "GET / with the token -> $code, $(wc -c < "$WORK/page.html") bytes," \
     "$(grep -o '<title>[^<]*</title>' "$WORK/page.html" | head -1)"
streams=$(curl -s -w ' -> %{http_code}' -H "Authorization: Bearer $token" "$URL/api/streams")
echo "GET /api/streams with the token -> ${streams##* -> }: ${streams% -> *}" | cut -c1-600
[ "$code" = 200 ] && [ "${streams##* -> }" = 200 ] || die "the web view did not answer 200 with the token"

say "predictions flowing (up to $FLOW_S s)"
dispatcher=$(printf '%s\n' "${stages[@]}" | grep '_dispatcher_')
captures=($(printf '%s\n' "${stages[@]}" | grep '_capture-'))
workers=($(printf '%s\n' "${stages[@]}" | grep '_worker_'))
deadline=$(( $(date +%s) + FLOW_S ))
while :; do
  answering=$(metric_sum "$dispatcher" '^timesformer_workers_answering ')
  served=0; for c in "${captures[@]}"; do
    [ "$(metric_sum "$c" '^timesformer_frame_server_windows_total\{.*outcome="served"')" -gt 0 ] && served=$((served + 1))
  done
  predicted=0; for w in "${workers[@]}"; do
    [ "$(metric_sum "$w" '^timesformer_worker_windows_total')" -gt 0 ] && predicted=$((predicted + 1))
  done
  lines=$(podman exec "$dispatcher" sh -c 'wc -l < /var/lib/timesformer/actions.jsonl 2>/dev/null || echo 0')
  [ "$answering" = "$WORKERS" ] && [ "$served" = "${#captures[@]}" ] && [ "$predicted" = "$WORKERS" ] \
    && [ "$lines" -gt 0 ] && break
  [ "$(date +%s)" -ge "$deadline" ] && break
  sleep 3
done
echo "[$(elapsed) s] workers answering $answering/$WORKERS, workers that predicted $predicted/$WORKERS," \
     "captures that served frames $served/${#captures[@]}, event log lines $lines"
echo "dispatcher $dispatcher /metrics:"
metrics "$dispatcher" '^timesformer_(workers_answering|dispatcher_|windows_sent|windows_dropped|event_log_lines|stage_ready)' \
  | sed 's/^/  /'
for w in "${workers[@]}"; do
  echo "worker $w /metrics:"
  metrics "$w" '^timesformer_(worker_windows_total|worker_batches_total|worker_windows_stale|stage_ready)' | sed 's/^/  /'
done
for c in "${captures[@]}"; do
  echo "capture $c /metrics:"
  metrics "$c" '^timesformer_(frame_server_windows_total|windows_sent_total|frames_captured_total|stage_ready)' \
    | sed 's/^/  /'
  echo "  $(podman logs "$c" 2>&1 | grep -m1 -o 'served to workers at [^ ,]*' || echo 'no frame server line in its log')"
done
echo "event log (the events volume, /var/lib/timesformer/actions.jsonl), first lines:"
podman exec "$dispatcher" head -3 /var/lib/timesformer/actions.jsonl 2>/dev/null | cut -c1-240 | sed 's/^/  /' || true
if [ "$MQTT" = 1 ]; then
  sinks=$(printf '%s\n' "${stages[@]}" | grep '_sinks_')
  echo "sinks $sinks /metrics:"
  metrics "$sinks" '^timesformer_(sink_messages_total|stage_ready)' | sed 's/^/  /'
  mqtt=$(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | grep '_mqtt_')
  echo "on the broker (mosquitto_sub -t 'timesformer/#', retained and new, 10 s):"
  podman exec "$mqtt" mosquitto_sub -t 'timesformer/#' -v -W 10 -C 4 2>/dev/null | cut -c1-200 | sed 's/^/  /' || true
fi
[ "$answering" = "$WORKERS" ] && [ "$served" = "${#captures[@]}" ] && [ "$predicted" = "$WORKERS" ] \
  && [ "$lines" -gt 0 ] || { logs_of "${stages[@]}"; die "predictions did not flow everywhere within $FLOW_S s"; }

say "done: compose ran, every stage ready, predictions flowing"
