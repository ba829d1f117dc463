"""The Lua engine: one file per algorithm, concatenated into one script per call shape."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from ..types import ALGORITHMS

# Fields per rule in ARGV and per rule in the reply; see driver.lua. The
# "lease" mode adds one to ARGV (units wanted) and three to the reply.
ARGV_FIELDS = 8
REPLY_FIELDS = 4
LEASE_REPLY_FIELDS = 7


@dataclass(frozen=True)
class Script:
    source: str
    sha: str


def read_part(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def script_for(algorithms: frozenset[str], driver: str = "driver") -> Script:
    """The prelude, the algorithms a call uses, then the driver (``driver``
    decides; ``give_back`` takes leased units back).

    A Redis script cannot call another, so the parts are concatenated; leaving
    out unused algorithms saves defining them on every call.
    """
    unknown = algorithms - set(ALGORITHMS)
    if unknown:
        raise ValueError(f"Unknown algorithm(s): {', '.join(sorted(unknown))}")
    parts = ("prelude", *(a for a in ALGORITHMS if a in algorithms), driver)
    source = "\n".join(read_part(name) for name in parts)
    return Script(source, hashlib.sha1(source.encode()).hexdigest())


def full_script() -> Script:
    """Every algorithm in one script (for inspection and preloading)."""
    return script_for(frozenset(ALGORITHMS))
