"""Capture stage: one source → stamped, model-size frames in a ring buffer → windows to the dispatcher.

A frame is converted and resized once (``frames.model_frame``) on arrival, and only if a window will
hold it (``WindowSchedule.wanted``); the others are decoded and counted but never converted (with
K400's sampling, 31 frames in 32). Display frames are made only while the overlay or a web viewer
subscribes to this stream (``_Display``). A window goes out
every ``hop`` source frames. Live: windows are sent and forgotten (the dispatcher keeps
only the newest), and while the dispatcher takes none (restarting, rescheduled, unreachable)
they are dropped here and counted, so that the capture never blocks on it: it keeps reading
its camera, answering its probes and obeying a stop. Offline: capture waits for the
dispatcher's credit before sending more, so nothing is dropped and a file is read only as
fast as the workers go.
With a frame store (same-host workers), the ring lives in shared memory and a window
names its frames instead of carrying them (:mod:`streamer.transport.framestore`).
"""

import collections
import math
import multiprocessing.synchronize
import time
from dataclasses import replace

import zmq
from loguru import logger

from streamer.transport import messages, sockets
from streamer.config.look import LookConfig
from streamer.config.stages import CaptureConfig
from streamer.errors import ProtocolError
from streamer.kinds import LineKind, StageKind
from streamer.look.windowing import FrameView, TrackFeed, make_feeds
from streamer.stages.health import Health
from streamer.transport.frameserver import FrameServer
from streamer.transport.framestore import FrameStore
from streamer.transport.messages import Credit, DisplayFrame, Stats, Status
from workers.sampling import window_span
from streamer.video.sources import SourceConfig, SourceLost, open_source

END_LINGER_S = 30.0  # how long a file's frame store outlives its end, for windows still to be read
OFFLINE_IN_FLIGHT = 2  # windows a file may be ahead of the workers in offline mode
STORE_SECONDS = 8.0  # a shared frame store keeps this much video beyond one window (a slow worker's margin)
STORE_HOPS = 24  # and at least this many hops (offline, where frames come as fast as credits allow)
STATS_INTERVAL_S = 1.0  # frames captured and input fps go to the dispatcher (and on to /metrics) this often
WINDOW_WAIT_S = 0.5  # a live window waits this long for room towards the dispatcher, then is dropped (none while away)
STATUS_WAIT_S = 2.0  # a source's status (lost, back, a track ended) waits this long, then is dropped
AWAY = "dispatcher_away"  # the reason a capture counts for the windows it dropped while the dispatcher took none


CLIP_QUEUE_FRAMES = 8  # display frames queued here for the clips stage (raw: 5.5 MB at 640×360); it must keep up
RECORDER_TOPIC = messages.recorder_topic()
RECORDER_WAIT_S = 10.0   # offline: the longest a frame waits for a recorder that is behind (or restarting)


