"""What the operator commands share: a policy by name, a client from the command
line, its live state, and plain-text tables."""

from __future__ import annotations

import difflib
import ipaddress
import logging
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError
from django.http import HttpRequest
from redis.exceptions import RedisError

from . import actions, limiter
from .enforcement import USER_KEYS
from .explanation import Row, describe_identity, explain_policy, fake_request, peek_rows
from .policies import CompiledPolicy
from .snapshot import store
from .types import Decision, Identity

logger = logging.getLogger("ratelimit_app")

IDENTITY_HELP = (
    "The client, as the policy's key counts it: an IP address for 'ip' policies; "
    "for 'user' and 'user_or_ip' policies a username, user:<id>, or ip:<address> "
    "(an anonymous client); for header:, get:, post:, session and callable keys "
    "the value itself (e.g. the API key)."
)


def find_policy(name: str) -> CompiledPolicy:
    """The policy in force under that name (database, settings or code)."""
    policies = {p.name: p for p in store.policies()}
    if name in policies:
        return policies[name]
    close = difflib.get_close_matches(name, policies, n=5, cutoff=0.5)
    if close:
        hint = "Did you mean: " + ", ".join(close) + "?"
    elif policies:
        shown = sorted(policies)[:20]
        more = f" (and {len(policies) - 20} more)" if len(policies) > 20 else ""
        hint = "Known policies: " + ", ".join(shown) + more + "."
    else:
        hint = "There are no policies."
    raise CommandError(f'Unknown policy "{name}". {hint}')


def find_user(text: str):
    """A user by username, else by id when ``text`` is a number."""
    User = get_user_model()
    manager = User._default_manager
    user = manager.filter(**{User.USERNAME_FIELD: text}).first()
    if user is None and text.isdigit():
        user = manager.filter(pk=int(text)).first()
    if user is None:
        raise CommandError(f'No user with username or id "{text}".')
    return user


def parse_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise CommandError(
            f'{what}: "{text}" is not an IP address (e.g. 203.0.113.7 or 2001:db8::1).'
        ) from None


@dataclass
class Client:
    """One client of a policy, read from the command line."""

    identity: Identity
    label: str  # what may be shown and logged; never a secret value
    request: HttpRequest | None = None  # None: the identity was given verbatim
    username: str = ""


def client_of(policy: CompiledPolicy, text: str) -> Client:
    """The client ``text`` names under the policy's key (see IDENTITY_HELP)."""
    key = policy.spec.key
    if key == "ip":
        ip = parse_ip(text.removeprefix("ip:"), f'policy "{policy.name}" counts by ip')
        return _from_request(policy, fake_request("/", "GET", ip))
    if key in USER_KEYS:
        return _user_client(policy, text)
    return Client(text, f"a {key} value")


def _user_client(policy: CompiledPolicy, text: str) -> Client:
    address = text.removeprefix("ip:")
    try:
        ip = str(ipaddress.ip_address(address))
    except ValueError:
        pass
    else:  # an anonymous client, counted by its address
        return _from_request(policy, fake_request("/", "GET", ip))
    if text.startswith("user:"):
        user = find_user(text.removeprefix("user:"))
    else:
        user = find_user(text)
    # No address: network exemptions do not apply to a user named here.
    request = fake_request("/", "GET", "", user)
    return _from_request(policy, request, user.get_username())


def _from_request(policy, request: HttpRequest, username: str = "") -> Client:
    identity = policy.identify(request)
    label = describe_identity(policy, identity, username)
    return Client(identity, label, request, username)


def client_row(policy: CompiledPolicy, client: Client) -> Row:
    """The client's row (exempt or not, tier rate) with its live usage."""
    if client.request is not None:
        row = explain_policy(policy, client.request, client.username)
    else:
        rule = (policy.rule_spec(frozenset()), client.identity)
        row = Row(policy, client=client.label, rule=rule)
    if row.error:
        raise CommandError(row.error)
    error = peek_rows([row])
    if error:
        raise CommandError(f"Live usage is unavailable: Redis error: {error}")
    return row


def reset_client(policy: CompiledPolicy, client: Client, actor=None) -> None:
    """Forget the client's counters; in the admin history when ``actor`` is given."""
    try:
        if actor is not None:
            actions.reset_client(policy.name, client.identity, client.label, actor)
        else:
            limiter.reset(policy.name, client.identity)
    except RedisError as exc:
        raise CommandError(f"Redis error: {exc}") from exc
    logger.info(
        "ratelimit: reset the counters of %s for policy %r (command line)",
        client.label,
        policy.name,
    )


# -- rendering ---------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:.1f} s" if value % 1 else f"{value:.0f} s"


def usage_text(row: Row) -> str:
    """Remaining / limit, or why there is none."""
    if row.error:
        return "error"
    if row.rule is None:
        return "exempt"
    if row.usage is None:
        return "unknown"
    return f"{row.usage.remaining} / {row.usage.limit}"


def status_lines(row: Row) -> list[tuple[str, str]]:
    """(label, value) pairs describing one client under one policy."""
    spec = row.policy.spec
    lines = [
        ("policy", f"{spec.name} ({spec.source}, {spec.mode})"),
        ("rate", f"{row.rate} ({row.algorithm})"),
        ("key", spec.key),
        ("client", row.client),
    ]
    if row.rule is None:
        return [*lines, ("exempt", "yes: this client is not counted")]
    usage: Decision = row.usage
    return [
        *lines,
        ("limit", str(usage.limit)),
        ("remaining", str(usage.remaining)),
        ("reset", f"in {seconds(usage.reset_after)}"),
        ("retry_after", retry_text(usage)),
    ]


def retry_text(usage: Decision) -> str:
    if usage.retry_after is None:
        return "never (the cost exceeds the capacity)"
    if usage.allowed:
        return "0 s (a request would pass now)"
    return f"{seconds(usage.retry_after)} (blocked)"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces, with a rule under the header.
    Short rows are padded with "-"."""
    rows = [[*row, *["-"] * (len(headers) - len(row))] for row in rows]
    columns = zip(headers, *rows, strict=True)
    widths = [max(len(str(cell)) for cell in column) for column in columns]

    def line(cells) -> str:
        pairs = zip(cells, widths, strict=True)
        return "  ".join(str(cell).ljust(width) for cell, width in pairs).rstrip()

    rule = ["-" * width for width in widths]
    return [line(headers), line(rule), *map(line, rows)]
