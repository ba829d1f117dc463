"""The Lua engine: one file per algorithm, concatenated into one script per call shape."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from ..types import ALGORITHMS, LEASE_ALGORITHMS

# Fields per rule in ARGV and per rule in the reply; see driver.lua. The
# "lease" mode adds one to ARGV (units wanted) and three to the reply.
ARGV_FIELDS = 9
REPLY_FIELDS = 4
LEASE_REPLY_FIELDS = 7


@dataclass(frozen=True)
class Script:
    """A script (``source``, run by EVALSHA ``sha``) and the same code as a
    Redis 7 function ``function`` of the library ``library``: a function's
    definitions run once, at FUNCTION LOAD, not on every call."""

    source: str
    sha: str
    library: str = ""
    function: str = ""


def as_library(head: str, body: str, sha: str) -> tuple[str, str]:
    """(library, function name): ``head`` (the definitions) at load time,
    ``body`` (the driver, which reads KEYS and ARGV) as the function."""
    name = f"ratelimit_{sha}"
    library = (
        f"#!lua name={name}\n{head}\n"
        f"redis.register_function('{name}', function(KEYS, ARGV)\n{body}\nend)\n"
    )
    return library, name


def read_part(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


# Script kinds: (parts after the algorithms, whether the lease parts are in).
DRIVERS = {
    "single": (("usage", "single"), False),  # one rule, hit or peek
    "driver": (("usage", "driver"), False),  # many rules, hit or peek
    "lease": (("usage", "driver"), True),  # the driver's lease mode
    "give_back": (("give_back",), True),  # unused leased units back
}


@cache
def script_for(algorithms: frozenset[str], kind: str = "driver") -> Script:
    """The prelude, the algorithms a call uses, then what ``kind`` needs.

    A Redis script cannot call another, so the parts are concatenated, and
    Redis runs all of a script's definitions on every call: leaving out unused
    algorithms, and the lease parts where nothing leases, saves that time.
    """
    unknown = algorithms - set(ALGORITHMS)
    if unknown:
        raise ValueError(f"Unknown algorithm(s): {', '.join(sorted(unknown))}")
    tail, leasing = DRIVERS[kind]
    used = [a for a in ALGORITHMS if a in algorithms]
    leases = [f"{a}_lease" for a in used if leasing and a in LEASE_ALGORITHMS]
    parts = ("prelude", *used, *leases, *tail)
    head = "\n".join(read_part(name) for name in parts[:-1])
    body = read_part(parts[-1])
    source = head + "\n" + body
    sha = hashlib.sha1(source.encode()).hexdigest()
    return Script(source, sha, *as_library(head, body, sha))


def full_script() -> Script:
    """Every algorithm in one script (for inspection and preloading)."""
    return script_for(frozenset(ALGORITHMS))
