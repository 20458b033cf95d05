"""Who may reach the web stage: a web stage of its own with a token (401 without it, a cookie after
``/?token=``), malformed HTTP, and the command line's one-line refusals of addresses it cannot or must not use."""

import contextlib
import http.cookiejar
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

from tests.test_reliability import REPO
from tests.test_web import get


# ---------------------------------------------------------------- a web stage of its own: the token


@contextlib.contextmanager
def web_stage(tmp_path, streams: tuple, token: str = ""):
    """The web stage alone (no pipeline behind it), on a free loopback port: its base URL and endpoints
    (frames come to ``endpoints.web``, which it binds; lines from ``endpoints.results``, which it connects to)."""
    from streamer.config.network import Endpoints, Security
    from streamer.stages.web import run as run_web
    from streamer.config.stages import WebConfig
    from streamer.config.web import bind_listener

    endpoints = Endpoints(*(f"ipc://{tmp_path}/{name}" for name in ("windows", "work", "results", "display", "web")))
    config = WebConfig(host="127.0.0.1", port=0, endpoints=endpoints, security=Security(), streams=streams,
                       token=token)
    listener = bind_listener(config)
    stop = threading.Event()
    thread = threading.Thread(target=run_web, args=(config, stop, listener), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 20
        while get(f"{base}/healthz")[0] != 200:
            assert time.monotonic() < deadline, "the web stage did not start"
            time.sleep(0.1)
        yield SimpleNamespace(base=base, token=token, endpoints=endpoints)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.fixture()
def guarded(tmp_path):
    """The web stage alone with a token."""
    with web_stage(tmp_path, (("cam/door", "rtsp"),), token="correct-horse-battery-staple") as stage:
        yield stage


def test_with_a_token_requests_without_it_are_401_and_with_it_200(guarded):
    bearer = {"Authorization": f"Bearer {guarded.token}"}
    for path in ("/", "/api/streams", "/api/events", "/metrics", "/readyz", "/streams/cam%2Fdoor.jpg"):
        status, headers, body = get(guarded.base + path)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer", path
        assert get(guarded.base + path, {"Authorization": "Bearer wrong-token-of-some-length"})[0] == 401
        status, _, body = get(guarded.base + path, bearer)
        assert status == (503 if path == "/readyz" else 200), (path, status, body[:200])
    assert get(guarded.base + "/healthz")[0] == 200  # probes need no token
    # Nothing runs behind this web stage: not ready, and it says why, naming the camera.
    not_ready = json.loads(get(guarded.base + "/readyz", bearer)[2])["not_ready"]
    assert any("dispatcher" in reason for reason in not_ready)
    assert any("cam/door" in reason for reason in not_ready)


def test_opening_the_page_with_the_token_once_sets_a_cookie(guarded):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{guarded.base}/?token={guarded.token}", timeout=10) as response:
        assert response.status == 200 and response.url == f"{guarded.base}/"  # redirected: out of the address bar
        assert b"timesformer-stream" in response.read()
    with opener.open(f"{guarded.base}/api/streams", timeout=10) as response:
        assert json.loads(response.read())[0]["name"] == "cam/door"
    assert get(f"{guarded.base}/?token=not-the-token-at-all")[0] == 401
    jar.clear()
    with opener.open(f"{guarded.base}/review?token={guarded.token}", timeout=10) as response:  # the review page too
        assert response.status == 200 and response.url == f"{guarded.base}/review"
    assert get(f"{guarded.base}/api/actions")[0] == 401
    with pytest.raises(urllib.error.HTTPError) as refused:  # authorised; this stage keeps no history: it says so
        opener.open(f"{guarded.base}/api/actions", timeout=10)
    assert refused.value.code == 404 and "--store FILE.db" in json.loads(refused.value.read())["error"]


def test_malformed_http_is_a_4xx_and_no_traceback(guarded, caplog):
    host, port = guarded.base.removeprefix("http://").split(":")
    for raw in (b"GARBAGE\r\n\r\n", b"GET /streams/\xff\xfe.jpg HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(raw)
            status = sock.recv(100).split(b"\r\n")[0]
        assert re.match(rb"HTTP/1\.[01] 4\d\d", status), (raw, status)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def run_pipeline(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_pipeline.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_listening_beyond_loopback_without_a_token_is_one_line_and_exit_2():
    proc = run_pipeline("--web", "0.0.0.0:0", "--headless", "--duration", 5)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "token" in proc.stderr and proc.stderr.startswith("error: ")


def test_an_explicit_web_address_that_cannot_be_bound_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_pipeline("--web", f"127.0.0.1:{taken.getsockname()[1]}", "--headless", "--duration", 5)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot listen" in proc.stderr and "--web off" in proc.stderr
    for bad in ("8080", "localhost:http", "example.com:80", "127.0.0.1:99999"):
        proc = run_pipeline("--web", bad, "--headless")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--web" in proc.stderr, (bad, proc.stderr)
