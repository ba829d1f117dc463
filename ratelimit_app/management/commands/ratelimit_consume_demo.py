"""manage.py ratelimit_consume_demo: drain a Redis list at one global rate.

Start it in as many processes (or hosts) as you like: they share one limiter
key, named after the queue, so together they admit ``--rate`` items. Each
consumer pops an item first and then waits for the limiter (``acquire``), so
every admission is processed at once and the processing rate is the limiter's
rate exactly; the other order would let a consumer hold a permit while the
queue is empty and spend it later, beside fresh ones. Each admission is
stamped with Redis ``TIME``, printed (quiet with -v 0) and pushed to
``--results`` when given. SIGTERM or Ctrl-C stops a consumer within a second;
an item it held but was not yet admitted goes back to the head of the queue.
"""

from __future__ import annotations

import os
import signal
import time

from django.core.management.base import BaseCommand, CommandError

from ratelimit_app import conf, limiter
from ratelimit_app.backends.topology import client_from_url

# Keep each blocking call short, so a stop request is seen within a second.
POLL_SECONDS = 1
# KEYS[1] the results list; ARGV[1] the entry. Stamps it with the server clock.
STAMP = """
local t = redis.call('TIME')
local entry = string.format('%d.%06d %s', t[1], t[2], ARGV[1])
redis.call('RPUSH', KEYS[1], entry)
return entry
"""


class Command(BaseCommand):
    help = (
        "Demo: pop items from a Redis list at a global rate shared by every "
        "process running this command on the same queue."
    )
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--queue", required=True, help="the Redis list to drain")
        parser.add_argument("--rate", default="20/s", help="e.g. 20/s, 100/m")
        parser.add_argument("--burst", type=int, default=None)
        parser.add_argument("--scope", default="demo-consumer")
        parser.add_argument(
            "--results",
            help="a Redis list receiving '<Redis TIME> <pid> <item>' per admission",
        )

    def handle(self, *args, **options) -> None:
        url = conf.get("REDIS_URL")
        if not url:
            raise CommandError("Set RATELIMIT['REDIS_URL'] for the queue.")
        # Its own client: no socket timeout, so BLPOP may block.
        client = client_from_url(url)
        client.ping()
        self.verbosity = options["verbosity"]
        stopping = stop_on_signals()
        self.stdout.write(f"consuming {options['queue']} at {options['rate']}")
        self.stdout.flush()
        admitted = consume(client, options, stopping, self.report)
        self.stdout.write(f"stopped after {admitted} admissions")

    def report(self, entry: bytes) -> None:
        if self.verbosity >= 1:
            self.stdout.write(entry.decode())


def stop_on_signals():
    """SIGTERM/SIGINT set a flag the loop checks between calls."""
    stop = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    return lambda: bool(stop)


def consume(client, options: dict, stopping, report) -> int:
    """Pop, wait for the limiter, stamp; until ``stopping()``."""
    stamp = client.register_script(STAMP)
    queue, admitted = options["queue"], 0
    while not stopping():
        popped = client.blpop([queue], timeout=POLL_SECONDS)
        if popped is None:
            continue
        item = popped[1]
        if not admit(options, stopping):
            client.lpush(queue, item)  # not admitted: back to the head
            break
        admitted += 1
        if options["results"]:
            report(stamp(keys=[options["results"]], args=[_entry(item)]))
        else:
            seconds, micros = client.time()
            report(f"{seconds}.{micros:06d} {_entry(item)}".encode())
    return admitted


def admit(options: dict, stopping) -> bool:
    """Wait for the limiter; False when asked to stop first."""
    while not stopping():
        decision = limiter.acquire(
            options["scope"],
            options["queue"],
            options["rate"],
            burst=options["burst"],
            timeout=POLL_SECONDS,
        )
        if decision.allowed:
            return True
        if decision.retry_after is None:
            raise CommandError(f"--burst is below 1 item: {decision}")
        # retry_after is past the poll: wait in steps that see a stop request.
        time.sleep(min(decision.retry_after, POLL_SECONDS))
    return False


def _entry(item: bytes) -> str:
    return f"{os.getpid()} {item.decode(errors='replace')}"
