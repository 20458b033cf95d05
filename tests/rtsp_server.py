"""A real RTSP camera for tests: serves a video file, or a test pattern, looping as H.264.

Run with Debian's ``/usr/bin/python3``: the GStreamer bindings (``python3-gi``,
``gir1.2-gst-rtsp-server-1.0``) exist only for that interpreter. It binds to
127.0.0.1 only, prints ``READY rtsp://127.0.0.1:PORT/test`` once it listens,
and runs until SIGTERM or SIGINT.

A file is decoded once into memory at start (test videos are small) and pushed
through ``appsrc`` in a loop, so every client sees an endless camera. Each
client gets its own pipeline, so a client that connects (or reconnects) starts
at a keyframe. ``config-interval=0`` keeps FFmpeg clients from decoding
keyframes twice.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--file clip.avi]
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

ENCODE = (
    "videoconvert ! video/x-raw,format=I420"
    " ! x264enc tune=zerolatency speed-preset=ultrafast bframes=0 key-int-max={gop}"
    " ! video/x-h264,profile=constrained-baseline"
    " ! rtph264pay name=pay0 pt=96 config-interval=0"
)


def decode_file(path: str, max_frames: int) -> tuple[list[bytes], str]:
    """Decode ``path`` to raw I420 frames in memory; return them and their caps string."""
    pipeline = Gst.parse_launch(
        "filesrc name=src ! decodebin ! videoconvert ! video/x-raw,format=I420"
        " ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("src").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    frames: list[bytes] = []
    caps = None
    while len(frames) < max_frames:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:  # end of stream, or a decode error
            break
        caps = caps or sample.get_caps()
        buffer = sample.get_buffer()
        frames.append(buffer.extract_dup(0, buffer.get_size()))
    pipeline.set_state(Gst.State.NULL)
    if not frames:
        raise SystemExit(f"rtsp_server: no frames decoded from {path}; is it a video file?")
    structure = caps.get_structure(0)
    width, height = structure.get_value("width"), structure.get_value("height")
    return frames, f"video/x-raw,format=I420,width={width},height={height}"


def file_factory(frames: list[bytes], caps: str, fps: int) -> GstRtspServer.RTSPMediaFactory:
    """One pipeline per client, fed by ``appsrc`` from the decoded frames, looping."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( appsrc name=src is-live=true format=time ! {ENCODE.format(gop=fps)} )")
    duration = Gst.SECOND // fps

    def configure(_factory, media):
        appsrc = media.get_element().get_child_by_name("src")
        appsrc.set_property("caps", Gst.Caps.from_string(f"{caps},framerate={fps}/1"))
        count = [0]  # this client's frame counter

        def need_data(src, _length):
            buffer = Gst.Buffer.new_wrapped(frames[count[0] % len(frames)])
            buffer.pts = buffer.dts = count[0] * duration
            buffer.duration = duration
            count[0] += 1
            src.emit("push-buffer", buffer)

        appsrc.connect("need-data", need_data)

    factory.connect("media-configure", configure)
    return factory


def pattern_factory(width: int, height: int, fps: int) -> GstRtspServer.RTSPMediaFactory:
    """A moving-ball test pattern, for tests that need no particular content."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball"
        f" ! video/x-raw,width={width},height={height},framerate={fps}/1"
        f" ! {ENCODE.format(gop=fps)} )"
    )
    return factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument("--path", default="/test", help="mount point (default /test)")
    parser.add_argument("--file", help="video file to serve in a loop (default: test pattern)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=320, help="test pattern width")
    parser.add_argument("--height", type=int, default=240, help="test pattern height")
    parser.add_argument("--max-frames", type=int, default=900, help="frames of --file kept")
    args = parser.parse_args()

    Gst.init(None)
    if args.file:
        frames, caps = decode_file(args.file, args.max_frames)
        factory = file_factory(frames, caps, args.fps)
    else:
        factory = pattern_factory(args.width, args.height, args.fps)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}; is it in use?")

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
