"""H.264 video files the overlay and the clip recorder write, playable while they grow."""

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


class VideoOut:
    """The annotated video: H.264 (plays in browsers and players alike), sized by its first frame
    (later frames are resized to it).

    MP4 and MOV are written as fragments flushed at every keyframe (one each 2 s), so a kill -9 or a
    power cut loses at most the last two seconds instead of the whole file, whose index a plain MP4
    only gets when it is closed.
    """

    def __init__(self, path, fps: float, preset: str = "veryfast") -> None:
        """``path``: a file name, or a binary file object (then fragmented MP4); ``preset``: x264's."""
        self.path, self.fps, self.preset = path, fps, preset
        self.container = None
        self.stream = None
        self.size: tuple[int, int] | None = None

    def _open(self, width: int, height: int) -> None:
        in_memory = not isinstance(self.path, (str, Path))
        fragmented = in_memory or Path(self.path).suffix.lower() in (".mp4", ".m4v", ".mov")
        options = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"} if fragmented else {}
        try:
            self.container = av.open(self.path, mode="w", options=options, **({"format": "mp4"} if in_memory else {}))
        except (OSError, av.FFmpegError) as err:
            raise OSError(f"cannot write video {self.path} ({err})") from None
        self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"preset": self.preset, "crf": "23", "g": str(max(1, round(2 * self.fps)))}
        self.stream.codec_context.thread_count = 1  # one core for the overlay; the workers need the rest
        self.size = (width, height)

    def write(self, image: np.ndarray) -> None:
        if self.container is None:
            self._open(image.shape[1] // 2 * 2, image.shape[0] // 2 * 2)  # yuv420p needs even sides
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():  # the frames still in the encoder
                self.container.mux(packet)
            self.container.close()

