#!/usr/bin/env bash
# Build the CPU image on this kind of host (no image registry; Debian's podman; packages through a proxy
# whose CA only the host has; pip wheels in local folders) and check it: size, the demo run read-only as a
# non-root user, the web view answering. CI need not run it; deploy/Containerfile is what users build.
#
#   flock /tmp/heavy.lock deploy/build-image.sh        # from the repository root, as root
#
# Idempotent: the base image is made only when missing, the build reuses cached layers, a container left by
# an earlier run is removed first. Environment: IMAGE (default localhost/timesformer-stream:latest),
# BASE (localhost/debian-base:bookworm), PORT (host port of the web view, default 18080), SKIP_RUN=1.
# Host specifics (CA bundle, pip configuration, wheel folders) reach the build only as read-only mounts of
# RUN steps (`podman build -v`), so they are in no layer and not in the Containerfile.
set -euo pipefail

IMAGE=${IMAGE:-localhost/timesformer-stream:latest}  # the tag deploy/compose.yaml and deploy/kubernetes name
BASE=${BASE:-localhost/debian-base:bookworm}
PORT=${PORT:-18080}
NAME=tss-image-check
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "error: run as root (podman build with host mounts)" >&2; exit 2; }
command -v podman >/dev/null || { echo "error: podman missing: apt-get install -y --no-install-recommends" \
  "podman buildah runc iptables catatonit debootstrap netavark aardvark-dns uidmap" >&2; exit 2; }

# -- 1. containers.conf: this host's hard limits (20000 files, 32768 processes) and runc.
say "containers.conf"
CONF=/etc/containers/containers.conf
if [ -n "${CONTAINERS_CONF:-}" ]; then
  echo "using CONTAINERS_CONF=$CONTAINERS_CONF as given"