class _Display:
    """Display frames for the overlay and the web stage, made only while one of them subscribes to this stream.

    An XPUB socket hears each subscription: the overlay takes every stream always, the web stage
    subscribes to a stream (``messages.display_topic``) only while someone watches it. One socket
    fans each frame out to both, dropping for a slow one.
    """

    def __init__(self, sock: zmq.Socket, streams: tuple[str, ...]) -> None:
        self.sock, self.topics = sock, set()
        self.stream_topics = {stream: messages.display_topic(stream) for stream in streams}
        self.wait_for_all = False  # offline with clips: wait for the recorder rather than drop

    @classmethod
    def open(cls, ctx, config: CaptureConfig):
        viewers = [e for e, wanted in ((config.endpoints.display, config.display),
                                       (config.endpoints.web, config.web)) if wanted]
        if not viewers and not config.clips:
            return None
        # Viewers want the newest frame, not a backlog; the recorder wants every frame: a deeper queue for its
        # connection only (a socket's HWM applies to the connections made after it is set).
        sock = sockets.make_socket(ctx, zmq.XPUB, viewers[0] if viewers else config.endpoints.clips, bind=False,
                                   security=config.security, options={zmq.SNDHWM: 2 if viewers else CLIP_QUEUE_FRAMES})
        for endpoint in viewers[1:]:
            sock.connect(endpoint)
        if config.clips and viewers:
            sock.setsockopt(zmq.SNDHWM, CLIP_QUEUE_FRAMES)
            sock.connect(config.endpoints.clips)
        display = cls(sock, config.look.streams(config.stream))
        if config.offline and (config.clips or config.display):
            # Offline, clips and the annotated video (--output) hold every frame however fast the file is read:
            # wait for them rather than drop (live sources never wait; the recorder's deep queue absorbs bursts).
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            display.wait_for_all = True
        return display

    def send(self, frame: DisplayFrame, stop) -> None:
        if not self.wait_for_all:
            messages.send(self.sock, frame, zmq.NOBLOCK)  # XPUB drops for a subscriber that is behind
            return
        deadline = time.monotonic() + RECORDER_WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                messages.send(self.sock, frame, zmq.NOBLOCK)
                return
            except zmq.Again:  # the recorder is behind: offline, wait for it
                self.sock.poll(100, zmq.POLLOUT)

    def wait_for_subscriber(self, stop, offline: bool, clips: bool = True) -> None:
        """Hold the first frame until the recorder's subscription (with clips) or a viewer's (offline, without
        them: the overlay writing the annotated video) has arrived, so that a clip's pre-roll or the video starts
        at frame 0 (offline up to RECORDER_WAIT_S; live a second at most)."""
        deadline = time.monotonic() + (RECORDER_WAIT_S if offline else 1.0)
        stream = next(iter(self.stream_topics))
        while not stop.is_set() and time.monotonic() < deadline:
            if self.watched(stream) and (RECORDER_TOPIC in self.topics or not clips):
                return
            time.sleep(0.01)

    def watched(self, stream: str) -> bool:
        """Take the (un)subscriptions that arrived; True while one covers ``stream``."""
        while True:
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                self.topics.add(event[1:])
            elif event[:1] == b"\x00":
                self.topics.discard(event[1:])
        topic = self.stream_topics[stream]
        return any(topic.startswith(t) for t in self.topics)

    def viewed(self, stream: str) -> bool:
        """Whether a viewer (overlay, web), not only the clip recorder, takes ``stream``'s frames."""
        topic = self.stream_topics[stream]
        return any(topic.startswith(t) for t in self.topics if t != RECORDER_TOPIC)


class _Counts:
    """What a capture reports once a second and at its end, for each stream it sends: frames read and
    converted, input fps, and for tracked actors how many are active and how many the cap left out."""

    def __init__(self, streams: tuple[str, ...], tracking: bool = False, source_fps: float = 0.0) -> None:
        self.streams, self.started, self.tracking, self.source_fps = streams, time.time(), tracking, source_fps
        self.captured = self.converted = self.shown = 0
        self.unsent: collections.Counter = collections.Counter()  # stream → windows dropped, the dispatcher away
        self.tracks_active = self.tracks_skipped = 0
        self.last_frame_ts = 0.0
        self.samples: list = []  # the latest report's, every stream's
        self._since = (time.monotonic(), 0)
        self.next_report = time.monotonic()  # at once: the dispatcher hears the source's fps before any window

    def report(self, deliver) -> None:
        """The counts of every stream, each Stats handed to ``deliver`` (it sends it, or not)."""
        now = time.monotonic()
        seconds = now - self._since[0]
        fps = (self.captured - self._since[1]) / seconds if seconds > 0 else 0.0
        self.samples = []
        for stream in self.streams:
            labels = {"stream": stream}
            samples = (("frames_captured", labels, float(self.captured)), ("frames_converted", labels, float(self.converted)),
                       ("display_frames", labels, float(self.shown)), ("capture_started", labels, self.started),
                       ("input_fps", labels, fps), ("source_fps", labels, self.source_fps),
                       ("last_frame_ts", labels, self.last_frame_ts),
                       ("windows_dropped", {**labels, "reason": AWAY}, float(self.unsent[stream])))
            if self.tracking:
                samples += (("tracks_active", labels, float(self.tracks_active)),
                            ("tracks_skipped", labels, float(self.tracks_skipped)))
            self.samples += samples
            deliver(Stats(f"{StageKind.CAPTURE} {stream}", time.time(), samples))  # not sent: the next has the totals
        self._since, self.next_report = (now, self.captured), now + STATS_INTERVAL_S


