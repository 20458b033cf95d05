"""Source specs, checked without opening anything: what kind of source a spec names, the short name its
lines carry, and the spec with its password removed for logs. No OpenCV or PyAV here, so the config
loader can check every source before a process starts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from streamer.errors import SourceError


def redact(spec: str) -> str:
    """The spec with any ``user:password@`` removed, safe for logs and messages."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", spec)


def parse_source(spec: str) -> str:
    """Check a source spec and return its kind: "webcam", "rtsp", "file" or "synthetic".

    Raises:
        SourceError: naming the spec and what to use instead.
    """
    text = spec.strip()
    if not text:
        raise SourceError("empty source; use a webcam index (0), /dev/videoN, rtsp://…, a video file or synthetic:")
    if text == "synthetic" or text.startswith("synthetic:"):
        seed = text.partition(":")[2]
        if seed and not re.fullmatch(r"\d+", seed):
            raise SourceError(f"source {text!r}: the seed must be a non-negative integer, e.g. synthetic:7")
        return "synthetic"
    if text.isdigit():
        return "webcam"
    if text.startswith("/dev/video"):
        if not os.path.exists(text):
            raise SourceError(f"no webcam at {text}; list the cameras with `ls /dev/video*`")
        return "webcam"
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text)
    if scheme:
        if scheme.group(1).lower() not in ("rtsp", "rtsps"):
            raise SourceError(
                f"source {redact(text)!r}: {scheme.group(1)}:// is not supported; "
                "use rtsp://, a video file, a webcam index or synthetic:"
            )
        if not urlsplit(text).hostname:
            raise SourceError(f"source {redact(text)!r} has no host; use rtsp://HOST[:PORT]/PATH")
        return "rtsp"
    path = Path(text)
    if not path.exists():
        raise SourceError(f"video file {text} does not exist; check the path")
    if not path.is_file():
        raise SourceError(f"source {text} is not a regular file; give a video file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"video file {text} is not readable; check its permissions")
    return "file"


def source_name(spec: str, kind: str) -> str:
    """The name a source's lines and logs use: host and path, file name, webcam, or the synthetic spec."""
    text = spec.strip()
    if kind == "rtsp":
        url = urlsplit(text)
        return f"{url.hostname}{':' + str(url.port) if url.port else ''}{url.path}"
    if kind == "file":
        return Path(text).name
    if kind == "webcam":
        return f"webcam{text}" if text.isdigit() else Path(text).name
    return text if ":" in text else "synthetic"


def synthetic_seed(spec: str) -> int:
    """The seed of a ``synthetic:SEED`` spec (0 for ``synthetic`` or ``synthetic:``)."""
    seed = spec.strip().partition(":")[2]
    return int(seed) if seed else 0
