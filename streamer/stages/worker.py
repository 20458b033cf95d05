"""Worker stage: load the model once, warm it up, then ask the dispatcher for windows and answer with results.

Per batch: uint8 windows (inline, or copied out of the captures' shared frame stores) →
one tensor → to the device → float and normalise there → forward on the fast path →
softmax → top-k, with the time each step took.

The forward answers the checkpoint's logits and the window's embedding together
(:mod:`workers.heads`): taught labels (:mod:`workers.adapter`) are scored on the embedding after it, so the
dispatcher can hand a worker a new adapter between two batches (:class:`AdapterUpdate`) and it runs at once,
nothing converted again; the embedding itself goes out with the results of the streams kept to teach from.
"""

import multiprocessing.synchronize
import time

import numpy as np
import torch
import zmq
from loguru import logger

from streamer.transport import messages, sockets
from streamer.config.stages import WorkerConfig
from streamer.errors import CheckpointError, ProtocolError
from streamer.kinds import LineKind
from streamer.stages.health import Health
from streamer.transport.frameserver import FrameFetcher
from streamer.transport.framestore import FrameStoreReader
from streamer.stages.adapters import from_message
from streamer.transport.messages import AdapterUpdate, Batch, Leaving, Result, ResultBatch, Status, Window, WorkRequest
from workers.adapter import Adapter, check_fits, checkpoint_digest, load_adapter
from workers.cpu import usable_cores
from workers.heads import with_features
from workers.model import checkpoint_model, label_names
from workers.preprocess import fold_normalisation, to_raw_input
from workers.runtime import build, plan
from workers.views import FlipViews

HEARTBEAT_S = 1.0


class _Counts:
    """What this worker has done, for its own /metrics (``--health``)."""

    def __init__(self) -> None:
        self.windows = self.batches = self.stale = 0
        self.forward_s = 0.0

    def add(self, results: ResultBatch, lost: list) -> None:
        self.batches += 1
        self.windows += len(results.results)
        self.stale += len(lost)
        if results.results:
            self.forward_s = results.results[0].timings.get("forward_ms", 0.0) / 1000.0

    def samples(self) -> tuple:
        return (("worker_windows", {}, float(self.windows)), ("worker_batches", {}, float(self.batches)),
                ("worker_windows_stale", {}, float(self.stale)), ("worker_forward_seconds", {}, self.forward_s))