def run(config: CaptureConfig, stop: multiprocessing.synchronize.Event, health: Health | None = None) -> int:
    """Read the source until it ends or ``stop`` is set; return 0 at a file's end. ``health`` (``--health``)
    is ready while frames come in, and says so when the source is away."""
    health = health or Health(f"capture {config.stream}")
    health.not_ready(f"opening {config.stream}")
    ctx = sockets.Context()
    capture = _Capture(ctx, config, stop)
    try:
        capture.wait_for_recorder()
        while not stop.is_set() and capture.step():
            health.beat()
            health.publish(capture.counts.samples + capture.served())
            if capture.lost:
                health.not_ready(f"source {config.stream} lost; reconnecting")
            elif capture.counts.captured:
                health.ready()
        if config.frame_store and not stop.is_set():
            # The file ended, but workers may not have read its last windows yet: the store stays until the
            # pipeline stops (the dispatcher ends it once they are predicted), or a while at most.
            deadline = time.monotonic() + END_LINGER_S
            while not stop.wait(0.2) and time.monotonic() < deadline:
                health.beat()
    finally:
        capture.close()
        ctx.term()
    return 0


class _Capture:
    """One capture process: its source, the feeds its frames go through, its sockets and its counts."""

    def __init__(self, ctx, config: CaptureConfig, stop: multiprocessing.synchronize.Event) -> None:
        self.stop = stop
        self.out = sockets.make_socket(ctx, zmq.DEALER, config.endpoints.windows, bind=False,
                                       security=config.security, options={zmq.LINGER: 2000, zmq.SNDHWM: 4})
        self.display = _Display.open(ctx, config)
        self.streams = config.look.streams(config.stream)
        self.source = open_source(SourceConfig(spec=config.source, realtime=not config.offline,
                                               open_timeout_s=config.open_timeout_s,
                                               read_timeout_s=config.read_timeout_s, hwaccel=config.hwaccel))
        fps = self.source.fps
        if config.look.tracking is not None and fps > 0:
            config = replace(config, look=replace(config.look, tracking=replace(config.look.tracking, fps=fps)))
        self.config = config
        span = window_span(config.num_frames, config.frame_interval)
        plain = config.look == LookConfig()  # the whole frame's centre crop: the only feed a frame store serves
        self.store = _open_store(config, span + max(math.ceil(fps * STORE_SECONDS), STORE_HOPS * config.hop)) \
            if plain else None
        self.frame_server = None
        if self.store is not None and config.frames_bind:
            self.frame_server = FrameServer(ctx, self.store, config.frame_store, config.frames_bind, config.security)
            self.store.server = config.frames_advertise
        logger.info(f"capture {config.stream}: {self.source.kind} source open at {fps:.1f} fps; " + (
            f"frames through shared memory ({self.store.frames.shape[0]} frames, "
            f"{self.store.frames.nbytes / 2**20:.0f} MB)" if self.store else "frames inline")
            + (f", served to workers at {config.frames_advertise}" if self.frame_server else "") + _looking(config))
        self.feeds = None  # made at the first frame: regions need its size
        # Offline, a window of each stream (region) or tracked actor may be at the workers, batched together.
        self.credits = OFFLINE_IN_FLIGHT * len(self.streams) + (
            config.look.tracking.max_tracks if config.look.tracking else 0)
        self.segment, self.lost = 0, False
        self.away_since = 0.0  # monotonic time the dispatcher stopped taking windows (0: it takes them)
        self.last_index = None  # the ring forgets it on a loss; the end-of-stream line still names it
        self.malformed = messages.MalformedLog(f"capture {config.stream}")
        self.counts = _Counts(self.streams, config.look.tracking is not None, self.source.fps or 0.0)

    def status(self, kind: str, detail: str, track: int | None = None, wait_s: float | None = STATUS_WAIT_S) -> None:
        """A status of every stream to the dispatcher: waiting ``wait_s`` at most (None: until stopped; not at
        all while the dispatcher is known to be away)."""
        if wait_s is not None and self.away_since:
            wait_s = 0.0
        for stream in self.streams:
            if not self._deliver(Status(kind=kind, stream=stream, detail=detail[:2000], ts=time.time(), track=track),
                                 wait_s):
                logger.warning(f"capture {stream}: {kind.replace('_', ' ')} not told: the dispatcher takes nothing")

    def _deliver(self, msg, wait_s: float | None) -> bool:
        """Send ``msg`` to the dispatcher, waiting at most ``wait_s`` (None: until stopped) for room in the send
        queue; False if it was not sent. The queue fills only while the dispatcher takes nothing (it restarts,
        its pod moves, the network is down): a blocking send would stop the capture until it is back."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while True:
            try:
                messages.send(self.out, msg, zmq.NOBLOCK)
                return True
            except zmq.Again:
                pass
            left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if left <= 0 or self.stop.is_set():
                return False
            self.out.poll(max(1, int(left * 1000)), zmq.POLLOUT)

    def wait_for_recorder(self) -> None:
        if self.display is not None and (self.config.clips or self.config.offline and self.config.display):
            self.display.wait_for_subscriber(self.stop, self.config.offline, clips=self.config.clips)

    def step(self) -> bool:
        """Take one frame (or one wait of a source that reconnects); False at the source's end or a stop."""
        if time.monotonic() >= self.counts.next_report:
            self.counts.report(lambda stats: self._deliver(stats, 0.0))
        frame = self._read()
        if frame is False:  # still reconnecting
            return True
        if frame is None:
            self._end()
            return False
        view = FrameView(frame.index, frame.ts, frame.picture)
        windows = self._push(view, frame.segment)
        self._show(view)
        return self._send(windows)

    def _read(self):
        """The next frame, None at the end, False while the source is away; its events go out as status."""
        silent = None  # a read that timed out without the source saying why
        try:
            frame = self.source.read()
        except SourceLost as err:
            frame, silent = False, err
        events = self.source.events()
        for kind, detail in events:
            self.status(kind, detail)
            logger.warning(f"capture {self.config.stream}: {kind.replace('_', ' ')}: {detail}")
            if kind == LineKind.SOURCE_LOST:
                _reset(self.feeds)
            self.lost = kind == LineKind.SOURCE_LOST
        if silent is not None and not self.lost and not events:  # one line per outage; the source's reason first
            logger.warning(f"capture {self.config.stream}: {silent}")
            self.lost = True
        return frame

    def _push(self, view: FrameView, segment: int) -> list:
        """The frame into every feed; the windows that became due."""
        config = self.config
        if self.feeds is None:
            self.feeds = make_feeds(config.stream, config.look, view, config.size, config.num_frames,
                                    config.frame_interval, config.hop,
                                    self.store.frames.shape[0] if self.store else 0, self.store)
        if segment != self.segment:  # a reconnect: never let a window span the gap
            self.segment = segment
            _reset(self.feeds)
        windows, converted = [], False
        for feed in self.feeds:
            wanted, due = feed.push(view)
            windows += due
            converted |= wanted
        _end_tracks(self.feeds, self.status)
        self.last_index = view.index
        counts = self.counts
        counts.captured, counts.converted, counts.last_frame_ts = counts.captured + 1, counts.converted + converted, view.ts
        if isinstance(self.feeds[0], TrackFeed):
            counts.tracks_active = len(self.feeds[0].active)
            counts.tracks_skipped = self.feeds[0].tracker.skipped_total
        return windows

    def _show(self, view: FrameView) -> None:
        """Display frames of the streams someone watches (or records)."""
        for feed in self.feeds if self.display is not None else ():
            if self.display.watched(feed.stream):
                image, tracks = feed.display(view, self.config.display_width)
                self.display.send(DisplayFrame(feed.stream, view.index, view.ts, image, self.source.fps, tracks),
                                  self.stop)
                self.counts.shown += self.display.viewed(feed.stream)  # for people; the recorder's not counted

    def _send(self, windows: list) -> bool:
        """The due windows to the dispatcher (offline, each once a credit allows); False when stopped waiting."""
        for window in windows:
            if self.config.offline:
                self.credits = _wait_for_credit(self.out, self.credits, self.stop, self.malformed)
                if self.credits is None or not self._deliver(window, None):
                    return False
            else:
                self._send_live(window)
        return True

    def _send_live(self, window) -> None:
        """A live window to the dispatcher, or dropped and counted while it takes none (one line per outage)."""
        if self._deliver(window, 0.0 if self.away_since else WINDOW_WAIT_S):
            if self.away_since:
                logger.info(f"capture {self.config.stream}: the dispatcher takes windows again after "
                            f"{time.monotonic() - self.away_since:.0f} s")
                self.away_since = 0.0
            return
        self.counts.unsent[window.stream] += 1
        if not self.away_since:
            self.away_since = time.monotonic()
            logger.warning(f"capture {self.config.stream}: the dispatcher takes no windows (restarting or "
                           "unreachable?); dropping them until it is back")

    def _end(self) -> None:
        """The source ended: every tracked actor ends with it, then the final counts and end_of_stream."""
        _reset(self.feeds)
        _end_tracks(self.feeds, self.status)
        self.counts.report(lambda stats: self._deliver(stats, None))  # the final counts, before the end
        self.status(LineKind.END_OF_STREAM, f"{self.config.stream}: last frame was {self.last_index}", wait_s=None)
        logger.info(f"capture {self.config.stream}: end of source after frame {self.last_index}")

    def served(self) -> list:
        """What its frame server did, for its own /metrics."""
        server = self.frame_server
        if server is None:
            return []
        labels = {"stream": self.config.stream}
        return [("frame_server_windows", {**labels, "outcome": "served"}, float(server.served)),
                ("frame_server_windows", {**labels, "outcome": "stale"}, float(server.stale)),
                ("frame_server_windows", {**labels, "outcome": "malformed"}, float(server.malformed))]

    def close(self) -> None:
        self.source.close()
        if self.frame_server is not None:
            self.frame_server.close()
        if self.store is not None:
            self.store.close()
        if self.display is not None:
            self.display.sock.close(linger=0)
        self.out.close()


