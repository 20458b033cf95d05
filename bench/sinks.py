"""Event delivery and clip recording: how fast an action reaches MQTT and a webhook, and what clips cost.

    python bench/sinks.py                       # both parts; writes its BENCHMARKS.md section
    python bench/sinks.py --seconds 20 --no-write

Delivery: the demo pipeline (live synthetic source, shipped model) with a real Mosquitto broker and a
local webhook server; for each start/end line, the time from the line reaching the event log (the file
is polled every 2 ms) to the MQTT subscriber's and the webhook server's receipt.
Clips: N paced 1280×720 H.264 files (the synthetic demo video, rendered at 720p), with and without [clips]; CPU seconds per
second and resident memory of the clips stage, and what the captures spend making its frames.
"""

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from tests.sinks_helpers import Broker, Hooks, Subscriber  # noqa: E402

TICKS = 100  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_pipeline(*args) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(line) for line in proc.stderr], daemon=True).start()
    return proc, lines


def pids(lines: list[str], stage: str) -> list[int]:
    return [int(m.group(1)) for line in list(lines) if (m := re.search(rf"{stage}(?: \S+)? started \(pid (\d+)\)", line))]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def delivery(seconds: float, tmp: Path) -> dict:
    broker, hooks = Broker(tmp), Hooks("bench-secret")
    watcher = Subscriber(broker.port, ("timesformer/events",))
    received_mqtt: dict[tuple, float] = {}
    watcher.client.on_message = lambda c, u, m: received_mqtt.setdefault(
        (json.loads(m.payload)["id"], json.loads(m.payload)["kind"]), time.monotonic())
    received_hook: dict[tuple, float] = {}
    hooks.received = _Recorder(received_hook)  # the server appends each event it takes: note the time too
    config = tmp / "delivery.toml"
    config.write_text((REPO / "configs" / "default.toml").read_text()
                      + f'\n[mqtt]\nurl = "{broker.url}"\n\n[[webhooks]]\nurl = "{hooks.url}"\nsecret = "bench-secret"\n')
    events = tmp / "events.jsonl"
    proc, _ = start_pipeline("--config", config, "--headless", "--web", "off", "--events", events)
    written: dict[tuple, float] = {}
    seen, deadline = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if events.exists():
                data = events.read_bytes()[seen:]
                complete = data[: data.rfind(b"\n") + 1]
                for raw in complete.splitlines():
                    line = json.loads(raw)
                    if line["kind"] in ("start", "end"):
                        written[line["id"], line["kind"]] = time.monotonic()
                seen += len(complete)
            time.sleep(0.002)
        time.sleep(1.0)
    finally:
        stop(proc)
        watcher.close()
        hooks.close()
        broker.kill()
    mqtt = [1000 * (received_mqtt[k] - t) for k, t in written.items() if k in received_mqtt]
    hook = [1000 * (received_hook[k] - t) for k, t in written.items() if k in received_hook]
    return {"events": len(written), "mqtt": mqtt, "webhook": hook}


class _Recorder(list):
    """The webhook server's ``received`` list, noting when each event arrived."""

    def __init__(self, times: dict) -> None:
        super().__init__()
        self.times = times

    def append(self, item) -> None:
        body, _ = item
        self.times.setdefault((body["id"], body["kind"]), time.monotonic())
        super().append(item)


def clip_cost(streams: int, seconds: float, tmp: Path, video: Path, with_clips: bool) -> dict:
    config = tmp / f"clips-{streams}-{with_clips}.toml"
    sources = "".join(f'[[sources]]\nspec = "{video}"\nname = "cam{i}"\n\n' for i in range(streams))
    clips = f'[clips]\ndir = "{tmp / "clips"}"\n' if with_clips else ""
    config.write_text(f'[model]\ncheckpoint = "models/demo.safetensors"\nprecision = "fp32"\nhop = 16\nmax_batch = 4\n\n'
                      f"{sources}{clips}")
    proc, lines = start_pipeline("--config", config, "--headless", "--web", "off")
    try:
        deadline = time.monotonic() + 60
        while len(pids(lines, "capture")) < streams and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(5)  # past start-up
        watched = {"clips": pids(lines, "clips"), "captures": pids(lines, "capture")}
        before = {k: sum(cpu_seconds(p) for p in v) for k, v in watched.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        after = {k: sum(cpu_seconds(p) for p in v) for k, v in watched.items()}
        rss = sum(rss_mb(p) for p in watched["clips"])
    finally:
        stop(proc)
    written = len(list((tmp / "clips").glob("*/*.mp4"))) if with_clips else 0
    return {"clips_cpu": (after["clips"] - before["clips"]) / wall if with_clips else 0.0,
            "captures_cpu": (after["captures"] - before["captures"]) / wall, "clips_rss_mb": rss, "written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each timed run")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sinks-"))
    timing = delivery(args.seconds, tmp)
    print({k: (len(v) if isinstance(v, list) else v) for k, v in timing.items()}, flush=True)
    video = tmp / "720p.mp4"
    subprocess.run([sys.executable, "-m", "streamer.synthetic", "--out", str(video), "--seconds", str(args.seconds + 30),
                    "--seed", "5", "--width", "1280", "--height", "720"], cwd=REPO, check=True, capture_output=True)
    costs = {}
    for n in args.streams:
        for with_clips in (False, True):
            costs[n, with_clips] = clip_cost(n, min(args.seconds, 30.0), tmp, video, with_clips)
            print(n, with_clips, costs[n, with_clips], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    rows = []
    for name in ("mqtt", "webhook"):
        values = timing[name]
        rows.append(f"| {'MQTT subscriber (Mosquitto, qos 1)' if name == 'mqtt' else 'webhook server (HTTP POST, signed)'} "
                    f"| {len(values)} of {timing['events']} | {statistics.median(values):.1f} | "
                    f"{percentile(values, 0.99):.1f} |" if values else f"| {name} | 0 of {timing['events']} | - | - |")
    cost_rows = []
    for n in args.streams:
        off, on = costs[n, False], costs[n, True]
        extra = on["captures_cpu"] - off["captures_cpu"]
        cost_rows.append(f"| {n} | {100 * on['clips_cpu']:.0f}% ({100 * on['clips_cpu'] / n:.0f}% a stream) | "
                         f"{100 * extra:+.0f}% | {on['clips_rss_mb']:.0f} MB | {on['written']} |")
    body = f"""`python bench/sinks.py {' '.join(sys.argv[1:])}` on {datetime.date.today()}, {cpu}, 2 cores.

Delivery of action events ({args.seconds:g} s of the demo: live synthetic source, shipped model; Mosquitto
and the webhook server on loopback; from the line reaching the event log, polled every 2 ms, to receipt):

| receiver | events received | p50 ms | p99 ms |
|---|---|---|---|
{chr(10).join(rows)}

Clip recording at 720p ({min(args.seconds, 30.0):g} s a run; the synthetic demo video rendered at 1280×720 H.264, paced
at 30 fps, one file per stream, demo model at hop 16; frames reach the recorder at the display width, 640×360;
CPU as a share of one core):

| streams | clips stage CPU | captures' CPU, with clips − without | clips stage memory (RSS) | clips written |
|---|---|---|---|---|
{chr(10).join(cost_rows)}

The clips stage's memory holds each stream's JPEG ring (pre_s + a window's span + 3 s of frames), the clips being
encoded (in memory until complete) and ZeroMQ's queues of frames not taken yet (8 a stream on each side).
"""
    print(body)
    if not args.no_write:
        write_section("Sinks: event delivery and clip recording", body)


if __name__ == "__main__":
    main()
