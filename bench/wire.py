"""The wire format: the msgspec codec against the hand-written one it replaced, and msgspec against pydantic.

    python bench/wire.py                # writes its BENCHMARKS.md section
    python bench/wire.py --repeat 50 --no-write

Three messages: a window of 8 frames of 224×224×3 travelling inline, the same window as a shared-memory
frame store reference, and a result of 400 classes with its top 5. For each, µs per call (the median of
``--repeat`` rounds of ``--number`` calls) of ``decode`` and ``encode`` with the old codec (the files of
commit 7dac4e2, loaded from git into a package of their own) and with today's. Then the library alone:
the two header schemas (window, result) parsed and checked by msgspec (today's Structs) and by pydantic v2
(a TypeAdapter over a discriminated union of two models with the same bounds), no arrays, no cross-field
rules. And the line count of the wire code before and after.
"""

import argparse
import datetime
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import msgspec
import numpy as np
import pydantic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import write_section  # noqa: E402
from streamer.transport import message_types as types  # noqa: E402
from streamer.transport import messages as new  # noqa: E402

OLD_COMMIT = "7dac4e2"
OLD_WIRE = ("messages", "wire", "message_types")  # the wire code before msgspec
NEW_WIRE = ("messages", "message_types")
T, SIDE, CLASSES = 8, 224, 400


