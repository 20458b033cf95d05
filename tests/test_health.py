"""Health per stage (contract 10): every ``--role`` process serves /healthz, /readyz and /metrics at
``--health HOST:PORT``; ready means it can do its work. Real processes, real sockets, real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.stages import health
from tests.conftest import free_port, metric_samples, probe, wait_for

ROOT = Path(__file__).resolve().parents[1]


get = probe


def metrics(url: str) -> dict[str, float]:
    """``name{labels}`` → value of every sample /metrics shows."""
    return metric_samples(get(url + "/metrics")[1])


def test_health_answers_alive_ready_and_why_not_and_its_metrics():
    probes = health.Health("worker-0", stall_s=0.3)
    server = health.serve(probes, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get(url + "/healthz")[0] == 200  # alive before its loop turns (still starting)
        status, body = get(url + "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "stage": "worker-0", "reason": "starting"}
        probes.not_ready("loading the model")
        assert json.loads(get(url + "/readyz")[1])["reason"] == "loading the model"
        probes.ready()
        probes.beat()
        assert get(url + "/readyz") == (200, json.dumps({"ready": True, "stage": "worker-0"}).encode())
        probes.publish([("worker_windows", {}, 12.0), ("worker_forward_seconds", {}, 0.02)])
        seen = metrics(url)
        assert seen["timesformer_worker_windows_total"] == 12.0
        assert seen["timesformer_worker_forward_seconds"] == 0.02
        assert seen["timesformer_stage_ready{stage=worker-0}"] == 1.0
        time.sleep(0.5)  # the loop stops turning: hung, so a liveness probe restarts it
        status, body = get(url + "/healthz")
        assert status == 503 and "has not turned" in json.loads(body)["reason"]
        assert get(url + "/nothing")[0] == 404
    finally:
        server.shutdown()


def role_config(tmp_path: Path, ports: dict[str, int], frames_port: int) -> Path:
    """The demo (shipped model, one synthetic camera) with every endpoint on tcp://127.0.0.1, the worker
    fetching window frames from the capture itself (``frames_port``): the dispatcher carries references."""
    path = tmp_path / "roles.toml"
    path.write_text(
        f'[model]\ncheckpoint = "{ROOT / "models/demo.safetensors"}"\nhop = 4\nmax_batch = 4\n\n'
        '[pipeline]\nheartbeat_timeout_s = 3\n\n'
        f'[events]\npath = "{tmp_path / "events.jsonl"}"\n\n'
        '[[sources]]\nspec = "synthetic:"\nname = "cam0"\n\n[endpoints]\n'
        + "".join(f'{name} = "tcp://127.0.0.1:{port}"\n' for name, port in ports.items())
        + f"frames_port = {frames_port}\n")
    return path


def start_role(config: Path, role: str, health_port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "--config", str(config), "--headless",
                             "--role", role, "--health", f"127.0.0.1:{health_port}", *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)



def test_roles_become_ready_in_turn_and_the_dispatcher_counts_the_workers_it_needs(tmp_path):
    """Dispatcher, worker and capture as separate --role processes: each says it is ready only once it can
    work; the dispatcher's own /metrics carries the autoscaling metric, and with its worker gone it asks for
    at least one."""
    ports = {name: free_port() for name in ("windows", "work", "results", "display", "web", "clips")}
    config = role_config(tmp_path, ports, free_port())
    health_ports = {role: free_port() for role in ("dispatcher", "worker", "capture")}
    urls = {role: f"http://127.0.0.1:{port}" for role, port in health_ports.items()}
    procs = {"dispatcher": start_role(config, "dispatcher", health_ports["dispatcher"])}
    try:
        wait_for(lambda: get(urls["dispatcher"] + "/readyz")[0] == 200, 30, "the dispatcher ready")
        procs["capture"] = start_role(config, "capture", health_ports["capture"], "--advertise", "127.0.0.1")
        wait_for(lambda: get(urls["capture"] + "/readyz")[0] == 200, 30, "the capture reading frames")
        # No worker yet: windows wait, and the dispatcher says it needs one.
        wait_for(lambda: metrics(urls["dispatcher"]).get("timesformer_dispatcher_workers_needed", 0) >= 1, 15,
                 "workers_needed ≥ 1 while windows wait and no worker answers")
        procs["worker"] = start_role(config, "worker", health_ports["worker"])
        wait_for(lambda: get(urls["worker"] + "/healthz")[0] == 200, 30, "the worker alive")
        wait_for(lambda: get(urls["worker"] + "/readyz")[0] == 200, 60, "the worker's model loaded")
        wait_for(lambda: metrics(urls["worker"]).get("timesformer_worker_windows_total", 0) > 0, 30,
                 "the worker predicting")
        # The demo model keeps up easily: once the backlog of windows that waited is served, one worker is a
        # fraction of what is needed (the first count after it answers may still see that backlog).
        seen = wait_for(lambda: (m := metrics(urls["dispatcher"])).get("timesformer_workers_answering") == 1
                        and 0 < m.get("timesformer_dispatcher_workers_needed", 0) < 1 and m,
                        30, "the dispatcher counting its worker, and one worker enough")
        assert seen["timesformer_stage_ready{stage=dispatcher}"] == 1
        capture = metrics(urls["capture"])
        assert capture["timesformer_frames_captured_total{stream=cam0}"] > 0
        # The worker fetched the frames from the capture: the windows the dispatcher carried held none.
        assert capture["timesformer_frame_server_windows_total{outcome=served,stream=cam0}"] > 0
        procs.pop("worker").kill()
        wait_for(lambda: metrics(urls["dispatcher"]).get("timesformer_dispatcher_workers_needed", 0) >= 1, 20,
                 "workers_needed ≥ 1 again once the worker is gone")
        lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert any(line["kind"] == "prediction" for line in lines)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}: {proc.stderr.read()[-2000:]}"


@pytest.mark.parametrize("args, message", [
    (["--health", "127.0.0.1:9090"], "--health serves one stage's probes, so it goes with --role"),
    (["--role", "dispatcher", "--health", "nowhere"], "--health: listen address 'nowhere' must be HOST:PORT"),
])
def test_health_usage_errors_are_one_line(args, message):
    done = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