def cpu_threads(requested: int, workers_on_cpu: int, shares_host: bool = True) -> int:
    """Cores for one CPU worker: of the cores it may use (a container's CPU limit included), one is left to
    capture, dispatch and overlay when they run beside it (``shares_host``), the rest shared evenly.

    More intra-op threads than free cores is far worse than fewer: OpenMP threads spin at every
    barrier, and measured here a small model took 380 ms a forward with 2 threads beside a busy
    process against 14 ms with 1.
    """
    if requested > 0:
        return requested
    return max(1, (usable_cores() - shares_host) // max(1, workers_on_cpu))


def per_window(probs: np.ndarray, views: list[int]) -> list[np.ndarray]:
    """Each window's probabilities from those of its views (``crop = "three"``): the softmax of the views'
    mean log-probability, which is the softmax of their mean logits (the official multi-crop test) when the
    views have no flip views of their own (with them, of their flip-averaged probabilities)."""
    out, start = [], 0
    for n in views:
        part = probs[start:start + n]
        start += n
        if n == 1:
            out.append(part[0])
            continue
        mean_log = np.log(np.maximum(part, 1e-30)).mean(axis=0)
        e = np.exp(mean_log - mean_log.max())
        out.append((e / e.sum()).astype(np.float32))
    return out


class Predictor:
    """The model and the steps around it, independent of sockets (the benchmarks use it directly)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.plan = plan(config.device, config.precision, config.backend, index=config.index)  # workers.runtime
        self.device = torch.device(self.plan.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(config.threads, config.workers_on_host, config.shares_host))
        model = checkpoint_model(config.checkpoint)  # fp32 on the CPU; the plan's runtime is built from it
        self.config = config
        self.base_labels = label_names(model.labels, model.config.num_classes)
        self.width = model.head.in_features
        self.pre = model.preprocess
        fold_normalisation(model, self.pre.mean, self.pre.std)  # the model now takes raw 0..255 pixels
        self.model = build(with_features(model), self.plan, raw_input=True,
                           batch=config.max_batch * (1 + len(config.flip_views)), calibration=self._calibration(config))
        self.use(load_adapter(config.adapter, config.checkpoint, self.base_labels) if config.adapter else None)
        self.delay_s = config.delay_s
        self.stores = FrameStoreReader(config.frame_store)
        self.remote: FrameFetcher | None = None  # frames of captures on other hosts (set by run: it has sockets)
        self.stale = messages.MalformedLog(config.name, what="windows whose frames it cannot read")

    def use(self, adapter: Adapter | None) -> None:
        """Score ``adapter``'s taught labels after the checkpoint's from the next batch on (None: none)."""
        self.adapter = adapter if adapter is not None and adapter.labels else None
        self.labels = [*self.base_labels, *(self.adapter.labels if self.adapter else ())]
        self.top_k = min(self.config.top_k, len(self.labels))
        self.views = FlipViews(self.labels, self.config.flip_views, self.device)
        if self.adapter is not None:
            logger.info(f"{self.config.name}: taught labels {self.adapter.describe()}")

    @property
    def adapter_key(self) -> str:
        return self.adapter.key if self.adapter is not None else ""

    def take(self, update: AdapterUpdate) -> None:
        """An adapter the dispatcher hands on: used if it fits this worker's checkpoint, else refused (logged)."""
        adapter = from_message(update)
        try:
            if adapter is not None:
                if adapter.weight.shape[1] != self.width:
                    raise ProtocolError(f"its labels read {adapter.weight.shape[1]}-wide embeddings, this "
                                        f"checkpoint's are {self.width}-wide")
                if adapter.checkpoint != checkpoint_digest(self.config.checkpoint):
                    raise ProtocolError("it was taught on another checkpoint than this worker runs")
                check_fits(adapter, "it", None, self.base_labels)
        except (ProtocolError, CheckpointError) as err:
            logger.warning(f"{self.config.name}: adapter {update.key} refused: {err}; keeping "
                           f"{self.adapter.describe() if self.adapter else 'the checkpoint labels alone'}")
            return
        if adapter is None and self.adapter is not None:
            logger.info(f"{self.config.name}: taught labels forgotten; the checkpoint's own from now on")
        self.use(adapter)

    def _calibration(self, config: WorkerConfig):
        """int8 calibrates on the checkpoint's own data (the config's ``calibration``: "synthetic" or a folder)."""
        if self.plan.precision != "int8" or not config.calibration:
            return None
        from workers.training.calibration import calibration

        return calibration(config.calibration, self.pre, self.labels)

    def warm_up(self) -> float:
        """One forward at the real input size, so the first live window is not the slow one."""
        start = time.perf_counter()
        frames = np.zeros((1, self.pre.num_frames, self.pre.size, self.pre.size, 3), np.uint8)
        self.predict(frames)
        return time.perf_counter() - start

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """(B, T, H, W, 3) uint8 → (B, classes) float32 probabilities (the checkpoint's labels, then the taught
        ones), (B, views, width) float32 embeddings (the clip, then its flips) and the step timings in ms."""
        t0 = time.perf_counter()
        batch = torch.from_numpy(frames).to(self.device, non_blocking=True)
        x = to_raw_input(batch)
        t1 = time.perf_counter()
        out = self.model(self.views.stack(x)).float()  # (V·B, classes + width)
        logits, features = out[:, :len(self.base_labels)], out[:, len(self.base_labels):]
        features = features.cpu().numpy()  # (V·B, width): view-major rows, out once for the adapter and the result
        if self.adapter is not None:  # a few rows against a few thousand neighbours: numpy, beside the forward
            taught = self.adapter.logits(features)
            logits = torch.cat([logits, torch.from_numpy(taught).to(logits.device)], dim=1)
        probs = self.views.average(logits.softmax(dim=-1)).cpu().numpy()
        features = features.reshape(-1, len(x), self.width).transpose(1, 0, 2)
        if self.delay_s:
            time.sleep(self.delay_s)
        t2 = time.perf_counter()
        return probs, features, {"preprocess_ms": 1000 * (t1 - t0), "forward_ms": 1000 * (t2 - t1)}

    def frames_of(self, batch: Batch) -> tuple[list[Window], np.ndarray | None, list[Status]]:
        """The windows still readable, their frames as (sum of their views, T, H, W, 3), and a ``window_stale``
        status for each other.

        A shared-memory window is unreadable when its frames were overwritten before we got to
        them (workers far behind) or when it names a store this worker may not or cannot read.
        """
        kept, frames, lost = [], [], []
        fetched = self._fetch_remote(batch)
        for window in batch.windows:
            try:
                data = window.frames if window.store is None else fetched[id(window)] \
                    if window.store.server else self.stores.frames(window.store)
                if isinstance(data, ProtocolError):
                    raise data
                reason = "its frames were overwritten in the frame store before a worker read them"
            except ProtocolError as err:
                data, reason = None, str(err)
            if data is None:
                self.stale.saw(f"{window.stream} window {window.seq}: {reason}")
                lost.append(Status(LineKind.WINDOW_STALE, window.stream, reason, time.time()))
                continue
            kept.append(window)
            frames.append(data.reshape(window.views, -1, *data.shape[1:]))  # (views, T, H, W, 3)
        self.stores.close_idle()
        if not frames:
            return kept, None, lost
        if len(frames) == 1 and frames[0].flags.writeable:  # already our own copy (from a store)
            return kept, frames[0], lost
        return kept, np.concatenate(frames), lost

    def _fetch_remote(self, batch: Batch) -> dict:
        """The frames of the batch's windows that a capture on another host serves, asked for all at once."""
        remote = [w for w in batch.windows if w.store is not None and w.store.server]
        if not remote:
            return {}
        if self.remote is None:
            return {id(w): ProtocolError("this worker fetches no frames from other hosts") for w in remote}
        return dict(zip((id(w) for w in remote), self.remote.fetch([w.store for w in remote])))

    def results(self, batch: Batch, worker: str) -> tuple[ResultBatch, list[Status]]:
        """Results for the batch's readable windows, and a status for each window that could not be read."""
        received, gather_start = time.time(), time.perf_counter()
        windows, frames, lost = self.frames_of(batch)
        if frames is None:
            return ResultBatch(()), lost
        gather_ms = 1000 * (time.perf_counter() - gather_start)  # copying frames out of the stores
        probs, features, timings = self.predict(frames)
        timings["preprocess_ms"] += gather_ms
        out, start = [], 0
        for window, p in zip(windows, per_window(probs, [w.views for w in windows])):
            crops, start = features[start:start + window.views], start + window.views
            embedding = crops.mean(axis=0).astype(np.float16) if self._embeds(window.stream) else None
            top = np.argsort(-p)[: self.top_k]
            out.append(Result(
                stream=window.stream, seq=window.seq, frame_index=window.frame_indices[-1],
                frame_ts=window.frame_ts[-1], probs=p.astype(np.float32),
                top=tuple((self.labels[i], float(p[i])) for i in top), worker=worker,
                timings={"capture_ms": 1000 * max(0.0, window.sent_ts - window.frame_ts[-1]),
                         "queue_ms": 1000 * max(0.0, received - window.sent_ts), **timings,
                         "batch_size": float(len(windows))},
                track=window.track, box=window.box, embedding=embedding,
            ))
        return ResultBatch(tuple(out), self.adapter_key), lost

    def _embeds(self, stream: str) -> bool:
        """Whether ``stream``'s windows are kept to teach from (``[teach]``): their results carry embeddings."""
        return "*" in self.config.embed_streams or stream in self.config.embed_streams


def _say_leaving(sock: zmq.Socket, name: str) -> None:
    """Told to stop (not killed): tell the dispatcher, waiting half a second at most for it to go out."""
    try:
        messages.send(sock, Leaving(name), zmq.NOBLOCK)
        sock.close(linger=500)
    except zmq.ZMQError:  # no dispatcher to take it: the heartbeat timeout forgets us there
        pass


def run(config: WorkerConfig, stop: multiprocessing.synchronize.Event, heartbeat=None,
        health: Health | None = None) -> int:
    """Serve batches until ``stop`` is set.

    ``heartbeat`` (a shared double from the supervisor) gets the time after warm-up and
    after every batch or idle second; the supervisor kills a worker whose heartbeat stops.
    ``health`` (``--health``) is ready once the model is warm and the worker asks for work.
    """
    health = health or Health(config.name)
    health.not_ready("loading the model")
    predictor = Predictor(config)
    seconds = predictor.warm_up()
    views = f" with its {' and '.join(config.flip_views)} mirror images" if config.flip_views else ""
    runs = predictor.model.plan
    logger.info(f"{config.name}: {predictor.model.config.attention_type} model on {runs.device} "
                f"({runs.precision}, {runs.backend}){views}, warm-up {1000 * seconds:.0f} ms")
    if runs.why:
        logger.info(f"{config.name}: runtime plan: {'; '.join(runs.why)}")
    ctx = sockets.Context()
    sock = sockets.make_socket(ctx, zmq.DEALER, config.endpoints.work, bind=False, security=config.security)
    predictor.remote = FrameFetcher(ctx, config.security)

    def ask() -> None:
        messages.send(sock, WorkRequest(config.name, config.max_batch, predictor.adapter_key))

    ask()
    health.ready()
    malformed = messages.MalformedLog(config.name)
    counts = _Counts()
    try:
        while not stop.is_set():
            health.beat()
            if heartbeat is not None:
                heartbeat.value = time.time()
            if not sock.poll(int(HEARTBEAT_S * 1000)):
                ask()  # re-asking is idempotent and lets a restarted dispatcher learn about us
                continue
            try:
                msg = messages.recv(sock)
            except ProtocolError as err:
                malformed.saw(err)
                continue
            if isinstance(msg, AdapterUpdate):
                predictor.take(msg)
                continue
            if not isinstance(msg, Batch):
                continue
            results, lost = predictor.results(msg, config.name)
            counts.add(results, lost)
            health.publish(counts.samples())
            messages.send(sock, results)
            for status in lost:  # so the dispatcher stops waiting for them
                messages.send(sock, status)
            ask()
        _say_leaving(sock, config.name)
    finally:
        predictor.remote.close()
        sock.close(linger=0)
        ctx.term()
    return 0
