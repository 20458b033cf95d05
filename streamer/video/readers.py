"""One opened stream each: ``grab()`` the next picture, or None when the stream is over (``why`` says why).

Files and RTSP cameras are decoded with PyAV and handed on as decoder frames, not yet
converted: capture converts only the frames a window or a viewer needs, in one libswscale
pass from YUV (:mod:`streamer.video.frames`). PyAV also gives RTSP per-open options and an
open/read timeout that covers a server that accepts but never answers. Webcams are read
with OpenCV, the synthetic demo with its generator.
"""

from __future__ import annotations

import os
import time
from typing import Protocol

import cv2
import numpy as np

from loguru import logger

from streamer.errors import SourceError
from streamer.video.frames import Picture
from streamer.video.specs import redact

DEFAULT_FPS = 30.0
# FFmpeg probes an RTSP stream for ~1 s before the first frame; a tiny probe is
# enough because the SDP already names the codec and size (first frame in ~0.1 s).
RTSP_OPTIONS = {"rtsp_transport": "tcp", "probesize": "32", "analyzeduration": "1000000"}
# Decoder threads per stream: frame threading adds a frame of delay per thread, and with many
# cameras on few cores the streams themselves keep every core busy; two keep one 1080p stream
# real-time on a slow core (bench/capture.py).
DECODER_THREADS = 2
# Hardware decoders tried by ``hwaccel = "auto"``, in this order, where the loaded FFmpeg has them.
HWACCEL_PREFERENCE = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va", "vulkan")


def hwaccel_choices() -> tuple[str, ...]:
    """What ``hwaccel`` may be: ``none``, ``auto`` or a device type FFmpeg knows."""
    from av.codec.hwaccel import HWDeviceType

    return ("none", "auto", *(d.name for d in HWDeviceType if d.name != "none"))


class Reader(Protocol):
    fps: float
    why: str  # why the last grab returned None

    def grab(self) -> Picture | None: ...
    def close(self) -> None: ...


