"""``backend="auto"``: time torch and OpenVINO on this CPU and keep the faster, reliably.

After ``WARMUP`` untimed calls each (the first call of an engine takes up to 5x its median, the second
about 1x), the backends take turns (A B B A ...) for ``ROUNDS`` rounds, each timed call after ``SETTLE``
untimed one of its own, so load from other processes falls on both alike, and the lower median wins;
medians closer than ``TIE`` keep torch, the reference, so near-equal backends do not flip from one start to
the next. The counts come from measuring the spread here (``python bench/backend_spread.py``, BENCHMARKS.md
"Backend choice: spread of forward times"): on a shared 2-core AMD EPYC, batch 1, forwards varied by a
coefficient of variation of 2-10% (demo model) and 1-4% (base-sized); the median of any 7 or more
consecutive rounds picked what the median of all 20-30 picked every time, 3 rounds did not (94%), and 9
keep the ratio within 3% (1 thread) to 12% (2 threads) of the whole run's. Without the settling call the
choice was a coin toss on 2 threads (50%): OpenVINO right after torch ran 9.9 ms, after itself 6.5 ms.

The choice is remembered in ``<key>-<precision>-b<batch>-t<threads>.choice.json`` beside the converted model, with the
medians and the CPU it was made on (model name, matrix flags, threads, torch version): another CPU, another
thread count or another torch measures again.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from loguru import logger

from workers.cpu import CpuFingerprint, cpu_fingerprint

WARMUP = 2   # untimed calls of each backend before timing
ROUNDS = 9   # timed calls of each, taking turns
SETTLE = 1   # untimed calls before each timed one, so the other backend's spinning threads are gone
TIE = 0.05   # medians within 5% of torch's keep torch
# Rounds of slow forwards (a base-sized model at a worker's batch takes seconds to tens of seconds here) are
# cut to what fits in BUDGET_S, never below MIN_ROUNDS: those vary by 1-4% (5 rounds agreed with 20 in 94-100%
# of runs, ratio within 4%), and the spinning threads the settling call waits out cost them milliseconds.
LONG_CALL_S, BUDGET_S, MIN_ROUNDS = 0.5, 60.0, 5


def time_interleaved(runs: dict[str, Callable[[], object]], rounds: int = ROUNDS, warmup: int = WARMUP,
                     settle: int = SETTLE, clock: Callable = time.perf_counter) -> dict[str, list]:
    """Seconds per call (by ``clock``) of each of ``runs`` after ``warmup`` untimed calls, taking turns: the
    order is reversed every round (A B, B A, ...) so a slow drift of the machine falls on each alike.

    Each timed call follows ``settle`` untimed calls of the same run: right after torch, its OpenMP threads
    still spin for a while and take the cores from the next engine, and a worker runs one engine back to back."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            for _ in range(settle):
                runs[name]()
            start = clock()
            runs[name]()
            times[name].append(clock() - start)
    return times


def rounds_for(round_s: float) -> tuple[int, int]:
    """(rounds, settling calls) for rounds of about ``round_s`` seconds (one call of each backend)."""
    if round_s < LONG_CALL_S:
        return ROUNDS, SETTLE
    return max(MIN_ROUNDS, min(ROUNDS, int(BUDGET_S / round_s))), 0


def faster(samples: dict[str, list[float]], prefer: str = "torch", tie: float = TIE) -> str:
    """The name with the lowest median time; ``prefer`` unless another's median is more than ``tie`` lower."""
    medians = {name: statistics.median(times) for name, times in samples.items()}
    best = min(medians, key=medians.get)
    if prefer in medians and best != prefer and medians[best] > (1 - tie) * medians[prefer]:
        return prefer
    return best


def choose_backend(models: dict[str, torch.nn.Module], example: torch.Tensor, key: str, what: str,
                   cache_dir: Path | None = None, cpu: CpuFingerprint | None = None) -> str:
    """The faster of ``models`` (name → model) on ``example``: remembered under ``key`` and ``what`` (the
    converted model's key; precision and batch) if it was measured on this CPU, else measured and recorded."""
    from workers.openvino_backend import default_cache_dir

    cpu = cpu or cpu_fingerprint()
    # one record per thread count: workers of another size (a pipeline's, a benchmark's) do not undo each other's
    record = (cache_dir or default_cache_dir()) / f"{key}-{what}-t{cpu.threads}.choice.json"
    known = _read(record)
    if known is not None and known.get("cpu") == cpu.as_record() and known.get("choice") in models:
        logger.info(f"backend auto: {known['choice']} ({_medians_text(known['medians_ms'])}, measured "
                    f"{known.get('date', 'before')} on this CPU)")
        return known["choice"]
    if known is not None:
        logger.info(f"backend auto: the choice in {record.name} was made on another CPU, thread count or torch "
                    f"({known.get('cpu')}); measuring again")
    runs = {name: (lambda m=model: m(example)) for name, model in models.items()}
    with torch.inference_mode():
        last_warmup = time_interleaved(runs, rounds=1, warmup=WARMUP - 1, settle=0)  # the last warm-up, timed
        rounds, settle = rounds_for(sum(times[0] for times in last_warmup.values()))
        samples = time_interleaved(runs, rounds=rounds, warmup=0, settle=settle)
    choice = faster(samples)
    medians = {name: round(1000 * statistics.median(times), 3) for name, times in samples.items()}
    _write(record, {"choice": choice, "medians_ms": medians, "rounds": rounds, "settle": settle, "warmup": WARMUP,
                    "batch": int(example.shape[0]), "cpu": cpu.as_record(), "date": time.strftime("%Y-%m-%d")})
    logger.info(f"backend auto: {choice} ({_medians_text(medians)}, medians of {rounds} turns after "
                f"{WARMUP} warm-up calls, batch {example.shape[0]}, {cpu.threads} threads)")
    return choice


def _medians_text(medians: dict) -> str:
    return ", ".join(f"{name} {ms:.1f} ms" for name, ms in medians.items())


def _read(record: Path) -> dict | None:
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return known if isinstance(known, dict) and isinstance(known.get("medians_ms"), dict) else None


def _write(record: Path, content: dict) -> None:
    """Written under a temporary name and renamed, so a worker starting beside us never reads half a record."""
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f"{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(content, indent=1))
        os.replace(tmp, record)
    except OSError as err:
        logger.warning(f"backend choice not remembered ({record.parent}: {err.strerror}); measured at every start")
