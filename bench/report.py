"""BENCHMARKS.md is one file of sections; each benchmark replaces its own section and leaves the rest."""

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
TITLE = "# Benchmarks\n\nEvery number here comes from a command in `bench/`, run on the machine it names; " \
        "speed is only compared within one run (ratios).\n"


def write_section(heading: str, body: str, path: Path = BENCHMARKS) -> None:
    """Put ``body`` under ``## heading``, replacing an earlier run's section of that name."""
    text = path.read_text() if path.exists() else TITLE
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def cpu_name() -> str:
    """This machine's CPU, as /proc/cpuinfo names it (speed figures mean something only beside it)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def publish(heading: str, body: str, write: bool = True) -> None:
    """Print a section, and put it in BENCHMARKS.md unless ``write`` is False (``--no-write``)."""
    print(f"\n## {heading}\n\n{body}")
    if write:
        write_section(heading, body)
