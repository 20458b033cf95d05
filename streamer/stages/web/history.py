"""The web stage's side of the action history (contract 8): ``/api/actions``, one action, its feedback.

Each request opens the store file for itself in a worker thread (SQLite in WAL mode lets it read while the
dispatcher writes), so a slow disk never stalls the event loop that serves the live view.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from typing import Any, Callable

from aiohttp import web

from streamer.config.sinks import StoreConfig
from streamer.errors import ConfigError
from streamer.stages.dispatcher.tracker import EVENT_ID
from streamer.store import queries
from streamer.store.schema import connect

MAX_TEXT = 200  # a stream or label filter longer than this matches nothing anyway
MAX_LABEL = 64


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class History:
    """The routes over one store (None: the pipeline keeps no history, and they say how to turn it on)."""

    def __init__(self, store: StoreConfig | None) -> None:
        self.store = store

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/actions", self.list), web.get("/api/actions/{action_id}", self.one),
                web.post("/api/actions/{action_id}/feedback", self.feedback)]

    async def _run(self, work: Callable[[sqlite3.Connection], Any], empty: Any) -> Any:
        """``work(connection)`` in a thread; ``empty`` while the dispatcher has not made the file yet."""
        def call():
            try:
                conn = connect(self.store.path)
            except FileNotFoundError:
                return empty
            try:
                return work(conn)
            finally:
                conn.close()
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def _answer(self, work, empty) -> Any:
        if self.store is None:
            raise _HistoryOff()
        try:
            return await self._run(work, empty)
        except ConfigError as err:
            raise _StoreFault(str(err)) from None
        except sqlite3.OperationalError as err:  # locked past the busy timeout, a disk error
            raise _StoreFault(f"action store busy or unreadable ({err}); try again") from None

    async def list(self, request: web.Request) -> web.Response:
        try:
            query = _action_query(request.query)
        except ValueError as err:
            return _json_error(400, str(err))
        try:
            actions, after = await self._answer(lambda conn: queries.list_actions(conn, query), ([], None))
        except _Refusal as refusal:
            return refusal.response()
        return web.json_response({"actions": actions, "next": after})

    async def one(self, request: web.Request) -> web.Response:
        action_id = request.match_info["action_id"]
        try:
            action = None if not EVENT_ID.fullmatch(action_id) else await self._answer(
                lambda conn: queries.get_action(conn, action_id), None)
        except _Refusal as refusal:
            return refusal.response()
        if action is None:
            return _json_error(404, f"no action {action_id[:80]!r} in the history; GET /api/actions lists them")
        return web.json_response(action)

    async def feedback(self, request: web.Request) -> web.Response:
        action_id = request.match_info["action_id"]
        try:
            verdict, label = _verdict(await request.read())
        except ValueError as err:
            return _json_error(400, str(err))
        try:
            action = None if not EVENT_ID.fullmatch(action_id) else await self._answer(
                lambda conn: queries.set_feedback(conn, action_id, verdict, label), None)
        except _Refusal as refusal:
            return refusal.response()
        if action is None:
            return _json_error(404, f"no action {action_id[:80]!r} in the history; GET /api/actions lists them")
        return web.json_response(action)

    async def _or(self, work: Callable[[sqlite3.Connection], Any], fallback: Any) -> Any:
        """``work(connection)``, or ``fallback`` without a store or when it cannot be read: for what the pages
        add from the history, which they do without."""
        if self.store is None:
            return fallback
        try:
            return await self._run(work, fallback)
        except (ConfigError, sqlite3.Error):
            return fallback

    async def earlier(self, until: float, limit: int = 50) -> list[dict[str, Any]]:
        """The newest actions that started before ``until`` (this web stage's start): what the live page shows
        below the events it saw itself, so that a restart does not empty it. [] without a store."""
        query = queries.ActionQuery(until=until, limit=limit)
        return (await self._or(lambda conn: queries.list_actions(conn, query), ([], None)))[0]

    async def clip_of(self, action_id: str) -> str | None:
        """The clip the store names for an action (the clips of earlier runs), None if none."""
        if not EVENT_ID.fullmatch(action_id):
            return None
        action = await self._or(lambda conn: queries.get_action(conn, action_id), None)
        return None if action is None else action.get("clip")


class _Refusal(Exception):
    status, message = 500, ""

    def response(self) -> web.Response:
        return _json_error(self.status, self.message or str(self))


class _HistoryOff(_Refusal):
    status = 404
    message = "this pipeline keeps no action history; set [store] path in the config or run with --store FILE.db"


class _StoreFault(_Refusal):
    status = 503


def _action_query(params) -> queries.ActionQuery:
    """The filters of ``GET /api/actions``; ValueError says which one is wrong."""
    unknown = set(params) - {"stream", "label", "since", "until", "limit", "before", "unreviewed"}
    if unknown:
        raise ValueError(f"unknown filter {sorted(unknown)[0][:40]!r}; the filters are stream, label, since, until, "
                         "limit, before and unreviewed")
    for key in ("stream", "label"):
        if len(params.get(key, "")) > MAX_TEXT:
            raise ValueError(f"?{key}= is longer than {MAX_TEXT} characters")
    before = params.get("before")
    if before is not None and not EVENT_ID.fullmatch(before):
        raise ValueError("?before= takes the 'next' of the page before (an action id)")
    return queries.ActionQuery(stream=params.get("stream"), label=params.get("label"),
                               since=_seconds(params, "since"), until=_seconds(params, "until"),
                               unreviewed=params.get("unreviewed", "0") in ("1", "true", "yes"),
                               before=before, limit=_limit(params.get("limit")))


def _seconds(params, key: str) -> float | None:
    raw = params.get(key)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"?{key}= takes Unix seconds, got {raw[:40]!r}")
    return value


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= queries.MAX_PAGE:
        raise ValueError(f"?limit= takes a whole number from 1 to {queries.MAX_PAGE}")
    return int(raw)


def _verdict(body: bytes) -> tuple[str, str | None]:
    """``{"verdict": "right"|"wrong", "label": "..."}`` → (verdict, label or None); ValueError says what is wrong."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ValueError('the body must be JSON: {"verdict": "right" or "wrong", "label": "the right label"}') from None
    if not isinstance(data, dict) or data.get("verdict") not in queries.VERDICTS:
        raise ValueError('"verdict" must be "right" or "wrong"')
    if set(data) - {"verdict", "label"}:
        raise ValueError('feedback takes only "verdict" and "label"')
    label = data.get("label")
    if label is not None and (not isinstance(label, str) or not 0 < len(label.strip()) <= MAX_LABEL
                              or not label.isprintable()):
        raise ValueError(f'"label" must be the right label: 1 to {MAX_LABEL} printable characters')
    return data["verdict"], label.strip() if label else None