def _looking(config: CaptureConfig) -> str:
    """How the log names what the model sees of this source."""
    look = config.look
    if look.tracking is not None:
        return f"; tracking moving actors (at most {look.tracking.max_tracks})"
    if look.regions:
        return f"; regions {', '.join(r.name for r in look.regions)} ({look.crop} crop)"
    return "" if look.crop == "centre" else f"; {look.crop} crop"


def _reset(feeds) -> None:
    for feed in feeds or ():
        feed.reset()


def _end_tracks(feeds, status) -> None:
    """Tell the dispatcher which tracks ended (their open actions end there)."""
    for feed in feeds or ():
        if isinstance(feed, TrackFeed):
            for track in feed.ended:
                status(LineKind.TRACK_ENDED, f"track {track} ended", track)
            feed.ended.clear()


def _open_store(config: CaptureConfig, capacity: int) -> FrameStore | None:
    """The shared frame store when the config asks for one; None (frames inline) if it cannot be made."""
    if not config.frame_store:
        return None
    try:
        return FrameStore(config.frame_store, config.stream, capacity, config.size, config.size)
    except OSError as err:
        logger.warning(f"capture {config.stream}: no shared frame store ({err.strerror or err}); "
                       "sending frames inline (slower; free space in /dev/shm to get it back)")
        return None


def _wait_for_credit(sock: zmq.Socket, credits: int, stop, malformed: messages.MalformedLog) -> int | None:
    """Offline flow control: block until the dispatcher has taken an earlier window (None: stopping)."""
    while credits <= 0:
        if stop.is_set():
            return None
        if sock.poll(200):
            try:
                msg = messages.recv(sock)
            except ProtocolError as err:
                malformed.saw(err)
                continue
            if isinstance(msg, Credit):
                credits += msg.n
    return credits - 1
