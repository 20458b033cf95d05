"""Taught labels on the move: an adapter (:mod:`workers.adapter`) as the message that hands it to a worker, and
the labels each adapter key stands for, so the dispatcher reads every result against the classes it was
scored with, during a swap too.
"""

from __future__ import annotations

import collections

import numpy as np

from streamer.transport.messages import AdapterUpdate
from workers.adapter import Adapter

KNOWN_KEYS = 16  # adapters whose labels the dispatcher still reads results of (workers swap within a batch)


def update_message(adapter: Adapter | None) -> AdapterUpdate:
    """The message that makes a worker run ``adapter`` (None: the checkpoint's labels alone)."""
    if adapter is None or not adapter.labels:
        return AdapterUpdate(key="", labels=(), checkpoint="", weights=None, width=1)
    weights = np.concatenate([adapter.weight.ravel(), adapter.bias]).astype(np.float32)
    return AdapterUpdate(key=adapter.key, labels=adapter.labels, checkpoint=adapter.checkpoint, weights=weights,
                         width=adapter.weight.shape[1], neighbours=adapter.neighbours,
                         neighbour_counts=adapter.neighbour_counts)


def from_message(msg: AdapterUpdate) -> Adapter | None:
    """The adapter a worker was handed (None: back to the checkpoint's own labels)."""
    if msg.weights is None:
        return None
    values = np.array(msg.weights, np.float32)  # a copy: the message's is read-only
    taught = len(msg.labels) * msg.width  # every label's weight row, then the biases (AdapterUpdate's layout)
    neighbours = None if msg.neighbours is None else np.array(msg.neighbours)  # a copy, as above
    return Adapter(msg.labels, values[:taught].reshape(len(msg.labels), msg.width), values[taught:], msg.checkpoint,
                   {}, neighbours, msg.neighbour_counts)


class LabelSets:
    """The checkpoint's labels, plus those of each recent adapter by key: what a result's classes are."""

    def __init__(self, base: tuple[str, ...]) -> None:
        self.base = tuple(base)
        self._by_key: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict({"": self.base})

    def add(self, adapter: Adapter | None) -> tuple[str, ...]:
        """Remember ``adapter``'s labels; returns the full label list it makes."""
        key = adapter.key if adapter is not None and adapter.labels else ""
        labels = self.base + (adapter.labels if key else ())
        self._by_key[key] = labels
        self._by_key.move_to_end(key)
        while len(self._by_key) > KNOWN_KEYS:
            self._by_key.popitem(last=False)
        return labels

    def of(self, key: str) -> tuple[str, ...] | None:
        return self._by_key.get(key)


def relabel(probs: np.ndarray, labels: tuple[str, ...], into: tuple[str, ...]) -> np.ndarray:
    """``probs`` over ``labels`` laid out over ``into`` by name (a label ``into`` has that ``labels`` lacks: 0)."""
    if labels == into or len(probs) != len(labels):  # (a count that does not match is the tracker's to refuse)
        return probs
    where = {label: i for i, label in enumerate(labels)}
    out = np.zeros(len(into), np.float32)
    for j, label in enumerate(into):
        if (i := where.get(label)) is not None:
            out[j] = probs[i]
    return out


class Handout:
    """The dispatcher's side: the adapter the workers should run, and whom it still has to be handed.

    A worker says in each request which adapter it runs; one that runs another gets the current one before its
    next batch, once (a worker that refuses it, say for another checkpoint, is not sent it again and again).
    """

    def __init__(self, base: tuple[str, ...]) -> None:
        self.sets = LabelSets(base)
        self.current: Adapter | None = None
        self.labels = self.sets.base
        self._handed: dict[bytes, str] = {}  # worker identity → the key last handed to it

    @property
    def key(self) -> str:
        return self.current.key if self.current is not None else ""

    def use(self, adapter: Adapter | None) -> bool:
        """Make ``adapter`` the current one; True if that changes the labels' layout or weights."""
        adapter = adapter if adapter is not None and adapter.labels else None
        if (adapter.key if adapter else "") == self.key:
            return False
        self.current, self.labels = adapter, self.sets.add(adapter)
        return True

    def update_for(self, identity: bytes, runs: str) -> AdapterUpdate | None:
        """What to send the worker ``identity`` (running adapter ``runs``) before its batch, if anything."""
        if runs == self.key or self._handed.get(identity) == self.key:
            return None
        self._handed[identity] = self.key
        return update_message(self.current)

    def forget_worker(self, identity: bytes) -> None:
        self._handed.pop(identity, None)

    def probs(self, probs: np.ndarray, key: str) -> np.ndarray | None:
        """A result's probabilities (scored with adapter ``key``) over the current labels; None if that key is
        not one this dispatcher handed out recently."""
        labels = self.sets.of(key)
        return None if labels is None else relabel(probs, labels, self.labels)