elif [ ! -e "$CONF" ]; then
  mkdir -p /etc/containers
  cat > "$CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  echo "wrote $CONF (ulimits within the host's hard limits, runtime runc)"
elif grep -q 'nofile=20000' "$CONF" && grep -q 'runtime *= *"runc"' "$CONF"; then
  echo "$CONF already has the ulimits and runc"
else
  export CONTAINERS_CONF=/var/tmp/timesformer-containers.conf
  cat > "$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  echo "$CONF lacks the ulimits or runc: using $CONTAINERS_CONF for this script"
fi

# -- 2. The base image: Debian bookworm (minbase) with Python 3.11 and python3-venv, from the host's mirror.
say "base image $BASE"
if podman image exists "$BASE"; then
  echo "present, kept"
else
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /var/tmp/debian-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap --variant=minbase bookworm from $mirror"
  start=$(date +%s)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
    > /var/tmp/debootstrap.log 2>&1 || { tail -20 /var/tmp/debootstrap.log; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
  echo "made in $(( $(date +%s) - start )) s: $(podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE")"
fi

# -- 3. Host specifics as read-only mounts of the build's RUN steps: the CA bundle (the proxy's CA is in it),
# pip's configuration files and every local folder they name (find-links, file:// indexes, constraints).
say "host pip configuration and wheel folders, mounted read-only into the build"
mounts=()
add_mount() { [ -e "$1" ] && mounts+=(-v "$1:$1:ro") && echo "  $1"; return 0; }
add_mount /etc/ssl/certs/ca-certificates.crt
for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" \
         ${PIP_CONFIG_FILE:-}; do
  add_mount "$f"
done
# Folders named in pip's configuration (python3 -m pip: the host's pip, which reads the same files).
while read -r path; do add_mount "$path"; done < <(
  python3 -m pip config list 2>/dev/null | python3 -c '
import os, re, sys
seen = set()
for line in sys.stdin:
    value = line.split("=", 1)[1].strip().strip("\x27\"") if "=" in line else ""
    for word in value.split():
        path = word[len("file://"):] if word.startswith("file://") else word
        if not path.startswith("/") or not os.path.exists(path):
            continue
        if os.path.basename(path.rstrip("/")) == "simple":  # an index: its files lie beside it
            path = os.path.dirname(path.rstrip("/"))
        elif os.path.isfile(path):  # a constraints file: its folder (relative includes)
            path = os.path.dirname(path)
        if path not in seen and path != "/etc/ssl/certs":
            seen.add(path)
            print(path)
')

# -- 4. Build. TORCH_INDEX_URL=none: torch 2.13.0+cpu comes from the local wheel folder, not torch's index.
say "podman build -f deploy/Containerfile -t $IMAGE ."
start=$(date +%s)
podman build -f deploy/Containerfile -t "$IMAGE" --layers \
  --build-arg VARIANT=cpu --build-arg BASE_IMAGE="$BASE" --build-arg CUDA_BASE_IMAGE="$BASE" \
  --build-arg TORCH_INDEX_URL=none "${mounts[@]}" . 2>&1 \
  | grep -v "^WARNING: Location 'file://.*' is ignored: it is neither a file nor a directory" | sed 's/^/  | /'
echo "build took $(( $(date +%s) - start )) s"

# -- 5. Size: the image, its layers, and what takes the space in site-packages.
say "size"
podman image ls --format 'table {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE"
echo "layers (newest first):"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150 | sed 's/^/  /'
echo "inside the image (MB):"
podman run --rm --entrypoint sh "$IMAGE" -c 'du -sm / --exclude=/proc --exclude=/sys 2>/dev/null | tail -1;
  du -sm /usr /opt/venv /app 2>/dev/null; echo "site-packages, largest:";
  du -sm /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -15;
  echo "compilers: $(ls /usr/bin/gcc* /usr/bin/cc /usr/bin/g++* 2>/dev/null | wc -l), pip: $(ls /opt/venv/bin/pip* 2>/dev/null | wc -l),
  apt lists: $(ls /var/lib/apt/lists 2>/dev/null | grep -vc "^lock$\|^partial$"), pip caches: $(ls -d /root/.cache /tmp/* 2>/dev/null | wc -l)"' \
  | sed 's/^/  /'

[ "${SKIP_RUN:-}" = 1 ] && exit 0

# -- 6. The headless demo with the default CMD's config, read-only, stopping by itself.
say "podman run --rm --read-only $IMAGE --headless --duration 20   (the default config, exit code expected 0)"
podman run --rm --read-only --shm-size 256m "$IMAGE" --headless --duration 20 > /var/tmp/tss-default-run.log 2>&1 \
  && echo "exit code 0" || { echo "exit code $?"; tail -20 /var/tmp/tss-default-run.log; exit 1; }
grep -m3 -i "worker\|backend\|web view" /var/tmp/tss-default-run.log | cut -c1-160 | sed 's/^/  /' || true

# -- 7. The demo with the web view on a published port: beyond loopback it needs a token, which only a
# config file holds (mounted read-only; written here, mode 600 folder, removed at the end).
say "podman run -d --read-only ... -p 127.0.0.1:$PORT:8080 $IMAGE --config /config/demo.toml"
podman rm -f "$NAME" >/dev/null 2>&1 || true
secret_dir=$(mktemp -d /var/tmp/tss-image-check.XXXXXX)
trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true; rm -rf "$secret_dir"' EXIT
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
# The shipped demo config, with the web view on every interface of the container (so that a published port
# reaches it) and the token; everything else as the demo has it.
TOKEN=$token python3 - configs/default.toml "$secret_dir/demo.toml" <<'EOF'
import os, re, sys
text, found = re.subn(r'(?m)^\[web\]\nlisten = "127\.0\.0\.1:8080".*',
                      '[web]\nlisten = "0.0.0.0:8080"\ntoken = "%s"' % os.environ["TOKEN"], open(sys.argv[1]).read())
if found != 1:
    sys.exit('configs/default.toml: no [web] table starting with listen = "127.0.0.1:8080"; update this script')
open(sys.argv[2], "w").write(text)
EOF
chmod 644 "$secret_dir/demo.toml"  # readable by the container's user 10001; the folder (700) keeps others out
podman run -d --name "$NAME" --read-only --shm-size 256m -p "127.0.0.1:$PORT:8080" \
  -v "$secret_dir/demo.toml:/config/demo.toml:ro" "$IMAGE" --config /config/demo.toml --headless >/dev/null
echo "started $NAME (token: ${#token} characters, not shown)"

url=http://127.0.0.1:$PORT
for i in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz" || true)
  [ "$code" = 200 ] && break
  [ "$(podman inspect -f '{{.State.Running}}' "$NAME")" = true ] || { podman logs "$NAME" | tail -20; exit 1; }
  sleep 1
done
echo "GET /healthz -> $code after ${i} s"
[ "$code" = 200 ] || { podman logs "$NAME" | tail -20; exit 1; }
sleep 15  # let the worker load the model and the first windows through
auth=(-H "Authorization: Bearer $token")
echo "GET / without the token -> $(curl -s -o /dev/null -w '%{http_code}' "$url/")"
echo "GET / with the token -> $(curl -s "${auth[@]}" -o /var/tmp/tss-page.html -w '%{http_code}' "$url/")," \
     "$(wc -c < /var/tmp/tss-page.html) bytes, $(grep -o '<title>[^<]*</title>' /var/tmp/tss-page.html | head -1)"
echo "GET /api/streams with the token -> $(curl -s "${auth[@]}" "$url/api/streams" | cut -c1-300)"
echo "GET /readyz -> $(curl -s "${auth[@]}" -w ' %{http_code}' "$url/readyz" | cut -c1-200)"
echo "GET /metrics with the token ->"
curl -s "${auth[@]}" "$url/metrics" | grep -E '^timesformer_(build_info|windows|predictions|worker|frames)[a-z_]*' \
  | head -8 | cut -c1-200 | sed 's/^/  /'

say "user and root file system"
echo "podman top: $(podman top "$NAME" user huser pid args | sed -n 2p | cut -c1-120)"
echo "id in the container: $(podman exec "$NAME" id)"
echo "inspect: ReadonlyRootfs=$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NAME")" \
     "User=$(podman inspect -f '{{.Config.User}}' "$NAME")"
echo "write to /app: $(podman exec "$NAME" sh -c 'touch /app/x 2>&1 || true')"
echo "write to /opt/venv: $(podman exec "$NAME" sh -c 'touch /opt/venv/x 2>&1 || true')"
echo "writable places in use: $(podman exec "$NAME" sh -c 'ls -d /tmp/* /dev/shm/* 2>/dev/null | tr "\n" " "')"

say "stop"
podman stop -t 30 "$NAME" >/dev/null
echo "stopped: exit code $(podman inspect -f '{{.State.ExitCode}}' "$NAME")"
echo "last log lines:"
podman logs "$NAME" 2>&1 | tail -4 | cut -c1-160 | sed 's/^/  /'
podman rm "$NAME" >/dev/null
echo "removed $NAME and the token's folder"
