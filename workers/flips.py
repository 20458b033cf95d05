"""Flips and the labels they swap, read from the labels' own words (left/right, up/down,
clockwise/anticlockwise); torch-free, so configs and checkpoints can check flip names cheaply.
How a worker averages over flipped views is in :mod:`workers.views`."""

from __future__ import annotations

import re

from streamer.errors import ConfigError

# Words a flip swaps, and the input axis it reverses in a (B, 3, T, H, W) clip.
FLIPS: dict[str, tuple[int, dict[str, str]]] = {
    "horizontal": (-1, {"left": "right", "clockwise": "anticlockwise"}),
    "vertical": (-2, {"up": "down", "clockwise": "anticlockwise"}),
}
FLIP_VIEWS = tuple(FLIPS)  # the flips a config or a checkpoint may name


def check_flip_views(flips, where: str) -> tuple[str, ...]:
    """A list of flip names as a tuple, or a ConfigError naming what is wrong with it."""
    if not isinstance(flips, (list, tuple)) or not all(isinstance(f, str) for f in flips):
        raise ConfigError(f"{where}: 'flip_views' must be a list such as [\"horizontal\"], got {flips!r}")
    for flip in flips:
        if flip not in FLIP_VIEWS:
            raise ConfigError(f"{where}: 'flip_views' entry {flip!r} is not one of {', '.join(FLIP_VIEWS)}")
    if len(set(flips)) != len(flips):
        raise ConfigError(f"{where}: 'flip_views' names a flip twice: {list(flips)}")
    return tuple(flips)


_WORD = re.compile(r"[A-Za-z]+")


def mirrored(label: str, flip: str) -> str:
    """The label of ``label``'s mirror image: each swapped word replaced, case and separators kept."""
    pairs = FLIPS[flip][1]
    swap = {**pairs, **{b: a for a, b in pairs.items()}}

    def replace(match: re.Match) -> str:
        word = match.group(0)
        other = swap.get(word.lower())
        if other is None:
            return word
        return other.capitalize() if word[0].isupper() else other

    return _WORD.sub(replace, label)


def mirror_map(labels: list[str], flip: str) -> list[int]:
    """``map[c]``: the class a ``flip`` turns class ``c`` into (``c`` itself when its mirror is not a label)."""
    index = {label: i for i, label in enumerate(labels)}
    return [index.get(mirrored(label, flip), c) for c, label in enumerate(labels)]
