"""Real-time action recognition on live video: ``python run_pipeline.py`` runs the demo.

    python run_pipeline.py                                   # synthetic demo, shipped model, until Ctrl-C
    python run_pipeline.py --source 0                        # webcam
    python run_pipeline.py --source rtsp://cam/stream --headless --events actions.jsonl
    python run_pipeline.py --source clip.mp4 --offline --events out.jsonl   # every window, as fast as possible
    python run_pipeline.py --config configs/multihost.toml --role worker    # one stage alone

Usage errors (bad flag, config, checkpoint or source) print one line and exit with code 2.
"""

import argparse
import contextlib
import os
import shutil
import sys

from streamer.errors import USAGE_ERROR, PipelineError, UsageParser

ROLES = ["capture", "dispatcher", "worker", "overlay", "web", "sinks", "clips"]

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = UsageParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config (default: configs/default.toml)")
    p.add_argument("--source", action="append", default=[], metavar="SRC",
                   help="webcam index or /dev/videoN, rtsp://..., a video file, or synthetic: (repeatable)")
    p.add_argument("--checkpoint", help="official .pyth/.pth, Hugging Face folder, or .safetensors")
    p.add_argument("--headless", action="store_true", help="no window")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop cleanly after this long")
    p.add_argument("--events", metavar="FILE", help="append predictions and action events here (JSON lines)")
    p.add_argument("--output", metavar="FILE.mp4", help="write the annotated video here")
    p.add_argument("--offline", action="store_true", help="read files as fast as the workers go; drop no window")
    p.add_argument("--workers", type=int, help="number of worker processes")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "int8"],
                   help="bf16: the fast path on GPUs and CPUs with bf16 units; int8: on other CPUs")
    p.add_argument("--web", metavar="HOST:PORT", help="serve the live view, API, /metrics and health checks "
                   "there (default from the config: 127.0.0.1:8080 for the demo); off turns it off")
    p.add_argument("--adapter", metavar="FILE", help="run the checkpoint with the labels this adapter taught "
                   "(python -m workers.teach) added to its own")
    p.add_argument("--store", metavar="FILE.db", help="keep every action in this SQLite file, across restarts "
                   "(the demo's: history/actions.db); off keeps none")
    p.add_argument("--role", choices=ROLES,
                   help="run one stage alone (multi-host setups, containers); endpoints come from the config")
    p.add_argument("--index", type=int, help="with --role: which source or worker (default 0)")
    p.add_argument("--advertise", metavar="HOST", help="with [endpoints] frames_port: the address workers on other "
                   "hosts fetch this host's window frames at (default: the address this host's name resolves to)")
    p.add_argument("--health", metavar="HOST:PORT", help="with --role: serve GET /healthz, /readyz and /metrics "
                   "of that stage there (for an orchestrator's probes, e.g. 0.0.0.0:9090 in a container)")
    args = p.parse_args(argv)
    if args.index is not None and not args.role:
        p.error("--index picks the source or worker of a --role; add --role capture or --role worker")
    if args.health is not None and not args.role:
        p.error("--health serves one stage's probes, so it goes with --role; the whole pipeline answers "
                "/healthz and /readyz on its web view (--web)")
    if args.workers is not None and args.workers < 1:
        p.error(f"--workers must be at least 1, got {args.workers}")
    return args


