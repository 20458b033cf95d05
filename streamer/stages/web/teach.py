"""Teaching from the review page (issue 24): ``/api/teach`` turns spans of streams the store kept (or stored
actions, or clip files sent as a form) into a taught label, and forgets one or goes back to an earlier adapter.

The store keeps recent windows' embeddings (``[teach] keep_h``); a teaching reads the chosen spans' windows as
examples and ordinary windows of the same cameras, plus windows of actions marked wrong, as negatives, trains the
label beside the checkpoint's head and the labels already taught (:func:`workers.training.teaching.teach_label`,
a second or less), and adds the result to the store's adapters. The dispatcher sees the new version within half
a second and hands it to each worker before its next batch: nothing restarts, no window is lost.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from loguru import logger

from streamer.config.sinks import StoreConfig
from streamer.errors import CheckpointError, ConfigError, SourceError
from streamer.stages.web.uploads import ClipForm, UploadError, read_clip_form
from streamer.store import taught
from streamer.store.schema import connect
from workers.adapter import Adapter, checkpoint_digest

MAX_LABEL = 64
MAX_EXAMPLES = 200
NEGATIVES = 600  # ordinary windows of the examples' cameras, spread over the time kept
MIN_WINDOWS = 2  # examples' windows a teaching needs at least
MIN_NEGATIVES = 10  # ordinary windows too: without them a label learns nothing of what it is not, and takes all


class TeachError(ValueError):
    """A request that cannot teach: its one line says why, with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Teacher:
    """The ``/api/teach`` routes over one store and checkpoint."""

    def __init__(self, store: StoreConfig | None, checkpoint: str, labels: tuple[str, ...]) -> None:
        self.store, self.checkpoint, self.labels = store, checkpoint, labels
        self._head: tuple | None = None  # workers.model.CheckpointHead, read at the first teaching
        self._model = None  # the checkpoint itself, loaded at the first teaching from clip files
        self._lock = threading.Lock()  # one teaching at a time
        self._warming = threading.Event()
        self._head_lock = threading.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/teach", self.state), web.get("/api/teach/span", self.span),
                web.post("/api/teach", self.teach), web.post("/api/teach/forget", self.forget),
                web.post("/api/teach/revert", self.revert)]

    async def state(self, request: web.Request) -> web.Response:
        """What is taught; the review page asks on opening, which also readies the first teaching (torch and the
        checkpoint's head are read in the background then, not at its Teach)."""
        if self.store is not None and self._head is None and not self._warming.is_set():
            self._warming.set()
            threading.Thread(target=self._ready, name="teacher-warm-up", daemon=True).start()
        return await self._answer(self._state)

    def _ready(self) -> None:
        try:
            self._checkpoint_head()
            import workers.training.teaching  # noqa: F401  (torch, at its first import)
        except (CheckpointError, OSError) as err:
            logger.warning(f"web: cannot read the checkpoint's head to teach beside ({err})")

    async def span(self, request: web.Request) -> web.Response:
        """``?stream=&from=&to=``: the windows kept there, of the whole frame and of each tracked actor, so that
        a span dragged on a tracked stream's row can say whose action it shows."""
        query = request.query
        try:
            span = _span({"stream": query.get("stream"), "from": float(query.get("from", "nan")),
                          "to": float(query.get("to", "nan"))})
        except (TeachError, ValueError):
            return web.json_response({"error": "give ?stream=NAME&from=SECONDS&to=SECONDS (Unix seconds, to after "
                                      "from)"}, status=400)
        return await self._answer(lambda conn: _kept(conn, span))

    async def teach(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            body = await request.read()
            return await self._answer(lambda conn: self._teach(conn, _json(body)))
        with tempfile.TemporaryDirectory(prefix="teach-clips-") as folder:
            try:
                form = await read_clip_form(request, Path(folder))
            except UploadError as err:
                return web.json_response({"error": str(err)}, status=err.status)
            return await self._answer(lambda conn: self._teach_clips(conn, form))

    async def forget(self, request: web.Request) -> web.Response:
        body = await request.read()
        return await self._answer(lambda conn: self._forget(conn, _json(body)))

    async def revert(self, request: web.Request) -> web.Response:
        body = await request.read()
        return await self._answer(lambda conn: self._revert(conn, _json(body)))

    async def _answer(self, work) -> web.Response:
        if self.store is None:
            return web.json_response({"error": "teaching needs the action store; set [store] path in the config "
                                      "or run with --store FILE.db"}, status=404)
        try:
            out = await asyncio.get_running_loop().run_in_executor(None, self._with_store, work)
        except TeachError as err:
            return web.json_response({"error": str(err)}, status=err.status)
        except (ConfigError, CheckpointError) as err:
            return web.json_response({"error": str(err)}, status=503)
        except sqlite3.OperationalError as err:
            return web.json_response({"error": f"action store busy or unreadable ({err}); try again"}, status=503)
        return web.json_response(out)

    def _with_store(self, work):
        try:
            conn = connect(self.store.path, create=True)
        except FileNotFoundError:
            raise TeachError("the action store is not made yet; wait for the first actions", 503) from None
        with self._lock:
            try:
                return work(conn)
            finally:
                conn.close()

    # ------------------------------------------------------------------ in a thread, with the store open

    def _state(self, conn: sqlite3.Connection) -> dict[str, Any]:
        now = taught.latest(conn)
        kept = conn.execute("SELECT count(*), min(frame_ts), max(frame_ts) FROM windows").fetchone()
        return {"labels": list(now.labels) if now else [], "checks": now.adapter.checks if now and now.adapter else {},
                "version": now.version if now else 0, "versions": [v.record() for v in taught.versions(conn)],
                "keep_h": self.store.keep_windows_h, "windows": {"count": kept[0], "from": kept[1], "to": kept[2]}}

    def _teach(self, conn: sqlite3.Connection, data: dict) -> dict[str, Any]:
        started = time.perf_counter()
        label, spans = self._request(conn, data)
        spans = [_whose(conn, s) for s in spans]
        head, width = self._checkpoint_head()
        examples = [w for w in (taught.windows_of(conn, s["stream"], s["from"], s["to"], s.get("track"), width)
                                for s in spans) if len(w)]
        if sum(len(w) for w in examples) < MIN_WINDOWS:
            raise TeachError(f"the spans hold {sum(len(w) for w in examples)} kept window(s) of {label!r}; choose "
                             f"longer spans (a window is kept about every hop; [teach] keep_h says for how long)", 422)
        away = [(s["stream"], s["from"], s["to"]) for s in spans]
        return self._learn(conn, label, examples, {s["stream"] for s in spans}, away, started, "example(s)")

    def _teach_clips(self, conn: sqlite3.Connection, form: ClipForm) -> dict[str, Any]:
        """A label from clip files: the checkpoint (loaded here once) reads each as ``workers.teach`` does; the
        negatives are ordinary windows of the cameras the form names, or of every camera kept."""
        started = time.perf_counter()
        label = self._label(form.label)
        if not form.clips:
            raise TeachError('send at least one clip of the action: the form field "clip", a video file')
        examples = []
        for name, path in form.clips:
            try:
                features = _embed_clip(self._checkpoint_model(), path)
            except SourceError as err:
                reason = str(err).removeprefix(f"{path}: ").split(";")[0]
                raise TeachError(f"clip {name!r}: {reason}; send a video of the action a second long or more (MP4, "
                                 "AVI, MKV: what OpenCV decodes)", 422) from None
            examples.append(features)
        streams = set(form.streams) or set(taught.streams(conn))
        return self._learn(conn, label, examples, streams, [], started, "clip(s)")

    def _learn(self, conn: sqlite3.Connection, label: str, examples: list[np.ndarray], streams: set[str],
               away: list[tuple[str, float, float]], started: float, kind: str) -> dict[str, Any]:
        """Train ``label`` from ``examples`` (each ``(windows, views, width)``) against the negatives, and hand
        the new adapter on (a version in the store)."""
        head, width = self._checkpoint_head()
        views = examples[0].shape[1]
        examples = [w for w in examples if w.shape[1] == views]
        negatives = self._negatives(conn, label, streams, away, width, views)
        if len(negatives) < MIN_NEGATIVES:
            raise TeachError(f"{len(negatives)} ordinary window(s) of {', '.join(sorted(streams)) or 'any camera'} are "
                             f"kept to learn what is not {label!r}; let the cameras run a minute first", 422)
        current = taught.latest(conn)
        adapter = _teach_label(label, examples, negatives, head, current.adapter if current else None,
                               checkpoint_digest(self.checkpoint))
        version = self._put(conn, adapter, f"taught {label} from {len(examples)} {kind}, "
                                           f"{sum(len(w) for w in examples)} windows")
        seconds = time.perf_counter() - started
        logger.info(f"web: taught {adapter.describe()} in {seconds:.1f} s (adapter version {version})")
        return {"version": version, "labels": list(adapter.labels), "checks": adapter.checks,
                "examples": int(sum(len(w) for w in examples)), "negatives": int(len(negatives)),
                "seconds": round(seconds, 3)}

    def _forget(self, conn: sqlite3.Connection, data: dict) -> dict[str, Any]:
        from workers.training.teaching import without

        label = data.get("label") if isinstance(data, dict) else None
        now = taught.latest(conn)
        if not isinstance(label, str) or now is None or label not in now.labels:
            raise TeachError(f'"label" must be a taught label ({", ".join(now.labels) if now else "none yet"})', 404)
        adapter = without(now.adapter, label)
        version = self._put(conn, adapter, f"forgot {label}")
        return {"version": version, "labels": list(adapter.labels) if adapter else []}

    def _revert(self, conn: sqlite3.Connection, data: dict) -> dict[str, Any]:
        number = data.get("version") if isinstance(data, dict) else None
        earlier = taught.get_version(conn, number) if isinstance(number, int) and not isinstance(number, bool) else None
        if earlier is None:
            raise TeachError('"version" must be the number of an earlier adapter (GET /api/teach lists them)', 404)
        version = self._put(conn, earlier.adapter, f"back to version {number}")
        return {"version": version, "labels": list(earlier.labels)}

    def _put(self, conn: sqlite3.Connection, adapter: Adapter | None, note: str) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = taught.add_version(conn, adapter, note)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version

    def _request(self, conn: sqlite3.Connection, data: Any) -> tuple[str, list[dict]]:
        """``{"label": ..., "spans": [{"stream", "from", "to", "track"?}], "actions": [id, ...]}`` → the label and
        every example as a span; TeachError says what is wrong."""
        if not isinstance(data, dict) or set(data) - {"label", "spans", "actions"}:
            raise TeachError('the body must be {"label": "...", "spans": [{"stream": "...", "from": SECONDS, '
                             '"to": SECONDS}], "actions": ["action id", ...]}, or a form with clip files')
        label = self._label(data.get("label"))
        spans = [_span(s) for s in _list(data, "spans")]
        for action_id in _list(data, "actions"):
            row = conn.execute("SELECT stream, track, start_ts, end_ts FROM actions WHERE id = ?",
                               (str(action_id),)).fetchone()
            if row is None:
                raise TeachError(f"no action {str(action_id)[:80]!r} in the history", 404)
            spans.append({"stream": row[0], "track": row[1], "from": row[2], "to": row[3] or row[2]})
        if not spans:
            raise TeachError('give at least one example: "spans" of a stream, or "actions" from the history')
        return label, spans

    def _label(self, label: Any) -> str:
        if not isinstance(label, str) or not 0 < len(label.strip()) <= MAX_LABEL or not label.isprintable():
            raise TeachError(f'"label" must be the new action\'s name: 1 to {MAX_LABEL} printable characters')
        label = label.strip()
        if label in self.labels:
            raise TeachError(f"{label!r} is a label of the checkpoint already; name the new action otherwise", 409)
        return label

    def _negatives(self, conn: sqlite3.Connection, label: str, streams: set[str],
                   away: list[tuple[str, float, float]], width: int, views: int) -> np.ndarray:
        """Ordinary windows of the cameras (none within the ``away`` spans, the examples), and the windows of
        actions an operator marked wrong (unless the right label they gave is this one)."""
        wrong = conn.execute("SELECT a.stream, a.track, a.start_ts, coalesce(a.end_ts, a.start_ts) FROM actions a "
                             "JOIN feedback f ON f.action_id = a.id WHERE f.verdict = 'wrong' AND "
                             "coalesce(f.label, '') != ? ORDER BY a.start_ts DESC LIMIT 200", (label,)).fetchall()
        parts = [taught.sample_windows(conn, streams, NEGATIVES, width, away)]
        parts += [taught.windows_of(conn, stream, start, end, track, width) for stream, track, start, end in wrong]
        parts = [p for p in parts if len(p) and p.shape[1] == views]
        return np.concatenate(parts) if parts else np.zeros((0, views, width), np.float32)

    def _checkpoint_head(self) -> tuple[Any, int]:
        """(workers.model.CheckpointHead, its width), read once."""
        with self._head_lock:
            if self._head is None:
                from workers.model import checkpoint_head

                self._head = checkpoint_head(self.checkpoint)
                checkpoint_digest(self.checkpoint)  # hashed once, now rather than at the first Teach
        return self._head, self._head.weight.shape[1]

    def _checkpoint_model(self):
        """The checkpoint itself (fp32, on the CPU), to read clip files as the workers would; loaded once."""
        with self._head_lock:
            if self._model is None:
                from workers.model import load_model

                self._model = load_model(self.checkpoint)
        return self._model


def _embed_clip(model, path: Path) -> np.ndarray:
    """A clip's windows as the store keeps them: ``(windows, views, width)``."""
    from workers.training.teaching import by_window, embed_clip

    return by_window(embed_clip(model, path)[0], 1 + len(model.preprocess.flip_views))


def _kept(conn: sqlite3.Connection, span: dict) -> dict[str, Any]:
    counts = taught.windows_by_actor(conn, span["stream"], span["from"], span["to"])
    return {"stream": span["stream"], "whole": counts.get(None, 0),
            "actors": [{"track": track, "windows": n} for track, n in counts.items() if track is not None]}


def _whose(conn: sqlite3.Connection, span: dict) -> dict:
    """A span that names no actor, on a tracked stream: its one actor's windows, or a TeachError naming them."""
    if span.get("track") is not None:
        return span
    counts = taught.windows_by_actor(conn, span["stream"], span["from"], span["to"])
    actors = {track: n for track, n in counts.items() if track is not None}
    if counts.get(None) or not actors:
        return span
    if len(actors) == 1:
        return {**span, "track": next(iter(actors))}
    listed = ", ".join(f"#{track} ({n} windows)" for track, n in actors.items())
    raise TeachError(f"the span of {span['stream']!r} holds windows of {len(actors)} actors, {listed}, not of the "
                     f'whole frame; say whose action it shows: "track": N in the span', 422)


def _teach_label(*args):
    from workers.training.teaching import teach_label  # torch: imported at the first teaching, not at start

    return teach_label(*args)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise TeachError("the body must be JSON") from None


def _list(data: dict, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_EXAMPLES:
        raise TeachError(f'"{key}" must be a list of at most {MAX_EXAMPLES}')
    return value


def _span(span: Any) -> dict:
    if not isinstance(span, dict) or not isinstance(span.get("stream"), str) or set(span) - {"stream", "from", "to",
                                                                                               "track"}:
        raise TeachError('each span is {"stream": "...", "from": SECONDS, "to": SECONDS} (and "track" for an actor)')
    start, end = span.get("from"), span.get("to")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)) \
            or end <= start:
        raise TeachError('a span\'s "from" and "to" are Unix seconds, "to" after "from"')
    track = span.get("track")
    if track is not None and (not isinstance(track, int) or isinstance(track, bool)):
        raise TeachError('a span\'s "track" is a whole number')
    return {"stream": span["stream"], "from": float(start), "to": float(end), "track": track}
