"""Clip files sent to ``POST /api/teach`` as ``multipart/form-data``: read part by part into a folder the
request owns, so that no clip is held in memory whole and a request past the limits stops at the first byte too
many (aiohttp's ``client_max_size`` covers only bodies read at once)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

MAX_CLIPS = 50
MAX_BYTES = 256 * 2**20  # all clips of one request together
MAX_FIELD = 4096  # bytes of a text field
CHUNK = 2**16
FIELDS = '"label" (the new action\'s name), "clip" (a video file, once for each) and optionally "stream" (a camera ' \
         'whose ordinary windows the label must not take; by default every camera kept)'


class UploadError(ValueError):
    """A form that cannot be read: its one line says why, with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ClipForm:
    """What a teaching form sent: the label as typed, the clips as ``(name the sender gave, path here)``, and the
    cameras named for negatives."""

    label: str | None
    clips: tuple[tuple[str, Path], ...]
    streams: tuple[str, ...]


async def read_clip_form(request: web.Request, folder: Path) -> ClipForm:
    """The form's fields, each clip written to ``folder``; UploadError for anything else."""
    label, clips, streams, total = None, [], [], 0
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "clip":
                if len(clips) == MAX_CLIPS:
                    raise UploadError(f"at most {MAX_CLIPS} clips a request; teach from the rest in another", 413)
                name = part.filename or f"clip {len(clips) + 1}"
                path = folder / f"{len(clips)}{_suffix(name)}"
                with path.open("wb") as out:
                    while chunk := await part.read_chunk(CHUNK):
                        total += len(chunk)
                        if total > MAX_BYTES:
                            raise UploadError(f"the clips pass {MAX_BYTES // 2**20} MiB; send shorter ones (a few "
                                              "seconds each is what teaching reads) or fewer a request", 413)
                        out.write(chunk)
                clips.append((name[:200], path))
            elif part.name in ("label", "stream"):
                text = await _text(part)
                label, streams = (text, streams) if part.name == "label" else (label, [*streams, text])
            else:
                raise UploadError(f"unknown field {str(part.name)[:40]!r}; the form takes {FIELDS}")
    except (ValueError, AssertionError, KeyError) as err:  # aiohttp's words for a body that is not such a form
        if isinstance(err, UploadError):
            raise
        raise UploadError(f"the body is not a readable multipart/form-data form; it takes {FIELDS}") from None
    return ClipForm(label, tuple(clips), tuple(streams))


async def _text(part) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        data += chunk
        if len(data) > MAX_FIELD:
            raise UploadError(f"the field {part.name!r} is longer than {MAX_FIELD} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"the field {part.name!r} is not UTF-8 text") from None


def _suffix(name: str) -> str:
    """The sent file's extension when it is a plain one (it helps the decoder guess), else none."""
    suffix = Path(name).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ""
