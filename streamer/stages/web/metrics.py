"""``GET /metrics``: the pipeline in Prometheus' text format, declared in one place.

Counters of the other processes arrive in the dispatcher's once-a-second report and in the
event-log lines it publishes (never prometheus-client's multiprocess files); this module only
turns :class:`~streamer.stages.web.state.WebState` into metric families. Names follow Prometheus'
rules: the ``timesformer_`` prefix, base units (seconds, bytes), ``_total`` on counters,
label values never in names.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streamer.kinds import StreamState
from streamer.stages.health import REPORTED_COUNTERS, REPORTED_GAUGES, metric_family
from streamer.stages.web.feeds import Feeds
from streamer.stages.web.state import WebState

TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # 10 ms to 30 s
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# (metric, help) of what the web stage counts from the lines and status it receives
COUNTED = {
    "predictions": "Prediction lines, by stream",
    "action_events": "Action start and end events, by stream, label and kind",
    "source_losses": "Times a source was lost",
    "source_reconnects": "Times a lost source came back",
    "stage_restarts": "Pipeline stages restarted after a crash or hang, by stage",
}


class _PipelineCollector(Collector):
    """Reads the state at every scrape, so values are as fresh as the last message."""

    def __init__(self, state: WebState, feeds: Feeds, build: dict[str, str]) -> None:
        self.state, self.feeds, self.build = state, feeds, build

    def collect(self):
        state = self.state
        for name, text in REPORTED_COUNTERS.items():
            samples = state.reported_samples(name)
            if not samples and name == "frames_captured":
                samples = [({"stream": s}, 0.0) for s in state.streams]
            yield metric_family(CounterMetricFamily, name, text, samples)
        for name, text in COUNTED.items():
            samples = [(dict(labels), n) for (metric, labels), n in state.counts.items() if metric == name]
            yield metric_family(CounterMetricFamily, name, text, samples)
        yield metric_family(GaugeMetricFamily, "input_frames_per_second", "Frames a second read from each source",
                      state.reported_samples("input_fps"))
        yield metric_family(GaugeMetricFamily, "tracks_active", "Tracked actors each stream follows now",
                      state.reported_samples("tracks_active"))
        yield metric_family(GaugeMetricFamily, "workers_answering", "Workers warm and answering the dispatcher",
                      state.reported_samples("workers_answering"))
        yield metric_family(GaugeMetricFamily, "clip_buffer_bytes", "Recent frames the clips stage holds for pre-roll (JPEG)",
                      state.reported_samples("clip_buffer_bytes"))
        yield metric_family(GaugeMetricFamily, "store_lines_waiting", REPORTED_GAUGES["store_lines_waiting"],
                      state.reported_samples("store_lines_waiting"))
        now = time.time()
        yield metric_family(GaugeMetricFamily, "source_up", "1 while the source delivers frames, else 0",
                      [({"stream": s.name}, float(s.state(now) == StreamState.LIVE)) for s in state.streams.values()])
        yield metric_family(GaugeMetricFamily, "web_viewers", "Live-view clients watching each stream",
                      [({"stream": n}, float(v)) for n, v in self.feeds.viewers.items()])
        yield metric_family(CounterMetricFamily, "web_jpeg_encodes", "Annotated frames encoded as JPEG for viewers",
                      [({"stream": n}, float(v)) for n, v in self.feeds.encodes.items()])
        yield metric_family(CounterMetricFamily, "web_sent_bytes", "Bytes of live view sent to viewers",
                      [({}, float(self.feeds.sent_bytes))])
        yield metric_family(GaugeMetricFamily, "build_info", "Version, torch, device, precision and checkpoint; always 1",
                      [(self.build, 1.0)])


class Metrics:
    """The registry behind /metrics: the collector above plus the histograms fed by prediction lines."""

    def __init__(self, build: dict[str, str]) -> None:
        disable_created_metrics()  # *_created gauges double the text and say nothing an operator needs
        self.registry = CollectorRegistry(auto_describe=True)
        histogram = lambda name, text, labels=(), buckets=TIME_BUCKETS: Histogram(  # noqa: E731
            f"timesformer_{name}", text, labels, buckets=buckets, registry=self.registry)
        self.latency = histogram("latency_seconds", "From a window's last frame's capture to its prediction line",
                                 ("stream",))
        self.queue = histogram("queue_wait_seconds", "From a window's sending by capture to its worker taking it")
        self.preprocess = histogram("preprocess_seconds", "Turning a batch of windows into model input")
        self.forward = histogram("forward_seconds", "The model's forward pass over one batch")
        self.batch = histogram("batch_size_windows", "Windows in each worker batch", buckets=BATCH_BUCKETS)
        self.build = build
        self._last_batch: tuple = ()

    def attach(self, state: WebState, feeds: Feeds) -> None:
        self.registry.register(_PipelineCollector(state, feeds, self.build))

    def observe(self, line: dict) -> None:
        """One prediction line (its latency and the worker's timings in milliseconds)."""
        self.latency.labels(line["stream"]).observe(max(0.0, line["latency_ms"]) / 1000.0)
        timings = line.get("timings") if isinstance(line.get("timings"), dict) else {}
        numbers = {k: v for k, v in timings.items() if type(v) in (int, float)}
        if "queue_ms" in numbers:
            self.queue.observe(max(0.0, numbers["queue_ms"]) / 1000.0)
        # The windows of one batch share its preprocessing, forward and size: count those once a batch.
        batch = (line.get("worker"), numbers.get("preprocess_ms"), numbers.get("forward_ms"), numbers.get("batch_size"))
        if batch == self._last_batch:
            return
        self._last_batch = batch
        for key, histogram in (("preprocess_ms", self.preprocess), ("forward_ms", self.forward)):
            if key in numbers:
                histogram.observe(max(0.0, numbers[key]) / 1000.0)
        if "batch_size" in numbers:
            self.batch.observe(numbers["batch_size"])

    def text(self) -> bytes:
        return generate_latest(self.registry)
