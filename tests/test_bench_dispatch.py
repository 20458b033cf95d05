"""bench/dispatch.py at a light load: the real dispatcher in its own process carries K400 windows (1.2 MB) from
capture processes to worker processes over tcp:// with CurveZMQ, the bytes through it or only their descriptors,
and the direct baseline delivers too. Numbers are not checked here (the box is shared); BENCHMARKS.md has them."""

from __future__ import annotations

import argparse

import pytest

from bench import dispatch


@pytest.mark.parametrize("mode", ["routed", "schedule", "direct"])
def test_dispatch_bench_delivers_every_window_over_curve(tmp_path, mode):
    args = argparse.Namespace(streams=20, captures=1, workers=2, max_batch=4, warmup=0.3, steady=1.0)
    security = dispatch.curve_security(tmp_path / "keys")
    r = dispatch.run_point(args, mode, 40.0, security, tmp_path)
    assert r["sent"] >= 30, r
    assert r["delivered"] >= 0.9 * r["sent"], r
    assert r["p50"] < 1000, r
    if mode == "routed":  # 1.2 MB in and out of the dispatcher's process per window: its CPU shows it
        assert r["dispatcher"] > 0, r
