#!/usr/bin/env bash
# Debian packages the tests need: GStreamer's RTSP server (driven by Debian's
# /usr/bin/python3, the only interpreter with the GObject bindings), ffmpeg, the
# libGL/GLib libraries that opencv-python loads, Chromium (the web page test drives it
# with Playwright), Prometheus (its promtool checks /metrics) and Mosquitto (the MQTT
# broker the event-sink tests publish to).
# Idempotent: packages already installed are left as they are. Run as root.
set -euo pipefail

packages=(
    python3-gi
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    ffmpeg
    libgl1
    libglib2.0-0
    chromium
    prometheus
    mosquitto
    iproute2
)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
export DEBIAN_FRONTEND=noninteractive
echo "system packages: installing ${missing[*]}"
# Wait for a concurrent apt/dpkg run instead of failing on its lock.
as_root apt-get -o DPkg::Lock::Timeout=600 update
as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