def git_show(path: str) -> str:
    return subprocess.run(["git", "show", f"{OLD_COMMIT}:{path}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout


def load_old_codec(folder: Path):
    """The old codec as package ``_wire_<commit>`` (its framestore too, for FrameRef); imports rewritten."""
    package = folder / f"_wire_{OLD_COMMIT}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in (*OLD_WIRE, "framestore"):
        text = git_show(f"streamer/transport/{name}.py").replace("streamer.transport.", f"_wire_{OLD_COMMIT}.")
        (package / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"_wire_{OLD_COMMIT}.messages")


def line_counts() -> tuple[int, int]:
    before = sum(len(git_show(f"streamer/transport/{name}.py").splitlines()) for name in OLD_WIRE)
    after = sum(len((REPO / f"streamer/transport/{name}.py").read_text().splitlines()) for name in NEW_WIRE)
    return before, after


def samples(codec, frame_ref) -> dict[str, object]:
    """The three messages, built with ``codec``'s classes (the positional fields are the same in both)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, SIDE, SIDE, 3), dtype=np.uint8)
    indices = tuple(range(100, 100 + 16 * T, 16))
    stamps = tuple(1.7e9 + i / 30 for i in indices)
    ref = frame_ref("tss-0123456789ab-89abcdef-4242.frames", tuple(range(1000, 1000 + T)), (T, SIDE, SIDE, 3))
    probs = rng.dirichlet(np.ones(CLASSES)).astype(np.float32)
    top = tuple((f"label number {i}", float(probs[i])) for i in np.argsort(-probs)[:5])
    timings = {"capture_ms": 1.2, "queue_ms": 3.4, "preprocess_ms": 5.6, "forward_ms": 78.9, "batch_size": 2.0}
    return {
        "window, 8×224×224×3 inline": codec.Window("cam0", 41, indices, stamps, frames, 1.7e9 + 5),
        "window, frame store reference": codec.Window("cam0", 41, indices, stamps, None, 1.7e9 + 5, store=ref),
        "result, 400 classes, top 5": codec.Result("cam0", 41, indices[-1], stamps[-1], probs, top, "worker-0",
                                                   timings),
    }


def as_received(parts: list) -> list[bytes]:
    return [bytes(p) if isinstance(p, bytes) else np.asarray(p).tobytes() for p in parts]


class Timing(float):
    """µs per call: the median of the rounds (the value), and the fastest round (``best``)."""

    best: float

    def __str__(self) -> str:
        return f"{self:.1f} ({self.best:.1f})"


def per_call_us(candidates: dict, number: int, repeat: int) -> dict[str, Timing]:
    """µs per call of each candidate over ``repeat`` rounds, each round timing every candidate once in turn
    (so that a busy neighbour slows them alike)."""
    rounds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, fn in candidates.items():
            rounds[name].append(timeit.timeit(fn, number=number) / number * 1e6)
    out = {}
    for name, times in rounds.items():
        out[name] = Timing(statistics.median(times))
        out[name].best = min(times)
    return out


def pydantic_headers() -> TypeAdapter:
    """Today's window and result headers as pydantic v2 models: the same fields, bounds and strictness."""
    # Rust's regex cannot name surrogates; pydantic's JSON parser refuses lone ones, as msgspec's does.
    printable = "^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
    name = Annotated[str, Field(min_length=1, max_length=types.MAX_NAME, pattern=printable)]
    index = Annotated[int, Field(ge=0, le=types.MAX_INDEX)]
    finite = Annotated[float, Field(allow_inf_nan=False)]
    side = Annotated[int, Field(ge=1, le=types.MAX_IMAGE_SIDE)]
    frames_shape = tuple[Annotated[int, Field(ge=1, le=types.MAX_WINDOW_FRAMES)], side, side, Literal[3]]
    box = tuple[finite, finite, finite, finite]
    config = ConfigDict(extra="forbid", strict=True, frozen=True)

    class FrameRef(BaseModel):
        model_config = config
        name: Annotated[str, Field(min_length=1, max_length=types.MAX_STORE_NAME, pattern=printable)]
        serials: Annotated[tuple[index, ...], Field(max_length=types.MAX_WINDOW_FRAMES)]
        shape: frames_shape

    class Window(BaseModel):
        model_config = config
        type: Literal["window"]
        stream: name
        seq: index
        frame_indices: Annotated[tuple[index, ...], Field(max_length=types.MAX_WINDOW_FRAMES)]
        frame_ts: Annotated[tuple[finite, ...], Field(max_length=types.MAX_WINDOW_FRAMES)]
        shape: Optional[frames_shape]
        sent_ts: finite
        store: Optional[FrameRef] = None
        track: Optional[index] = None
        box: Optional[box] = None
        views: Annotated[int, Field(ge=1, le=types.MAX_VIEWS)] = 1
        v: Literal[types.VERSION]

    class Result(BaseModel):
        model_config = config
        type: Literal["result"]
        stream: name
        seq: index
        frame_index: index
        frame_ts: finite
        classes: Annotated[int, Field(ge=1, le=types.MAX_CLASSES)]
        top: Annotated[tuple[tuple[name, finite], ...], Field(max_length=types.MAX_TOP)]
        worker: name
        timings: Annotated[dict[name, finite], Field(max_length=types.MAX_TIMINGS)]
        track: Optional[index] = None
        box: Optional[box] = None
        v: Literal[types.VERSION]

    return TypeAdapter(Annotated[Union[Window, Result], Field(discriminator="type")])


def msgspec_headers() -> msgspec.json.Decoder:
    """The same two headers with today's Structs; an array field's declared shape is checked, no frame taken."""
    empty = np.empty(0, np.uint8)

    def shape_only(kind: type, declared: object) -> np.ndarray:
        msgspec.convert(declared, types.FramesShape if isinstance(declared, list) else types.Classes)
        return empty

    return msgspec.json.Decoder(Union[types.Window, types.Result], dec_hook=shape_only)


def pattern_cost(number: int, repeat: int) -> dict[str, float]:
    """One bounded string decoded by msgspec with and without the PRINTABLE pattern: what a text field's check costs."""
    class Plain(msgspec.Struct):
        text: Annotated[str, msgspec.Meta(min_length=1, max_length=types.MAX_NAME)]

    class Printable(msgspec.Struct):
        text: types.Name

    doc = b'{"text":"label number 295"}'
    plain, printable = msgspec.json.Decoder(Plain), msgspec.json.Decoder(Printable)
    return per_call_us({"plain": lambda: plain.decode(doc), "printable": lambda: printable.decode(doc)}, number, repeat)


def import_ms(statement: str, runs: int = 7) -> float:
    """Milliseconds to run ``statement`` in a fresh interpreter (the median of ``runs``): what each stage pays."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    return statistics.median(1000 * float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                         check=True).stdout) for _ in range(runs))


def measure(number: int, repeat: int) -> tuple[list[str], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        old = load_old_codec(Path(tmp))
        codec_rows, library_rows = [], []
        adapter, msgspec_decoder = pydantic_headers(), msgspec_headers()
        old_msgs, new_msgs = samples(old, old.FrameRef), samples(new, types.FrameRef)
        for label in new_msgs:
            old_msg, new_msg = old_msgs[label], new_msgs[label]
            old_parts, new_parts = as_received(old.encode(old_msg)), as_received(new.encode(new_msg))
            header = new_parts[0]
            assert adapter.validate_json(header) and msgspec_decoder.decode(header)
            t = per_call_us({
                "old decode": lambda: old.decode(old_parts),
                "new decode": lambda: new.decode(new_parts),
                "old encode": lambda: old.encode(old_msg),
                "new encode": lambda: new.encode(new_msg),
                "msgspec": lambda: msgspec_decoder.decode(header),
                "pydantic": lambda: adapter.validate_json(header),
            }, number, repeat)
            print(label, {k: str(v) for k, v in t.items()}, flush=True)
            codec_rows.append(f"| {label} | {len(old_parts[0])} → {len(header)} | {t['old decode']} | "
                              f"{t['new decode']} | {t['old decode'] / t['new decode']:.1f}× | "
                              f"{t['old encode']} | {t['new encode']} | {t['old encode'] / t['new encode']:.1f}× |")
            if not label.startswith("window, frame store"):
                library_rows.append(f"| {label.split(',')[0]} | {t['msgspec']} | {t['pydantic']} | "
                                    f"{t['pydantic'] / t['msgspec']:.1f}× |")
    return codec_rows, library_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200, help="calls per candidate in a round")
    parser.add_argument("--repeat", type=int, default=100, help="timed rounds; the median is reported")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    codec_rows, library_rows = measure(args.number, args.repeat)
    pattern = pattern_cost(args.number, args.repeat)
    imports = {"msgspec": import_ms("import msgspec.json"),
               "pydantic": import_ms("from pydantic import BaseModel, TypeAdapter")}
    before, after = line_counts()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = Path("/proc/loadavg").read_text().split()[0]
    command = " ".join(["python bench/wire.py", *sys.argv[1:]])
    body = f"""`{command}` on {datetime.date.today()}, {cpu}, {os.cpu_count()} cores; Python
{platform.python_version()}, msgspec {msgspec.__version__}, pydantic {pydantic.VERSION}; load average {load} (a shared box:
other jobs ran beside it). µs per call: the median of {args.repeat} rounds of {args.number} calls, each round timing
every candidate in turn, and in brackets the fastest round; speed-ups are of the medians.

Wire code (`streamer/transport/`: messages.py + wire.py + message_types.py at {OLD_COMMIT}, messages.py +
message_types.py now): **{before} lines before, {after} after**.

The codec: `decode(parts)` (header parsed and checked, arrays viewed in place, cross-field rules) and
`encode(msg)` (which runs the receiver's checks too), old hand-written codec against today's msgspec one:

| message | header bytes, old → new | old decode | msgspec decode | speed-up | old encode | msgspec encode | speed-up |
|---|---|---|---|---|---|---|---|
{chr(10).join(codec_rows)}

The library alone: today's window and result headers (the inline window's; the result's) parsed and
checked against the same two schemas, no arrays and no cross-field rules: msgspec Structs (a tagged union)
against pydantic v2 models (a TypeAdapter over a discriminated union, the same bounds, strict, extra
fields forbidden):

| header | msgspec | pydantic v2 | pydantic / msgspec |
|---|---|---|---|
{chr(10).join(library_rows)}

Where msgspec's time goes on the result header: its 12 strings (stream, worker, 5 labels, 5 timing names) each
pass the `PRINTABLE` pattern, which msgspec runs with Python's `re`: one 16-character name decodes in
{pattern['printable'].best:.2f} µs with the pattern and {pattern['plain'].best:.2f} µs without (fastest rounds:
{pattern['printable'].best - pattern['plain'].best:.2f} µs a string); pydantic runs its patterns in Rust.

Importing the library in a fresh interpreter (every stage process does): msgspec {imports['msgspec']:.0f} ms,
pydantic {imports['pydantic']:.0f} ms (the median of 7).
"""
    print(body)
    if not args.no_write:
        write_section("Wire format: msgspec against the old codec and pydantic", body)


if __name__ == "__main__":
    main()
