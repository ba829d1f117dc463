"""The Lua engine: one file per algorithm, concatenated into one script."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib.resources import files

from ..types import ALGORITHMS

# Order matters: helpers first, the driver (the script's body) last.
PARTS = ("prelude", *ALGORITHMS, "driver")

# Fields per rule in ARGV and per rule in the reply; see driver.lua.
ARGV_FIELDS = 6
REPLY_FIELDS = 5


def read_part(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def script_source() -> str:
    """Every part in order; a Redis script cannot call another script."""
    return "\n".join(read_part(name) for name in PARTS)


@cache
def script_sha() -> str:
    return hashlib.sha1(script_source().encode()).hexdigest()
