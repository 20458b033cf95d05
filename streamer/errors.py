"""One small hierarchy of errors whose messages are one line for the user.

Every message names the offending value (file, URL, key) and what to do about
it; the command line prints ``str(error)`` and exits with code 2.
"""

import argparse
import os
import sys

USAGE_ERROR = 2  # the exit code of every usage error: a bad flag, config, checkpoint or source


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2), like every other usage error."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A config file, key or command-line flag is wrong."""


class CheckpointError(PipelineError):
    """A checkpoint is missing, unreadable, unsafe or of the wrong shape."""

    @classmethod
    def unless_found(cls, path: os.PathLike | str) -> None:
        """Raise when nothing is at ``path`` (checked before torch is imported to read it)."""
        if not os.path.exists(path):
            raise cls(f"{path}: no such file or folder; pass an official .pyth/.pth, a Hugging Face folder or a "
                      ".safetensors file")


class SourceError(PipelineError):
    """A video source cannot be opened or read."""


class ProtocolError(PipelineError):
    """A message on a socket is malformed; it is dropped and counted."""


def run_command(work) -> int:
    """A command's exit code: 0 when ``work()`` returns, USAGE_ERROR with its one line on stderr when it raises a
    PipelineError (the way every ``python -m`` command of the project ends)."""
    try:
        work()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    return 0