def has_display() -> bool:
    """A window needs a display server; without one the overlay would abort the process."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def describe_checkpoint(path: str):
    """Preprocessing and labels of the checkpoint: ours from the header alone, without importing torch (a second:
    the pipeline starts, or a mistake is told, without it); any other read in full by
    :func:`workers.model.describe_checkpoint`."""
    from workers.checkpoint_meta import described

    quick = described(path)
    if quick is not None:
        return quick
    from workers.model import describe_checkpoint as in_full

    return in_full(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from streamer.config.loader import Overrides, load_config
    from loguru import logger

    from streamer.supervisor import configure_logging

    configure_logging()
    try:
        flags = Overrides(
            config=args.config, sources=tuple(args.source), checkpoint=args.checkpoint,
            headless=args.headless or not has_display(), duration=args.duration, events=args.events,
            output=args.output, offline=args.offline, workers=args.workers, device=args.device,
            precision=args.precision, web=args.web, role=args.role, advertise=args.advertise, store=args.store,
            adapter=args.adapter,
        )
        config = load_config(flags, describe_checkpoint)
        preflight(config, args.role, args.index or 0)
        listener = None
        if config.web is not None and not args.role:
            config, listener = listen_web(config)
        if not args.headless and not has_display():  # said once the setup is known to be good
            logger.info(f"no display found: drawing to {args.output} only" if args.output else
                        "no display found: running headless (add --output demo.mp4 to save the annotated video)")
        with ipc_folder(config.ipc_dir):
            if args.role:
                return run_role(config, args.role, args.index or 0, args.health)
            from streamer.supervisor import Supervisor

            return Supervisor.for_pipeline(config, web_listener=listener).run()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR


@contextlib.contextmanager
def ipc_folder(path: str):
    """The private folder of the default ipc:// endpoints (the config names it, ``PipelineConfig.ipc_dir``),
    made for this run only (mode 700, refused if it exists) and removed with whatever is left in it."""
    if not path:
        yield
        return
    os.mkdir(path, 0o700)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def preflight(config, role: str | None = None, index: int = 0) -> None:
    """Check the devices and open every camera and file once before any stage starts, so a missing
    GPU, an unreachable camera or an unreadable file is one error line rather than a stage failing
    (and being restarted) after start-up. A ``--role`` checks only its own: a worker pod never opens
    the cameras, a capture opens only its own."""
    from streamer.errors import ConfigError
    from streamer.video.sources import SourceConfig, open_source

    workers = config.workers if role is None else config.workers[index:index + 1] if role == "worker" else ()
    captures = config.captures if role is None else config.captures[index:index + 1] if role == "capture" else ()
    for worker in workers:
        if worker.device.startswith("cuda"):
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(worker.device.partition(":")[2] or 0)
            if index >= count:
                raise ConfigError(f"device {worker.device!r}: torch {torch.__version__} sees "
                                  f"{count or 'no'} CUDA device{'s' if count != 1 else ''} here; use "
                                  f"--device auto (CUDA when there is one, else the CPU) or --device cpu")

    for capture in captures:
        if capture.source.startswith("synthetic:"):
            continue
        source = open_source(SourceConfig(spec=capture.source, realtime=False, open_timeout_s=capture.open_timeout_s,
                                          read_timeout_s=capture.read_timeout_s, reconnect=False))
        source.close()


def build_info(config) -> tuple[tuple[str, str], ...]:
    """What ``timesformer_build_info`` says: versions, the device the workers use, precision, checkpoint."""
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    import torch

    try:
        ours = version("timesformer-stream")
    except PackageNotFoundError:
        ours = "unknown"
    worker = config.workers[0]
    device = worker.device if worker.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return (("version", ours), ("torch", str(torch.__version__)), ("device", device), ("precision", worker.precision),
            ("checkpoint", Path(worker.checkpoint).name))


def listen_web(config):
    """Bind the web view's port now, so a taken port is one line before start (or, for the demo's default
    port, one warning and no web view); returns the config (port 0 resolved) and the listening socket."""
    from dataclasses import replace

    from loguru import logger

    from streamer.errors import ConfigError
    from streamer.config.web import bind_listener

    web = config.web
    try:
        listener = bind_listener(web)
    except OSError as err:
        where = f"{web.host}:{web.port}"
        if web.required:
            raise ConfigError(f"web view {where}: cannot listen there ({err.strerror}); pick a free port "
                              "(--web 127.0.0.1:8081) or turn it off (--web off)") from None
        logger.warning(f"web view off: cannot listen on {where} ({err.strerror}); "
                       "pick a free port with --web 127.0.0.1:8081")
        return replace(config, web=None, captures=tuple(replace(c, web=False) for c in config.captures)), None
    web = replace(web, port=listener.getsockname()[1], build=build_info(config))
    return replace(config, web=web), listener


def run_role(config, role: str, index: int, health_listen: str | None = None) -> int:
    """One stage in this process, for setups that spread the stages over hosts or containers; with
    ``health_listen`` its probes are served there."""
    import importlib
    import multiprocessing as mp
    import signal
    import socket
    from dataclasses import replace

    from streamer.config.web import parse_listen
    from streamer.errors import ConfigError
    from streamer.stages import health

    listen = parse_listen(health_listen, "--health") if health_listen is not None else None
    if not config.fixed_endpoints:
        raise ConfigError(f"{config.source_file}: --role needs an [endpoints] table, so that the separately "
                          "started stages find each other (see configs/multihost.toml)")
    stage_config, name = role_config(config, role, index)
    if role == "worker":  # every replica of a worker Deployment has the same index: the host tells them apart
        name = f"{stage_config.name}@{socket.gethostname()}"
        stage_config = replace(stage_config, name=name, shares_host=False, workers_on_host=1)
    probes = health.Health(name)
    if listen is not None:
        try:
            health.serve(probes, *listen)
        except OSError as err:
            raise ConfigError(f"--health {health_listen}: cannot listen there ({err.strerror}); pick a free "
                              "port") from None
    stop = mp.get_context("spawn").Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return importlib.import_module(f"streamer.stages.{role}").run(stage_config, stop, health=probes)


def role_config(config, role: str, index: int):
    """The stage config a ``--role`` runs, and the stage's name."""
    from streamer.errors import ConfigError

    if role == "dispatcher":
        return config.dispatch, "dispatcher"
    if role in ("capture", "worker"):
        stages = config.captures if role == "capture" else config.workers
        if not 0 <= index < len(stages):
            raise ConfigError(f"--index {index}: the config has {len(stages)} {role}(s)")
        return stages[index], (f"capture {stages[index].stream}" if role == "capture" else stages[index].name)
    stage_config = {"web": config.web, "overlay": config.overlay, "sinks": config.sinks, "clips": config.clips}[role]
    if stage_config is None:
        needs = {"web": "[web] listen in the config or --web HOST:PORT",
                 "overlay": "a window or --output FILE.mp4",
                 "sinks": "an [mqtt] table or [[webhooks]] in the config",
                 "clips": "a [clips] table in the config"}[role]
        raise ConfigError(f"--role {role} needs {needs}")
    if role == "web":
        from dataclasses import replace

        stage_config = replace(stage_config, build=build_info(config))
    return stage_config, role


if __name__ == "__main__":
    sys.exit(main())
