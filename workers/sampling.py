"""How a window samples its source: ``num_frames`` frames every ``frame_interval`` (K400: 8 every 32).

Kept free of torch and OpenCV: capture, training data and checkpoints all need it.
"""

from streamer.errors import ConfigError


def window_span(num_frames: int, frame_interval: int) -> int:
    """Source frames a window covers, first to last: ``(num_frames - 1) * frame_interval + 1``."""
    for name, value in (("num_frames", num_frames), ("frame_interval", frame_interval)):
        if type(value) is not int or value < 1:
            raise ConfigError(f"{name} = {value!r}: must be a positive integer")
    return (num_frames - 1) * frame_interval + 1