def quiet_opencv() -> None:
    """Keep OpenCV's and FFmpeg's console chatter ("moov atom not found", "can't be used to capture
    by name") off the user's terminal: each failure reaches them as one line of ours instead.
    Setting ``OPENCV_FFMPEG_LOGLEVEL`` or ``OPENCV_LOG_LEVEL`` in the environment brings it back."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; FFmpeg reads it when a capture opens
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class CvReader:
    """A webcam (or anything else) through OpenCV's VideoCapture: BGR arrays."""

    def __init__(self, target: int | str, failure: str, api: int = cv2.CAP_ANY) -> None:
        self.why = ""
        quiet_opencv()
        self._cap = cv2.VideoCapture(target, api)
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(failure)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if 0 < fps < 1000 else DEFAULT_FPS
        self.declared_frames = int(max(0, self._cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def grab(self) -> np.ndarray | None:
        try:
            ok, bgr = self._cap.read()
        except cv2.error as exc:
            ok, bgr, self.why = False, None, f"decode error: {str(exc).splitlines()[0]}"
        if not ok or bgr is None:
            self.why = self.why or "no frame (end of the stream, or the device is gone)"
            return None
        return bgr

    def close(self) -> None:
        self._cap.release()


class AvReader:
    """A file or an RTSP stream through PyAV; ``grab`` returns decoder frames (``av.VideoFrame``).

    Use :meth:`file` or :meth:`rtsp`. A damaged packet is skipped; packets that come but decode
    to no frame for ``read_timeout_s`` end the stream (a camera that only sends garbage).
    """

    def __init__(self, container, label: str, read_timeout_s: float | None) -> None:
        import av

        self.why = ""
        self._exit_error, self._av_error = av.error.ExitError, av.error.FFmpegError
        self._container, self._label, self._read_timeout_s = container, label, read_timeout_s
        try:
            self._stream = container.streams.video[0]
        except IndexError:
            container.close()
            raise SourceError(f"{label} has no video track") from None
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = DECODER_THREADS
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_FPS
        self.declared_frames = int(self._stream.frames or 0)
        self._last_frame = time.monotonic()
        self._frames = self._decode()

    @classmethod
    def file(cls, path: str, hwaccel: str = "none") -> AvReader:
        failure = f"cannot decode video file {path}; is it a complete video FFmpeg can read?"
        try:
            container = open_decoding(path, f"video file {path}", hwaccel)
        except Exception:  # av raises OSError subclasses and its own FFmpegError
            raise SourceError(failure) from None
        try:
            reader = cls(container, f"video file {path}", None)
        except SourceError:
            raise SourceError(failure) from None
        if reader._stream.codec_context.width <= 0:
            reader.close()
            raise SourceError(failure)
        return reader

    @classmethod
    def rtsp(cls, url: str, open_timeout_s: float, read_timeout_s: float, hwaccel: str = "none") -> AvReader:
        label = f"RTSP stream {redact(url)}"
        try:
            # FFmpeg's interrupt first cuts a stalled read short (a partial packet comes
            # back) and only fails the second time: half the read timeout makes the
            # failure, or the frame watchdog in _decode, land within read_timeout_s.
            container = open_decoding(url, label, hwaccel, options=RTSP_OPTIONS,
                                      timeout=(open_timeout_s, read_timeout_s / 2))
        except Exception as exc:
            raise SourceError(f"cannot open {label}: {_why(exc, url)}; check the URL and the camera") from None
        try:
            return cls(container, label, read_timeout_s)
        except SourceError:
            raise SourceError(f"{label} has no video track; check the camera's path") from None

    def _decode(self):
        """Decoded frames; raises TimeoutError when packets come but no frame for the read timeout."""
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()
            except self._av_error:
                # A damaged packet, or one a stalled read cut short: skip it. A stream
                # that never decodes again is caught by the watchdog below.
                frames = []
            for frame in frames:
                self._last_frame = time.monotonic()
                yield frame
            if self._read_timeout_s and time.monotonic() - self._last_frame >= 0.95 * self._read_timeout_s:
                raise TimeoutError(f"no frame decoded for {self._read_timeout_s:g} s")

    def grab(self):
        try:
            return next(self._frames)
        except StopIteration:
            self.why = "stream ended (camera closed the connection)" if self._read_timeout_s else "end of file"
        except Exception as exc:
            # ExitError is FFmpeg giving up when the read timeout interrupted it.
            if isinstance(exc, (TimeoutError, self._exit_error)):
                self.why = f"no data for {self._read_timeout_s:g} s (stalled)"
            else:
                self.why = _why(exc, "")
        return None

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # closing a broken connection may fail; nothing is left to release
            pass


def open_decoding(target: str, label: str, hwaccel: str, **options):
    """``av.open(target)`` with its video decoded on a hardware device where ``hwaccel`` asks for one
    (``"auto"``: the first of HWACCEL_PREFERENCE that works here) and it opens and takes the codec;
    otherwise in software, with one log line when a device was named. Frames come back in system
    memory (NV12 and the like), which the capture converts as it does software frames."""
    import av

    tried = []
    if hwaccel != "none":
        from av.codec.hwaccel import HWAccel, hwdevices_available

        built = set(hwdevices_available())
        devices = [d for d in HWACCEL_PREFERENCE if d in built] if hwaccel == "auto" else [hwaccel]
        for device in devices:
            if device not in built:
                tried.append(f"{device}: not in this FFmpeg build")
                continue
            try:
                container = av.open(target, hwaccel=HWAccel(device, allow_software_fallback=True), **options)
            except Exception as exc:  # no such device here, no driver, no permission
                tried.append(f"{device}: {_why(exc, target)}")
                continue
            videos = container.streams.video
            if videos and videos[0].codec_context.is_hwaccel:
                logger.info(f"{label}: decoding on {device}")
                return container
            container.close()
            tried.append(f"{device}: no hardware decoder for this stream's codec")
        if hwaccel != "auto" or tried:
            (logger.warning if hwaccel != "auto" else logger.info)(
                f"{label}: hardware decoding ({hwaccel}) unavailable ({'; '.join(tried) or 'no device type built in'}); "
                "decoding in software")
    return av.open(target, **options)


def _why(exc: BaseException, url: str) -> str:
    """A one-line reason from an exception, with the URL (and its password) left out."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.replace(url, "").strip(" :'") if url else text.splitlines()[0]


class SyntheticReader:
    """The demo generator (``streamer.synthetic``), imported only when used."""

    def __init__(self, seed: int) -> None:
        from streamer.synthetic.drawing import SyntheticStream

        self._stream = SyntheticStream(seed=seed)
        self.fps = float(self._stream.fps)
        self.why = ""

    def grab(self) -> np.ndarray | None:
        bgr, _label = self._stream.next_frame()
        return bgr

    def close(self) -> None:
        pass
