"""Reading a TOML config: the file itself, and each value checked for type, range and finiteness.

Every reader raises a :class:`~streamer.errors.ConfigError` whose message names the file, the
table, the key and what is allowed, so a bad config is one line before any stage starts.
"""

import math
import tomllib
from pathlib import Path

from streamer.errors import ConfigError


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing TOML file to --config") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read it ({err})") from None


def get_value(table: dict, key: str, kind, default, where: str, *, low=None, above=None, high=None):
    """``table[key]`` (or ``default``) checked to be a ``kind``; numbers finite and within
    ``low <= value``, ``above < value``, ``value <= high`` where those are given."""
    value = table.get(key, default)
    if value is None or kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):  # TOML allows inf and nan; no setting here means them
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if (low is not None and value < low) or (above is not None and value <= above) or \
            (high is not None and value > high):
        wanted = " and ".join(part for part in (f"≥ {low}" if low is not None else "",
                                                f"> {above}" if above is not None else "",
                                                f"≤ {high}" if high is not None else "") if part)
        raise ConfigError(f"{where}: '{key}' must be {wanted}, got {value!r}")
    return value
