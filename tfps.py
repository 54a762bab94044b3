#!/usr/bin/env python3
"""TFPS, the Telephony Fraud Prevention System.

A SIP redirect server that a PBX asks, before each international call, whether the call may go
out. It answers within a millisecond or two with a verdict code and a human-readable reason,
from blacklists (scanner User-Agents, bad source IPs, fraud number ranges, high-risk countries)
and change analysis (per-account limits on concurrency, daily quotas, repeated A->B calls, new
countries, limits learned from the account's own history).

Standard library only, plus PyMySQL when the database is MySQL/MariaDB.

Contents (sections appear in this order; each depends only on those above it)
   1. Foundations        small helpers: time, durations, lists, logging
   2. Configuration      tfps.conf keys, types, defaults; errors name file, line and key
   3. SIP messages       sans-IO parser and builder for requests and responses
   4. SIP transactions   sans-IO RFC 3261 server transactions with timers G, H, I, J
   5. Numbers            E.164 normalization and longest-prefix country lookup
   6. Database           SQLite / MySQL, schema, migration; every SQL statement behind a named function
   7. Lists              in-memory indexes of number, IP and User-Agent lists
   8. Reputation         AbuseIPDB and APIBAN lookups on a worker pool, shared cache
   9. Alerts             rate-limited alert events, outbox in the database, SMTP and webhook
  10. Engine             the fraud pipeline: call attempt in, verdict out
  11. Training           limits learned from each account's history and its domain's; daily jobs
  12. Replay             the real engine over CDR files with simulated time, in parallel by domain
  13. SIP service        sans-IO redirect server: requests and verdicts in, responses and timers out
  14. Server             selectors event loop moving bytes and timers for UDP and TCP
  15. Admin              account, list and report operations behind the CLI
  16. HTTP               decision API, Prometheus metrics, health and admin API on threads of their own
  17. CLI                argparse subcommands and main()
"""

from __future__ import annotations

import argparse
import base64
import bisect
import configparser
import contextlib
import csv
import ctypes
import datetime as dt
import decimal
import errno
import functools
import gc
import hashlib
import heapq
import hmac
import html
import http.client
import http.server
import ipaddress
import json
import logging
import math
import operator
import os
import platform
import random
import re
import resource
import secrets
import selectors
import signal
import smtplib
import socket
import socketserver
import sqlite3
import ssl
import struct
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zoneinfo
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from email.message import EmailMessage

__version__ = "1.3.0"

# =============================================================================================
# 1. Foundations: small helpers used everywhere below
# =============================================================================================

log = logging.getLogger("tfps")

def program_name(argv0):
    """The name the program was run as, for usage lines and for the undo commands that verdicts
    and alerts print: `tfps` installed, `tfps.py` from a checkout, `tfps.pyz` as built."""
    name = os.path.basename(argv0 or "")
    return name if name.startswith("tfps") else "tfps"


PROG = program_name(sys.argv[0])
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DAYS = 36525  # 100 years: any longer duration is a typo
MAX_APPROVAL_TTL = 30 * 86400  # longest [http] approval_ttl; used links are kept at least this long
MAX_ANOMALY_BLOCK = 30 * 86400  # longest [policy] anomaly_block: a longer block is the administrator's `block`
MAX_DURATION = MAX_DAYS * 86400.0
# Times from 1970 to the last day that has a local date within year 9999 in every timezone.
MAX_TIMESTAMP = dt.datetime(9999, 12, 30, tzinfo=dt.timezone.utc).timestamp()
# What the columns of schema.sql hold: INT, accounts.user VARCHAR(128), accounts.domain VARCHAR(255).
INT_MAX = 2**31 - 1
USER_MAX, DOMAIN_MAX = 128, 255


def parse_duration(text):
    """'90' -> 90.0, '1.5s' -> 1.5, '15m' -> 900.0, '24h', '90d', at most 100 years. Raises ValueError."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 24h, 90d)")
    value = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    if value > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than {MAX_DAYS} days")
    return value


class RandomBytes:
    """Bytes of the kernel's random generator, drawn 4 KiB at a time. os.urandom lets go of the
    interpreter lock: while the call log thread works, the event loop then waited to get it back,
    about 20 µs for each random value of every INVITE."""

    CHUNK = 4096

    def __init__(self):
        self._forget()
        os.register_at_fork(after_in_child=self._forget)  # a worker must not repeat its parent's bytes

    def _forget(self):
        self._lock = threading.Lock()
        self._pool, self._used = b"", 0

    def hex(self, count):
        """`count` random bytes as 2 x `count` hexadecimal digits."""
        with self._lock:
            if self._used + count > len(self._pool):
                self._pool, self._used = os.urandom(self.CHUNK), 0
            start = self._used
            self._used += count
            return self._pool[start:start + count].hex()


random_bytes = RandomBytes()


class Handoff:
    """A result handed from one thread to another that waits for it: one lock, released once the
    result is in (a Future's condition and callbacks cost more, on the path of every HTTP check)."""

    __slots__ = ("_ready", "done", "result")

    def __init__(self):
        self._ready = threading.Lock()
        self._ready.acquire()
        self.done = False
        self.result = None

    def set(self, result):
        """The first result counts; later ones are ignored."""
        if not self.done:
            self.result, self.done = result, True
            self._ready.release()

    def wait(self, timeout):
        """The result; TimeoutError if none was set within `timeout` seconds."""
        if not self._ready.acquire(timeout=timeout):
            raise TimeoutError
        return self.result


def split_list(text):
    """'a, b,,c' -> ['a', 'b', 'c']."""
    if not text:
        return []
    return [item.strip() for item in re.split(r"[,\s]+", text) if item.strip()]


def country_set(text):
    return {c.upper() for c in split_list(text)}


@functools.lru_cache(maxsize=4096)
def shared_countries(text):
    """One frozen set per distinct country list: thousands of accounts share a few lists."""
    return frozenset(country_set(text))


def format_countries(codes):
    return ",".join(sorted(codes))


def fmt_time(ts, tz, form="%Y-%m-%d %H:%M:%S %Z"):
    """A time as an operator reads it: in `tz` ([policy] timezone, the zone of business hours and
    calendar days), with the zone shown. '' for no time."""
    return dt.datetime.fromtimestamp(ts, tz).strftime(form) if ts else ""


UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes that are not UTF-8


def storable(text, size):
    """`text` cut to a column of `size` characters; bytes that were not UTF-8 become U+FFFD, so
    that no row is refused by the database."""
    text = text[:size]
    return text if text.isascii() else UNDECODABLE.sub("\ufffd", text)


def parse_clock(text):
    """'03:30' -> (3, 30); '24:00' is allowed as the end of a day."""
    m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})", text.strip())
    if not m or int(m.group(1)) > 24 or int(m.group(2)) > 59 or (int(m.group(1)) == 24 and int(m.group(2))):
        raise ValueError(f"not a time of day: {text!r} (HH:MM)")
    return int(m.group(1)), int(m.group(2))


def load_timezone(name):
    if name.upper() in ("UTC", "Z", "GMT"):
        return dt.timezone.utc
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name!r} (an IANA name such as Europe/Berlin; "
                         "on Debian install the tzdata package)") from None


def parse_time_arg(text, tz=dt.timezone.utc):
    """An ISO 8601 time (naive means `tz`) -> epoch seconds."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return timestamp_of(when)


def timestamp_of(when):
    """Epoch seconds of an aware datetime between 1970 and MAX_TIMESTAMP. Raises ValueError."""
    try:
        ts = when.timestamp()
    except (OverflowError, ValueError):
        ts = None
    if ts is None or not 0 <= ts <= MAX_TIMESTAMP:
        raise ValueError(f"time {when.isoformat()} is not between 1970-01-01 and 9999-12-30")
    return ts


def printable(text, longest, what, spaces=False):
    """`text` stripped, when it is at most `longest` printable characters, and without spaces
    unless `spaces`. Raises ValueError."""
    value = text.strip()
    if len(value) > longest or not value.isprintable() or (not spaces and " " in value):
        raise ValueError(f"{what} must be at most {longest} printable characters" + ("" if spaces else " without spaces"))
    return value


def account_user(text):
    return _account_part(text.strip(), USER_MAX, "a user")


def account_domain(text):
    """Lowercase, as every lookup reads it."""
    return _account_part(text.strip().lower(), DOMAIN_MAX, "a domain")


def _account_part(value, longest, what):
    if not value or "@" in value:  # '@' separates USER@DOMAIN
        raise ValueError(f"{what} must not be empty or contain '@'")
    return printable(value, longest, what)


def not_utf8(path):
    """The message for a file that failed to decode as UTF-8, naming its first such line."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path}:{number}: not UTF-8 text (byte 0x{line[exc.start]:02X} in column {exc.start + 1}); save it as UTF-8"
    return f"{path}: not UTF-8 text; save it as UTF-8"


def parse_ip(text):
    """An IP address (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr.ipv4_mapped if addr.version == 6 and addr.ipv4_mapped else addr


def is_public_ip(ip):
    """False for private, loopback, link-local, CGNAT, documentation and other special ranges."""
    addr = parse_ip(ip)
    return addr is not None and addr.is_global and not addr.is_multicast


# syslog priorities (sd-daemon(3)): the journal reads a "<N>" prefix as the line's priority
SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class JournalFormatter(logging.Formatter):
    """Lines for the journal: a <N> priority prefix and no timestamp (the journal keeps its own)."""

    def format(self, record):
        text = super().format(record)
        prefix = f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def stderr_is_journal():
    """True when systemd connected stderr to the journal: JOURNAL_STREAM names its device and
    inode (a child that redirected stderr elsewhere inherits the variable, not the stream)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def setup_logging(level="info"):
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s tfps %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


LOGFMT_ESCAPED = re.compile(r'[\x00-\x1f\x7f"\\]')


def logfmt_escape(m):
    return "\\" + m.group() if m.group() in '"\\' else f"\\x{ord(m.group()):02x}"


def logfmt_value(value):
    """A number bare; anything else quoted, with quotes, backslashes and control characters
    escaped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return f'"{LOGFMT_ESCAPED.sub(logfmt_escape, str(value))}"'


def logfmt(**fields):
    """key="value" pairs (logfmt) that fail2ban, Loki and grep can take apart."""
    return " ".join(f"{key}={logfmt_value(value)}" for key, value in fields.items())


class Metrics:
    """Counters and histograms behind /metrics, incremented on the event loop and read by the
    HTTP thread. CPython updates one dict item atomically and copies a dict atomically, so a
    scrape sees every increment at most one scrape late, without a lock on the loop's path."""

    LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self):
        self.counts = {}      # (name, ((label, value), ...)) -> count
        self.histograms = {}  # (name, labels) -> [count per bucket..., count above, sum]

    def inc(self, name, amount=1, **labels):
        self.inc_key((name, tuple(labels.items())), amount)

    def inc_key(self, key, amount=1):
        """inc() of a key built by the caller, (name, ((label, value), ...)): on the path of every
        call, a tuple costs less than half of what keyword arguments do."""
        self.counts[key] = self.counts.get(key, 0) + amount

    def observe(self, name, seconds, **labels):
        self.observe_key((name, tuple(labels.items())), seconds)

    def observe_key(self, key, seconds):
        """observe() of a key built by the caller, as inc_key() takes it."""
        slots = self.histograms.get(key)
        if slots is None:
            slots = self.histograms[key] = [0] * (len(self.LATENCY_BUCKETS) + 2)
        slots[bisect.bisect_left(self.LATENCY_BUCKETS, seconds)] += 1
        slots[-1] += seconds

    def counter(self, name, **labels):
        return self.counts.get((name, tuple(labels.items())), 0)

    def snapshot(self):
        """(counts, histograms) copied for a scrape."""
        return self.counts.copy(), {key: list(slots) for key, slots in self.histograms.copy().items()}


class UserError(Exception):
    """An error the operator can fix; printed as one line, never as a traceback."""


# =============================================================================================
# 2. Configuration: tfps.conf keys, their types and defaults; errors name file, line and key
# =============================================================================================

def _choice(*allowed):
    def parse(text):
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value
    return parse


def _boolean(text):
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def _integer(low=0, high=INT_MAX):
    def parse(text):
        value = text.strip()
        if not re.fullmatch(r"[-+]?[0-9]+", value):
            raise ValueError("must be a whole number")
        if len(value) > 20 or not low <= int(value) <= high:  # int() refuses thousands of digits
            raise ValueError(f"must be between {low} and {high}")
        return int(value)
    return parse


def _duration(low=0.0, high=None):
    """A duration (parse_duration) within [low, high] seconds."""
    def parse(text):
        value = parse_duration(text)
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be between {low:g}s and {high:g}s" if high is not None else f"must be at least {low:g}s")
        return value
    return parse


def _number(low, high):
    def parse(text):
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        if not low <= value <= high:  # also refuses nan
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value
    return parse


def _limit(text):
    """A per-account limit: what an INT column holds, or 'unlimited' (None)."""
    if text.strip().lower() == "unlimited":
        return None
    try:
        return _integer()(text)
    except ValueError:
        raise ValueError(f"must be a whole number from 0 to {INT_MAX}, or unlimited") from None


def _budget(text):
    """A daily spend budget in the rate deck's currency, or 'unlimited' (None)."""
    if text.strip().lower() == "unlimited":
        return None
    try:
        return _number(0, 1e12)(text)
    except ValueError:
        raise ValueError("must be an amount from 0 to 1e12, or unlimited") from None


INHERIT = "inherit"  # a domain or account value given back to the level above


def _inherit_or(parse):
    def parse_or_inherit(text):
        if text.strip().lower() == INHERIT:
            return INHERIT
        try:
            return parse(text)
        except ValueError as exc:
            raise ValueError(f"{exc}, or inherit") from None
    return parse_or_inherit


def _country(text):
    value = text.strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise ValueError("must be an ISO 3166 country code such as US")
    return value


def _countries(text):
    codes = country_set(text)
    bad = [c for c in codes if not re.fullmatch(r"[A-Z]{2}|\*", c)]
    if bad:
        raise ValueError(f"not ISO 3166 country codes: {', '.join(sorted(bad))}")
    return codes


def _cidrs(text):
    try:
        return [ipaddress.ip_network(item, strict=False) for item in split_list(text)]
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _digits_list(text):
    items = split_list(text)
    if any(not item.isdigit() for item in items):
        raise ValueError("must be a list of digit strings")
    return sorted(items, key=len, reverse=True)


def _dialed_prefixes(text):
    """'+44 70, 881' -> ['+44 70', '881']: entries written as numbers are dialed, separated by
    commas (a space may group digits); normalized like dialed numbers once the country table is
    at hand (DestinationTiers)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if not re.fullmatch(r"\+?[0-9][0-9 ().-]*", item) or sum(map(str.isdigit, item)) > 28]
    if bad:
        raise ValueError(f"not number prefixes: {', '.join(bad)} (digits, with '+' or an international prefix as dialed)")
    return items


def _holidays(text):
    try:
        return {dt.date.fromisoformat(item) for item in split_list(text)}
    except ValueError:
        raise ValueError("must be a list of dates YYYY-MM-DD") from None


def _timezone(text):
    load_timezone(text.strip())
    return text.strip()


def _clock(text):
    if parse_clock(text)[0] == 24:
        raise ValueError(f"not a time of day: {text!r} (00:00 to 23:59)")
    return text.strip()


def _text(text):
    """One line of printable text (a value continued on indented lines has newlines)."""
    return printable(text, 1024, "the value", spaces=True)


def _name(longest):
    return lambda text: printable(text, longest, "the value")


def _split_url(url):
    """urllib's parts of `url`, the port checked. Raises ValueError."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.port == 0:
            raise ValueError("Port out of range 1-65535")
    except ValueError as exc:
        raise ValueError(f"bad URL: {exc}") from None
    return parts


def _http_url(text):
    """'' or an http(s) URL with a host."""
    url = _text(text)
    if url:
        parts = _split_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
    return url


def _database_url(text):
    """'' (tfps.db beside tfps.py), sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DB."""
    url = printable(text, 1024, "a database URL", spaces=True)
    if url.startswith(("mysql:", "mariadb:")):
        _split_url(url)
    elif url and not url.startswith("sqlite:"):
        raise ValueError("unsupported database URL (sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DB)")
    return url


def _header_text(text):
    value = text.strip()
    if not re.fullmatch(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*", value) or len(value) > 100:
        raise ValueError("must be 1 to 100 printable ASCII characters")
    return value


def _auto_or(parse):
    """'auto' (None: derived at run time) or what `parse` accepts."""
    def parse_auto(text):
        return None if text.strip().lower() == "auto" else parse(text)
    return parse_auto


def _listen(text):
    return [parse_listen(item) for item in split_list(text)]


def _http_listen(text):
    """'' (off) or HOST:PORT, IPv6 as [::1]:8080 -> (host, port)."""
    if not text.strip():
        return None
    try:
        _transport, host, port = parse_listen(f"tcp:{text.strip()}")
    except ValueError:
        raise ValueError(f"bad listen address {text.strip()!r} (HOST:PORT, IPv6 as [::1]:8080; empty = off)") from None
    return host, port


def _verdict_code(text):
    if not re.fullmatch(r"[A-Za-z][0-9]{2}", text.strip()):
        raise ValueError(f"{text!r} is not a verdict code such as A00 or R06")
    return text.strip().upper()


def _account(text):
    user, _, domain = text.partition("@")
    try:
        return f"{account_user(user)}@{account_domain(domain)}"
    except ValueError:
        raise ValueError(f"{text!r} is not USER@DOMAIN") from None


def _token(text):
    """'' (off) or at least 16 printable ASCII characters without spaces: a bearer token."""
    value = text.strip()
    if value and not re.fullmatch(r"[\x21-\x7e]{16,256}", value):
        raise ValueError("must be 16 to 256 printable ASCII characters without spaces (e.g. from: openssl rand -hex 24)")
    return value


def _business_hours(text):
    return BusinessHours.parse(text)


HIGH_RISK_DEFAULT = "CU, LV, TN, DZ, MA, AF, IQ, LK, MV, TD, GN, EE, MG"
# The premium-rate (and shared-revenue mass-call) ranges of national numbering plans, as their
# regulators publish them: the numbers IRSF pumps, which a customer abroad rarely calls in good
# faith. Only ranges confirmed in a published plan; never mobile or geographic ones.
PREMIUM_RATE_RANGES = {
    "GB": "+44 9",
    "AT": "+43 900, +43 901, +43 930, +43 931",
    "BE": "+32 90",
    "DE": "+49 900, +49 137",
    "PL": "+48 70",
    "LT": "+370 90",
    "LV": "+371 90",
    "EE": "+372 900",
    "RS": "+381 90",
    "CZ": "+420 900, +420 906, +420 909, +420 976",
    "HU": "+36 90, +36 91",
    "HR": "+385 60, +385 64",
    "FR": "+33 89",
    "IT": "+39 89",
    "ES": "+34 803, +34 806, +34 807, +34 905",
    "PT": "+351 601, +351 607, +351 608, +351 646, +351 648",
    "NL": "+31 90",
    "CH": "+41 900, +41 901, +41 906",
    "SE": "+46 900, +46 939, +46 944",
    "DK": "+45 90",
    "NO": "+47 820, +47 829",
    "FI": "+358 600, +358 700",
    "US": "+1 900",
    "AU": "+61 190",
}
# Satellite and international network codes, International Premium Rate (+979), UK personal numbers
# (+44 70) and the national premium-rate ranges: ranges that IRSF and premium-rate fraud pump
# (README, Destination tiers).
HIGH_RISK_PREFIXES_DEFAULT = ", ".join(["+870, +881, +882, +883, +979, +44 70", *PREMIUM_RATE_RANGES.values()])

# What `[policy] emergency_numbers = auto` means, by home country; 112 everywhere else.
EMERGENCY_NUMBERS = {"US": "911, 933", "CA": "911", "GB": "999, 112", "IE": "999, 112", "AU": "000, 112", "NZ": "111, 112"}

# section -> key -> (parser, default text, one-line help). tfps.conf documents the same keys.
CONFIG_SPEC = {
    "server": {
        "listen": (_listen, "udp:0.0.0.0:5060, tcp:0.0.0.0:5060", "sockets to serve: udp:HOST:PORT or tcp:HOST:PORT, IPv6 as udp:[::1]:5060"),
        "mode": (_choice("redirect", "failover", "monitor"), "redirect", "redirect (302 A00/Rnn), failover (503/603) or monitor (always approve, log and alert)"),
        "trusted_peers": (_cidrs, "127.0.0.0/8, ::1", "networks allowed to send SIP; everything else is dropped (logged once a minute per source)"),
        "legacy_headers": (_boolean, "no", "also read the identity from X-tfps, P-Received, P-Source, P-UA and P-Calls"),
        "server_header": (_header_text, "TFPS", "Server header of responses (no version by default: scanners learn nothing)"),
        "redirect_host": (_name(255), "", "host of the 302 Contact URI; empty = the From domain"),
        "max_message_size": (_integer(512, 1 << 20), "65535", "larger messages are dropped (UDP) or answered 513 (TCP)"),
        "tcp_idle_timeout": (parse_duration, "300s", "close TCP connections idle this long"),
        "tcp_max_connections": (_auto_or(_integer(1, 1 << 20)), "auto", "TCP connections at most, accepted or opened for responses; auto = from the open-file limit"),
        "max_transactions": (_integer(100, 10_000_000), "100000", "SIP transactions held at most; past it new requests get 500"),
        "resend_bytes_per_source": (_integer(1024, 1 << 30), "65536", "bytes of retransmitted responses per second at most to one source address"),
        "overload_after": (_duration(0, 60), "0.2s", "an INVITE that waited longer than this before its turn is answered R98 at once, unchecked; 0 = off"),
        "overload": (_choice("reject", "approve"), "reject", "what R98 answers: reject (fail closed) or approve (fail open)"),
        "node_name": (_name(64), "", "this node's name in the call log; empty = the host name"),
        "workers": (_auto_or(_integer(1, 256)), "auto", "processes serving the listen ports (SO_REUSEPORT), each with its own loop and database connection; auto = the number of CPUs the server may use (its affinity mask, lowered by a cgroup v2 CPU quota); 1 = one process"),
        "log_level": (_choice("debug", "info", "warning", "error"), "info", "log verbosity on stderr"),
        "log_verdicts": (_boolean, "yes", "one log line per verdict; R98 answers get one a minute for all of them"),
    },
    "database": {
        "url": (_database_url, "", "sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DB; empty = tfps.db beside tfps.py"),
        "reload_interval": (_duration(0.1, 3600), "2s", "how often servers look for changes made by the CLI or other nodes"),
        "flush_interval": (_duration(0.01, 60), "0.25s", "how often the call log buffer is written (and, on SQLite, verdicts committed); a call log thread (MySQL, several workers) writes up to 1 s of it in one transaction"),
        "timeout": (_duration(0.05, 60), "0.5s", "longest the server waits to connect, read or write (MySQL); past it the database counts as down"),
        "failure": (_choice("continue", "reject"), "continue", "while the database is down: continue (verdicts from memory) or reject (500)"),
        "max_unflushed_rows": (_integer(1000, 10_000_000), "200000", "call log rows held in memory while the database is down and the spool is full; past it the oldest are dropped"),
        "spool": (_text, "", "file where call log rows wait while the database is down, written to it when it is back and at start; empty = DATABASE-spool.jsonl beside the SQLite file (MySQL: tfps-spool-HASH.jsonl beside tfps.py); workers add .N"),
        "spool_max_mb": (_integer(1, 1_000_000), "100", "size of the spool at most, in MB; past it rows wait in memory (max_unflushed_rows)"),
        "quota_lease": (_auto_or(_integer(0, 100_000)), "auto", "calls of an account's daily quota a server claims at a time and spends from memory, written behind every flush_interval; 0 = a database statement per verdict; auto = 32"),
        "lease_ttl": (_duration(2, 3600), "30s", "unspent quota leases of a server that stopped renewing them (killed) go back to the others after this long"),
    },
    "policy": {
        "home_country": (_country, "US", "ISO code of the country the PBX is in"),
        "timezone": (_timezone, "UTC", "IANA timezone for business hours and calendar days"),
        "business_hours": (_business_hours, "mon-fri 09:00-18:00", "ranges such as 'mon-fri 09:00-18:00, sat 09:00-13:00'; 'mon-sun 00:00-24:00' = always"),
        "holidays": (_holidays, "", "dates YYYY-MM-DD treated as off hours"),
        "international_prefixes": (_digits_list, "00, 011", "international access prefixes stripped from dialed numbers"),
        "national_numbers": (_boolean, "no", "numbers without access prefix or '+' are national numbers of home_country"),
        "unknown_accounts": (_choice("enroll", "reject"), "enroll", "enroll unknown accounts with the defaults below, or reject them (R14)"),
        "default_concurrent_calls": (_limit, "10", "concurrent calls allowed in business hours (or 'unlimited')"),
        "default_concurrent_calls_off": (_limit, "2", "concurrent calls allowed off hours"),
        "default_daily_quota": (_limit, "100", "approved calls per business-hours day"),
        "default_daily_quota_off": (_limit, "10", "approved calls per day off hours"),
        "default_source_countries": (_countries, "", "countries callers may be in; empty = home_country"),
        "default_destination_countries": (_countries, "", "countries that may be called; empty = home_country; * = any"),
        "high_risk_countries": (_countries, HIGH_RISK_DEFAULT, "destinations always rejected (R06) unless the number is whitelisted"),
        "low_risk_countries": (_countries, "", "destinations every account may call (tier low); empty = the home country's zone"),
        "high_risk_prefixes": (_dialed_prefixes, HIGH_RISK_PREFIXES_DEFAULT, "number ranges of tier high, as dialed, comma-separated ('+44 70, +881')"),
        "low_risk_prefixes": (_dialed_prefixes, "", "number ranges of tier low, as dialed, comma-separated"),
        "new_destination_calls": (_integer(0, 1000), "3", "calls a day per account to a new medium-tier country approved with an alert; 0 = none"),
        "new_destinations_per_10min": (_integer(0, 1000), "3", "a call to the account's Nth distinct new medium-tier country within 10 minutes is rejected R16 and blocks the account for anomaly_block; 0 = off"),
        "anomaly_block": (_duration(60, MAX_ANOMALY_BLOCK), "1h", "how long R16 blocks an account (1 minute to 30 days); tfps.py unblock lifts it at once"),
        "emergency_numbers": (_auto_or(_digits_list), "auto", "numbers always approved, never counted; auto = by home_country (US 911, 933; GB 999, 112; else 112)"),
        "rate_deck": (_text, "", "CSV file of prefix,price_per_minute (longest prefix wins) for the estimated cost of calls; empty = none"),
        "assumed_call_minutes": (_number(0, 1440), "5", "minutes a call is assumed to last: its estimated cost = price x this"),
        "default_daily_spend": (_budget, "unlimited", "estimated cost of approved calls a day per account (R17), or unlimited"),
        "require_source_country": (_boolean, "no", "reject calls whose source country cannot be told (R05)"),
        "ab_max_calls": (_integer(1, 1000), "5", "calls to one number allowed within ab_window (R13)"),
        "ab_window": (parse_duration, "30s", "window for repeated A->B calls"),
        "ab_block": (parse_duration, "3600s", "how long an A->B pair stays blocked"),
        "max_calls_per_minute": (_integer(), "6", "approved calls per account per 60 s (R15) until training learns the account's own; 0 = off"),
        "learning_days": (_integer(0, MAX_DAYS), "14", "days a new account spends in learning mode (0 = enforce at once)"),
        "learning_concurrent_calls": (_limit, "2", "concurrent calls of an account in learning mode, enforced (R10/R08)"),
        "learning_calls_per_minute": (_integer(), "3", "approved calls per 60 s of an account in learning mode, enforced (R15); 0 = no cap"),
        "learning_daily_quota_off": (_limit, "5", "approved off-hours calls a day of an account in learning mode, enforced (R09)"),
        "train_at": (_clock, "03:30", "daily training time in timezone"),
        "train_window_days": (_integer(1, MAX_DAYS), "90", "history used for training"),
        "train_sigma": (_number(0, 100), "2", "learned quota = ceil(mean + train_sigma x stddev); in business hours at least 1.5 x the busiest day"),
        "train_min_days": (_integer(1, MAX_DAYS), "7", "accounts with fewer days of history keep their limits"),
        "train_min_daily_quota": (_integer(), "10", "lower bound of a learned business-hours quota"),
        "train_max_daily_quota": (_integer(), "1000", "upper bound of a learned business-hours quota"),
        "train_min_daily_quota_off": (_integer(), "2", "lower bound of a learned off-hours quota"),
        "train_max_daily_quota_off": (_integer(), "200", "upper bound of a learned off-hours quota"),
        "train_min_concurrent": (_integer(), "2", "lower bound of a learned business-hours concurrency"),
        "train_max_concurrent": (_integer(), "100", "upper bound of a learned business-hours concurrency"),
        "train_min_concurrent_off": (_integer(), "1", "lower bound of a learned off-hours concurrency"),
        "train_max_concurrent_off": (_integer(), "20", "upper bound of a learned off-hours concurrency"),
        "train_min_calls_per_minute": (_integer(1), "6", "lower bound of a learned calls-per-minute limit (R15)"),
        "train_max_calls_per_minute": (_integer(1), "600", "upper bound of a learned calls-per-minute limit (R15)"),
        "train_min_country_calls": (_integer(1), "3", "approved calls that make a country learned"),
        "anomaly_sigma": (_number(0, 100), "3", "alert when calls today exceed mean + anomaly_sigma x stddev"),
        "offhours_burst": (_integer(), "5", "alert when an account places this many off-hours calls within 10 minutes; 0 = off"),
        "retention_days": (_integer(1, MAX_DAYS), "90", "call log rows older than this are purged daily"),
    },
    "reputation": {
        "abuseipdb_key": (_text, "", "AbuseIPDB API v2 key; empty = no AbuseIPDB lookups"),
        "abuseipdb_url": (_http_url, "https://api.abuseipdb.com", "AbuseIPDB base URL"),
        "abuse_threshold": (_integer(0, 100), "10", "abuseConfidenceScore at or above this rejects (R02)"),
        "reputation_timeout": (parse_duration, "1.5s", "longest an INVITE waits for a lookup"),
        "reputation_failure": (_choice("allow", "reject"), "allow", "verdict when the lookup fails or times out"),
        "reputation_ttl": (parse_duration, "24h", "how long an answer is cached (failures: 5 minutes)"),
        "reputation_workers": (_integer(1, 64), "4", "lookup threads"),
        "apiban_key": (_text, "", "APIBAN key; empty = no APIBAN lookups"),
        "apiban_url": (_http_url, "https://apiban.org", "APIBAN base URL"),
    },
    "alerts": {
        "smtp_host": (_name(255), "", "SMTP server; empty = no e-mail"),
        "smtp_port": (_integer(1, 65535), "25", "SMTP port"),
        "smtp_tls": (_choice("none", "starttls", "ssl"), "none", "none, starttls or ssl"),
        "smtp_user": (_text, "", "SMTP login; empty = no login"),
        "smtp_password": (_text, "", "SMTP password"),
        "smtp_from": (_text, "tfps@localhost", "From address of alert e-mail"),
        "alert_email": (_text, "", "comma-separated recipients of every alert"),
        "alert_webhook": (_http_url, "", "URL receiving a JSON POST per alert (Slack/Mattermost compatible)"),
        "alert_interval": (parse_duration, "15m", "at most one alert per account and rule per interval"),
        "retry_max_interval": (parse_duration, "10m", "longest wait between delivery retries"),
        "summary_at": (_clock, "08:00", "time of the daily per-account rejection summary"),
    },
    "http": {
        "listen": (_http_listen, "", "HOST:PORT of the HTTP interface (decision API, /metrics, health, admin API), IPv6 as [::1]:8080; empty = off"),
        "allow_from": (_cidrs, "127.0.0.0/8, ::1", "networks allowed to use the HTTP interface, except the approval pages /approve/ that account owners open; others get 403"),
        "api_token": (_token, "", "bearer token of the admin API under /v1/ (16 to 256 characters); empty = admin API off"),
        "max_connections": (_integer(1, 10000), "64", "HTTP connections open at most; past it new ones get 503"),
        "request_timeout": (_duration(0.5, 3600), "15s", "a connection is closed when a complete request has not arrived this long after it opened or after the previous answer"),
        "check_timeout": (_duration(0.1, 60), "3s", "longest a check waits for its verdict (a reputation lookup included); past it 504"),
        "max_body_size": (_integer(1024, 1 << 20), "65536", "larger request bodies get 413"),
        "public_url": (_http_url, "", "base URL of this interface as account owners reach it, for the approval links in alerts; empty = no links"),
        "secret": (_token, "", "key signing the approval links (16 to 256 characters); empty = no links"),
        "approval_ttl": (_duration(60, MAX_APPROVAL_TTL), "24h", "how long an approval link can be used"),
        "approval_days": (_integer(1, MAX_DAYS), "7", "days a country allowed through an approval link stays allowed"),
    },
}

SECRET_KEYS = {"abuseipdb_key", "apiban_key", "smtp_password", "alert_webhook", "api_token", "secret"}


class ConfigError(UserError):
    pass


class Section(argparse.Namespace):
    """One [section] of a Config. Read-only once the Config is in service (Config.freeze): a
    running server that reloads builds a new Config and hands it to the objects that use it."""

    _frozen = False

    def __setattr__(self, key, value):
        if self._frozen:
            raise AttributeError(f"the configuration in service is read-only ({key}): load a new Config")
        super().__setattr__(key, value)


class Config:
    """Typed configuration: cfg.policy.timezone, cfg.server.mode, ... plus where each came from."""

    def __init__(self, path=None):
        self.path = path
        self.raw = {}
        for section, keys in CONFIG_SPEC.items():
            ns = Section()
            self.raw[section] = {}
            for key, (parse, default, _help) in keys.items():
                setattr(ns, key, parse(default))
                self.raw[section][key] = default
            setattr(self, section, ns)

    @classmethod
    def load(cls, path=None):
        cfg = cls(path)
        if path:
            cfg._read(path)
        cfg._finish()
        return cfg

    def freeze(self):
        """From now on no section changes: the Config is in service."""
        for section in CONFIG_SPEC:
            object.__setattr__(getattr(self, section), "_frozen", True)
        return self

    def replace(self, section, key, value):
        """Set a value that is already parsed (a command-line option), before the Config is in service."""
        setattr(getattr(self, section), key, value)

    def _read(self, path):
        try:
            with open(path, encoding="utf-8-sig") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(not_utf8(path)) from None
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                           strict=True, empty_lines_in_values=False)
        parser.optionxform = str
        try:
            parser.read_string(text, source=path)
        except configparser.Error as exc:
            line = getattr(exc, "lineno", None)
            where = f"{path}:{line}" if line else path
            raise ConfigError(f"{where}: {exc.message.splitlines()[0]}") from None
        lines = text.splitlines()
        for section in parser.sections():
            if section not in CONFIG_SPEC:
                raise ConfigError(f"{path}:{_line_of(lines, section, None)}: unknown section [{section}] "
                                  f"(known: {', '.join(CONFIG_SPEC)})")
            for key, value in parser.items(section):
                self.set(section, key, value, where=f"{path}:{_line_of(lines, section, key)}")

    def set(self, section, key, value, where="command line"):
        spec = CONFIG_SPEC[section].get(key)
        if spec is None:
            raise ConfigError(f"{where}: unknown key '{key}' in [{section}]")
        try:
            setattr(getattr(self, section), key, spec[0](value))
        except ValueError as exc:
            shown = "" if key in SECRET_KEYS or key == "url" else f" = {value!r}"  # a URL can hold a password
            raise ConfigError(f"{where}: [{section}] {key}{shown}: {exc}") from None
        self.raw[section][key] = value
        if section == "policy" and key in ("low_risk_countries", "high_risk_countries"):
            self._check_tiers(where)
        if section == "policy" and key in ("home_country", "timezone", "default_source_countries",
                                           "default_destination_countries", "emergency_numbers"):
            self._finish()

    def _check_tiers(self, where):
        """A country listed both low and high is a mistake; the default high list yields to the low one."""
        p, raw = self.policy, self.raw["policy"]
        if raw["high_risk_countries"] != HIGH_RISK_DEFAULT:
            both = p.low_risk_countries & p.high_risk_countries
            if both:
                raise ConfigError(f"{where}: [policy] low_risk_countries and high_risk_countries both list "
                                  f"{format_countries(both)}")

    def _finish(self):
        p = self.policy
        p.tz = load_timezone(p.timezone)
        raw = self.raw["policy"]  # derived from the text, so the order of the keys does not matter
        p.default_source_countries = _countries(raw["default_source_countries"]) or {p.home_country}
        p.default_destination_countries = _countries(raw["default_destination_countries"]) or {p.home_country}
        p.emergency_numbers = set(_auto_or(_digits_list)(raw["emergency_numbers"])
                                  or split_list(EMERGENCY_NUMBERS.get(p.home_country, "112")))
        if not self.server.node_name:
            self.server.node_name = socket.gethostname()

    def effective(self, mask=True):
        """The keys as given, per section; with `mask`, the secret keys as '****'. A password
        inside [database] url is for the caller to hide (redact_url, with the database code)."""
        return {section: {k: ("****" if mask and k in SECRET_KEYS and v else v) for k, v in keys.items()}
                for section, keys in self.raw.items()}


def _line_of(lines, section, key):
    """Line number of `key` in `[section]` (or of the section header when key is None)."""
    current = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        m = re.fullmatch(r"\[([^\]]+)\]", stripped)
        if m:
            current = m.group(1).strip()
            if key is None and current == section:
                return number
        elif current == section and key is not None and re.match(rf"{re.escape(key)}\s*[=:]", stripped):
            return number
    return "?"


def default_config_path():
    return "/etc/tfps/tfps.conf" if os.path.exists("/etc/tfps/tfps.conf") else None


def parse_listen(spec):
    """'udp:0.0.0.0:5060' -> ('udp', '0.0.0.0', 5060); IPv6 as 'udp:[::1]:5060'."""
    m = re.fullmatch(r"(udp|tcp):(\[[0-9a-fA-F:.]+\]|[^:\[\]]+):(\d{1,5})", spec.strip().lower())
    if not m or not 0 < int(m.group(3)) < 65536:
        raise ValueError(f"bad listen spec {spec!r} (udp:HOST:PORT or tcp:HOST:PORT, IPv6 as udp:[::1]:5060)")
    return m.group(1), m.group(2).strip("[]"), int(m.group(3))


def format_listen(listen):
    """('udp', '::1', 5060) -> 'udp:[::1]:5060', as parse_listen reads it."""
    transport, host, port = listen
    return f"{transport}:[{host}]:{port}" if ":" in host else f"{transport}:{host}:{port}"


WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class BusinessHours:
    """Weekly business-hours ranges; holidays and everything outside the ranges are off hours."""

    def __init__(self, ranges, text):
        self.ranges = ranges  # weekday -> list of (start_minute, end_minute)
        self.text = text

    @classmethod
    def parse(cls, text):
        ranges = {d: [] for d in range(7)}
        for part in [p.strip() for p in text.split(",") if p.strip()]:
            m = re.fullmatch(r"([a-z]{3})(?:-([a-z]{3}))?\s+(\d{1,2}:\d{2})-(\d{1,2}:\d{2})", part.lower())
            if not m or m.group(1) not in WEEKDAYS or (m.group(2) and m.group(2) not in WEEKDAYS):
                raise ValueError(f"bad range {part!r} (example: mon-fri 09:00-18:00)")
            first = WEEKDAYS.index(m.group(1))
            last = WEEKDAYS.index(m.group(2) or m.group(1))
            start, end = (h * 60 + mi for h, mi in (parse_clock(m.group(3)), parse_clock(m.group(4))))
            if start >= end:
                raise ValueError(f"bad range {part!r}: start must be before end")
            day = first
            while True:
                ranges[day].append((start, end))
                if day == last:
                    break
                day = (day + 1) % 7
        return cls(ranges, text)

    def contains(self, local, holidays=()):
        if holidays and local.date() in holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self.ranges[local.weekday()])

    def next_change(self, local, holidays=()):
        """The minute of `local`'s day (1440: midnight) before which contains() cannot change."""
        if holidays and local.date() in holidays:
            return 1440
        minute = local.hour * 60 + local.minute
        return min((edge for edges in self.ranges[local.weekday()] for edge in edges if edge > minute), default=1440)


# =============================================================================================
# 3. SIP messages: sans-IO parser and builder (bytes in, objects out; no sockets here)
# =============================================================================================

COMPACT_HEADERS = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact",
                   "l": "content-length", "k": "supported", "s": "subject", "c": "content-type",
                   "e": "content-encoding"}
SINGLE_VALUE_HEADERS = frozenset(("from", "to", "call-id", "cseq", "max-forwards", "content-length"))
ECHOED_HEADERS = ("via", "from", "to", "call-id", "cseq", "max-forwards", "content-length", "require")
TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
TOKEN_RE = re.compile(rf"[{TOKEN_CHARS}]+")
REQUEST_LINE_RE = re.compile(rf"([{TOKEN_CHARS}]+) (\S+) SIP/(\d+\.\d+)")
STATUS_LINE_RE = re.compile(r"SIP/2\.0 ([1-6]\d\d)(?: (.*))?")
VIA_RE = re.compile(rf"SIP\s*/\s*\d+\.\d+\s*/\s*([{TOKEN_CHARS}]+)\s+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)"
                    r"(?:\s*:\s*(\d{1,5}))?(.*)", re.S)
PARAM_RE = re.compile(rf'\s*;\s*([{TOKEN_CHARS}]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|\[[0-9A-Fa-f:.]+\]|[^\s;,"]+))?\s*')
BRANCH_COOKIE = "z9hG4bK"
# The parser's other patterns, compiled once: re's own cache costs a lookup per call, some twenty per INVITE.
LINE_BREAK_RE = re.compile(r"\r?\n")
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,9}")
CSEQ_RE = re.compile(rf"(\d{{1,10}})\s+([{TOKEN_CHARS}]+)")
MAX_FORWARDS_RE = re.compile(r"0*([0-9]{1,3})")
URI_SCHEME_RE = re.compile(r"[a-z][a-z0-9+\-.]*")
WHITESPACE_RE = re.compile(r"\s")
URI_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?::(\d{1,5}))?")
QUOTED_DISPLAY_RE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*', re.S)
ADDR_SPEC_NEEDS_ANGLES_RE = re.compile(r"[\s,?]")
TAG_PARAM_RE = re.compile(r";\s*tag\s*=", re.I)
EMPTY_RPORT_RE = re.compile(r";\s*rport(?=\s*(?:;|$))", re.I)
CALL_COUNT_RE = re.compile(r"[0-9]{1,6}")
# The forms nearly every request has, read by one pattern each: <sip:user@host:port>;tag=t
PLAIN_SIP_URI_RE = re.compile(r"(sips?):([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9\-.]+)(?::(\d{1,5}))?")
PLAIN_NAME_ADDR_RE = re.compile(rf"<((sips?):([A-Za-z0-9\-_.!~*'()&=+$,]+)@([A-Za-z0-9\-.]+)(?::(\d{{1,5}}))?)>(?:;tag=([{TOKEN_CHARS}]+))?")
PLAIN_VIA_RE = re.compile(rf"SIP/2\.0/([A-Z]+) ([A-Za-z0-9\-.]+)(?::(\d{{1,5}}))?;branch=([{TOKEN_CHARS}]+)(;rport)?")
ADDRESS_WITH_PORT_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::\d+)?|(\d+\.\d+\.\d+\.\d+):\d+")

REASONS = {100: "Trying", 200: "OK", 302: "Moved Temporarily", 400: "Bad Request",
           405: "Method Not Allowed", 416: "Unsupported URI Scheme", 420: "Bad Extension", 481: "Call/Transaction Does Not Exist",
           482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
           487: "Request Terminated", 500: "Server Internal Error", 503: "Service Unavailable",
           505: "Version Not Supported", 513: "Message Too Large", 603: "Decline"}


class SipError(Exception):
    """A message that cannot be used: status and reason phrase for the answer, if one can be routed."""

    def __init__(self, status, reason):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass
class SipUri:
    scheme: str
    user: str = ""
    host: str = ""
    port: int | None = None
    params: dict = field(default_factory=dict)
    headers: str = ""


@dataclass
class NameAddr:
    display: str
    uri: SipUri
    raw_uri: str
    params: dict


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict
    raw: str

    @property
    def branch(self):
        return self.params.get("branch") or ""

    @property
    def sent_by(self):
        return f"{self.host.lower()}:{self.port or 5060}"


class SipMessage:
    """A parsed request or response. Header names are stored lower-case and in long form."""

    __slots__ = ("method", "uri", "version", "status", "reason", "headers", "first", "header", "body", "defect", "_vias")

    def __init__(self):
        self.method = self.uri = self.reason = None
        self.version = "2.0"
        self.status = 0
        self.headers = []  # (lower-case long name, value) in arrival order
        self.first = {}    # name -> first value
        self.header = self.first.get  # header(name): its first value, or None
        self.body = b""
        self.defect = None  # (status, reason) of the first problem found, for a request
        self._vias = None

    @property
    def is_request(self):
        return self.method is not None

    def header_values(self, name):
        values = []
        for key, value in self.headers:
            if key == name:
                values.extend(split_header_values(value))
        return values

    def vias(self):
        """All Via values, top first; raises SipError when one is malformed."""
        if self._vias is None:
            self._vias = [parse_via(value) for value in self.header_values("via")]
        return self._vias

    def flag(self, status, reason):
        if self.defect is None:
            self.defect = (status, reason)


def split_header_values(value):
    """Split a comma-separated header value, ignoring commas inside quotes and <...>."""
    if "," not in value:
        return [value.strip()]
    parts, current, quoted, angle, escaped = [], [], False, False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle = True
        elif ch == ">" and not quoted:
            angle = False
        elif ch == "," and not quoted and not angle:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_params(text):
    """';a=1;b' -> {'a': '1', 'b': ''}; raises ValueError unless `text` is only parameters."""
    params, pos = {}, 0
    while pos < len(text):
        m = PARAM_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad parameters: {text.strip()[:40]!r}")
        params[m.group(1).lower()] = m.group(2) or ""
        pos = m.end()
    return params


def parse_via(value):
    value = value.strip()
    m = PLAIN_VIA_RE.fullmatch(value)
    port = int(m.group(3)) if m and m.group(3) else None
    if m and (port is None or 0 < port < 65536):  # what parse_any_via makes of it, for a fraction of the cost
        params = {"branch": m.group(4), "rport": ""} if m.group(5) else {"branch": m.group(4)}
        return Via(m.group(1), m.group(2), port, params, value)
    return parse_any_via(value)


def parse_any_via(value):
    """A stripped Via value of any form RFC 3261 allows -> Via; raises SipError when malformed."""
    m = VIA_RE.fullmatch(value)
    if not m:
        raise SipError(400, "Malformed Via Header")
    try:
        params = parse_params(m.group(4)) if m.group(4).strip() else {}
    except ValueError:
        raise SipError(400, "Malformed Via Header") from None
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipError(400, "Malformed Via Header")
    return Via(m.group(1).upper(), m.group(2).strip("[]"), port, params, value)


def parse_uri(text):
    """sip:, sips: and tel: URIs; any other scheme yields SipUri with only `scheme` set."""
    m = PLAIN_SIP_URI_RE.fullmatch(text)
    if m:  # what parse_any_uri makes of it, for a fraction of the cost
        return SipUri(m.group(1), m.group(2), m.group(3).lower(), int(m.group(4)) if m.group(4) else None, {}, "")
    return parse_any_uri(text)


def parse_any_uri(text):
    """A URI of any form and scheme -> SipUri; raises ValueError when malformed."""
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not URI_SCHEME_RE.fullmatch(scheme):
        raise ValueError(f"not a URI: {text[:40]!r}")
    if WHITESPACE_RE.search(rest):
        raise ValueError("whitespace inside a URI")
    if scheme == "tel":
        number, _, params = rest.partition(";")
        return SipUri("tel", user=urllib.parse.unquote(number, errors="surrogateescape"), params=parse_params(";" + params) if params else {})
    if scheme not in ("sip", "sips"):
        return SipUri(scheme)
    user = ""
    if "@" in rest:
        user, _, rest = rest.partition("@")
        user = user.partition(":")[0]  # drop a password
    rest, _, headers = rest.partition("?")
    m = URI_HOST_RE.match(rest)
    if not m:
        raise ValueError(f"bad host in URI {text[:40]!r}")
    params = parse_params(rest[m.end():]) if rest[m.end():] else {}
    # an escaped byte that is not UTF-8 stays recognizable (UNDECODABLE), as an unescaped one does
    return SipUri(scheme, urllib.parse.unquote(user, errors="surrogateescape"), m.group(1).strip("[]").lower(),
                  int(m.group(2)) if m.group(2) else None, params, headers)


def parse_name_addr(value):
    """From/To/Contact value -> NameAddr; raises ValueError when malformed."""
    text = value.strip()
    m = PLAIN_NAME_ADDR_RE.fullmatch(text)
    if m:  # what parse_any_name_addr makes of it (the URI as parse_uri reads it), for a fraction of the cost
        uri = SipUri(m.group(2), m.group(3), m.group(4).lower(), int(m.group(5)) if m.group(5) else None, {}, "")
        return NameAddr("", uri, m.group(1), {"tag": m.group(6)} if m.group(6) else {})
    return parse_any_name_addr(text)


def parse_any_name_addr(text):
    """A stripped name-addr or addr-spec of any form -> NameAddr; raises ValueError when malformed."""
    display = ""
    if text.startswith('"'):
        m = QUOTED_DISPLAY_RE.match(text)
        if not m:
            raise ValueError("unterminated quoted display name")
        display, text = m.group(1), text[m.end():]
        if not text.startswith("<"):
            raise ValueError("display name without <URI>")
    if "<" in text:
        before, _, after = text.partition("<")
        if before.strip() and not all(TOKEN_RE.fullmatch(w) for w in before.split()):
            raise ValueError("display name with characters that need quotes")
        display = display or " ".join(before.split())
        raw_uri, closed, params = after.partition(">")
        if not closed:
            raise ValueError("unterminated <URI>")
    else:
        raw_uri, _, params = text.partition(";")
        raw_uri = raw_uri.strip()
        params = ";" + params if params else ""
        if ADDR_SPEC_NEEDS_ANGLES_RE.search(raw_uri):
            raise ValueError("addr-spec with characters that need <>")
    return NameAddr(display, parse_uri(raw_uri.strip()), raw_uri.strip(), parse_params(params) if params.strip() else {})


def _split_head_body(data):
    for sep in (b"\r\n\r\n", b"\n\n"):
        idx = data.find(sep)
        if idx >= 0:
            return data[:idx], data[idx + len(sep):]
    return data.rstrip(b"\r\n"), b""


HEADER_NAMES = {}  # a header name as written (up to the colon) -> its lower-case long form
MAX_HEADER_NAMES = 1024  # hostile requests must not grow it without bound


def header_name(written):
    """The lower-case long name of a header name as written, remembered; None when it is no token."""
    name = written.rstrip(" \t")
    if not TOKEN_RE.fullmatch(name):
        return None
    name = name.lower()
    name = COMPACT_HEADERS.get(name, name)
    if len(HEADER_NAMES) < MAX_HEADER_NAMES:
        HEADER_NAMES[written] = name
    return name


def parse_message(data):
    """Bytes of one SIP message -> SipMessage. Raises SipError only when no start line or header
    section can be read at all; other problems are noted in `.defect` so a request can still be
    answered with an error response."""
    head, body = _split_head_body(data.lstrip(b"\r\n"))
    text = head.decode("utf-8", "surrogateescape")
    crlf = text.count("\r\n")
    # str.split is some ten times faster than the pattern; it serves whenever every line ends in CRLF
    lines = text.split("\r\n") if text.count("\n") == crlf else LINE_BREAK_RE.split(text)
    msg = SipMessage()
    start = lines[0]
    m = REQUEST_LINE_RE.fullmatch(start)
    if m:
        msg.method, msg.uri, msg.version = m.group(1), m.group(2), m.group(3)
        if msg.version != "2.0":
            msg.flag(505, "Version Not Supported")
    elif start.startswith("SIP/"):
        m = STATUS_LINE_RE.fullmatch(start)
        if not m:
            raise SipError(400, "Malformed Status Line")
        msg.status, msg.reason = int(m.group(1)), m.group(2) or ""
    elif re.match(rf"[{TOKEN_CHARS}]+ ", start) and re.search(r" SIP/\d+\.\d+\s*$", start):
        msg.method = start.split(" ", 1)[0]
        msg.uri = start.split()[1] if len(start.split()) > 1 else ""
        msg.flag(400, "Malformed Request Line")
    else:
        raise SipError(400, "Not a SIP message")
    if text.count("\r") == crlf and "\n " not in text and "\n\t" not in text:
        _read_plain_headers(msg, lines)
    else:
        _read_headers(msg, lines)
    if not head.isascii():
        _flag_undecodable(msg, start)
    msg.body = _frame_body(msg, body)
    return msg


def _read_plain_headers(msg, lines):
    """The header lines of the common message, with neither a bare CR nor a continuation line,
    in one pass; a message that has either goes through _read_headers."""
    headers, first, known_names = msg.headers, msg.first, HEADER_NAMES
    repeated = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        known = known_names.get(name) or header_name(name)
        if known is None or not colon:
            msg.flag(400, "Malformed Header Line")
            continue
        value = value.strip()
        headers.append((known, value))
        if known in SINGLE_VALUE_HEADERS:
            if _repeats(known, first.setdefault(known, value), value) and repeated is None:
                repeated = known
        elif known not in first:
            first[known] = value
    if repeated:
        msg.flag(400, f"Multiple {repeated.title()} Values")


def _read_headers(msg, lines):
    """The header lines of any message: continuation lines folded, bare CRs flagged."""
    for line in lines[1:]:
        if "\r" in line:  # a bare CR would reach the answer, which echoes headers
            msg.flag(400, "Bare CR In Header")
        if line[:1] in (" ", "\t"):
            if not msg.headers:
                raise SipError(400, "Continuation line before any header")
            name, value = msg.headers[-1]
            msg.headers[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        name, colon, value = line.partition(":")
        known = HEADER_NAMES.get(name) or header_name(name)
        if known is None or not colon:
            msg.flag(400, "Malformed Header Line")
            continue
        msg.headers.append((known, value.strip()))
    for name, value in msg.headers:
        first = msg.first.setdefault(name, value)
        if name in SINGLE_VALUE_HEADERS and _repeats(name, first, value):
            msg.flag(400, f"Multiple {name.title()} Values")


def _repeats(name, first, value):
    """A header that must have one value has another: a second line, or a list in one."""
    return first != value or ("," in value and name not in ("from", "to") and len(split_header_values(value)) > 1)


def _flag_undecodable(msg, start):
    """Bytes that are not UTF-8 where a request is routed or echoed: no answer could be trusted."""
    if UNDECODABLE.search(start):
        msg.flag(400, "Invalid UTF-8 In Request-Line")
    for name, value in msg.headers:
        if name in ECHOED_HEADERS and UNDECODABLE.search(value):
            msg.flag(400, f"Invalid UTF-8 In {name.title()} Header")


def _frame_body(msg, body):
    length = msg.header("content-length")
    if length is None:
        return body
    defect = length_defect(length, len(body))
    if defect:
        msg.flag(*defect)
        return body
    return body[:int(length)]


def length_defect(length, available):
    """(status, reason) when a Content-Length value is malformed or longer than the `available`
    bytes of body, else None."""
    if not CONTENT_LENGTH_RE.fullmatch(length):
        return 400, "Bad Content-Length"
    if int(length) > available:
        return 400, "Content-Length Exceeds Message"
    return None


def validate_request(msg):
    """RFC 3261 sanity checks of a parsed request; raises SipError with the answer to send.
    Returns the Request-URI and the From header, parsed."""
    if msg.defect:
        raise SipError(*msg.defect)
    for name in ("via", "from", "to", "call-id", "cseq"):
        if msg.header(name) is None:
            raise SipError(400, f"Missing {name.title()} Header")
    defect = sequence_defect(msg.header, msg.method)
    if defect:
        raise SipError(*defect)
    try:
        from_addr = parse_name_addr(msg.header("from"))
    except ValueError:
        raise SipError(400, "Malformed From Header") from None
    try:
        parse_name_addr(msg.header("to"))
    except ValueError:
        raise SipError(400, "Malformed To Header") from None
    try:
        uri = parse_uri(msg.uri)
    except ValueError:
        raise SipError(400, "Malformed Request-URI") from None
    if uri.scheme not in ("sip", "sips", "tel"):
        raise SipError(416, "Unsupported URI Scheme")
    if uri.headers:
        raise SipError(400, "Headers Not Allowed In Request-URI")
    return uri, from_addr


# The request line of an INVITE of the form nearly every PBX sends, read by read_plain_invite
PLAIN_INVITE_LINE_RE = re.compile(r"INVITE (sips?:([A-Za-z0-9\-_.!~*'()&=+$,]+)@[A-Za-z0-9\-.]+(?::\d{1,5})?) SIP/2\.0")
# the headers read_plain_invite reads besides Via: those the answer echoes or checks, and Require
PLAIN_INVITE_HEADERS = frozenset(("from", "to", "call-id", "cseq", "max-forwards", "content-length", "require"))


class PlainInvite:
    """What read_plain_invite reads of an INVITE: build_response, TransactionLayer.key and
    unsupported_extensions take it as they take a SipMessage."""

    __slots__ = ("uri", "user", "from_host", "vias", "header")
    method = "INVITE"

    def __init__(self, uri, user, from_host, vias, first):
        self.uri = uri              # the Request-URI, as written
        self.user = user            # of the Request-URI
        self.from_host = from_host  # lower-case, as parse_uri gives it
        self.vias = vias            # Via, top first
        self.header = first.get     # header(name): the value of a header it read


def read_plain_invite(data):
    """An INVITE of the form nearly every PBX sends, read only as far as an answer without a
    verdict (R98) needs, at a third of what parse_message and validate_request cost: past the
    sustainable rate every answer must cost as little as it can. A PlainInvite, or None for any
    other message, which takes the full path: the two must read alike whatever the bytes (test
    it). The head is ASCII, its lines end in CRLF and none continues another; the Via, From,
    To, Request-URI and the echoed single-value headers are each one plain value; there is no
    Require header."""
    end = data.find(b"\r\n\r\n")
    head = data[:end]
    if end < 0 or not head.isascii():
        return None
    head = head.decode("ascii")
    start_end = head.find("\r\n")
    line = PLAIN_INVITE_LINE_RE.fullmatch(head, 0, start_end)
    breaks = head.count("\r\n")
    if start_end < 0 or not line or head.count("\r") != breaks or head.count("\n") != breaks:
        return None
    vias, first = [], {}
    for text in head[start_end + 2:].split("\r\n"):
        written, colon, value = text.partition(":")
        name = HEADER_NAMES.get(written) or header_name(written)  # None for a continuation line too
        if name is None or not colon:
            return None
        if name != "via" and name not in PLAIN_INVITE_HEADERS:
            continue
        if "," in value or name in first:  # a list in one line, or a header twice
            return None
        if name == "via":
            vias.append(value.strip())
        else:
            first[name] = value.strip()
    sender = PLAIN_NAME_ADDR_RE.fullmatch(first.get("from") or "")
    if (not vias or "require" in first or not sender or not first.get("call-id") or "cseq" not in first
            or not PLAIN_NAME_ADDR_RE.fullmatch(first.get("to") or "") or sequence_defect(first.get, "INVITE")
            or length_defect(first.get("content-length", "0"), len(data) - end - 4)):
        return None
    try:
        vias = [parse_via(value) for value in vias]
    except SipError:
        return None
    return PlainInvite(line.group(1), line.group(2), sender.group(4).lower(), vias, first)


def sequence_defect(header, method):
    """(status, reason) when the CSeq of a request of `method` (present) or its Max-Forwards is
    malformed, else None; `header(name)` gives a header's value."""
    m = CSEQ_RE.fullmatch(header("cseq"))
    if not m or int(m.group(1)) >= 2 ** 31:
        return 400, "Malformed CSeq Header"
    if m.group(2) != method:
        return 400, "CSeq Method Does Not Match Request"
    hops = MAX_FORWARDS_RE.fullmatch(header("max-forwards") or "70")
    if not hops or int(hops.group(1)) > 255:
        return 400, "Malformed Max-Forwards Header"
    return None


def unsupported_extensions(msg):
    """The option tags of Require (RFC 3261 8.2.2.3): TFPS supports no extension, so all of them.
    CANCEL and ACK never carry a Require that counts."""
    if msg.method in ("CANCEL", "ACK") or msg.header("require") is None:
        return []
    return [tag for tag in msg.header_values("require") if tag]


def has_tag(name_addr_value):
    params = name_addr_value.rpartition(">")[2] if "<" in name_addr_value else name_addr_value
    return TAG_PARAM_RE.search(params) is not None


def tag_of(name_addr_value):
    try:
        return parse_name_addr(name_addr_value).params.get("tag", "")
    except ValueError:
        return ""


def build_response(req, status, reason=None, *, vias, to_tag=None, headers=(), server="TFPS"):
    """Response bytes for `req`. `vias` are the Via values to echo (top one already carrying
    received/rport); `to_tag` is added to To when it has none."""
    to = req.header("to") or ""
    if to_tag and not has_tag(to):
        to = f"{to};tag={to_tag}"
    lines = [f"SIP/2.0 {status} {reason or REASONS.get(status, 'Unknown')}"]
    lines += [f"Via: {v}" for v in vias]
    lines += [f"From: {req.header('from') or ''}", f"To: {to}", f"Call-ID: {req.header('call-id') or ''}",
              f"CSeq: {req.header('cseq') or ''}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Server: {server}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


class StreamFramer:
    """Cuts a TCP byte stream into SIP messages framed by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, max_size):
        self.max_size = max_size
        self.buffer = bytearray()

    def feed(self, data):
        """Append bytes; return a list of complete messages. Raises SipError(513) when a message
        grows past max_size and SipError(400) when one has no usable Content-Length."""
        self.buffer += data
        messages = []
        while True:
            while self.buffer[:2] == b"\r\n":
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > self.max_size:
                    raise SipError(513, "Message Too Large")
                return messages
            head = bytes(self.buffer[:end])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*$", head)
            if not m:
                raise SipError(400, "Missing Content-Length")
            if len(m.group(1)) > 9:
                raise SipError(400, "Bad Content-Length")
            total = end + 4 + int(m.group(1))
            if total > self.max_size:
                raise SipError(513, "Message Too Large")
            if len(self.buffer) < total:
                return messages
            messages.append(bytes(self.buffer[:total]))
            del self.buffer[:total]


# =============================================================================================
# 4. SIP transactions: sans-IO RFC 3261 §17.2 server transactions and their timers
# =============================================================================================

T1, T2, T4 = 0.5, 4.0, 5.0

PROCEEDING, COMPLETED, CONFIRMED, TERMINATED = "proceeding", "completed", "confirmed", "terminated"

# The server transactions of RFC 3261 §17.2.1 (INVITE) and §17.2.2 (non-INVITE) as data: state ->
# event -> next state. Every change of state goes through TransactionLayer.advance; an event that
# its state does not list is illegal there. Timers are named by their event; one that fires after
# its state has passed is stale and dropped before it gets here.
TRANSITIONS = {
    PROCEEDING: {"provisional": PROCEEDING, "final": COMPLETED},
    COMPLETED: {"timer_g": COMPLETED, "ack": CONFIRMED, "timer_h": TERMINATED, "timer_j": TERMINATED},
    CONFIRMED: {"ack": CONFIRMED, "timer_i": TERMINATED},
}


class IllegalTransition(Exception):
    pass


TOP_VIA_RE = re.compile(rb"^(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*[A-Za-z]+[ \t]+"
                        rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*(\d{1,5}))?[^,\r\n]*?"
                        rb";[ \t]*branch[ \t]*=[ \t]*(z9hG4bK[^;,\s]*)", re.I | re.M)


class ServerTransaction:
    __slots__ = ("key", "serial", "method", "dest", "reliable", "state", "response", "interval", "to_tag", "data")

    def __init__(self, key, serial, method, dest, reliable):
        self.key = key
        self.serial = serial      # tells this transaction from a later one with the same key
        self.method = method
        self.dest = dest          # opaque to this layer: where responses go
        self.reliable = reliable  # TCP: no retransmissions
        self.state = PROCEEDING
        self.response = None      # bytes of the last response sent
        self.interval = T1
        self.to_tag = random_bytes.hex(6)
        self.data = None          # the application's state for this transaction

    @property
    def answered(self):
        """A final response has been sent."""
        return self.state != PROCEEDING

    def expects(self, event):
        return event in TRANSITIONS.get(self.state, ())


class TransactionTableFull(Exception):
    """A new transaction would exceed the table's limit: answer without keeping state."""


STATELESS_TAG = "s"  # starts the To tag of an answer given without a transaction; a transaction's tag is hex
STATELESS_ACK_RE = re.compile(rb"(?i)\r\n(?:to|t)[ \t]*:[^\r\n]*;[ \t]*tag[ \t]*=[ \t]*" + STATELESS_TAG.encode())


def stateless_tag():
    return STATELESS_TAG + random_bytes.hex(6)


def acknowledges_stateless_answer(data):
    """An ACK of an answer given without a transaction, told by its To tag from the raw bytes:
    nothing holds it, so it is dropped unread (a UDP reader drops it before handing it over)."""
    if data[:4] != b"ACK ":
        return False
    end = data.find(b"\r\n\r\n")
    return STATELESS_ACK_RE.search(data, 0, end if end >= 0 else len(data)) is not None


class TransactionLayer:
    """Matches requests to server transactions and says what to send and when.

    Every method returns a list of (dest, bytes) to send; `poll(now)` fires due timers and
    `next_deadline()` tells the event loop when to call it again."""

    def __init__(self, limit=None):
        self.limit = limit  # transactions held at most
        self.table = {}
        # delay -> deque of (when, timer, key, serial). Every timer has one of a few delays (T1 and
        # its doublings up to T2, T4, 64*T1, 0), and `now` only grows: each queue is in time order,
        # so a deque does what a heap did, without its cost (7 µs a call with 150,000 timers held).
        self.timers = {}
        self._seq = 0  # serials of transactions

    @staticmethod
    def key(req, via, method=None):
        method = method or ("INVITE" if req.method == "ACK" else req.method)
        if via.branch.startswith(BRANCH_COOKIE):
            return (via.branch, via.sent_by, method)
        cseq = (req.header("cseq") or "").split()
        return ("2543", req.uri, tag_of(req.header("from") or ""), req.header("call-id"),
                cseq[0] if cseq else "", via.raw, method)

    def receive(self, req, via, dest, reliable, now):
        """Returns (transaction or None, sends). A transaction is returned only for a new
        request the application must answer; retransmissions and ACKs are handled here."""
        key = self.key(req, via)
        tx = self.table.get(key)
        if req.method == "ACK":
            if tx is not None and tx.expects("ack"):
                self._acknowledged(tx, reliable, now)
            return None, []
        if tx is not None:
            return None, ([(dest, tx.response)] if tx.response else [])
        if self.limit is not None and len(self.table) >= self.limit:
            raise TransactionTableFull()
        self._seq += 1
        tx = ServerTransaction(key, self._seq, req.method, dest, reliable)
        self.table[key] = tx
        return tx, []

    @staticmethod
    def invite_key(data):
        """The key of the INVITE transaction that an INVITE, its retransmission or its ACK
        belongs to, read from the raw bytes of the top Via; None without an RFC 3261 branch."""
        end = data.find(b"\r\n\r\n")
        m = TOP_VIA_RE.search(data, 0, end if end >= 0 else len(data))
        if not m:
            return None
        host = m.group(1).decode("ascii").strip("[]").lower()
        return m.group(3).decode("ascii", "replace"), f"{host}:{int(m.group(2) or 5060)}", "INVITE"

    def absorb_ack(self, data, reliable, now):
        """The common ACK, for a final response this layer sent, matched from its raw bytes
        without a full parse. False when the ACK needs the full path (receive)."""
        tx = self.table.get(self.invite_key(data))
        if tx is None or not tx.expects("ack"):
            return False
        self._acknowledged(tx, reliable, now)
        return True

    @staticmethod
    def advance(tx, event):
        """Apply TRANSITIONS; returns the state left. Raises IllegalTransition."""
        before = tx.state
        after = TRANSITIONS.get(before, {}).get(event)
        if after is None:
            raise IllegalTransition(f"{event} in state {before} ({tx.method} {tx.key[0]})")
        tx.state = after
        return before

    def _acknowledged(self, tx, reliable, now):
        if self.advance(tx, "ack") == COMPLETED:  # the first ACK; later ones are absorbed until Timer I
            tx.response = tx.data = None  # nothing is sent again
            self._schedule(now, 0 if reliable else T4, "timer_i", tx)

    def find_invite(self, cancel, via):
        return self.table.get(self.key(cancel, via, "INVITE"))

    def respond(self, tx, status, data, now):
        self.advance(tx, "final" if status >= 200 else "provisional")
        tx.response = data
        if status >= 200:
            if tx.method == "INVITE":
                if not tx.reliable:
                    self._schedule(now, tx.interval, "timer_g", tx)
                self._schedule(now, 64 * T1, "timer_h", tx)
            else:
                self._schedule(now, 0 if tx.reliable else 64 * T1, "timer_j", tx)
        return [(tx.dest, data)]

    def next_deadline(self):
        return min((queue[0][0] for queue in self.timers.values() if queue), default=None)

    def poll(self, now):
        sends = []
        for delay in sorted(self.timers):  # a timer scheduled meanwhile is due later than now
            queue = self.timers[delay]
            while queue and queue[0][0] <= now:
                _, timer, key, serial = queue.popleft()
                sends += self._fire(timer, key, serial, now)
        return sends

    def _fire(self, timer, key, serial, now):
        tx = self.table.get(key)
        if tx is None or tx.serial != serial or not tx.expects(timer):
            return []  # the transaction ended, or the timer is stale (Timer G or H after the ACK)
        self.advance(tx, timer)
        sends = []
        if timer == "timer_g":
            sends.append((tx.dest, tx.response))
            tx.interval = min(2 * tx.interval, T2)
            self._schedule(now, tx.interval, "timer_g", tx)
        if tx.state == TERMINATED:
            if timer == "timer_h":
                log.info("no ACK for %s within Timer H; transaction ended", tx.key[0])
            del self.table[tx.key]
        return sends

    def _schedule(self, now, delay, kind, tx):
        # keys, not transactions: tuples of strings and numbers are left alone by the garbage collector
        queue = self.timers.get(delay)
        if queue is None:
            queue = self.timers[delay] = deque()
        queue.append((now + delay, kind, tx.key, tx.serial))


# =============================================================================================
# 5. Numbers: E.164 normalization and longest-prefix country lookup
# =============================================================================================

VISUAL_SEPARATORS = re.compile(r"[\s\-().]")


@dataclass
class Country:
    iso: str
    name: str
    calling_code: str
    trunk_prefix: str
    risk: str


class CountryTable:
    """ISO codes by E.164 prefix; shared country codes are told apart by the longest prefix."""

    def __init__(self, rows):
        self.by_iso = {}
        self.by_prefix = {}
        for iso, name, prefixes, risk, calling_code, trunk_prefix in rows:
            self.by_iso[iso] = Country(iso, name, calling_code, trunk_prefix, risk)
            for prefix in split_list(prefixes):
                self.by_prefix[prefix] = iso
        self.extended = {prefix[:n] for prefix in self.by_prefix for n in range(1, len(prefix))}

    def lookup(self, digits):
        """The country of the longest listed prefix of `digits`, or None."""
        found = None
        for length in range(1, len(digits) + 1):
            head = digits[:length]
            found = self.by_prefix.get(head, found)
            if head not in self.extended:
                break
        return found

    def name(self, iso):
        country = self.by_iso.get(iso)
        return country.name if country else iso

    def label(self, iso):
        return f"{iso} ({self.name(iso)})" if iso in self.by_iso else iso or "unknown"


# Where a home country's customers call as freely as at home: one numbering plan under one
# regulator (the NANP's US, Canada and US territories; the UK with the Crown Dependencies, with
# Ireland across the Common Travel Area), or the EU/EEA's regulated intra-EU call prices. A home
# country in none of them has itself alone. See README, Destination tiers.
LOW_RISK_ZONES = (
    {"US", "CA", "PR", "VI", "GU", "MP", "AS"},
    {"GB", "JE", "GG", "IM", "IE"},
    {"AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "AX", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT",
     "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO"},
)
TIERS = ("low", "medium", "high")


def home_zone(home):
    """The countries of tier low by default for an operator in `home`."""
    return set().union({home}, *(zone for zone in LOW_RISK_ZONES if home in zone))


def dialed_number(user):
    """The number part of a Request-URI user: user parameters (';npdi', ';rn=...') removed."""
    return user.partition(";")[0]


def emergency_number(user, policy):
    """The emergency number a Request-URI user dials (separators removed), or ''."""
    dialed = VISUAL_SEPARATORS.sub("", dialed_number(user))
    return dialed if dialed in policy.emergency_numbers else ""


MAX_NUMBER_DIGITS = 28  # E.164 has at most 15; the number columns hold 32, a calling code included


def normalize_number(dialed, policy, countries):
    """Dialed string -> E.164 digits without '+', or None when it is not dialable: characters
    other than digits and visual separators, or more than MAX_NUMBER_DIGITS digits.

    '+' or an international access prefix (00, 011, ...) means the rest is E.164. Anything else
    is E.164 too, unless national_numbers = yes: then it is a national number of home_country,
    whose trunk prefix is removed and country code added."""
    text = VISUAL_SEPARATORS.sub("", dialed)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > MAX_NUMBER_DIGITS:
        return None
    if plus:
        return digits
    for prefix in policy.international_prefixes:
        if digits.startswith(prefix):
            return digits[len(prefix):]
    if policy.national_numbers:
        home = countries.by_iso.get(policy.home_country)
        if home:
            if home.trunk_prefix and digits.startswith(home.trunk_prefix):
                digits = digits[len(home.trunk_prefix):]
            return home.calling_code + digits
    return digits


def dialed_prefix(text, policy, countries):
    """A number prefix written as it is dialed -> E.164 digits; raises ValueError."""
    digits = normalize_number(text, policy, countries)
    if not digits:
        raise ValueError(f"{text!r} is not a number prefix (digits as dialed: +43, 0043 or 43)")
    if digits.startswith("0"):
        raise ValueError(f"{text!r}: no country code starts with 0 (write it with its country code: +CC...)")
    return digits


# =============================================================================================
# 6. Database and storage: connections, schema, migration and every SQL statement behind a named function
# =============================================================================================

class DatabaseError(UserError):
    pass


def default_database_url():
    base = os.path.dirname(os.path.abspath(__file__))
    if not os.path.isdir(base) or not os.access(base, os.W_OK):  # inside a zipapp, or read-only
        base = os.getcwd()
    return "sqlite://" + os.path.join(base, "tfps.db")


def redact_url(url):
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)


def read_schema():
    return read_packaged("schema.sql", DatabaseError)


def read_packaged(name, error):
    """A file shipped beside this one (schema.sql, dashboard.html), also when this file runs from
    inside a zipapp. Raises `error` when it is missing."""
    path = os.path.join(os.path.dirname(__file__), name)  # the loader's own spelling of the path
    # zipimport's get_data inside a zipapp; none when a tool runs the file (`python3 -m cProfile tfps.py`)
    get_data = getattr(globals().get("__loader__"), "get_data", None)
    try:
        if get_data is None:
            with open(path, "rb") as fh:
                return fh.read().decode("utf-8")
        return get_data(path).decode("utf-8")
    except OSError:
        raise error(f"{name} not found beside {os.path.abspath(__file__)}") from None


# A quoted string ('...', "...": doubled quotes and MySQL's backslash escapes inside) or a
# quoted identifier (`...`), a placeholder or a percent sign, or a run of anything else.
SQL_TOKEN = re.compile(r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`]|``)*`|[?%]|[^'"`?%]+|.""", re.S)


def mysql_statement(text):
    """A statement written with SQLite's '?' placeholders -> PyMySQL's: '?' becomes '%s' outside
    quoted strings and identifiers, where it is a placeholder; '%' is doubled everywhere, quoted
    text included, since PyMySQL formats the whole statement with the % operator."""
    return "".join("%s" if token == "?" else token.replace("%", "%%") for token in SQL_TOKEN.findall(text))


RETIRED_INDEXES = (("call_log", "idx_call_log_account"),)  # schema version 1's; nothing reads by it since
# schema version 2's does not follow accounts.daily_spend, version 3's accounts.calls_per_minute,
# versions 4 and 5's accounts.blocked_until
RETIRED_TRIGGERS = ("accounts_changed", "accounts_updated", "accounts_edited")
INDEX_LINE = re.compile(r"^\s*((?:UNIQUE )?INDEX) (\w+) \(([^)]*)\),?[ \t]*$", re.M)  # an index inside CREATE TABLE


class Database:
    """One connection. SQL is written once with '?' placeholders; the MySQL dialect rewrites it."""

    def __init__(self, url, timeout=None):
        """`timeout`: the longest any connect, read or write may wait (the server's connection:
        [database] timeout); None = the patient defaults of the CLI and background threads."""
        self.url = url or default_database_url()
        self.timeout = timeout
        self._translated = {}
        self.in_memory = False  # an SQLite database in memory: no other connection sees it
        if self.url.startswith("sqlite:"):
            self.dialect = "sqlite"
            path = self.url[len("sqlite:"):].removeprefix("//") or ":memory:"
            self.in_memory = path == ":memory:"
            self._connect_sqlite(path)
        elif self.url.startswith(("mysql:", "mariadb:")):
            self.dialect = "mysql"
            self._connect_mysql()
        else:
            raise DatabaseError(f"unsupported database URL {redact_url(self.url)!r} (sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DB)")

    def _connect_sqlite(self, path):
        if path != ":memory:" and os.path.dirname(path) and not os.path.isdir(os.path.dirname(path)):
            raise DatabaseError(f"cannot open database {self.url}: directory {os.path.dirname(path)} does not exist")
        try:
            wait = self.timeout or 10.0
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=wait)
            self.conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            if path != ":memory:":
                self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise DatabaseError(f"cannot open database {self.url}: {exc}") from None
        self.errors = (sqlite3.Error,)

    def tune_for_serving(self):
        """For a connection of a server that writes verdicts or the call log: on SQLite, a page
        cache that holds the index pages every transaction touches (one per account calling), and
        no write-back of the write-ahead log into the database file at its commits. That write-back
        ends with an fsync, 10 ms and more, which every call arriving meanwhile would wait out on
        the event loop: a thread does it instead (Server._write_back_the_wal)."""
        if self.dialect == "sqlite":
            self.conn.execute("PRAGMA cache_size = -32768")
            self.conn.execute("PRAGMA wal_autocheckpoint = 0")

    def write_back_wal(self):
        """SQLite: copy what the write-ahead log holds into the database file (PASSIVE: waiting for
        no reader or writer), so that the next writer can start the log over."""
        self.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _connect_mysql(self):
        try:
            import pymysql
        except ImportError:
            raise DatabaseError("the MySQL backend needs PyMySQL: apt install python3-pymysql "
                                "(or pip install PyMySQL), or use the packaged tfps.pyz") from None
        u = urllib.parse.urlsplit(self.url)
        try:
            self.conn = pymysql.connect(host=u.hostname or "127.0.0.1", port=u.port or 3306,
                                        user=urllib.parse.unquote(u.username or "root"),
                                        password=urllib.parse.unquote(u.password or ""),
                                        database=u.path.lstrip("/") or "tfps", charset="utf8mb4",
                                        autocommit=True, connect_timeout=min(self.timeout or 5.0, 5.0),
                                        read_timeout=self.timeout or 600.0, write_timeout=self.timeout or 600.0,
                                        # no gap locks: nodes inserting new rows side by side must not deadlock
                                        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        except pymysql.Error as exc:
            raise DatabaseError(f"cannot open database {redact_url(self.url)}: {exc.args[-1] if exc.args else exc}") from None
        self.errors = (pymysql.Error,)

    def sql(self, text):
        if self.dialect == "sqlite":
            return text
        out = self._translated.get(text)
        if out is None:
            out = self._translated[text] = mysql_statement(text)
        return out

    def execute(self, text, params=()):
        cur = self.conn.cursor()
        cur.execute(self.sql(text), params)
        return cur

    def executemany(self, text, rows):
        if rows:
            self.conn.cursor().executemany(self.sql(text), rows)

    def query(self, text, params=()):
        return self.execute(text, params).fetchall()

    def one(self, text, params=()):
        return self.execute(text, params).fetchone()

    def scalar(self, text, params=(), default=None):
        row = self.one(text, params)
        return row[0] if row and row[0] is not None else default

    @contextlib.contextmanager
    def atomic(self):
        """One verdict's writes, all or nothing. MySQL: a transaction committed at once, so other
        nodes see the counters. SQLite: a savepoint inside a group transaction that the next
        commit() (the call log flush) makes durable; a commit per verdict would cost more than
        the verdict itself."""
        if self.dialect == "mysql":
            self.conn.begin()
            try:
                yield
                self.conn.commit()
            except BaseException as exc:
                self.rollback(exc)
                raise
            return
        self.begin()
        with self.savepoint("verdict"):
            yield

    @contextlib.contextmanager
    def savepoint(self, name):
        """Inside a transaction: what the block wrote, all or nothing, without ending the transaction."""
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self.execute(f"RELEASE SAVEPOINT {name}")

    def unavailable(self, exc):
        """The database cannot be used now (connection lost or refused, a timeout, a locked or
        unwritable file), as opposed to a statement or row it refused."""
        if self.dialect == "sqlite":
            return isinstance(exc, sqlite3.OperationalError)
        import pymysql
        return isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)) and not self.transient(exc)

    def transient(self, exc):
        """A deadlock, a lock wait timeout, or a duplicate key from a row another node created
        since it was looked for (SharedCounters): the same work may simply be tried again."""
        return self.dialect == "mysql" and bool(exc.args) and exc.args[0] in (1062, 1205, 1213)

    def increment_below(self, table, keys, column, limit):
        """Add 1 to `column` of the row `keys` (creating it with 1) unless that makes it exceed
        `limit`; one statement, so racing nodes neither overshoot nor deadlock. True if counted."""
        cols = ", ".join(keys)
        marks = ", ".join("?" * len(keys))
        if self.dialect == "mysql":
            cur = self.execute(f"INSERT INTO {table} ({cols}, {column}) VALUES ({marks}, 1) ON DUPLICATE KEY UPDATE "
                               f"{column} = IF({column} < ?, {column} + 1, {column})", (*keys.values(), limit))
            return cur.rowcount in (1, 2)  # inserted, updated; 0 = unchanged, the limit is reached
        cur = self.execute(f"INSERT INTO {table} ({cols}, {column}) VALUES ({marks}, 1) ON CONFLICT ({cols}) DO UPDATE "
                           f"SET {column} = {column} + 1 WHERE {column} < ?", (*keys.values(), limit))
        return cur.rowcount == 1

    @property
    def in_transaction(self):
        return self.dialect == "sqlite" and self.conn.in_transaction

    def begin(self):
        if self.dialect == "mysql":
            self.conn.begin()
        elif not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self):
        self.conn.commit() if self.dialect == "mysql" else self.conn.execute("COMMIT")

    def rollback(self, cause=None):
        """Roll back, unless `cause` says the MySQL connection is gone: the server has rolled
        back already, and a frozen server would make us wait for the answer once more."""
        if self.dialect == "mysql" and isinstance(cause, self.errors) and self.unavailable(cause):
            return
        try:
            self.conn.rollback() if self.dialect == "mysql" else self.conn.execute("ROLLBACK")
        except self.errors:
            pass

    def insert(self, table, values):
        """INSERT one row of {column: value}; returns the cursor."""
        marks = ", ".join("?" * len(values))
        return self.execute(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})", tuple(values.values()))

    def insert_or_ignore(self, table, values):
        """INSERT one row unless its key is taken; True when it was inserted."""
        marks = ", ".join("?" * len(values))
        verb = "INSERT OR IGNORE" if self.dialect == "sqlite" else "INSERT IGNORE"
        return self.execute(f"{verb} INTO {table} ({', '.join(values)}) VALUES ({marks})",
                            tuple(values.values())).rowcount == 1

    def one_for_update(self, text, params=()):
        """One row of a SELECT; on MySQL the row stays locked until the transaction ends, so that
        racing nodes take turns (SQLite writers are serialized anyway)."""
        return self.one(text + " FOR UPDATE" if self.dialect == "mysql" else text, params)

    def write_read_row(self, table, values, keys, update, existed):
        """Write a row read by one_for_update. A row that was missing locked nothing: a racing
        node may have created it since, so on MySQL it is INSERTed, which then fails with a
        duplicate key (transient()) and the work is done again, reading the row the other node
        wrote, instead of overwriting it."""
        if existed or self.dialect != "mysql":
            return self.upsert(table, values, keys, update)
        return self.insert(table, values)

    def upsert(self, table, values, keys, update):
        """INSERT a row or, on a key conflict, run `update` (an assignment list in which
        NEW(col) names the value that was to be inserted). Returns the cursor."""
        return self.execute(self.upsert_text(table, tuple(values), tuple(keys), update), tuple(values.values()))

    def upsert_text(self, table, columns, keys, update):
        """The statement of upsert(), in this dialect, for execute() or executemany()."""
        shape = (table, tuple(columns), tuple(keys), update)
        text = self._translated.get(shape)
        if text is None:
            cols = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            if self.dialect == "sqlite":
                update = re.sub(r"NEW\((\w+)\)", r"excluded.\1", update)
                text = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update}"
            else:
                update = re.sub(r"NEW\((\w+)\)", r"VALUES(\1)", update)
                text = f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {update}"
            self._translated[shape] = text
        return text

    @contextlib.contextmanager
    def transaction(self):
        """A transaction of its own, committed at the end of the block (SQLite: a savepoint when
        a group transaction is open already, made durable by its commit)."""
        if self.in_transaction:
            with self.savepoint("own"):
                yield
            return
        self.begin()
        try:
            yield
            self.commit()
        except BaseException as exc:
            self.rollback(exc)
            raise

    def probe(self):
        """Raise unless the database answers and, for SQLite, can be written."""
        if self.dialect == "mysql":
            self.scalar("SELECT 1")
        else:
            self.execute("BEGIN IMMEDIATE")
            self.execute("ROLLBACK")

    def close(self):
        """Close at once: a connection to a frozen server must not wait for a goodbye."""
        if self.dialect == "mysql":
            self.conn._force_close()  # PyMySQL's close() would first send COM_QUIT and wait
            return
        try:
            self.conn.close()
        except self.errors:
            pass

    # -- schema ------------------------------------------------------------------------------

    def names(self, kind):
        """Lower-case names of the tables (kind 'table') or triggers ('trigger') of this database."""
        if self.dialect == "sqlite":
            rows = self.query("SELECT name FROM sqlite_master WHERE type = ?", (kind,))
        else:
            rows = self.query(f"SELECT {kind}_name FROM information_schema.{kind}s WHERE {kind}_schema = DATABASE()")
        return {r[0].lower() for r in rows}

    def columns(self, table):
        if self.dialect == "sqlite":
            return {r[1].lower() for r in self.query(f"PRAGMA table_info({table})")}
        return {r[0].lower() for r in self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = ?", (table,))}

    def schema_version(self):
        if "meta" not in self.names("table"):
            return 0
        return int(self.scalar("SELECT value FROM meta WHERE name = 'schema_version'", default=0))

    def initdb(self):
        """Create missing tables, add missing columns and indexes, drop retired indexes, load seed
        rows. Idempotent. Returns (old_version, new_version, what changed: 'added table.name', ...)."""
        schema = read_schema()
        target = int(re.search(r"'schema_version',\s*(\d+)", schema).group(1))
        old = self.schema_version()
        added = []
        existing, triggers = self.names("table"), self.names("trigger")
        for statement in schema_statements(schema):
            create = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
            if create and create.group(1) in existing:
                added += [f"added {c}" for c in self._add_missing_columns(create.group(1), statement)]
                added += [f"added {i}" for i in self._add_missing_indexes(create.group(1), statement)]
                continue
            trigger = re.match(r"CREATE TRIGGER (\w+)", statement)
            if trigger and trigger.group(1).lower() in triggers:
                continue
            for text in (sqlite_statements(statement) if self.dialect == "sqlite" else [statement]):
                self.execute(text)
        for name in RETIRED_TRIGGERS:
            if name in triggers:
                self.execute(f"DROP TRIGGER {name}")
                added.append(f"dropped trigger {name}")
        for table, name in RETIRED_INDEXES:
            if name in self._indexes(table):
                self.execute(f"DROP INDEX {name}" + (f" ON {table}" if self.dialect == "mysql" else ""))
                added.append(f"dropped {table}.{name}")
        self.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (target,))
        return old, target, added

    def _add_missing_columns(self, table, statement):
        have = self.columns(table)
        added = []
        for line in statement.splitlines()[1:]:
            m = re.match(r"\s+(\w+) (.+?),?$", line)
            if m and m.group(1).upper() not in ("PRIMARY", "UNIQUE", "INDEX", "KEY") and m.group(1).lower() not in have:
                definition = m.group(2).replace("AUTO_INCREMENT", "")
                self.execute(f"ALTER TABLE {table} ADD COLUMN {m.group(1)} {definition}")
                added.append(f"{table}.{m.group(1)}")
        return added

    def _indexes(self, table):
        if self.dialect == "sqlite":
            return {r[1].lower() for r in self.query(f"PRAGMA index_list({table})")}
        return {r[0].lower() for r in self.query(
            "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() "
            "AND table_name = ?", (table,))}

    def _add_missing_indexes(self, table, statement):
        have = self._indexes(table)
        added = []
        for kind, name, columns in INDEX_LINE.findall(statement):
            if name.lower() not in have:
                self.execute(f"CREATE {kind} {name} ON {table} ({columns})")
                added.append(f"{table}.{name}")
        return added

    def ensure_schema(self):
        """Create the schema on first use so that `tfps.py serve` works on a fresh box."""
        if self.schema_version() < int(re.search(r"'schema_version',\s*(\d+)", read_schema()).group(1)):
            self.initdb()


def schema_statements(schema):
    text = "\n".join(line for line in schema.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*$", text, flags=re.M) if s.strip()]


def sqlite_statements(statement):
    """One MySQL statement of schema.sql -> the SQLite statements that do the same."""
    trigger = re.fullmatch(r"(CREATE TRIGGER .*? FOR EACH ROW)\s+(.*)", statement, re.S)
    if trigger:
        return [f"{trigger.group(1)} BEGIN {trigger.group(2).replace('<=>', 'IS')}; END"]
    statement = statement.replace("INSERT IGNORE", "INSERT OR IGNORE")
    # the rowid itself: new ids are max + 1 without the sqlite_sequence bookkeeping of AUTOINCREMENT
    statement = statement.replace("BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "INTEGER PRIMARY KEY")
    statement = re.sub(r"\)\s*ENGINE=\w+[^;]*$", ")", statement)
    table = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
    indexes = INDEX_LINE.findall(statement)
    statement = INDEX_LINE.sub("", statement)
    statement = re.sub(r",\s*\)$", "\n)", statement)
    if re.search(r"^\s*PRIMARY KEY \(", statement, flags=re.M):
        statement += " WITHOUT ROWID"
    out = [statement]
    out += [f"CREATE {kind} IF NOT EXISTS {name} ON {table.group(1)} ({cols})" for kind, name, cols in indexes]
    return out


def open_database(url):
    db = Database(url)
    try:
        db.ensure_schema()
    except db.errors as exc:
        raise DatabaseError(f"database {redact_url(db.url)}: {exc}") from None
    return db


# -- storage: every SQL statement of the sections below, behind a named function ----------------
# Rows go in and out as tuples and dicts; the sections below make their objects of them.

def change_serials(db):
    """{'accounts_serial': ..., 'lists_serial': ...}: triggers bump them on every change."""
    return dict(db.query("SELECT name, value FROM meta WHERE name IN ('accounts_serial', 'lists_serial')"))


def table_size(db, table):
    return db.scalar(f"SELECT COUNT(*) FROM {table}", default=0)


def acquire_lock(db, name, holder, now, ttl):
    """A cluster-wide lock held until now + ttl; True when this holder got it."""
    if db.execute("UPDATE locks SET holder = ?, expires = ? WHERE name = ? AND expires <= ?",
                  (holder, now + ttl, name, now)).rowcount == 1:
        return True
    return db.insert_or_ignore("locks", {"name": name, "holder": holder, "expires": now + ttl})


def release_lock(db, name, holder):
    db.execute("DELETE FROM locks WHERE name = ? AND holder = ?", (name, holder))


# accounts

ACCOUNT_COLUMNS = ("id, user, domain, concurrent_calls, concurrent_calls_off, daily_quota, daily_quota_off, "
                   "source_countries, dest_countries, blocked, email, state, learning_until, pinned, created, last_seen, anomaly_daily, "
                   "daily_spend, calls_per_minute, blocked_until")
ACCOUNT_SELECT = f"SELECT {ACCOUNT_COLUMNS} FROM accounts"


def load_account(db, user, domain):
    """The account's row (ACCOUNT_COLUMNS), or None."""
    return db.one(f"{ACCOUNT_SELECT} WHERE user = ? AND domain = ?", (user, domain))


def load_accounts(db, by_domain=False):
    """Every account's row, by user then domain (or by domain then user)."""
    return db.query(f"{ACCOUNT_SELECT} ORDER BY {'domain, user' if by_domain else 'user, domain'}")


def load_accounts_of_domains(db, domains):
    """The rows of every account of `domains`."""
    domains = sorted(domains)
    return db.query(f"{ACCOUNT_SELECT} WHERE domain IN ({', '.join('?' * len(domains)) or 'NULL'})", tuple(domains))


def load_accounts_done_learning(db, now):
    """The rows of the accounts still learning whose learning period ended by `now`."""
    return db.query(f"{ACCOUNT_SELECT} WHERE state = 'learning' AND learning_until <= ?", (now,))


def first_account_created(db):
    """When the oldest account was created, or None."""
    return db.scalar("SELECT MIN(created) FROM accounts")


def next_learning_end(db):
    """The earliest end of a learning period still to come into force, or None."""
    return db.scalar("SELECT MIN(learning_until) FROM accounts WHERE state = 'learning'")


def update_account_row(db, account_id, values, now):
    """Set the columns of {column: value} on one account, and its `updated` time."""
    if values:
        sets = ", ".join(f"{column} = ?" for column in values)
        db.execute(f"UPDATE accounts SET {sets}, updated = ? WHERE id = ?", (*values.values(), now, account_id))


def clear_account_counters(db, account_id, day, now):
    """Forget the account's approved calls of `day`, its A->B pairs, its per-minute window and its
    new destinations, and note the reset for the servers that keep them in memory. Returns
    (daily counter rows, A->B pairs) deleted."""
    counters = db.execute("DELETE FROM daily_counters WHERE account_id = ? AND day = ?", (account_id, day)).rowcount
    db.execute("DELETE FROM quota_leases WHERE account_id = ? AND day = ?", (account_id, day))
    pairs = db.execute("DELETE FROM ab_pairs WHERE account_id = ?", (account_id,)).rowcount
    db.execute("DELETE FROM rate_windows WHERE account_id = ?", (account_id,))
    db.execute("DELETE FROM new_destination_days WHERE account_id = ?", (account_id,))
    db.execute("DELETE FROM new_destination_windows WHERE account_id = ?", (account_id,))
    db.execute("DELETE FROM spend_counters WHERE account_id = ? AND day = ?", (account_id, day))
    db.upsert("counter_resets", {"account_id": account_id, "reset_at": now}, ["account_id"], "reset_at = NEW(reset_at)")
    db.execute("UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial'")
    return counters, pairs


def counter_resets_since(db, since):
    """(account id, time) of the counter resets at or after `since`."""
    return db.query("SELECT account_id, reset_at FROM counter_resets WHERE reset_at >= ?", (since,))


# domains: the per-customer policy between [policy] and the account

DOMAIN_COLUMNS = ("domain, concurrent_calls, concurrent_calls_off, daily_quota, daily_quota_off, daily_spend, "
                  "source_countries, dest_countries, learned_dest")


def load_domain(db, domain):
    """The domain's row (DOMAIN_COLUMNS), or None."""
    return db.one(f"SELECT {DOMAIN_COLUMNS} FROM domains WHERE domain = ?", (domain,))


def load_domains(db):
    return db.query(f"SELECT {DOMAIN_COLUMNS} FROM domains ORDER BY domain")


def save_domain(db, domain, values, now):
    """Create the domain if it is new and set the columns of {column: value} on it."""
    db.upsert("domains", {"domain": domain, **values, "updated": now}, ["domain"],
              ", ".join(f"{column} = NEW({column})" for column in (*values, "updated")))


def domain_account_counts(db):
    """{domain: accounts}, for `domain list`."""
    return dict(db.query("SELECT domain, COUNT(*) FROM accounts GROUP BY domain"))


def delete_account(db, account_id):
    """The account and every row kept for it, except its calls in call_log."""
    for table in ("daily_counters", "quota_leases", "spend_counters", "new_destination_days", "ab_pairs", "rate_windows",
                  "account_seen", "account_days", "account_day_countries", "approvals"):
        db.execute(f"DELETE FROM {table} WHERE account_id = ?", (account_id,))
    db.execute("DELETE FROM accounts WHERE id = ?", (account_id,))


def accounts_by_state(db, now):
    """(state, accounts) for 'blocked' (by the administrator or by R16 at `now`), 'learning' (at
    `now`) and 'enforcing'."""
    return db.query("SELECT CASE WHEN blocked <> 0 OR blocked_until > ? THEN 'blocked' WHEN state = 'learning' AND "
                    "(learning_until IS NULL OR learning_until > ?) THEN 'learning' ELSE 'enforcing' END, COUNT(*) "
                    "FROM accounts GROUP BY 1", (now, now))


def approved_by_bucket(db, account_id, day):
    """{'biz': approved calls, 'off': approved calls} of the account on `day` (YYYY-MM-DD)."""
    counts = {"biz": 0, "off": 0}
    counts.update(db.query("SELECT bucket, approved FROM daily_counters WHERE account_id = ? AND day = ?", (account_id, day)))
    return counts


# number, IP and User-Agent lists; countries

LIST_KINDS = {"number": ("number_list", "prefix"), "ip": ("ip_list", "cidr"), "ua": ("ua_list", "pattern")}


def load_list(db, kind):
    """Every entry of the number or IP lists as (color, value)."""
    table, column = LIST_KINDS[kind]
    return db.query(f"SELECT kind, {column} FROM {table}")


def load_user_agent_patterns(db):
    return [row[0] for row in db.query("SELECT pattern FROM ua_list ORDER BY pattern")]


def load_countries(db):
    return db.query("SELECT iso, name, prefixes, risk, calling_code, trunk_prefix FROM countries")


def load_country_risks(db):
    """The country rows without their number prefixes (rows as load_countries returns them)."""
    return db.query("SELECT iso, name, '', risk, calling_code, trunk_prefix FROM countries")


def list_add(db, color, kind, values, note, now):
    """Add entries; returns (added, already present). The User-Agent list has no colors."""
    table, column = LIST_KINDS[kind]
    added = 0
    db.begin()
    for value in values:
        row = {column: value, "note": note, "created": now}
        added += db.insert_or_ignore(table, row if kind == "ua" else {"kind": color, **row})
    db.commit()
    return added, len(values) - added


def list_remove(db, color, kind, value):
    table, column = LIST_KINDS[kind]
    if kind == "ua":
        return db.execute("DELETE FROM ua_list WHERE pattern = ?", (value,)).rowcount
    return db.execute(f"DELETE FROM {table} WHERE kind = ? AND {column} = ?", (color, value)).rowcount


def list_entries(db, color, kind):
    table, column = LIST_KINDS[kind]
    if kind == "ua":
        return db.query("SELECT pattern, note, created FROM ua_list ORDER BY pattern")
    return db.query(f"SELECT {column}, note, created FROM {table} WHERE kind = ? ORDER BY {column}", (color,))


# reputation cache

REPUTATION_COLUMNS = "ip, ok, score, country, whitelisted, apiban, source, detail, checked, expires"


def load_cached_reputation(db, ip, now):
    """The cached row (REPUTATION_COLUMNS) of `ip` unless it expired by `now`, or None."""
    return db.one(f"SELECT {REPUTATION_COLUMNS} FROM reputation_cache WHERE ip = ? AND expires > ?", (ip, now))


def save_reputation(db, values):
    """Cache a row of {column: value} (REPUTATION_COLUMNS), replacing the IP's earlier one."""
    db.upsert("reputation_cache", values, ["ip"], ", ".join(f"{col} = NEW({col})" for col in values if col != "ip"))


# alert throttle and outbox

def load_alert_throttles(db, keys):
    """{(account, rule): (last_sent, suppressed)} of the (account, rule) keys that have alerted
    before: one SELECT per 500 accounts, not one per key (a round trip each on MySQL)."""
    keys, found = set(keys), {}
    accounts = sorted({account for account, _rule in keys})
    for start in range(0, len(accounts), 500):
        chunk = accounts[start:start + 500]
        for account, rule, last_sent, suppressed in db.query(
                f"SELECT account, rule, last_sent, suppressed FROM alert_throttle WHERE account IN ({', '.join('?' * len(chunk))})",
                chunk):
            if (account, rule) in keys:
                found[account, rule] = (last_sent, suppressed)
    return found


def write_alert_throttles(db, sent, suppressed):
    """Alerts sent now, (account, rule, time, alerts suppressed with them) rows, and alerts
    suppressed within the interval, (account, rule, last sent, count) rows of keys that exist:
    two statements in all (executemany batches INSERTs on MySQL)."""
    db.executemany(db.upsert_text("alert_throttle", ("account", "rule", "last_sent", "suppressed"), ("account", "rule"),
                                  "last_sent = NEW(last_sent), suppressed = NEW(suppressed)"), sent)
    db.executemany(db.upsert_text("alert_throttle", ("account", "rule", "last_sent", "suppressed"), ("account", "rule"),
                                  "suppressed = suppressed + NEW(suppressed)"), suppressed)


ALERT_OUTBOX_COLUMNS = ("created", "kind", "account", "code", "subject", "body", "payload", "recipients",
                        "email_pending", "webhook_pending", "attempts", "next_try")


def enqueue_alerts(db, rows):
    """Put alerts in the outbox, due at once: tuples in the order of ALERT_OUTBOX_COLUMNS."""
    marks = ", ".join("?" * len(ALERT_OUTBOX_COLUMNS))
    db.executemany(f"INSERT INTO alert_outbox ({', '.join(ALERT_OUTBOX_COLUMNS)}) VALUES ({marks})", rows)


def due_alerts(db, now, limit=20):
    """(id, subject, body, payload, recipients, email_pending, webhook_pending, attempts, next_try)
    of the alerts due by `now`, oldest first."""
    return db.query("SELECT id, subject, body, payload, recipients, email_pending, webhook_pending, attempts, next_try "
                    "FROM alert_outbox WHERE next_try <= ? ORDER BY id LIMIT ?", (now, limit))


def claim_alert(db, alert_id, next_try, until):
    """Take an alert for delivery until `until`; False when another node took it since it was
    read (its next_try is no longer the one read)."""
    return db.execute("UPDATE alert_outbox SET next_try = ? WHERE id = ? AND next_try = ?",
                      (until, alert_id, next_try)).rowcount == 1


def delete_alert(db, alert_id):
    db.execute("DELETE FROM alert_outbox WHERE id = ?", (alert_id,))


def retry_alert(db, alert_id, email_pending, webhook_pending, next_try, error):
    db.execute("UPDATE alert_outbox SET email_pending = ?, webhook_pending = ?, attempts = attempts + 1, "
               "next_try = ?, last_error = ? WHERE id = ?", (email_pending, webhook_pending, next_try, error[:255], alert_id))


# call log and the daily history summed up from it

def query_calls(db, since, account=None, code=None, limit=50):
    """The latest calls since `since`, of one account ('user@domain') and verdict code if given."""
    where, args = ["ts >= ?"], [since]
    if account:
        user, _, domain = account.partition("@")
        where.append("user = ? AND domain = ?")
        args += [user, domain]
    if code:
        where.append("(code = ? OR would_code = ?)")
        args += [code.upper(), code.upper()]
    return db.query("SELECT ts, user, domain, number, dest_country, source_ip, source_country, code, would_code, reason, "
                    f"sip_response, latency_ms, node FROM call_log WHERE {' AND '.join(where)} ORDER BY ts DESC, id DESC LIMIT ?",
                    (*args, limit))


def call_stats(db, since):
    """(calls per code and would-be code, the 10 accounts and the 10 destination countries with
    the most rejections) since `since`."""
    by_code = db.query("SELECT code, would_code, COUNT(*) FROM call_log WHERE ts >= ? GROUP BY code, would_code "
                       "ORDER BY COUNT(*) DESC", (since,))
    top_accounts = db.query("SELECT user, domain, COUNT(*), SUM(CASE WHEN code <> 'A00' THEN 1 ELSE 0 END) FROM call_log "
                            "WHERE ts >= ? GROUP BY user, domain ORDER BY 4 DESC, 3 DESC LIMIT 10", (since,))
    top_countries = db.query("SELECT dest_country, COUNT(*), SUM(CASE WHEN code <> 'A00' THEN 1 ELSE 0 END) FROM call_log "
                             "WHERE ts >= ? GROUP BY dest_country ORDER BY 2 DESC LIMIT 10", (since,))
    return _int_sums(by_code), _int_sums(top_accounts), _int_sums(top_countries)


def call_log_hour(db, hour):
    """One hour of the call log (hours since the epoch) summed up: ((code, node, calls, last call),
    (user, domain, destination country, rejected calls)). A would-be rejection counts under its
    would-be code and as a rejection."""
    span = (hour * 3600, hour * 3600 + 3600)
    verdicts = db.query("SELECT CASE WHEN would_code <> '' THEN would_code ELSE code END AS k, node, COUNT(*), MAX(ts) "
                        "FROM call_log WHERE ts >= ? AND ts < ? GROUP BY k, node", span)
    rejected = db.query("SELECT user, domain, dest_country, COUNT(*) FROM call_log WHERE ts >= ? AND ts < ? "
                        "AND (code <> 'A00' OR would_code <> '') GROUP BY user, domain, dest_country", span)
    return _int_sums(verdicts), _int_sums(rejected)


def recent_rejections(db, since, limit):
    """The latest rejected (or would-be rejected) calls since `since`, with their undo commands."""
    return db.query("SELECT ts, user, domain, number, dest_country, source_ip, code, would_code, reason, undo_command, node "
                    "FROM call_log WHERE ts >= ? AND (code <> 'A00' OR would_code <> '') ORDER BY ts DESC, id DESC LIMIT ?",
                    (since, limit))


def pending_alerts(db):
    """(alerts waiting in the outbox, of them failed at least once, the oldest one's creation time)."""
    row = db.one("SELECT COUNT(*), SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), MIN(created) FROM alert_outbox")
    return int(row[0] or 0), int(row[1] or 0), row[2]


def estimated_spend(db, since):
    """(estimated cost of the approved calls, of the rejected calls) since `since` (rate deck)."""
    approved, rejected = db.one("SELECT SUM(CASE WHEN code = 'A00' THEN cost ELSE 0 END), "
                                "SUM(CASE WHEN code <> 'A00' THEN cost ELSE 0 END) FROM call_log WHERE ts >= ?", (since,))
    return float(approved or 0), float(rejected or 0)


def _int_sums(rows):
    """MySQL returns SUM() as Decimal; the reports want plain integers."""
    return [tuple(int(v) if isinstance(v, decimal.Decimal) else v for v in row) for row in rows]


def rejections_per_account(db, start, end):
    """(user, domain, code, calls, the account's email) of the rejected (or, while monitoring or
    learning, would-be rejected) calls in [start, end)."""
    return db.query("SELECT c.user, c.domain, CASE WHEN c.code = 'A00' THEN c.would_code ELSE c.code END AS k, COUNT(*), "
                    "MAX(a.email) FROM call_log c LEFT JOIN accounts a ON a.id = c.account_id WHERE c.ts >= ? AND c.ts < ? "
                    "AND (c.code <> 'A00' OR c.would_code <> '') GROUP BY c.user, c.domain, k", (start, end))


APPROVED_IN_SPAN = "FROM call_log WHERE code = 'A00' AND account_id IS NOT NULL AND ts >= ? AND ts < ?"
DAY_SUMS = ("SUM(1 - off_hours), SUM(off_hours), MAX(CASE WHEN off_hours = 0 THEN concurrent_calls END), "
            f"MAX(CASE WHEN off_hours = 1 THEN concurrent_calls END) {APPROVED_IN_SPAN}")
COUNTRY_COLUMNS = (("dst", "dest_country"), ("src", "source_country"))


# The reason of a call R04 approved from a source country not allowed (a traveller's): training
# learns no country from such calls, so a week abroad does not open the account there for good.
APPROVED_AWAY = "approved away from home"


def country_sums(column, only=""):
    """COUNT(*) ... GROUP BY: approved calls per account and country in a time span, but for the
    calls approved away from home."""
    return (f"COUNT(*) {APPROVED_IN_SPAN} AND {column} <> '' AND reason NOT LIKE '{APPROVED_AWAY}%'{only} "
            f"GROUP BY account_id, {column}")


def only_accounts(account_ids):
    """(SQL condition, its arguments) restricting a history query to `account_ids`; None: all."""
    if account_ids is None:
        return "", ()
    return f" AND account_id IN ({', '.join('?' * len(account_ids)) or 'NULL'})", tuple(account_ids)


def summed_days(db, first):
    """The day numbers from `first` on whose calls are summed up already."""
    return {row[0] for row in db.query("SELECT day FROM history_days WHERE day >= ?", (first,))}


def approved_times(db, start, end, account_ids=None):
    """(account id, time) of the approved calls in [start, end), in order of time."""
    only, ids = only_accounts(account_ids)
    return db.query(f"SELECT account_id, ts {APPROVED_IN_SPAN}{only} ORDER BY ts", (start, end, *ids))


def minute_peaks(rows):
    """{account id: most approved calls within 60 s, as R15 counts them} of approved_times() rows."""
    recent, peaks = {}, {}
    for account_id, ts in rows:
        times = recent.setdefault(account_id, deque())
        times.append(ts)
        while times[0] <= ts - 60:
            times.popleft()
        peaks[account_id] = max(peaks.get(account_id, 0), len(times))
    return peaks


def save_minute_peaks(db, day, start, end):
    db.executemany("UPDATE account_days SET peak_minute = ? WHERE account_id = ? AND day = ?",
                   [(peak, account_id, day) for account_id, peak in minute_peaks(approved_times(db, start, end)).items()])


def days_without_minute_peaks(db, first):
    """Days from `first` on summed up before schema version 4, which has peak_minute: every row of
    account_days has an approved call, hence a peak, once it is filled in from call_log."""
    return [row[0] for row in db.query("SELECT DISTINCT day FROM account_days WHERE day >= ? AND peak_minute IS NULL "
                                       "ORDER BY day", (first,))]


def fill_minute_peaks(db, day, start, end):
    """Fill in the peaks of a day summed up without them, from what call_log still holds of it."""
    with db.transaction():
        save_minute_peaks(db, day, start, end)


def sum_up_day(db, day, start, end, now):
    """Sum up the approved calls of day number `day` ([start, end)) per account and per country,
    in one transaction. Nodes racing here sum the day once: the history_days row decides."""
    db.begin()
    try:
        if db.insert_or_ignore("history_days", {"day": day, "aggregated": now}):
            db.execute("INSERT INTO account_days (account_id, day, calls_biz, calls_off, peak_biz, peak_off) "
                       f"SELECT account_id, ?, {DAY_SUMS} GROUP BY account_id", (day, start, end))
            save_minute_peaks(db, day, start, end)
            for direction, column in COUNTRY_COLUMNS:
                db.execute("INSERT INTO account_day_countries (account_id, day, direction, iso, calls) "
                           f"SELECT account_id, ?, ?, {column}, {country_sums(column)}", (day, direction, start, end))
        db.commit()
    except BaseException:
        db.rollback()
        raise


def summed_history(db, since, until, business_days, account_ids=None):
    """Per account, from the daily sums of days [since, until): (account id, first day,
    business-hours calls on `business_days` and their squares, off-hours calls and squares,
    all calls and squares, highest concurrency in and off business hours, most calls within 60 s,
    the most business-hours calls of a day of `business_days`)."""
    only, ids = only_accounts(account_ids)
    in_business = ", ".join(map(str, business_days)) or "NULL"
    return db.query(
        f"SELECT account_id, MIN(day), SUM(CASE WHEN day IN ({in_business}) THEN calls_biz ELSE 0 END), "
        f"SUM(CASE WHEN day IN ({in_business}) THEN calls_biz * calls_biz ELSE 0 END), SUM(calls_off), "
        "SUM(calls_off * calls_off), SUM(calls_biz + calls_off), SUM((calls_biz + calls_off) * (calls_biz + calls_off)), "
        f"MAX(peak_biz), MAX(peak_off), MAX(peak_minute), MAX(CASE WHEN day IN ({in_business}) THEN calls_biz ELSE 0 END) "
        f"FROM account_days WHERE day >= ? AND day < ?{only} GROUP BY account_id",
        (since, until, *ids))


def summed_countries(db, since, until, account_ids=None):
    """(account id, 'dst' or 'src', country, approved calls) from the daily sums of days [since, until)."""
    only, ids = only_accounts(account_ids)
    return db.query("SELECT account_id, direction, iso, SUM(calls) FROM account_day_countries WHERE day >= ? AND day < ?"
                    f"{only} GROUP BY account_id, direction, iso", (since, until, *ids))


def approved_day_sums(db, start, end, account_ids=None):
    """Per account, from call_log in [start, end): (account id, business-hours calls, off-hours
    calls, highest concurrency in and off business hours)."""
    only, ids = only_accounts(account_ids)
    return db.query(f"SELECT account_id, {DAY_SUMS}{only} GROUP BY account_id", (start, end, *ids))


def approved_country_counts(db, start, end, account_ids=None):
    """(account id, 'dst' or 'src', country, approved calls) from call_log in [start, end)."""
    only, ids = only_accounts(account_ids)
    return [(acc_id, direction, iso, calls) for direction, column in COUNTRY_COLUMNS
            for acc_id, iso, calls in db.query(f"SELECT account_id, {column}, {country_sums(column, only)}", (start, end, *ids))]


def purge_rows(db, *, call_log_before, counter_day_before, new_destination_day_before, ab_pairs_before,
               rate_windows_before, new_destination_windows_before, history_day_before, approvals_before, now):
    """Delete what is older than the retention and what expired; returns {table: rows deleted}."""
    counts = {}
    for table, where, args in (
            ("call_log", "ts < ?", (call_log_before,)),
            ("daily_counters", "day < ?", (counter_day_before,)),
            ("quota_leases", "day < ?", (counter_day_before,)),
            ("spend_counters", "day < ?", (counter_day_before,)),
            ("new_destination_days", "day < ?", (new_destination_day_before,)),
            ("ab_pairs", "last_attempt < ? AND blocked_until < ?", (ab_pairs_before, now)),
            ("approvals", "approved < ? AND (ended = 1 OR until IS NULL)", (approvals_before,)),
            ("rate_windows", "last_call < ?", (rate_windows_before,)),
            ("new_destination_windows", "last_call < ?", (new_destination_windows_before,)),
            ("history_days", "day < ?", (history_day_before,)),
            ("account_days", "day < ?", (history_day_before,)),
            ("account_day_countries", "day < ?", (history_day_before,)),
            ("reputation_cache", "expires < ?", (now,)),
            ("locks", "expires < ?", (now,))):
        counts[table] = db.execute(f"DELETE FROM {table} WHERE {where}", args).rowcount
    return counts


# verdict counters: A->B pairs, per-minute windows, approved calls per day; first-seen countries

def load_counter_row(db, table, columns, where, params, lock):
    """`columns` of one counter row, or None. `lock`: on MySQL the row stays locked until the
    verdict commits, so that racing nodes take turns."""
    text = f"SELECT {columns} FROM {table} WHERE {where}"
    return db.one_for_update(text, params) if lock else db.one(text, params)


def load_pair(db, account_id, number, lock):
    """(times, blocked_until) of an A->B pair, or None."""
    return load_counter_row(db, "ab_pairs", "times, blocked_until", "account_id = ? AND number = ?",
                            (account_id, number), lock)


def save_pair(db, account_id, number, times, now, blocked_until, existed):
    db.write_read_row("ab_pairs", {"account_id": account_id, "number": number, "times": times, "last_attempt": now,
                                   "blocked_until": blocked_until}, ["account_id", "number"],
                      "times = NEW(times), last_attempt = NEW(last_attempt), blocked_until = NEW(blocked_until)", existed)


def load_rate_window(db, account_id, lock):
    """(times,) of the account's per-minute window, or None."""
    return load_counter_row(db, "rate_windows", "times", "account_id = ?", (account_id,), lock)


def save_rate_window(db, account_id, times, now, existed):
    db.write_read_row("rate_windows", {"account_id": account_id, "times": times, "last_call": now}, ["account_id"],
                      "times = NEW(times), last_call = NEW(last_call)", existed)


def load_new_destination_calls(db, account_id, day, iso, lock):
    """(calls,) approved to `iso` on `day` while it was new to the account, or None."""
    return load_counter_row(db, "new_destination_days", "calls", "account_id = ? AND day = ? AND iso = ?",
                            (account_id, day, iso), lock)


def add_new_destination_call(db, account_id, day, iso):
    db.upsert("new_destination_days", {"account_id": account_id, "day": day, "iso": iso, "calls": 1},
              ["account_id", "day", "iso"], "calls = calls + NEW(calls)")


def take_daily_quota(db, account_id, day, bucket, limit):
    """Count one approved call if the account is still under `limit`. True if counted."""
    return limit > 0 and db.increment_below("daily_counters", {"account_id": account_id, "day": day, "bucket": bucket},
                                            "approved", limit)


def add_approved_calls(db, account_id, day, bucket, calls):
    db.upsert("daily_counters", {"account_id": account_id, "day": day, "bucket": bucket, "approved": calls},
              ["account_id", "day", "bucket"], "approved = approved + NEW(approved)")


def approved_calls(db, account_id, day, bucket=None):
    """Approved calls of the day, in one bucket ('biz', 'off') or both."""
    if bucket is None:
        return int(db.scalar("SELECT SUM(approved) FROM daily_counters WHERE account_id = ? AND day = ?",
                             (account_id, day), default=0))
    return db.scalar("SELECT approved FROM daily_counters WHERE account_id = ? AND day = ? AND bucket = ?",
                     (account_id, day, bucket), default=0)


def claim_quota_lease(db, key, node, limit, block, now, expires):
    """Claim up to `block` more calls of the daily quota `limit` of key (account id, day, bucket)
    for `node`, in one transaction that holds the counter row locked and writes it (racing claims
    take turns; on a Galera cluster the later commit fails with 1213 and is tried again): what is
    left is the limit less the approved calls and every live lease, this node's own included.
    Expired leases (their node stopped renewing them) are given back first. When less
    than `block` is left, the other nodes holding calls are asked to give back what they have
    not spent (`wanted`). Returns (calls granted, the approved calls and other nodes' live leases)."""
    account_id, day, bucket = key
    where = "account_id = ? AND day = ? AND bucket = ?"
    with db.transaction():
        db.upsert("daily_counters", {"account_id": account_id, "day": day, "bucket": bucket, "approved": 0, "claims": 1},
                  ["account_id", "day", "bucket"], "claims = claims + 1")   # the row is locked (and written) from here
        approved = int(db.scalar(f"SELECT approved FROM daily_counters WHERE {where}", key))
        leases = db.query(f"SELECT node, calls, expires FROM quota_leases WHERE {where}", key)
        if any(expires <= now for _holder, _calls, expires in leases):
            db.execute(f"DELETE FROM quota_leases WHERE {where} AND expires <= ?", (*key, now))
        mine = sum(int(calls) for holder, calls, expires in leases if holder == node and expires > now)
        others = sum(int(calls) for holder, calls, expires in leases if holder != node and expires > now)
        granted = max(0, min(block, limit - approved - others - mine))
        if granted:
            db.upsert("quota_leases", {"account_id": account_id, "day": day, "bucket": bucket, "node": node,
                                       "calls": granted, "expires": expires},
                      ["account_id", "day", "bucket", "node"], "calls = calls + NEW(calls), expires = NEW(expires)")
        if granted < block and others:
            db.execute(f"UPDATE quota_leases SET wanted = 1 WHERE {where} AND node <> ? AND calls > 0", (*key, node))
    return granted, approved + others


def release_lease_calls(db, node, items):
    """Take calls out of the node's leases, ((account id, day, bucket), calls) pairs: one UPDATE
    per 500 leases, not one per lease (a round trip each on MySQL, where executemany batches only
    INSERTs). Other leases of the same accounts are matched by the IN but keep their calls. The
    statement's text depends on the chunk's length only: MySQL statements are translated once
    per text and kept."""
    for start in range(0, len(items), 500):
        chunk = items[start:start + 500]
        cases = " ".join("WHEN account_id = ? AND day = ? AND bucket = ? THEN ?" for _ in chunk)
        db.execute(f"UPDATE quota_leases SET calls = calls - CASE {cases} ELSE 0 END "
                   f"WHERE node = ? AND account_id IN ({', '.join('?' * len(chunk))})",
                   [v for key, calls in chunk for v in (*key, calls)] + [node] + [key[0] for key, _calls in chunk])


def settle_quota_leases(db, node, spent, counted, returned, held, expires):
    """A node's write-behind, in one transaction: calls spent from its leases move to
    daily_counters ({key: calls}); calls approved outside a lease (no quota, or over it while
    learning) are added there; unspent calls leave the leases: those `returned`, and all of
    `held` ({key: calls}) where another node asked for them (`wanted`); its other leases are
    renewed until `expires`. Returns (the keys of its leases still held, {key: calls given back
    because they were wanted}, the keys another node asked for)."""
    with db.transaction():
        wanted = {(account_id, day, bucket) for account_id, day, bucket in db.query(
            "SELECT account_id, day, bucket FROM quota_leases WHERE node = ? AND wanted = 1", (node,))}
        given = {key: held[key] for key in wanted if held.get(key)}
        approved = {key: spent.get(key, 0) + counted.get(key, 0) for key in spent.keys() | counted.keys()}
        db.executemany(db.upsert_text("daily_counters", ("account_id", "day", "bucket", "approved"),
                                      ("account_id", "day", "bucket"), "approved = approved + NEW(approved)"),
                       [(*key, calls) for key, calls in sorted(approved.items()) if calls])
        released = {key: spent.get(key, 0) + returned.get(key, 0) + given.get(key, 0)
                    for key in spent.keys() | returned.keys() | given.keys()}
        release_lease_calls(db, node, sorted(released.items()))
        db.execute("DELETE FROM quota_leases WHERE node = ? AND calls <= 0", (node,))
        db.execute("UPDATE quota_leases SET expires = ?, wanted = 0 WHERE node = ?", (expires, node))
        leases = {(account_id, day, bucket) for account_id, day, bucket in db.query(
            "SELECT account_id, day, bucket FROM quota_leases WHERE node = ?", (node,))}
    return leases, given, wanted


def load_spend(db, account_id, day, lock):
    """(spend,) of the account's approved calls on `day`, or None."""
    return load_counter_row(db, "spend_counters", "spend", "account_id = ? AND day = ?", (account_id, day), lock)


def add_spend(db, account_id, day, cost):
    db.upsert("spend_counters", {"account_id": account_id, "day": day, "spend": cost}, ["account_id", "day"],
              "spend = spend + NEW(spend)")


def load_new_destination_window(db, account_id, lock):
    """(calls,) of the account's new-destination window (R16), or None."""
    return load_counter_row(db, "new_destination_windows", "calls", "account_id = ?", (account_id,), lock)


def save_new_destination_window(db, account_id, calls, now, existed):
    db.write_read_row("new_destination_windows", {"account_id": account_id, "calls": calls, "last_call": now},
                      ["account_id"], "calls = NEW(calls), last_call = NEW(last_call)", existed)


def mark_first_seen(db, account_id, direction, iso, now):
    """Note that the account called to ('dst') or from ('src') `iso`; True the first time."""
    return db.insert_or_ignore("account_seen", {"account_id": account_id, "direction": direction, "iso": iso,
                                                "first_seen": now})


def mark_first_seen_all(db, marks):
    """mark_first_seen of many (account id, direction, iso, time) marks: one INSERT, and one
    SELECT (of those accounts' marks) per 500 accounts, not a round trip per mark. Returns the marks that
    were the first: those whose time was stored (of two nodes marking one key, the one whose
    insert won)."""
    verb = "INSERT OR IGNORE" if db.dialect == "sqlite" else "INSERT IGNORE"
    db.executemany(f"{verb} INTO account_seen (account_id, direction, iso, first_seen) VALUES (?, ?, ?, ?)", marks)
    keys = {mark[:3] for mark in marks}
    accounts = sorted({key[0] for key in keys})
    stored = {}
    # by account alone: SQLite scans the whole table for a list of (account, direction, iso)
    for start in range(0, len(accounts), 500):
        chunk = accounts[start:start + 500]
        for account_id, direction, iso, first_seen in db.query(
                "SELECT account_id, direction, iso, first_seen FROM account_seen "
                f"WHERE account_id IN ({', '.join('?' * len(chunk))})", chunk):
            if (account_id, direction, iso) in keys:
                stored[account_id, direction, iso] = first_seen
    return [mark for mark in marks if stored.get(mark[:3]) == mark[3]]


def insert_account_row(db, values):
    """INSERT one account of {column: value} unless it exists; True when it was new."""
    return db.insert_or_ignore("accounts", values)


def update_last_seen(db, items):
    """(account id, time) pairs: one UPDATE per 500 accounts, not one per account (a round trip
    each on MySQL)."""
    for start in range(0, len(items), 500):
        chunk = items[start:start + 500]
        cases = " ".join("WHEN ? THEN ?" for _ in chunk)
        marks = ", ".join("?" * len(chunk))
        db.execute(f"UPDATE accounts SET last_seen = CASE id {cases} END WHERE id IN ({marks})",
                   [v for item in chunk for v in item] + [i for i, _ in chunk])


CALL_LOG_COLUMNS = ("ts", "call_id", "account_id", "user", "domain", "from_uri", "dialed", "number", "source_ip",
                    "user_agent", "source_country", "dest_country", "off_hours", "concurrent_calls", "code", "would_code",
                    "reason", "sip_response", "abuse_score", "node", "latency_ms", "undo_command", "cost", "row_key")


# SQLite's module lets go of the interpreter lock around each statement, and the call log thread
# then waits up to the switch interval to get it back from the busy loop: once a row with
# executemany, so that a flush's rows took longer to write than the flush interval.
CALL_LOG_ROWS_PER_STATEMENT = 200


def insert_call_log(db, rows):
    """Call log rows, tuples in the order of CALL_LOG_COLUMNS; a row whose row_key is in the
    table already is skipped, so that rows written twice are kept once. Many rows go in one
    INSERT: on SQLite here, on MySQL by PyMySQL's executemany."""
    one = db.upsert_text("call_log", CALL_LOG_COLUMNS, ("row_key",), "row_key = row_key")
    group = f"({', '.join('?' * len(CALL_LOG_COLUMNS))})"
    size = CALL_LOG_ROWS_PER_STATEMENT
    whole = len(rows) // size * size if db.dialect == "sqlite" else 0
    if whole:
        many = one.replace(group, ", ".join([group] * size), 1)
        for start in range(0, whole, size):
            db.execute(many, [value for row in rows[start:start + size] for value in row])
    db.executemany(one, rows[whole:])


# approval links

def record_approval(db, approval_id, account_id, rule, value, now, until, client_ip, user_agent):
    """Remember an approval link as used, by whom; False when it had been used already."""
    return db.insert_or_ignore("approvals", {"token_id": approval_id, "account_id": account_id, "rule": rule,
                                             "value": value, "approved": now, "until": until,
                                             "client_ip": client_ip, "user_agent": user_agent})


def load_approval(db, approval_id):
    """(approved, until, client_ip, user_agent) of a used approval link, or None."""
    return db.one("SELECT approved, until, client_ip, user_agent FROM approvals WHERE token_id = ?", (approval_id,))


def clear_daily_counter(db, account_id, day, bucket):
    """Forget the approved calls of one bucket ('biz', 'off') of `day`: a new daily quota."""
    db.execute("DELETE FROM daily_counters WHERE account_id = ? AND day = ? AND bucket = ?", (account_id, day, bucket))


def load_ended_approvals(db, now):
    """(token_id, user, domain, rule, value) of the country approvals whose time ran out by `now`."""
    return db.query("SELECT a.token_id, c.user, c.domain, a.rule, a.value FROM approvals a "
                    "JOIN accounts c ON c.id = a.account_id WHERE a.ended = 0 AND a.until <= ?", (now,))


def running_approvals(db, account_id, rule, value, now):
    """How many approvals of this account, rule and country still run after `now`."""
    return db.scalar("SELECT COUNT(*) FROM approvals WHERE account_id = ? AND rule = ? AND value = ? "
                     "AND ended = 0 AND until > ?", (account_id, rule, value, now), default=0)


def end_approval(db, approval_id):
    db.execute("UPDATE approvals SET ended = 1 WHERE token_id = ?", (approval_id,))


# =============================================================================================
# 7. Lists: in-memory indexes of the number, IP and User-Agent lists and the country table
# =============================================================================================

class PrefixSet:
    def __init__(self, prefixes=()):
        self.items = set(prefixes)
        self.lengths = sorted({len(p) for p in self.items}, reverse=True)

    def match(self, digits):
        """Longest listed prefix of `digits`, or None."""
        for length in self.lengths:
            if length <= len(digits) and digits[:length] in self.items:
                return digits[:length]
        return None


class NetworkSet:
    def __init__(self, cidrs=()):
        self.nets = {4: {}, 6: {}}  # version -> prefix length -> {network int: cidr text}
        for cidr in cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            self.nets[net.version].setdefault(net.prefixlen, {})[int(net.network_address)] = str(net)
        self.masks = {v: sorted(((plen, ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)) for plen in d),
                                reverse=True) for v, d, bits in ((4, self.nets[4], 32), (6, self.nets[6], 128))}
        self.cache = {}

    def match(self, ip):
        """The listed network containing `ip`, or None; answers are memoized per address."""
        if ip in self.cache:
            return self.cache[ip]
        found = None
        addr = parse_ip(ip)
        if addr is not None:
            value, table = int(addr), self.nets[addr.version]
            found = next((table[plen][value & mask] for plen, mask in self.masks[addr.version]
                          if value & mask in table[plen]), None)
        if len(self.cache) > 65536:
            self.cache.clear()
        self.cache[ip] = found
        return found


class UserAgentList:
    """Case-insensitive regexes matched as one alternation; results cached per User-Agent."""

    def __init__(self, patterns=()):
        self.patterns = []
        for pattern in patterns:
            try:
                self.patterns.append((pattern, re.compile(pattern, re.I)))
            except re.error:
                log.warning("User-Agent pattern %r is not a valid regular expression; ignored", pattern)
        self.combined = re.compile("|".join(f"(?:{p})" for p, _ in self.patterns), re.I) if self.patterns else None
        self.cache = {}

    def match(self, ua):
        if not self.combined or not ua:
            return None
        if ua in self.cache:
            return self.cache[ua]
        found = None
        if self.combined.search(ua):
            found = next(p for p, rx in self.patterns if rx.search(ua))
        if len(self.cache) > 10000:
            self.cache.clear()
        self.cache[ua] = found
        return found


class Lists:
    """Everything the rules look up, loaded from the database in one go."""

    def __init__(self, db):
        rows = load_list(db, "number")
        self.number_black = PrefixSet(p for k, p in rows if k == "black")
        self.number_white = PrefixSet(p for k, p in rows if k == "white")
        rows = load_list(db, "ip")
        self.ip_black = NetworkSet(c for k, c in rows if k == "black")
        self.ip_white = NetworkSet(c for k, c in rows if k == "white")
        self.user_agents = UserAgentList(load_user_agent_patterns(db))
        self.countries = country_table(db)
        self.rates = RateDeck()  # load_lists reads [policy] rate_deck


class DestinationTiers:
    """The risk tier of a destination (TIERS): the longest [policy] low_risk_prefixes or
    high_risk_prefixes entry that starts the number; else its country's: [policy]
    low_risk_countries, the home country, [policy] high_risk_countries, the country table's risk
    (a tier; 'normal' has no say), the home country's zone (low), else medium."""

    def __init__(self, policy, countries):
        self.prefixes = {}
        for tier, entries in (("low", policy.low_risk_prefixes), ("high", policy.high_risk_prefixes)):
            for entry in entries:
                try:
                    self.prefixes[dialed_prefix(entry, policy, countries)] = tier
                except ValueError as exc:
                    log.warning("[policy] %s_risk_prefixes: %s; ignored (%s lint lists it)", tier, exc, PROG)
        self.ranges = PrefixSet(self.prefixes)
        zone = home_zone(policy.home_country)
        self.by_iso = {}
        for iso, country in countries.by_iso.items():
            if iso in policy.low_risk_countries or iso == policy.home_country:
                tier = "low"
            elif iso in policy.high_risk_countries:
                tier = "high"
            elif country.risk in TIERS:
                tier = country.risk
            else:
                tier = "low" if iso in zone else "medium"
            self.by_iso[iso] = tier

    def range_of(self, number):
        """The configured range starting `number` (E.164 digits, or None when not dialable), or None."""
        return self.ranges.match(number) if number else None

    def of(self, number, iso):
        """(tier, what decided it: '+PREFIX' or the ISO code) of a call to `number` in country `iso`."""
        prefix = self.range_of(number)
        if prefix:
            return self.prefixes[prefix], f"+{prefix}"
        return self.by_iso.get(iso, "medium"), iso

    def countries_of(self, tier):
        return {iso for iso, t in self.by_iso.items() if t == tier}



class RateDeck:
    """Price per minute by number prefix ([policy] rate_deck), the longest prefix winning."""

    def __init__(self, prices=None):
        self.prices = prices or {}
        self.prefixes = PrefixSet(self.prices)

    def price(self, number):
        """The price per minute of a call to `number` (E.164 digits), or None when no prefix prices it."""
        prefix = self.prefixes.match(number) if number else None
        return None if prefix is None else self.prices[prefix]


def read_rate_deck(policy, countries):
    """[policy] rate_deck: a CSV file of `prefix,price_per_minute` lines, prefixes written as
    they are dialed (+44, 0044 and 44 are one prefix); blank lines, '#' comments and a header
    line are skipped. A bad line is a ConfigError naming file:line."""
    path = policy.rate_deck
    if not path:
        return RateDeck()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[policy] rate_deck: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    prices = {}
    for number, fields in enumerate(csv.reader(lines), 1):
        if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
            continue
        if number == 1 and fields[0].strip().lower() == "prefix":
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise ConfigError(f"{where}: expected prefix,price_per_minute, found {len(fields)} field(s)")
        try:
            prefix = dialed_prefix(fields[0].strip(), policy, countries)
            price = _number(0, 1e6)(fields[1].strip())
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if prefix in prices:
            raise ConfigError(f"{where}: prefix +{prefix} is priced twice")
        prices[prefix] = price
    return RateDeck(prices)


def load_lists(cfg, db):
    """(change serials, Lists, DestinationTiers) as of now; the serials are read first, so a
    change made while loading is seen by the next check."""
    serials = change_serials(db)
    lists = Lists(db)
    lists.rates = read_rate_deck(cfg.policy, lists.countries)
    return serials, lists, DestinationTiers(cfg.policy, lists.countries)


def country_table(db):
    return CountryTable(load_countries(db))


def high_risk_countries(cfg, db):
    """The countries of tier high: never learned by training. Their number prefixes are left out:
    a tier needs none, and training asks every day."""
    countries = CountryTable(load_country_risks(db))
    return DestinationTiers(cfg.policy, countries).countries_of("high")

# =============================================================================================
# 8. Reputation: AbuseIPDB and APIBAN lookups on a worker pool, cached in the database
# =============================================================================================

FAILURE_TTL = 300.0


@dataclass
class Reputation:
    ip: str
    ok: bool                 # False: the lookup failed (timeout, HTTP error, rate limit)
    score: int | None = None
    country: str = ""
    whitelisted: bool = False
    apiban: bool = False
    source: str = ""
    detail: str = ""
    checked: float = 0.0


class RateLimited(Exception):
    def __init__(self, until):
        super().__init__(f"rate limited until {fmt_time(until, dt.timezone.utc)}")
        self.until = until


class ReputationClient:
    """Blocking HTTP lookups; called from worker threads and from the CLI, never from the loop."""

    def __init__(self, rcfg):
        self.rcfg = rcfg

    @property
    def enabled(self):
        return bool(self.rcfg.abuseipdb_key or self.rcfg.apiban_key)

    def fetch(self, ip, now=None):
        """Returns a Reputation (ok=False on failure); raises RateLimited on HTTP 429."""
        now = now or time.time()
        rep = Reputation(ip, True, checked=now)
        sources, errors = [], []
        for name, key, lookup in (("abuseipdb", self.rcfg.abuseipdb_key, self._abuseipdb),
                                  ("apiban", self.rcfg.apiban_key, self._apiban)):
            if not key:
                continue
            try:
                lookup(ip, rep, now)
                sources.append(name)
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
                errors.append(f"{name}: {_describe_http_error(exc)}")
        rep.ok = bool(sources)   # one source that answered is a result
        rep.detail = "; ".join(errors)
        rep.source = "+".join(sources)
        return rep

    def _get(self, url, headers, now):
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.rcfg.reputation_timeout) as response:
                return response.status, json.loads(response.read().decode("utf-8") or "{}")
        except urllib.error.HTTPError as exc:
            if exc.code == 429:
                raise RateLimited(_retry_until(exc.headers, now)) from None
            if exc.code == 404:
                return 404, json.loads(exc.read().decode("utf-8") or "{}")
            raise

    def _abuseipdb(self, ip, rep, now):
        url = (f"{self.rcfg.abuseipdb_url.rstrip('/')}/api/v2/check?"
               + urllib.parse.urlencode({"ipAddress": ip, "maxAgeInDays": 90}))
        status, body = self._get(url, {"Key": self.rcfg.abuseipdb_key, "Accept": "application/json"}, now)
        if status != 200:
            raise ValueError(f"AbuseIPDB answered HTTP {status}")
        data = body["data"]
        rep.score = int(data["abuseConfidenceScore"])
        rep.country = (data.get("countryCode") or "").upper()
        rep.whitelisted = bool(data.get("isWhitelisted"))

    def _apiban(self, ip, rep, now):
        url = f"{self.rcfg.apiban_url.rstrip('/')}/api/{urllib.parse.quote(self.rcfg.apiban_key)}/check/{ip}"
        status, body = self._get(url, {"Accept": "application/json"}, now)
        rep.apiban = status == 200 and str(body.get("ID", "none")).lower() != "none"


def _retry_until(headers, now):
    retry_after = headers.get("Retry-After")
    if retry_after and retry_after.strip().isdigit():
        return now + int(retry_after)
    reset = headers.get("X-RateLimit-Reset")
    if reset and reset.strip().isdigit():
        return float(reset)
    return now + 60


def _describe_http_error(exc):
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"


def reputation_from_row(row):
    ip, ok, score, country, whitelisted, apiban, source, detail, checked, _expires = row
    return Reputation(ip, bool(ok), score, country, bool(whitelisted), bool(apiban), source, detail, checked)


def store_reputation(db, rep, ttl):
    expires = rep.checked + (ttl if rep.ok else FAILURE_TTL)
    values = {"ip": rep.ip, "ok": int(rep.ok), "score": rep.score, "country": rep.country,
              "whitelisted": int(rep.whitelisted), "apiban": int(rep.apiban), "source": rep.source,
              "detail": rep.detail[:255], "checked": rep.checked, "expires": expires}
    save_reputation(db, values)


def cached_reputation(db, ip, now):
    row = load_cached_reputation(db, ip, now)
    return reputation_from_row(row) if row else None


class ReputationService:
    """The event loop's view of reputation: a memory and database cache in front of a small
    worker pool. Concurrent requests for one IP share one lookup. Results come back through
    `completed`, and `wake()` tells the loop to call `deliver()`."""

    def __init__(self, cfg, db_url, wake):
        self.rcfg = cfg.reputation
        self.client = ReputationClient(self.rcfg)
        self.db_url = db_url
        self.wake = wake
        self.memory = {}        # ip -> Reputation
        self.waiting = {}       # ip -> [callback]
        self.completed = deque()
        self.lookups = {"hit": 0, "miss": 0, "failure": 0}  # for /metrics; "in flight" is len(waiting)
        self.paused_until = 0.0
        self.local = threading.local()
        self.pool = ThreadPoolExecutor(self.rcfg.reputation_workers, thread_name_prefix="reputation") if self.client.enabled else None
        if not self.client.enabled:
            log.warning("reputation lookups are off: no abuseipdb_key or apiban_key in [reputation]")

    def configure(self, cfg):
        """A new Config: lookups use its keys and limits from the next one on; a pool starts when
        keys were added (its size follows reputation_workers at the next restart)."""
        self.rcfg = self.client.rcfg = cfg.reputation
        if self.pool is None and self.client.enabled:
            self.pool = ThreadPoolExecutor(self.rcfg.reputation_workers, thread_name_prefix="reputation")

    def known(self, db, ip, now):
        """A usable Reputation, or None when a lookup is needed (or not possible)."""
        rep = self.memory.get(ip)
        if rep is not None and now < rep.checked + (self.rcfg.reputation_ttl if rep.ok else FAILURE_TTL):
            self.lookups["hit"] += 1
            return rep
        if db is None:  # the database is unavailable
            return None
        rep = cached_reputation(db, ip, now)
        if rep is not None:
            if len(self.memory) > 100000:
                self.memory.clear()
            self.memory[ip] = rep
            self.lookups["hit"] += 1
        return rep

    def wanted(self, ip):
        return self.pool is not None and is_public_ip(ip)

    def paused(self, now):
        return now < self.paused_until

    def request(self, ip, callback):
        self.lookups["miss"] += 1
        callbacks = self.waiting.setdefault(ip, [])
        callbacks.append(callback)
        if len(callbacks) == 1:
            self.pool.submit(self._lookup, ip)

    def _lookup(self, ip):
        now = time.time()
        try:
            rep = self.client.fetch(ip, now)
        except RateLimited as exc:
            rep = Reputation(ip, False, detail=str(exc), checked=now)
            self.completed.append((ip, rep, exc.until))
            self.wake()
            return
        except Exception as exc:  # whatever happens, the calls waiting for this IP get an answer
            rep = Reputation(ip, False, detail=f"{type(exc).__name__}: {exc}", checked=now)
        self.completed.append((ip, rep, None))
        self.wake()
        try:
            if not hasattr(self.local, "db"):
                self.local.db = Database(self.db_url)
            store_reputation(self.local.db, rep, self.rcfg.reputation_ttl)
        except Exception as exc:  # a cache miss later is the only cost
            log.error("reputation cache write for %s failed: %s", ip, exc)
            if hasattr(self.local, "db"):
                self.local.db.close()
                del self.local.db  # connected again on the next write

    def deliver(self):
        """On the loop: hand finished lookups to the calls waiting for them."""
        while self.completed:
            ip, rep, paused_until = self.completed.popleft()
            if paused_until:
                if not self.paused(time.time()):
                    log.warning("reputation service rate limit (HTTP 429): no lookups until %s",
                                fmt_time(paused_until, dt.timezone.utc))
                self.paused_until = max(self.paused_until, paused_until)
            else:
                self.memory[ip] = rep
            if not rep.ok:
                self.lookups["failure"] += 1
            for callback in self.waiting.pop(ip, []):
                callback(rep)

    def close(self):
        if self.pool:
            self.pool.shutdown(wait=False, cancel_futures=True)


# =============================================================================================
# 9. Alerts: rate-limited events, an outbox in the database, delivery by SMTP and webhook
# =============================================================================================

@dataclass
class AlertEvent:
    kind: str          # rejection, would-reject, enrolled, anomaly, summary, overload
    account: str       # user@domain
    rule: str          # verdict code or anomaly name: the rate-limit key with `account`
    subject: str
    body: str
    fields: dict
    email: str = ""    # the account's own address, an extra recipient


MAX_QUEUED_ALERTS = 10000


class AlertQueue:
    """Collects events on the hot path; `flush` rate-limits them and writes the outbox."""

    def __init__(self, acfg, tz=dt.timezone.utc):
        self.acfg = acfg
        self.tz = tz  # of the times alerts print
        self.events = []
        self.dropped = 0

    def add(self, event):
        """Queue an event; its texts made storable (they quote what callers sent). While the
        database is unavailable at most MAX_QUEUED_ALERTS wait; later ones are counted, not kept."""
        if len(self.events) >= MAX_QUEUED_ALERTS:
            self.drop(1, len(self.events))
            return
        event.account, event.subject, event.body = storable(event.account, 400), storable(event.subject, 255), storable(event.body, 16384)
        event.fields = {k: storable(v, 1024) if isinstance(v, str) else v for k, v in event.fields.items()}
        self.events.append(event)

    def drop(self, count, unwritten):
        """`count` alerts past MAX_QUEUED_ALERTS: counted, and logged at the first, the 1,000th
        and every 100,000th, not at each."""
        before, self.dropped = self.dropped, self.dropped + count
        if before < 1 <= self.dropped or before < 1000 <= self.dropped or before // 100000 < self.dropped // 100000:
            log.error("alert queue full (%d unwritten): %d alert(s) dropped", unwritten, self.dropped)

    def flush(self, db, now):
        self.write(db, now)
        self.events = []

    def write(self, db, now, events=None):
        """Write the events (default: those queued here) into the current transaction; the
        caller clears them once it commits. Events of one account and rule are taken together,
        and the throttles of all of them are read and written together: a flood costs a few
        statements, not a round trip per event."""
        groups = {}
        for event in self.events if events is None else events:
            groups.setdefault((event.account, event.rule), []).append(event)
        if not groups:
            return
        throttles = load_alert_throttles(db, groups)
        sent_marks, suppressed, outbox = [], [], []
        for key, events in sorted(groups.items()):  # one lock order on every node
            row = throttles.get(key)
            if row and now - row[0] < self.acfg.alert_interval:
                suppressed.append((*key, row[0], len(events)))
                continue
            sent = events if self.acfg.alert_interval <= 0 else events[:1]  # the rest fall within the interval
            sent_marks.append((*key, now, len(events) - len(sent)))
            for i, event in enumerate(sent):
                body = event.body
                if i == 0 and row and row[1]:
                    body += (f"\n\n{row[1]} more alert(s) of this kind for {key[0]} were suppressed "
                             f"since {fmt_time(row[0], self.tz)} (alert_interval).")
                    event.fields["suppressed"] = row[1]
                log.info("alert: %s", event.subject)
                outbox += self._outbox_row(event, body, now)
        write_alert_throttles(db, sent_marks, suppressed)
        enqueue_alerts(db, outbox)

    def _outbox_row(self, event, body, now):
        """[the alert_outbox row of the event], or [] when neither e-mail nor a webhook is set."""
        recipients = split_list(self.acfg.alert_email) + ([event.email] if event.email else [])
        email = bool(self.acfg.smtp_host and recipients)
        webhook = bool(self.acfg.alert_webhook)
        if not (email or webhook):
            return []
        payload = dict(event.fields, text=f"{event.subject}\n{body}", kind=event.kind,
                       account=event.account, rule=event.rule, time=now)
        return [(now, event.kind, event.account, event.rule[:8], event.subject[:255], body,
                 json.dumps(payload, default=str), ",".join(recipients), int(email), int(webhook), 0, now)]


class AlertTally(AlertQueue):
    """The alerts of a replay: counted per kind, never queued for delivery (the calls are history)."""

    def __init__(self, acfg, tz=dt.timezone.utc):
        super().__init__(acfg, tz)
        self.counts = {}

    def add(self, event):
        self.counts[event.kind] = self.counts.get(event.kind, 0) + 1

    def write(self, db, now, events=None):
        pass


def send_email(acfg, recipients, subject, body):
    msg = EmailMessage()
    msg["From"] = acfg.smtp_from
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg.set_content(body)
    smtp_class = smtplib.SMTP_SSL if acfg.smtp_tls == "ssl" else smtplib.SMTP
    with smtp_class(acfg.smtp_host, acfg.smtp_port, timeout=15) as smtp:
        if acfg.smtp_tls == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if acfg.smtp_user:
            smtp.login(acfg.smtp_user, acfg.smtp_password)
        smtp.send_message(msg)


def post_webhook(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class AlertDispatcher:
    """A thread that delivers the outbox: each row until every channel took it, with back-off.
    Rows are claimed with a lease, so several nodes can run dispatchers on one database."""

    LEASE = 120.0

    def __init__(self, cfg, db_url):
        self.acfg = cfg.alerts
        self.db_url = db_url
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self.failures = 0  # delivery attempts that failed, for /metrics

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _run(self):
        db = None
        while not self.stop_event.is_set():
            try:
                db = db or Database(self.db_url)
                self.deliver_due(db, time.time())
            except Exception as exc:  # keep the thread alive through database outages
                log.error("alert delivery: %s", exc)
                if db:
                    db.close()
                db = None
            self.stop_event.wait(1.0)
        if db:
            db.close()

    def deliver_due(self, db, now):
        for alert_id, subject, body, payload, recipients, email, webhook, attempts, next_try in due_alerts(db, now):
            if not claim_alert(db, alert_id, next_try, now + self.LEASE):
                continue
            errors = []
            if email:
                try:
                    send_email(self.acfg, split_list(recipients), subject, body)
                    email = 0
                except (OSError, smtplib.SMTPException) as exc:
                    errors.append(f"smtp: {exc}")
            if webhook:
                try:
                    post_webhook(self.acfg.alert_webhook, json.loads(payload))
                    webhook = 0
                except (OSError, ValueError) as exc:
                    errors.append(f"webhook: {_describe_http_error(exc)}")
            if not errors:
                delete_alert(db, alert_id)
                continue
            delay = min(self.acfg.retry_max_interval, 5.0 * 2 ** attempts)
            retry_alert(db, alert_id, email, webhook, time.time() + delay, "; ".join(errors))
            self.failures += 1
            log.warning("alert %s not delivered (%s); retry in %.0f s", alert_id, "; ".join(errors), delay)


# -- approval links: a rejection the account owner lifts himself, signed with [http] secret ----

# rule -> what its approval changes: a destination or source country allowed, today's quota reset
APPROVABLE = {"R06": "dest", "R04": "source", "R09": "quota", "R11": "quota"}


@dataclass
class Approval:
    token_id: str    # random: the database remembers it once used
    account: str     # user@domain
    rule: str        # a key of APPROVABLE
    value: str       # the country (R04, R06) or the calendar day of the quota (R09, R11)
    expires: float


def _unpadded_b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _approval_signature(secret, payload):
    return hmac.new(secret.encode(), b"tfps-approve:" + payload.encode("ascii"), hashlib.sha256).digest()


def approval_token(secret, account, rule, value, expires):
    """A URL-safe token 'PAYLOAD.SIGNATURE' granting one approval until `expires`."""
    payload = _unpadded_b64(json.dumps([secrets.token_hex(12), account, rule, value, int(expires)],
                                       separators=(",", ":")).encode())
    return f"{payload}.{_unpadded_b64(_approval_signature(secret, payload))}"


def read_approval_token(secret, token, now):
    """The Approval a token grants. Raises ValueError saying why it is refused."""
    payload, _, signature = token.partition(".")
    try:
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        expected = _approval_signature(secret, payload)
    except (ValueError, UnicodeEncodeError):
        given, expected = b"", b"-"
    if not hmac.compare_digest(given, expected):
        raise ValueError("this approval link is not valid: its signature does not match")
    token_id, account, rule, value, expires = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    if rule not in APPROVABLE:
        raise ValueError(f"{rule} is not approvable")
    if expires <= now:
        raise ValueError("this approval link has expired")
    return Approval(token_id, account, rule, value, float(expires))


# =============================================================================================
# 10. Engine: the fraud pipeline. One call attempt in, one verdict out.
# =============================================================================================

APPROVED = "A00"
OVERLOADED = "R98"  # answered without the engine: the request waited longer than [server] overload_after
LIMIT_FIELDS = ("concurrent_calls", "concurrent_calls_off", "daily_quota", "daily_quota_off")
ATTACK_SIGNATURE = re.compile(r"['\"\\`]|--|/\*|\*/|%2[27]|%5c|%00|[=<>;\x00-\x1f]", re.I)
UA_ATTACK_SIGNATURE = re.compile(r"['\"\\`]|/\*|\*/|%2[27]|%5c|%00|[\x00-\x1f]|\bunion\s+select\b|\bor\s+1\s*=\s*1\b", re.I)


@dataclass
class CallAttempt:
    user: str
    domain: str
    number: str                         # as dialed: the Request-URI user
    source_ip: str = ""
    user_agent: str = ""
    concurrent_calls: int | None = None  # the user's calls including this one, as the PBX counts them
    ts: float = 0.0
    call_id: str = ""
    from_uri: str = ""
    source_country: str = ""            # when known without a lookup (replay, CLI)
    reputation: Reputation | None = None
    defect: str = ""                    # why the identity cannot be trusted (rule R12)


@dataclass
class Account:
    id: int | None
    user: str
    domain: str
    concurrent_calls: int | None
    concurrent_calls_off: int | None
    daily_quota: int | None
    daily_quota_off: int | None
    source_countries: set
    dest_countries: set
    blocked: bool
    email: str
    state: str
    learning_until: float | None
    pinned: set
    created: float
    last_seen: float | None
    anomaly_daily: int | None = None   # learned: more approved calls a day than this is unusual
    daily_spend: float | None = None   # estimated cost of approved calls a day (R17); set by hand only
    calls_per_minute: int | None = None  # learned (R15); None: [policy] max_calls_per_minute
    blocked_until: float | None = None  # end of the latest R16 block, in force while in the future

    @classmethod
    def from_row(cls, row):
        (id_, user, domain, cc, cc_off, quota, quota_off, src, dst, blocked, email, state, learning_until,
         pinned, created, last_seen, anomaly_daily, daily_spend, calls_per_minute, blocked_until) = row
        return cls(id_, user, domain, cc, cc_off, quota, quota_off, shared_countries(src), shared_countries(dst),
                   bool(blocked), email, state, learning_until, set(split_list(pinned)), created, last_seen,
                   anomaly_daily, daily_spend, calls_per_minute, blocked_until)

    @property
    def name(self):
        return f"{self.user}@{self.domain}"

    def learning(self, now):
        return self.state == "learning" and (self.learning_until is None or now < self.learning_until)

    def blocked_by_r16(self, now):
        return self.blocked_until is not None and self.blocked_until > now


def tighter(limit, cap):
    """The lower of two limits, None being unlimited."""
    return limit if cap is None else cap if limit is None else min(limit, cap)


UNLIMITED = -1  # a domain's limit that lifts the [policy] default (NULL inherits it)
POLICY_FIELDS = ("concurrent_calls", "concurrent_calls_off", "daily_quota", "daily_quota_off", "daily_spend",
                 "dest_countries", "source_countries")
COUNTRY_FIELDS = ("dest_countries", "source_countries")


@dataclass
class Domain:
    """A customer's policy: None inherits the [policy] default, UNLIMITED lifts a limit."""
    name: str
    concurrent_calls: int | None = None
    concurrent_calls_off: int | None = None
    daily_quota: int | None = None
    daily_quota_off: int | None = None
    daily_spend: float | None = None
    dest_countries: frozenset | None = None
    source_countries: frozenset | None = None
    learned_dest: frozenset = frozenset()  # called regularly by the domain's accounts (training)

    @classmethod
    def from_row(cls, row):
        name, cc, cc_off, quota, quota_off, spend, src, dst, learned = row
        return cls(name, cc, cc_off, quota, quota_off, spend, None if dst is None else shared_countries(dst),
                   None if src is None else shared_countries(src), shared_countries(learned))


def policy_default(policy, name):
    return policy.default_daily_spend if name == "daily_spend" else getattr(policy, f"default_{name.replace('dest_', 'destination_')}")


def effective_policy(acc, domain, policy):
    """(the account with the values that apply to it, {field: where each comes from}): a value
    set on the account by hand (pinned) wins, then the domain's, then what training learned,
    then the [policy] default. A domain's countries replace the defaults but keep what the
    account learned, except what the domain denies; destinations the domain's accounts call
    regularly are added for every account whose destinations are not pinned."""
    values, sources = {}, {}
    for name in POLICY_FIELDS:
        own, default = getattr(acc, name), policy_default(policy, name)
        inherited = getattr(domain, name) if domain else None
        if name in acc.pinned:
            values[name], sources[name] = own, "account"
        elif inherited is None:
            learned = name != "daily_spend" and own != default
            values[name], sources[name] = (own, "learned") if learned else (default, "default")
        elif name in COUNTRY_FIELDS:
            learned = {c for c in own - default if f"!{c}" not in inherited}
            values[name], sources[name] = inherited | learned, "domain + learned" if learned - inherited else "domain"
        else:
            values[name], sources[name] = None if inherited == UNLIMITED else inherited, "domain"
    extra = domain.learned_dest - values["dest_countries"] if domain and "dest_countries" not in acc.pinned else set()
    extra = {c for c in extra if f"!{c}" not in values["dest_countries"]}
    if extra:
        values["dest_countries"] = frozenset(values["dest_countries"] | extra)
        sources["dest_countries"] += f" + learned by the domain ({format_countries(extra)})"
    return replace(acc, **values), sources


@dataclass
class Rejection:
    code: str
    reason: str
    undo: str = ""       # the command that lifts a false positive
    soft: bool = False   # change analysis: only logged while the account is learning


@dataclass
class Verdict:
    code: str
    reason: str
    attempt: CallAttempt
    number: str = ""
    dest_country: str = ""
    source_country: str = ""
    off_hours: bool = False
    account: Account | None = None
    undo: str = ""
    would: Rejection | None = None   # what was not enforced (monitor mode, learning)
    cost: float | None = None        # estimated ([policy] rate_deck), None when the deck does not price it

    @property
    def approved(self):
        return self.code == APPROVED


class Call:
    """Working state of one attempt while the rules run."""

    __slots__ = ("attempt", "now", "number", "dest_country", "source_country", "account", "off_hours",
                 "day", "ip_white", "number_white", "dry_run", "from_memory", "unenrolled", "counts", "cost", "tier")

    def __init__(self, attempt, now, dry_run, from_memory=False):
        self.attempt = attempt
        self.now = now
        self.dry_run = dry_run
        self.from_memory = from_memory  # the database is unavailable: nothing may be read or written there
        self.unenrolled = False  # a new account, to enroll once screening has passed
        self.counts = {}         # counters read for this call (Engine.read_count), reused when counting
        self.cost = None         # estimated: rate deck price x [policy] assumed_call_minutes

    @property
    def pair_counted(self):
        """The call is an A->B attempt of a known account (R13)."""
        return not self.number_white and self.account.id is not None and bool(self.number)

    @property
    def bucket(self):
        return "off" if self.off_hours else "biz"


def rejects(*codes):
    """Declares the codes a rule may return: the pipeline's vocabulary, as data."""
    def declare(rule):
        rule.codes = codes
        return rule
    return declare


# -- the rules, in pipeline order: each reads the call, its account and its counters and returns
# a Rejection or None. None writes: Engine._count counts once the verdict is known. ----------------

@functools.lru_cache(maxsize=16384)
def attack_in(text, user_agent=False):
    """Memoized: users, domains and User-Agents repeat from call to call. The pattern is chosen
    here, not passed: a compiled pattern in the cache key is hashed, its whole program, on every
    call (0.2 µs, three times the lookup)."""
    return (UA_ATTACK_SIGNATURE if user_agent else ATTACK_SIGNATURE).search(text) is not None


def identity_defect(attempt):
    """Why the identity cannot be an account's, or '': bytes that are not UTF-8 (also when
    percent-encoded), or a user or domain longer than the accounts table holds."""
    for label, value in (("user", attempt.user), ("domain", attempt.domain), ("number", attempt.number),
                         ("source IP", attempt.source_ip), ("User-Agent", attempt.user_agent)):
        if not value.isascii() and UNDECODABLE.search(value):
            return f"bytes that are not UTF-8 in the {label}"
    for label, value, longest in (("user", attempt.user, USER_MAX), ("domain", attempt.domain, DOMAIN_MAX)):
        if len(value) > longest:
            return f"a {label} of {len(value)} characters (at most {longest})"
    return ""


@rejects("R12")
def attack_signature(engine, call):
    a = call.attempt
    if a.defect:
        return Rejection("R12", f"identity not accepted: {a.defect}")
    for label, value in (("user", a.user), ("domain", a.domain)):
        if attack_in(value):
            return Rejection("R12", f"attack signature in the {label} {value[:60]!r}")
    if not a.number.lstrip("+").isdigit() and ATTACK_SIGNATURE.search(a.number):
        return Rejection("R12", f"attack signature in the number {a.number[:60]!r}")
    if attack_in(a.user_agent, True):
        return Rejection("R12", f"attack signature in the User-Agent {a.user_agent[:60]!r}")
    if call.number is None:
        return Rejection("R12", f"not a dialable number: {a.number[:40]!r}")
    return None


@rejects("R01")
def scanner_user_agent(engine, call):
    pattern = engine.lists.user_agents.match(call.attempt.user_agent)
    if pattern:
        return Rejection("R01", f"User-Agent {call.attempt.user_agent[:60]!r} matches blacklisted pattern {pattern!r}",
                         f"{PROG} blacklist remove ua '{pattern}'")
    return None


@rejects("R02")
def bad_source_ip(engine, call):
    ip = call.attempt.source_ip
    if call.ip_white:
        return None
    cidr = engine.lists.ip_black.match(ip)
    if cidr:
        return Rejection("R02", f"source IP {ip} is blacklisted ({cidr})", f"{PROG} blacklist remove ip {cidr}")
    rep = call.attempt.reputation
    if rep is None or rep.whitelisted:
        return None
    undo = f"{PROG} whitelist add ip {ip}"
    if not rep.ok:
        if engine.cfg.reputation.reputation_failure == "reject":
            return Rejection("R02", f"reputation of {ip} unknown ({rep.detail}) and reputation_failure = reject", undo)
        return None
    if rep.apiban:
        return Rejection("R02", f"source IP {ip} is listed by APIBAN", undo)
    threshold = engine.cfg.reputation.abuse_threshold
    if rep.score is not None and rep.score >= threshold:
        return Rejection("R02", f"source IP {ip} has AbuseIPDB confidence score {rep.score} (threshold {threshold})", undo)
    return None


@rejects("R14")
def blocked_account(engine, call):
    acc = call.account
    if acc.id is None and engine.cfg.policy.unknown_accounts == "reject":
        return Rejection("R14", f"unknown account {acc.name} (unknown_accounts = reject)", f"{PROG} add {acc.user} {acc.domain}")
    if acc.blocked:
        return Rejection("R14", f"account {acc.name} is blocked by the administrator", f"{PROG} unblock {acc.user} {acc.domain}")
    return None


@rejects("R16")
def new_destination_burst(engine, call):
    """A hacked PBX spreads its calls over many new countries, a few each: the call that would be
    an account's [policy] new_destinations_per_10min-th distinct new destination country within
    10 minutes is rejected, and the account blocked for anomaly_block (Engine._count writes the
    block), every call of it rejected meanwhile. Soft, as R06 is for new destinations, only while
    an account that a new installation found learns: its every destination is new then."""
    acc, p = call.account, engine.cfg.policy
    if acc.blocked_by_r16(call.now):
        return Rejection("R16", f"{acc.name} is blocked until {fmt_time(acc.blocked_until, p.tz)} after calls to new "
                                f"destination countries in quick succession (R16, [policy] anomaly_block)",
                         f"{PROG} unblock {acc.user} {acc.domain}")
    countries = burst_countries(engine, call)
    if not countries:
        return None
    undo = f"{PROG} unblock {acc.user} {acc.domain}"
    return Rejection("R16", f"{acc.name} called {len(countries)} new destination countries within 10 minutes "
                            f"({format_countries(countries)}; [policy] new_destinations_per_10min = "
                            f"{p.new_destinations_per_10min}): account blocked until "
                            f"{fmt_time(call.now + p.anomaly_block, p.tz)}",
                     f"{undo}  (if the calls are expected, also: {PROG} allow {acc.user} {acc.domain} --dest "
                     f"{format_countries(countries)})", soft=burst_is_soft(engine, call))


def burst_is_soft(engine, call):
    """R16 only logs for an account learning freely (Engine.held): a new installation finds its
    customers calling, and every country they call is new until training learns it."""
    return call.account.learning(call.now) and not engine.held(call)


def counts_toward_burst(engine, call):
    """Whether the call is an attempt to a new destination (new_destination) that R16 counts: it
    is on, the account is known and not blocked by R16 already."""
    acc = call.account
    return (bool(engine.cfg.policy.new_destinations_per_10min) and acc.id is not None
            and not acc.blocked_by_r16(call.now) and new_destination(engine, call))


def burst_countries(engine, call):
    """The new destination countries of the last 10 minutes with the call's own, when the call
    makes them [policy] new_destinations_per_10min (R16); else None."""
    if not counts_toward_burst(engine, call):
        return None
    countries = engine.read_count(call, "new_countries")[0]
    if call.dest_country in countries or len(countries) + 1 < engine.cfg.policy.new_destinations_per_10min:
        return None
    return {*countries, call.dest_country}


@rejects("R03")
def blacklisted_number(engine, call):
    if call.number_white or not call.number:
        return None
    prefix = engine.lists.number_black.match(call.number)
    if prefix:
        return Rejection("R03", f"number {call.number} matches blacklisted prefix {prefix}",
                         f"{PROG} whitelist add number +{call.number}")
    return None


@rejects("R13")
def repeated_a_to_b(engine, call):
    acc, p = call.account, engine.cfg.policy
    if not call.pair_counted:
        return None
    times, blocked_until, _ = engine.read_count(call, "pair")
    attempts = len(times) + 1
    if blocked_until <= call.now and attempts <= p.ab_max_calls:
        return None
    undo = f"{PROG} reset {acc.user} {acc.domain}"
    if blocked_until > call.now:
        until = fmt_time(blocked_until, p.tz, "%H:%M:%S %Z")
        return Rejection("R13", f"{acc.name} -> {call.number} is blocked until {until} after repeated calls", undo)
    return Rejection("R13", f"{acc.name} called {call.number} {attempts} times within {p.ab_window:g} s "
                            f"(limit {p.ab_max_calls}); pair blocked for {p.ab_block:g} s", undo)


@rejects("R07")
def unknown_country_code(engine, call):
    if call.dest_country is None and not engine.tiers.range_of(call.number):
        return Rejection("R07", f"no known country code starts the number {call.number}")
    return None


def source_not_allowed(call):
    """Whether the call comes from a known source country that is not among the account's
    allowed source countries. A private address has no country; one given explicitly (CDR, CLI)
    still counts."""
    iso, acc, a = call.source_country, call.account, call.attempt
    if call.ip_white or not iso or "*" in acc.source_countries or iso in acc.source_countries:
        return False
    return bool(a.source_country) or not a.source_ip or is_public_ip(a.source_ip)


# After an account dialed a tier-high destination or a blacklisted number, its calls to new
# medium-tier countries get no new_destination_calls allowance for this long: an attacker tries
# premium and satellite ranges first, then spreads over countries that are not on any list.
HIGH_RISK_MEMORY = 86400


@rejects("R06")
def destination_country(engine, call):
    if call.number_white:
        return None
    iso, acc = call.dest_country, call.account
    tier, decided_by = call.tier
    if tier == "high":
        return Rejection("R06", f"destination {destination_label(engine, call)} is a high-risk "
                                f"{'country' if decided_by == iso else 'range'}", f"{PROG} whitelist add number +{call.number}")
    if f"!{iso}" in acc.dest_countries:
        return Rejection("R06", f"destination {destination_label(engine, call)} is denied to {acc.name}",
                         f"{PROG} allow {acc.user} {acc.domain} --dest {iso}")
    if not new_destination(engine, call):
        return None
    allowance = engine.cfg.policy.new_destination_calls
    if acc.id is None:
        return None
    dialed_high_risk = engine.dialed_high_risk.get(acc.id, -HIGH_RISK_MEMORY)
    if call.now - dialed_high_risk < HIGH_RISK_MEMORY:
        used = (f"; no new-destination calls since it dialed a high-risk destination or a blacklisted number "
                f"at {fmt_time(dialed_high_risk, engine.cfg.policy.tz)}")
    elif engine.read_count(call, "new_destination") < allowance:
        return None
    else:
        used = f" and its {allowance} new-destination calls of today are used" if allowance else ""
    return Rejection("R06", f"destination {destination_label(engine, call)} is not among the allowed destinations of {acc.name} "
                            f"({format_countries(acc.dest_countries) or 'none'}){used}",
                     f"{PROG} allow {acc.user} {acc.domain} --dest {iso}", soft=not engine.held(call))


def destination_label(engine, call):
    """The call's destination as R06 names it: its country, or the range that decided its tier."""
    iso, decided_by = call.dest_country, call.tier[1]
    return engine.countries.label(iso) if decided_by == iso else f"{iso + ' ' if iso else ''}range {decided_by}"


def dials_high_risk(engine, call):
    """Whether the call goes to a tier-high destination or a blacklisted number (not whitelisted):
    what a hacked PBX or stolen credentials dial, and a customer almost never does."""
    if call.number_white or not call.number:
        return False
    return call.tier[0] == "high" or bool(engine.lists.number_black.match(call.number))


def new_destination(engine, call):
    """Whether the call goes to a medium-tier country the account has neither been allowed nor
    learned: approved up to [policy] new_destination_calls times a day, each with an alert. A
    local call of a traveller (from a source country not allowed, to that country) is none."""
    acc, iso = call.account, call.dest_country
    return (iso is not None and not call.number_white and "*" not in acc.dest_countries
            and iso not in acc.dest_countries and call.tier[0] == "medium"
            and not (iso == call.source_country and source_not_allowed(call)))


def usual_from_abroad(engine, call):
    """Whether a call from a source country not allowed goes where a traveller calls: a
    destination the account may call from home without a new-destination allowance (a
    whitelisted number, tier low, or allowed or learned for the account or its domain), or a
    local call in the country the caller is in when that is of tier medium."""
    iso, acc = call.dest_country, call.account
    if call.number_white:
        return True
    if iso is None or f"!{iso}" in acc.dest_countries:
        return False
    tier = call.tier[0]
    return tier == "low" or tier == "medium" and ("*" in acc.dest_countries or iso in acc.dest_countries
                                                   or iso == call.source_country)


@rejects("R04")
def source_country_not_allowed(engine, call):
    if not source_not_allowed(call) or usual_from_abroad(engine, call):
        return None
    iso, acc = call.source_country, call.account
    return Rejection("R04", f"source IP {call.attempt.source_ip or '-'} is in {engine.countries.label(iso)}, not among the "
                            f"allowed source countries of {acc.name} ({format_countries(acc.source_countries) or 'none'}); "
                            f"from there only the destinations it calls from home and {iso} itself are approved, "
                            f"not {engine.countries.label(call.dest_country)}",
                     f"{PROG} allow {acc.user} {acc.domain} --source {iso}", soft=not engine.held(call))


@rejects("R05")
def source_country_unknown(engine, call):
    ip = call.attempt.source_ip
    if not engine.cfg.policy.require_source_country or call.source_country or call.ip_white or not is_public_ip(ip):
        return None
    return Rejection("R05", f"the country of source IP {ip or '(none)'} is unknown and require_source_country = yes",
                     f"{PROG} whitelist add ip {ip}")


def learning_rejection(call, code, what, cap, key):
    """A call over a [policy] learning_* cap: enforced while the account learns. Setting the
    limit by hand (or `learn --stop`) ends learning, and with it the cap."""
    acc = call.account
    return Rejection(code, f"{acc.name} {what}, over the cap of {cap} of an account in learning mode ([policy] {key})",
                     f"{PROG} learn {acc.user} {acc.domain} --stop  (or raise [policy] {key})")


@rejects("R08", "R10")
def concurrent_calls(engine, call):
    acc, calls = call.account, call.attempt.concurrent_calls
    limit = acc.concurrent_calls_off if call.off_hours else acc.concurrent_calls
    cap = engine.learning_cap(call, "concurrent_calls")
    effective = tighter(limit, cap)
    if calls is None or effective is None or calls <= effective:
        return None
    code, hours, flag = ("R08", "off hours", "--concurrent-off") if call.off_hours else ("R10", "business hours", "--concurrent")
    if cap is not None and calls > cap:
        return learning_rejection(call, code, f"has {calls} concurrent calls", cap, "learning_concurrent_calls")
    return Rejection(code, f"{acc.name} has {calls} concurrent calls, limit {limit} in {hours}",
                     f"{PROG} set {acc.user} {acc.domain} {flag} {calls}", soft=True)


def minute_limits(engine, call):
    """(the account's calls-per-minute limit, the learning cap): each 0 or None when it does not
    apply. The limit is the one training learned, else [policy] max_calls_per_minute; 0 turns both off."""
    default = engine.cfg.policy.max_calls_per_minute
    return default and (call.account.calls_per_minute or default), engine.learning_cap(call, "calls_per_minute")


@rejects("R15")
def calls_per_minute(engine, call):
    acc = call.account
    limit, cap = minute_limits(engine, call)
    if not (limit or cap) or acc.id is None:
        return None
    recent = len(engine.read_count(call, "minute")[0])
    if cap and recent >= cap:
        return learning_rejection(call, "R15", f"placed {recent} approved calls in the last 60 s", cap,
                                  "learning_calls_per_minute")
    if limit and recent >= limit:
        source = "learned calls_per_minute" if acc.calls_per_minute else "max_calls_per_minute"
        return Rejection("R15", f"{acc.name} placed {recent} approved calls in the last 60 s ({source} = {limit})",
                         "raise [policy] max_calls_per_minute in tfps.conf", soft=True)
    return None


@rejects("R09", "R11")
def daily_quota(engine, call):
    acc, limit = call.account, engine.daily_limit(call)
    if limit is None:
        return None
    calls = engine.read_count(call, "today") if acc.id is not None else 0
    if calls < limit:
        return None
    code, hours, flag = ("R09", "off-hours", "--daily-quota-off") if call.off_hours else ("R11", "business-hours", "--daily-quota")
    cap = engine.learning_cap(call, "daily_quota_off") if call.off_hours else None
    if cap is not None and calls >= cap:
        return learning_rejection(call, code, f"placed {calls} approved off-hours calls today", cap, "learning_daily_quota_off")
    return Rejection(code, f"{acc.name} reached its {hours} daily quota of {limit} approved calls",
                     f"{PROG} reset {acc.user} {acc.domain}  (or: {PROG} set {acc.user} {acc.domain} {flag} {limit * 2})",
                     soft=True)


@rejects("R17")
def spend_budget(engine, call):
    acc, cost = call.account, call.cost
    budget = acc.daily_spend
    if budget is None or not cost or acc.id is None:
        return None
    spent = engine.read_count(call, "spend")
    if round(spent + cost, 6) <= budget:  # a sum of decimal prices is not exact in binary
        return None
    return Rejection("R17", f"{acc.name} has an estimated spend of {spent:.2f} today; this call's estimated {cost:.2f} "
                            f"would pass its daily spend budget of {budget:.2f}",
                     f"{PROG} reset {acc.user} {acc.domain}  (or: {PROG} set {acc.user} {acc.domain} --daily-spend "
                     f"{max(budget * 2, spent + cost):.2f})")


# Screening needs no account: a call it rejects (a scanner, a bad source, an attack) enrolls nothing.
SCREENING = (attack_signature, scanner_user_agent, bad_source_ip)
ACCOUNT_RULES = (blocked_account, new_destination_burst, blacklisted_number, repeated_a_to_b, unknown_country_code,
                 destination_country, source_country_not_allowed, source_country_unknown, concurrent_calls,
                 calls_per_minute, daily_quota, spend_budget)
PIPELINE = SCREENING + ACCOUNT_RULES
NEW_DESTINATION_WINDOW = 600.0  # R16 counts the new destination countries of the last 10 minutes
PROBE_DOMAIN = "tfps.invalid"  # `probe` calls from it; reserved (RFC 2606), so never enrolled


# -- counters: A->B windows, approved calls per day and in the last minute ------------------

class CounterMoved(Exception):
    """A counter read for a verdict changed before the verdict could be counted (another node
    took the last of a quota): the verdict is evaluated again."""


class SharedCounters:
    """Counters kept in the database, changed atomically, so every node sharing it sees the same
    numbers and a quota holds across nodes."""

    def __init__(self, db):
        self.db = db

    def atomic(self):
        """One verdict's writes, all or nothing."""
        return self.db.atomic()

    def pair(self, account_id, number, now, window, lock):
        """(times of the attempts to call `number` within the last `window` seconds, blocked_until,
        whether the row exists), for R13. `lock`: held until the verdict commits."""
        row = load_pair(self.db, account_id, number, lock)
        return self._times_since(row, now - window), row[1] if row else 0.0, row is not None

    def write_pair(self, account_id, number, times, now, blocked_until, existed):
        save_pair(self.db, account_id, number, self._format_times(times), now, blocked_until, existed)

    def recent_calls(self, account_id, now, window, lock):
        """(times of the account's approved calls within the last `window` seconds, whether its
        row exists), for R15. `lock`: held until the verdict commits."""
        row = load_rate_window(self.db, account_id, lock)
        return self._times_since(row, now - window), row is not None

    def add_call(self, account_id, recent, now, keep):
        """Add an approved call to what recent_calls() returned; the newest `keep` are kept."""
        times, existed = recent
        save_rate_window(self.db, account_id, self._format_times((times + [now])[-keep:]), now, existed)

    @staticmethod
    def _times_since(row, since):
        """The times (a comma-separated column, first of `row`) later than `since`."""
        return [t for t in map(float, split_list(row[0])) if t > since] if row else []

    @staticmethod
    def _format_times(times):
        return ",".join(f"{t:.3f}" for t in times)

    def new_destination_calls(self, account_id, day, iso, lock):
        """Calls to `iso` approved on `day` while it was new to the account. `lock`: held until the
        verdict commits."""
        row = load_new_destination_calls(self.db, account_id, day, iso, lock)
        return row[0] if row else 0

    def count_new_destination(self, account_id, day, iso):
        add_new_destination_call(self.db, account_id, day, iso)

    def new_destination_window(self, account_id, since, lock):
        """({country: time of its latest call} of the account's calls to new destinations later
        than `since`, whether its row exists), for R16. `lock`: held until the verdict commits."""
        row = load_new_destination_window(self.db, account_id, lock)
        calls = {}
        for item in split_list(row[0]) if row else ():
            iso, _, when = item.partition(":")
            if float(when) > since:
                calls[iso] = float(when)
        return calls, row is not None

    def write_new_destination_window(self, account_id, calls, now, existed):
        save_new_destination_window(self.db, account_id, ",".join(f"{iso}:{when:.3f}" for iso, when in calls.items()),
                                    now, existed)

    def take_quota(self, account_id, day, bucket, limit):
        return take_daily_quota(self.db, account_id, day, bucket, limit)

    def spent(self, account_id, day, lock):
        """Estimated cost of the account's approved calls on `day`. `lock`: held until the verdict commits."""
        row = load_spend(self.db, account_id, day, lock)
        return row[0] if row else 0.0

    def add_spend(self, account_id, day, cost):
        add_spend(self.db, account_id, day, cost)

    def count_approved(self, account_id, day, bucket, calls=1):
        add_approved_calls(self.db, account_id, day, bucket, calls)

    def approved(self, account_id, day, bucket=None):
        return approved_calls(self.db, account_id, day, bucket)

    @staticmethod
    def write_behind(now, release=False):
        """Nothing to write: each verdict committed its counters."""

    @staticmethod
    def forget(account_id):
        """Nothing kept in memory: `reset` cleared the database's rows."""


NOTHING_TO_GUARD = contextlib.nullcontext()  # reusable: one for every verdict


class PrivateCounters:
    """The same counters in memory, for a database no other process uses (a replay into a fresh
    in-memory database): no SQL on the verdict path. Calls must arrive in time order."""

    def __init__(self):
        self.pairs = {}   # (account id, number) -> ((recent attempt times), blocked_until)
        self.rates = {}   # account id -> times of the latest approved calls (R15)
        self.daily = {}   # (account id, day, bucket) -> approved calls, today's only
        self.new_destinations = {}  # (account id, day, iso) -> calls approved while new, today's only
        self.new_destinations_day = ""
        self.new_destination_windows = {}  # account id -> {country: time of its latest call}, R16
        self.windows_pruned = 0.0
        self.spend = {}   # (account id, day) -> estimated cost of approved calls, today's only
        self.day = ""
        self.pruned = 0.0

    @staticmethod
    def atomic():
        """Nothing to guard: nobody else sees this database, and a failed verdict ends the run."""
        return NOTHING_TO_GUARD

    def pair(self, account_id, number, now, window, lock):
        if now - self.pruned > window + 3600:
            self._forget_idle_pairs(now, window)
        pair = self.pairs.get((account_id, number))
        if pair is None:
            return [], 0.0, False
        since = now - window
        return [t for t in pair[0] if t > since], pair[1], True

    def _forget_idle_pairs(self, now, window):
        self.pruned = now
        self.pairs = {k: pair for k, pair in self.pairs.items() if pair[0][-1] > now - window or pair[1] > now}

    def write_pair(self, account_id, number, times, now, blocked_until, existed):
        # tuples of numbers, which the garbage collector stops tracking: a server keeps one per
        # number called, and every full collection would walk them were they lists
        self.pairs[(account_id, number)] = (tuple(times), blocked_until)

    def recent_calls(self, account_id, now, window, lock):
        since = now - window
        return [t for t in self.rates.get(account_id, ()) if t > since], account_id in self.rates

    def add_call(self, account_id, recent, now, keep):
        self.rates[account_id] = (recent[0] + [now])[-keep:]

    def new_destination_calls(self, account_id, day, iso, dry_run):
        return self.new_destinations.get((account_id, day, iso), 0)

    def new_destination_window(self, account_id, since, lock):
        calls = self.new_destination_windows.get(account_id)
        if calls is None:
            return {}, False
        return {iso: when for iso, when in calls.items() if when > since}, True

    def write_new_destination_window(self, account_id, calls, now, existed):
        if now - self.windows_pruned > NEW_DESTINATION_WINDOW + 3600:
            self.windows_pruned = now
            self.new_destination_windows = {k: calls for k, calls in self.new_destination_windows.items()
                                            if max(calls.values(), default=0.0) > now - NEW_DESTINATION_WINDOW}
        self.new_destination_windows[account_id] = calls

    def count_new_destination(self, account_id, day, iso):
        if day != self.new_destinations_day:
            self.new_destinations_day = day
            self.new_destinations = {k: v for k, v in self.new_destinations.items() if k[1] >= day}
        key = (account_id, day, iso)
        self.new_destinations[key] = self.new_destinations.get(key, 0) + 1

    def take_quota(self, account_id, day, bucket, limit):
        if self.approved(account_id, day, bucket) >= limit:
            return False
        self.count_approved(account_id, day, bucket)
        return True

    def count_approved(self, account_id, day, bucket):
        if day != self.day:
            self.day = day
            self.daily = {k: v for k, v in self.daily.items() if k[1] >= day}
            self.spend = {k: v for k, v in self.spend.items() if k[1] >= day}
        key = (account_id, day, bucket)
        self.daily[key] = self.daily.get(key, 0) + 1

    def spent(self, account_id, day, lock):
        return self.spend.get((account_id, day), 0.0)

    def add_spend(self, account_id, day, cost):
        self.spend[(account_id, day)] = self.spend.get((account_id, day), 0.0) + cost

    def approved(self, account_id, day, bucket=None):
        if bucket is None:
            return self.daily.get((account_id, day, "biz"), 0) + self.daily.get((account_id, day, "off"), 0)
        return self.daily.get((account_id, day, bucket), 0)

    @staticmethod
    def write_behind(now, release=False):
        """Nothing to write: nobody else reads these counters."""

    def forget(self, account_id):
        """The account's counters were reset: its windows and today's counts start again."""
        self.pairs = {key: pair for key, pair in self.pairs.items() if key[0] != account_id}
        self.rates.pop(account_id, None)
        self.new_destination_windows.pop(account_id, None)
        for counts in (self.daily, self.new_destinations, self.spend):
            for key in [key for key in counts if key[0] == account_id]:
                del counts[key]


class LeasedCounters(PrivateCounters):
    """Counters decided from memory ([database] quota_lease > 0), for a server. The daily quota
    is spent from blocks (leases) of it claimed in the database, one transaction per block, so it
    holds exactly across nodes and workers; the calls spent are written behind every
    flush_interval (write_behind). The per-minute, A->B and new-destination windows are this
    process's own (PrivateCounters): each node or worker enforces them on the calls it answers.

    With a `writer` (the server's CallLogWriter), the write-behind runs on its thread and
    connection, and its outcome is taken in at the next one: on SQLite the file's write lock is
    often held by the workers' call log threads, and the event loop waited up to 240 ms for it.
    One is on its way at a time; the calls spent meanwhile go with the next."""

    def __init__(self, db, node, block, ttl):
        super().__init__()
        self.db, self.node, self.block, self.ttl = db, node, block, ttl
        self.writer = None        # CallLogWriter whose thread writes behind, or None: written here
        self.settling = None      # the write-behind on its way there (WriteBehind)
        self.claimed = set()      # keys claimed since it left: its outcome does not know their leases
        self.held = {}      # (account id, day, bucket) -> calls of this node's lease not spent yet
        self.in_use = {}    # key -> approved calls known: in the database, spent or counted here since
        self.spent_calls = {}     # key -> calls spent from the lease since the last write-behind
        self.counted = {}   # key -> calls approved outside a lease since the last write-behind
        self.returned = {}  # key -> unspent calls to give back at the next write-behind
        self.claims = 0

    def spent(self, account_id, day, lock):
        """The spend budget (R17) is read and added in the database for each priced call: it is
        set for few accounts, and it must hold across workers and nodes."""
        row = load_spend(self.db, account_id, day, False)
        return row[0] if row else 0.0

    def add_spend(self, account_id, day, cost):
        add_spend(self.db, account_id, day, cost)

    def approved(self, account_id, day, bucket=None):
        if bucket is None:
            return self.approved(account_id, day, "biz") + self.approved(account_id, day, "off")
        key = (account_id, day, bucket)
        if key not in self.in_use:
            self.in_use[key] = approved_calls(self.db, account_id, day, bucket) + self.spent_calls.get(key, 0) + self.counted.get(key, 0)
        return self.in_use[key]

    def take_quota(self, account_id, day, bucket, limit):
        key = (account_id, day, bucket)
        if not self.held.get(key):
            now = time.time()
            granted, in_use = claim_quota_lease(self.db, key, self.node, limit, self.block, now, now + self.ttl)
            self.claims += 1
            if self.settling is not None:
                self.claimed.add(key)
            self.held[key] = granted
            # nothing left here: calls are refused until the next write-behind reads the count again
            self.in_use[key] = in_use + self.spent_calls.get(key, 0) + self.counted.get(key, 0) if granted else limit
            if not granted:
                return False
        self.held[key] -= 1
        self.spent_calls[key] = self.spent_calls.get(key, 0) + 1
        self.in_use[key] += 1
        return True

    def count_approved(self, account_id, day, bucket, calls=1):
        key = (account_id, day, bucket)
        self.counted[key] = self.counted.get(key, 0) + calls
        if key in self.in_use:
            self.in_use[key] += calls

    def forget(self, account_id):
        """`reset` deleted the account's leases and counters too: what this node holds, spent
        or counted of them since its last write-behind is gone with them."""
        super().forget(account_id)
        for counts in (self.held, self.in_use, self.spent_calls, self.counted, self.returned):
            for key in [key for key in counts if key[0] == account_id]:
                del counts[key]

    def write_behind(self, now, release=False):
        """Write the calls spent and counted since the last time, renew this node's leases and
        give back what another node asked for, leases of past days and, with `release` (the
        server stops), every unspent call. Counts of keys with nothing held are read again on
        their next call, so that calls given back by other nodes, or a reset, are seen. With a
        writer, the outcome of the write-behind on its way is taken in first (its error raised,
        its calls kept for the next), and this one is handed over; with `release` it is written
        here, once the one on its way is over."""
        if self.settling is not None:
            if not (self.settling.finished.is_set() or release):
                return
            job, self.settling = self.settling, None
            claimed, self.claimed = self.claimed, set()
            if job.finished.wait(self.writer.timeout or 10.0):
                self._settled(job, claimed)
            else:
                log.error("stopping: a write-behind of %d call(s) not done after %g s, given up; those calls may "
                          "not be charged to their daily quotas", sum(sum(part.values()) for part in job.parts),
                          self.writer.timeout or 10.0)
        newest = max((key[1] for key in self.held), default="")
        for key, held in self.held.items():
            if held and (release or key[1] < newest):
                self.returned[key] = self.returned.get(key, 0) + held
                self.held[key] = 0
        if not (self.spent_calls or self.counted or self.returned or any(self.held.values())):
            self.in_use.clear()
            self.held.clear()
            return
        parts = self.spent_calls, self.counted, self.returned
        self.spent_calls, self.counted, self.returned = {}, {}, {}
        if self.writer is not None and not release:
            self.settling = self.writer.write_behind(
                lambda db: settle_quota_leases(db, self.node, *parts, {}, now + self.ttl), parts)
            return
        try:
            leases, given, _wanted = settle_quota_leases(self.db, self.node, *parts, self.held, now + self.ttl)
        except BaseException:
            self._keep_back(parts)
            raise
        for key in given:
            self.held[key] = 0
        self._keep_leases(leases)

    def _settled(self, job, claimed):
        """The outcome of a write-behind on the writer's thread: what other nodes asked for goes
        back with the next one; the leases `claimed` since it left are kept."""
        if job.error is not None:
            self._keep_back(job.parts)
            raise job.error
        leases, _given, wanted = job.result
        for key in wanted:
            if self.held.get(key):
                self.returned[key] = self.returned.get(key, 0) + self.held[key]
                self.held[key] = 0
        self._keep_leases(leases, claimed)

    def _keep_back(self, parts):
        """Calls of a write-behind that failed: they go with the next one."""
        for mine, kept in zip((self.spent_calls, self.counted, self.returned), parts):
            for key, calls in kept.items():
                mine[key] = mine.get(key, 0) + calls

    def _keep_leases(self, leases, claimed=()):
        """Of the leases held here, those still in the database (`leases`) with calls left, of
        the newest day; and those `claimed` since the write-behind read `leases`."""
        newest = max((key[1] for key in self.held), default="")
        for key in list(self.held):
            if key not in claimed and (key not in leases or not self.held[key] or key[1] < newest):
                del self.held[key]
                self.in_use.pop(key, None)
        for key in [key for key in self.in_use if key not in self.held]:
            del self.in_use[key]

    def reconnected(self):
        """The server has a new connection: a write-behind that failed on the old one is not an
        outage any more; its calls go with the next."""
        if self.settling is not None and self.settling.finished.is_set() and self.settling.error is not None:
            self._keep_back(self.settling.parts)
            self.settling = None
            self.claimed = set()


# A verdict whose counters conflicted with another node's (a deadlock; on Galera, a certification
# failure on commit) is evaluated again, up to this many times in all: three Galera nodes
# approving calls of one account at full speed conflict on its counter row about every other
# time (the slowest node loses most), often enough to lose ten times in a row.
VERDICT_TRIES = 20


def pause_after_conflict(tries):
    """Let the other side finish (and, on Galera, its write reach this node); a random wait, so
    that nodes that conflicted once do not meet again at the same moment."""
    time.sleep(secrets.randbelow(1000 * (tries + 1)) / 1e6)


def again_after_conflicts(db, work, what=None):
    """work(), tried again after a conflict with another node's writes (a deadlock; on Galera,
    a certification failure), up to VERDICT_TRIES times in all; logged as `what` when given."""
    for tries in range(VERDICT_TRIES):
        try:
            return work()
        except db.errors as exc:
            if tries == VERDICT_TRIES - 1 or not db.transient(exc):
                raise
            if what:
                log.info("%s: %s; trying again", what, exc)
            pause_after_conflict(tries)


def row_key():
    """A call log row's unique key: the time first, so that the unique index grows at its end
    (random keys made every insert touch a random page: 4x the insert time on SQLite at 300,000
    rows), then 64 random bits, so that nodes and workers never make the same. They need not be
    unpredictable: the random module's generator (seeded again in every forked worker) draws
    them in half the time of random_bytes, which takes a lock."""
    return f"{time.time_ns():016x}{random.getrandbits(64):016x}"


def write_call_log(db, rows):
    """Insert call log rows inside the open transaction; a row the database refuses is logged
    and left out alone. Returns how many were left out; an unavailable database raises."""
    try:
        with db.savepoint("call_log"):
            insert_call_log(db, rows)
        return 0
    except (ValueError, *db.errors) as exc:
        if not isinstance(exc, ValueError) and db.unavailable(exc):
            raise
    refused = 0
    for row in rows:  # one row is bad: find it, keep the others
        try:
            with db.savepoint("call_log"):
                insert_call_log(db, [row])
        except (ValueError, *db.errors) as exc:
            if not isinstance(exc, ValueError) and db.unavailable(exc):
                raise
            refused += 1
            log.error("call log row of call-id=%r (%s@%s, %s) refused by the database and dropped: %s",
                      row[1], row[3], row[4], row[14], exc)
    return refused


def spool_path(cfg, worker=None):
    """[database] spool, or by default a file named after the database, so that rows spooled for
    one database are never written into another: DATABASE-spool.jsonl beside the SQLite file, or
    tfps-spool-HASH.jsonl (HASH of the URL without its password) in the default database's
    directory with MySQL; worker N of several spools to PATH.N."""
    path = cfg.database.spool
    if not path:
        url = cfg.database.url
        if url.startswith("sqlite:"):
            path = os.path.abspath(url[len("sqlite:"):].removeprefix("//")) + "-spool.jsonl"
        else:
            default = default_database_url()[len("sqlite:"):].removeprefix("//")
            name = hashlib.sha256(redact_url(url).encode()).hexdigest()[:12]
            path = os.path.join(os.path.dirname(os.path.abspath(default)), f"tfps-spool-{name}.jsonl")
    return path if worker is None else f"{path}.{worker}"


class CallLogSpool:
    """Call log rows that the database could not take, one JSON list a line in a local file,
    made durable a batch at a time (fsync). `replay` writes them to the database and removes
    them; rows carry their row_key, so a replay interrupted after the commit writes nothing
    twice. The loop appends while the reconnecting thread replays: a replay first renames the
    file aside, under the lock, so that rows appended meanwhile start a new file."""

    def __init__(self, path, max_bytes):
        self.path = path
        self.max_bytes = max_bytes
        self.replaying = path + ".replay"
        self.lock = threading.Lock()
        self.replay_lock = threading.Lock()  # the call log writer and the reconnecting thread may both replay
        self.spooled = 0   # rows appended since the start
        self.damaged = 0   # lines skipped by replays: cut short by a crash, or not a row

    def size(self):
        return sum(os.path.getsize(p) for p in (self.path, self.replaying) if os.path.isfile(p))

    def append(self, rows):
        """Append `rows` and fsync; the number appended, fewer when the spool is full (OSError
        when the file cannot be written)."""
        lines = [json.dumps(row, separators=(",", ":")).encode() + b"\n" for row in rows]
        with self.lock:
            room = self.max_bytes - self.size()
            taken = 0
            while taken < len(lines) and room >= len(lines[taken]):
                room -= len(lines[taken])
                taken += 1
            if taken:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, b"".join(lines[:taken]))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.spooled += taken
        return taken

    def offer(self, rows):
        """Append what fits of `rows`: (rows taken, why not all of them or None)."""
        try:
            taken = self.append(rows)
        except OSError as exc:
            return 0, f"not writable: {exc}"
        return taken, None if taken == len(rows) else f"full ({self.max_bytes >> 20} MB, spool_max_mb)"

    def replay(self, db, batch=1000):
        """Write every spooled row to `db`, then remove them, and log how many; (rows written,
        lines skipped). Database errors propagate with the rows still spooled."""
        with self.replay_lock:
            written, damaged = self._replay(db, batch)
        if written or damaged:
            log.warning("call log spool %s: %d row(s) written to the database%s", self.path, written,
                        f", {damaged} damaged line(s) skipped" if damaged else "")
        return written, damaged

    def _replay(self, db, batch):
        with self.lock:
            if os.path.isfile(self.path) and not os.path.exists(self.replaying):
                os.replace(self.path, self.replaying)
        if not os.path.isfile(self.replaying):
            return 0, 0
        written = damaged = 0
        with open(self.replaying, "rb") as spooled:
            rows = []
            for line in spooled:
                row = self._row(line)
                if row is None:
                    damaged += 1
                    continue
                rows.append(row)
                if len(rows) == batch:
                    written += self._write(db, rows)
                    rows = []
            written += self._write(db, rows)
        os.unlink(self.replaying)
        self.damaged += damaged
        if damaged:
            log.error("call log spool %s: %d damaged line(s) skipped (cut short by a crash, or not a call log row)",
                      self.replaying, damaged)
        return written, damaged

    @staticmethod
    def _row(line):
        try:
            row = json.loads(line)
        except ValueError:
            return None
        if not (line.endswith(b"\n") and isinstance(row, list) and len(row) == len(CALL_LOG_COLUMNS)
                and all(value is None or isinstance(value, (str, int, float)) for value in row)):
            return None
        return tuple(row)

    @staticmethod
    def _write(db, rows):
        if not rows:
            return 0
        with db.transaction():
            return len(rows) - write_call_log(db, rows)


def first_seen_marks(db, marks):
    """Of (call, direction, iso) first-seen marks, write those not yet in account_seen and
    return them: the calls that were the account's first from that source or to that destination."""
    keys = [(call.account.id, direction, iso, call.now) for call, direction, iso in marks]
    first = set(mark_first_seen_all(db, keys))
    return [mark for mark, key in zip(marks, keys) if key in first]


class WriteBehind:
    """A write-behind of LeasedCounters, `run(db)` on the call log thread: `result` or `error`
    once `finished` is set; `parts` are the calls it writes."""

    def __init__(self, run, parts):
        self.run, self.parts = run, parts
        self.result = self.error = None
        self.finished = threading.Event()


# The call log thread writes what waited up to CALL_LOG_LINGER seconds, or CALL_LOG_BATCH rows
# if sooner, in one transaction. The index by account (show, calls --account) takes each row at
# its account's end, so a transaction writes about one index page per account it has rows of:
# on SQLite with 1,000 accounts calling, 2.5 kB of WAL a row in transactions of 1,000 rows and
# 0.9 kB in transactions of 4,500 (about 15 against 10 µs a row).
CALL_LOG_LINGER = 1.0
CALL_LOG_BATCH = 8192


class CallLogWriter:
    """Writes a server's call log rows, first-seen countries, last-seen times and alerts (and,
    handed over by LeasedCounters, its counters' write-behind) on a thread and a database
    connection of its own. On MariaDB the INSERT of a flush's rows costs about 30 µs a row: at
    1,000 calls/s every call arriving during a flush would wait tens of milliseconds for it on the
    event loop. The loop hands each flush's rows over; the thread writes them a transaction at a
    time or, while the database is unavailable, appends them to the spool, which it writes back
    first once the database answers again. Rows that neither takes wait here, the oldest dropped
    past max_unflushed_rows. Not a single row is dropped silently: `dropped` counts them. The
    first-seen marks wait for the database; those that were the first come back to the loop
    (`firsts`), which alerts them."""

    RETRY_AFTER = 1.0  # seconds between tries of an unavailable database; meanwhile rows go to the spool

    def __init__(self, url, spool, max_rows, timeout):
        self.url, self.spool, self.max_rows, self.timeout = url, spool, max_rows, timeout
        self.queue = deque()   # lists of rows handed over, oldest first
        self.write_behinds = deque()  # WriteBehind of the counters, before any row
        self.queued = 0        # rows in the queue
        self.marks = []        # (call, direction, iso) of first-seen marks not yet written
        self.seen = {}         # account id -> time of its last call, not yet written
        self.alerts = []       # (AlertQueue, events, time) not yet written, at most MAX_QUEUED_ALERTS events
        self.firsts = deque()  # the marks that were the first, for the loop
        self.dropped = 0       # rows lost: refused by the database, or past max_rows
        self.cond = threading.Condition()
        self.closing = False
        self.db = None
        self.failing = None    # why the last write failed, logged once until a write succeeds
        self.retry_at = 0.0    # monotonic: no try of the database before
        self.spooled_rows = False  # rows went to the spool since the database last took any
        self.since = None          # monotonic: when the oldest work not yet taken was handed over
        self.thread = threading.Thread(target=self._run, name="call-log", daemon=True)
        self.thread.start()

    def write_behind(self, run, parts):
        """Hand over a write-behind of the counters (see LeasedCounters): run before the rows waiting."""
        job = WriteBehind(run, parts)
        with self.cond:
            self.write_behinds.append(job)
            self.cond.notify()
        return job

    @property
    def queued_alerts(self):
        return sum(len(events) for _queue, events, _now in self.alerts)

    def put(self, rows, marks=(), seen=None, alerts=None):
        """Rows, first-seen marks, {account id: last-seen time} and (AlertQueue, events, time)
        to write."""
        if not (rows or marks or seen or alerts):
            return
        with self.cond:
            if rows:
                self.queue.append(rows)
                self.queued += len(rows)
                if self.queued > self.max_rows:
                    self._drop_oldest(self.queued - self.max_rows)
            if self.since is None:
                self.since = time.monotonic()
            self.marks.extend(marks)
            self.seen.update(seen or ())
            if alerts:
                queue, events, now = alerts
                room = MAX_QUEUED_ALERTS - self.queued_alerts
                if len(events) > room:  # the database has not taken any for a long while
                    queue.drop(len(events) - max(room, 0), self.queued_alerts)
                    events = events[:max(room, 0)]
                if events:
                    self.alerts.append((queue, events, now))
            self.cond.notify()

    def _drop_oldest(self, excess):
        dropped = 0
        while dropped < excess and self.queue:
            oldest = self.queue[0]
            taken = min(excess - dropped, len(oldest))
            del oldest[:taken]
            if not oldest:
                self.queue.popleft()
            dropped += taken
        self.queued -= dropped
        self.dropped += dropped
        log.error("call log: %d unwritten row(s) dropped, the oldest, to stay within max_unflushed_rows = %d "
                  "(%d dropped in all)", dropped, self.max_rows, self.dropped)

    def close(self, timeout):
        """Write or spool every row handed over, then stop; the rows still unwritten after
        `timeout` seconds (the database hangs and the spool is full), counted as dropped.
        Marks not written by then are left to the next start, which marks those countries again."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)
        with self.cond:
            lost, self.queued = self.queued, 0
            self.queue.clear()
        self.dropped += lost
        return lost

    def _waiting(self):
        """Work that waits for the database alone (spooled rows, marks, last-seen times, alerts):
        tried every RETRY_AFTER."""
        return self.spooled_rows or bool(self.marks) or bool(self.seen) or bool(self.alerts)

    def _pause(self, now):
        """Seconds to wait before the next write, or None (none is due, wait for work), or 0."""
        if self.write_behinds or self.closing:
            return 0
        if self.since is not None and self.queued < CALL_LOG_BATCH and now - self.since < CALL_LOG_LINGER:
            return self.since + CALL_LOG_LINGER - now
        if self.queue or (self._waiting() and now >= self.retry_at):
            return 0
        return self.RETRY_AFTER if self._waiting() else None

    def _run(self):
        while True:
            with self.cond:
                while (pause := self._pause(time.monotonic())) != 0:
                    self.cond.wait(pause)
                job = self.write_behinds.popleft() if self.write_behinds else None
                if job is None:
                    if not self.queue and self.closing:
                        break
                    self.since = None
                    rows = self.queue.popleft() if self.queue else []
                    while self.queue and len(rows) < CALL_LOG_BATCH:
                        rows.extend(self.queue.popleft())
                    marks, self.marks = self.marks, []
                    seen, self.seen = self.seen, {}
                    alerts, self.alerts = self.alerts, []
            if job is not None:
                self._write_behind(job)
                continue
            taken = self._write(rows, marks, seen, alerts)
            with self.cond:
                self.queued -= taken
                if taken < len(rows):
                    self.queue.appendleft(rows[taken:])
                    self.cond.wait(self.RETRY_AFTER)
        if self.db:
            self.db.close()

    def _write(self, rows, marks, seen, alerts):
        """Rows written, refused by the database, or spooled: the others wait for the next try,
        and so do the marks, last-seen times and alerts unless written."""
        if time.monotonic() >= self.retry_at:
            try:
                self._insert(rows, marks, seen, alerts)
                if self.failing:
                    log.warning("call log: written to the database again")
                self.failing = None
                return len(rows)
            except Exception as exc:  # database errors, and OSError of a connection that broke
                self._failed(f"not written to the database ({exc})")
                if self.db:
                    with contextlib.suppress(Exception):
                        self.db.close()
                self.db = None
                self.retry_at = time.monotonic() + self.RETRY_AFTER
        with self.cond:
            self.marks[:0] = marks
            for account_id, ts in seen.items():
                self.seen.setdefault(account_id, ts)
            self.alerts[:0] = alerts
        taken, refusing = self.spool.offer(rows)
        if refusing:
            self._failed(f"not written to the database, and the spool {self.spool.path} is {refusing}")
        self.spooled_rows = self.spooled_rows or taken > 0
        return taken

    def _failed(self, why):
        if why != self.failing:
            log.error("call log rows %s; rows go to the spool %s, or wait in memory up to max_unflushed_rows",
                      why, self.spool.path)
        self.failing = why

    def _write_behind(self, job):
        """Run a write-behind of the counters, tried again after a conflict with another node's
        writes as a verdict is; its error is the owner's to handle (the connection is dropped if
        the database is unavailable)."""
        try:
            db = self._connection()
            job.result = again_after_conflicts(db, lambda: job.run(db))
        except Exception as exc:  # database errors, and OSError of a connection that broke
            job.error = exc
            if self.db is not None and (not isinstance(exc, self.db.errors) or self.db.unavailable(exc)):
                with contextlib.suppress(Exception):
                    self.db.close()
                self.db = None
        job.finished.set()

    def _connection(self):
        if self.db is None:
            self.db = Database(self.url, timeout=self.timeout)
            self.db.tune_for_serving()
        return self.db

    def _insert(self, rows, marks, seen, alerts):
        self._connection()
        if self.spooled_rows:  # the rows spooled during an outage go first
            self.spool.replay(self.db)
            self.spooled_rows = False
        if not (rows or marks or seen or alerts):
            return

        def write():
            with self.db.transaction():
                refused = write_call_log(self.db, rows) if rows else 0
                firsts = first_seen_marks(self.db, marks) if marks else ()
                update_last_seen(self.db, sorted(seen.items()))
                for queue, events, now in alerts:
                    queue.write(self.db, now, events)
            self.dropped += refused
            self.firsts.extend(firsts)

        again_after_conflicts(self.db, write)


MAX_CACHED = 200000  # accounts (and first-seen countries) kept in memory; past it the cache starts over
# accounts.last_seen is for people (show, list): written once a minute per account at most, it
# costs a flush one row per active account a minute instead of one per account that called.
LAST_SEEN_STEP = 60.0

class Engine:
    """The decision engine. `decide` evaluates one attempt; `record` logs the verdict with the SIP
    answer that was sent; `flush` writes the buffered call log and alerts. Not thread-safe: one
    engine per event loop (or per CLI command)."""

    def __init__(self, cfg, db, alerts=None, counters=None):
        self.cfg = cfg
        self.db = db
        self.alerts = alerts or AlertQueue(cfg.alerts, cfg.policy.tz)
        self.counters = counters or SharedCounters(db)
        self.local_counters = None  # counters while the database is unavailable: decide_from_memory
        self.node = cfg.server.node_name
        self.log_rows = []
        self.spool = None      # CallLogSpool of a server: where log_rows go while the database is unavailable
        self.spool_refusing = None  # why the spool took the last rows only in part, logged once
        self.call_log = None   # CallLogWriter of a server: writes log_rows on a thread of its own
        self.dropped_rows = 0  # call log rows lost: refused by the database, or past max_unflushed_rows
        self.last_seen = {}    # account id -> time of its last call, for the next flush to write
        self.last_seen_noted = {}  # account id -> the last time handed to last_seen (LAST_SEEN_STEP)
        self.offhours = {}     # account id -> times of approved off-hours calls in the last 10 minutes
        self.dialed_high_risk = {}  # account id -> when it last dialed a high-risk destination (HIGH_RISK_MEMORY)
        self.today = {}    # (account id, day) -> approved calls, for anomaly alerts
        self.seen = set()  # (account id, 'src'|'dst', iso) known to be in account_seen
        self.first_enrolled = first_account_created(db)  # when the first account was enrolled (learning_cap)
        # with counters written behind, first-seen countries are too (one commit a flush, not one a verdict)
        self.unseen = [] if isinstance(self.counters, LeasedCounters) else None  # (call, direction, iso)
        # `tfps reset` of accounts whose windows this engine keeps in memory: the resets since
        # a minute before it started (the CLI's clock may be another host's) and those applied
        self.resets_since, self.resets_applied = time.time() - 60, {}
        self.reload()

    # -- data kept in memory; reloaded when the change serial moves ---------------------------

    def reload(self):
        self.install(load_lists(self.cfg, self.db))

    def configure(self, cfg):
        """A new Config; the lists derived from it are loaded again by the caller."""
        self.cfg = cfg
        self.alerts.acfg, self.alerts.tz = cfg.alerts, cfg.policy.tz
        self.node = cfg.server.node_name
        self.clock = (0.0, 0.0, "", False)  # business hours and the timezone may have changed

    def install(self, loaded):
        """Put what load_lists() returned in place; accounts are read again on their next call."""
        self.serials, self.lists, self.tiers = loaded
        self.countries = self.lists.countries
        self.accounts = {}  # (user, domain) -> Account with its effective policy, filled on first use
        self.domains = {}   # domain -> Domain or None, filled on first use
        self.clock = (0.0, 0.0, "", False)  # (from, until, day, off hours): see _local_day

    def check_for_changes(self, reload_lists=None):
        """Follow changes made by the CLI, by hand in the database or by another node: accounts
        are forgotten and read again on their next call; the lists are loaded again by
        `reload_lists` (default: here and now; the server loads them on a thread and installs
        them when they are ready). True if anything changed."""
        serials = change_serials(self.db)
        changed = False
        if serials.get("accounts_serial") != self.serials.get("accounts_serial"):
            self.serials["accounts_serial"] = serials.get("accounts_serial")
            self.accounts.clear()
            self.domains.clear()
            self._apply_counter_resets()
            changed = True
        if serials.get("lists_serial") != self.serials.get("lists_serial"):
            (reload_lists or self.reload)()
            changed = True
        return changed

    def _apply_counter_resets(self):
        """Forget the windows kept in memory of accounts that `tfps reset` cleared since."""
        for account_id, reset_at in counter_resets_since(self.db, self.resets_since):
            if self.resets_applied.get(account_id) != reset_at:
                self.resets_applied[account_id] = reset_at
                self.counters.forget(account_id)
                self.resets_since = max(self.resets_since, reset_at - 60)

    # -- the entry point ----------------------------------------------------------------------

    def decide(self, attempt, *, enforce=True, count=True):
        """Evaluate one call attempt. enforce=False (monitor mode) turns every rejection into a
        'would reject'; count=False (the CLI's check) evaluates without writing anything."""
        now = attempt.ts or time.time()
        attempt.ts = now
        if not count:
            return self._run_pipeline(Call(attempt, now, dry_run=True), enforce)
        for tries in range(VERDICT_TRIES):
            try:
                with self.counters.atomic():
                    return self._run_pipeline(Call(attempt, now, dry_run=False), enforce)
            except (CounterMoved, *self.db.errors) as exc:
                if tries == VERDICT_TRIES - 1 or not (isinstance(exc, CounterMoved) or self.db.transient(exc)):
                    raise
                log.info("call-id=%s: %s; evaluating again", attempt.call_id, exc)
                pause_after_conflict(tries)

    def decide_from_memory(self, attempt, *, enforce=True):
        """While the database is unavailable: the same rules over what is in memory. The lists
        and the accounts read before are at hand; counters start from zero in `local_counters`
        (kept until the database is back); an account never seen gets the default limits and
        is neither enrolled nor counted."""
        attempt.ts = attempt.ts or time.time()
        if self.local_counters is None:
            self.local_counters = PrivateCounters()
        shared, self.counters = self.counters, self.local_counters
        try:
            verdict = self._run_pipeline(Call(attempt, attempt.ts, dry_run=False, from_memory=True), enforce)
        finally:
            self.counters = shared
        verdict.reason += " (database unavailable: decided from memory)"
        return verdict

    def use_database(self, db):
        """Go on with another connection to the same database (the server reconnects on a thread)."""
        self.db = db
        if isinstance(self.counters, (SharedCounters, LeasedCounters)):
            self.counters.db = db
        if isinstance(self.counters, LeasedCounters):
            self.counters.reconnected()

    def charge_outage_counts(self):
        """The database is back: the calls approved from memory meanwhile are added to its daily
        counters, so that the rest of the day's quota is charged for them."""
        if self.local_counters is None:
            return
        with self.counters.atomic():
            for (account_id, day, bucket), calls in self.local_counters.daily.items():
                self.counters.count_approved(account_id, day, bucket, calls)
            for (account_id, day), cost in self.local_counters.spend.items():
                self.counters.add_spend(account_id, day, cost)
        self.local_counters = None

    def _run_pipeline(self, call, enforce):
        if self._prepare(call):
            return self._verdict(call, APPROVED, f"emergency number {call.number}: always approved", "", None)
        would = None
        for rules in (SCREENING, ACCOUNT_RULES):
            if rules is ACCOUNT_RULES and call.unenrolled and would is None:
                call.account = self._enroll(call.attempt.user, call.attempt.domain, call)
                call.unenrolled = False
            for rule in rules:
                rejection = rule(self, call)
                if rejection is None:
                    continue
                if enforce and not (rejection.soft and call.account.learning(call.now)):
                    self._count(call, approved=False)
                    return self._verdict(call, rejection.code, rejection.reason, rejection.undo, would)
                would = would or rejection
        self._count(call, approved=True)
        reason = "approved"
        if would:
            reason = f"approved ({'learning' if enforce else 'monitor'} mode; would reject {would.code}: {would.reason})"
        elif source_not_allowed(call) and not call.account.learning(call.now):
            local = call.dest_country == call.source_country
            reason = (f"{APPROVED_AWAY}: from {self.countries.label(call.source_country)}, not among the allowed source "
                      f"countries of {call.account.name}, {'a local call there' if local else 'to a destination it calls from home'}")
        return self._verdict(call, APPROVED, reason, would.undo if would else "", would)

    def _prepare(self, call):
        """Fill in what the rules read. True for an emergency number: it is approved as it is
        dialed, before any rule, and neither parsed as an international number nor counted."""
        a, p = call.attempt, self.cfg.policy
        emergency = emergency_number(a.number, p)
        if emergency:
            call.number, call.dest_country, call.source_country, call.account = emergency, p.home_country, "", None
            call.day, call.off_hours = self._local_day(call.now)
            return True
        call.number = normalize_number(dialed_number(a.number), p, self.countries)
        call.dest_country = self.countries.lookup(call.number) if call.number else None
        call.tier = self.tiers.of(call.number, call.dest_country)  # (tier, what decided it): the rules read it
        price = self.lists.rates.price(call.number)
        call.cost = None if price is None else price * p.assumed_call_minutes
        call.ip_white = bool(a.source_ip and self.lists.ip_white.match(a.source_ip))
        call.number_white = bool(call.number and self.lists.number_white.match(call.number))
        rep = a.reputation
        call.source_country = (a.source_country or (rep.country if rep and rep.ok else "")).upper()
        call.day, call.off_hours = self._local_day(call.now)
        a.domain = a.domain.lower()
        a.defect = a.defect or identity_defect(a)
        # an identity that rule R12 rejects must neither enroll an account nor reach a query
        call.account = default_account(self.cfg, a.user, a.domain, call.now) if a.defect else self._account(a.user, a.domain, call)

    def _local_day(self, now):
        """(calendar day, off hours) at `now`. Both hold until the next business-hours edge or
        midnight, so the stretch is remembered and most calls skip the timezone arithmetic."""
        start, end, day, off_hours = self.clock
        if start <= now < end:
            return day, off_hours
        p = self.cfg.policy
        local = dt.datetime.fromtimestamp(now, p.tz)
        day, off_hours = local.date().isoformat(), not p.business_hours.contains(local, p.holidays)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (midnight + dt.timedelta(minutes=p.business_hours.next_change(local, p.holidays))).timestamp()
        self.clock = (now, end, day, off_hours)
        return day, off_hours

    def _verdict(self, call, code, reason, undo, would):
        return Verdict(code, reason, call.attempt, call.number or "", call.dest_country or "", call.source_country,
                       call.off_hours, call.account, undo, would, call.cost)

    # -- accounts -----------------------------------------------------------------------------

    def _account(self, user, domain, call):
        acc = self.accounts.get((user, domain))
        if acc is not None:
            return acc
        if call.from_memory:
            return self._effective(default_account(self.cfg, user, domain, call.now), call)
        if len(self.accounts) >= MAX_CACHED:
            self.accounts.clear()
            self.domains.clear()
        row = load_account(self.db, user, domain)
        if row is not None:
            acc = self.accounts[(user, domain)] = self._effective(Account.from_row(row), call)
            return acc
        # enrolled once screening has passed (_run_pipeline); until then the defaults, unsaved
        call.unenrolled = not call.dry_run and self.cfg.policy.unknown_accounts == "enroll" and domain != PROBE_DOMAIN
        return self._effective(default_account(self.cfg, user, domain, call.now), call)

    def _effective(self, acc, call):
        """The account under its domain's policy; domains are read once and kept like accounts."""
        if acc.domain not in self.domains and not call.from_memory:
            row = load_domain(self.db, acc.domain)
            self.domains[acc.domain] = Domain.from_row(row) if row else None
        return effective_policy(acc, self.domains.get(acc.domain), self.cfg.policy)[0]

    def _enroll(self, user, domain, call):
        now = call.now
        inserted = insert_account(self.db, default_account(self.cfg, user, domain, now))
        acc = self.accounts[(user, domain)] = self._effective(Account.from_row(load_account(self.db, user, domain)), call)
        if self.first_enrolled is None:  # the first account, here or on another node
            self.first_enrolled = first_account_created(self.db)
        if inserted:
            self.alerts.add(AlertEvent(
                "enrolled", acc.name, "NEW", f"TFPS: new account {acc.name} enrolled",
                f"The account {acc.name} placed its first call and was enrolled with the default limits "
                f"({describe_limits(acc)}).\nIt is in {acc.state} mode."
                + (f" until {fmt_time(acc.learning_until, self.cfg.policy.tz, '%Y-%m-%d')}." if acc.learning_until else "")
                + f"\nTo stop it: {PROG} block {acc.user} {acc.domain}",
                {"user": user, "domain": domain}))
        return acc

    @staticmethod
    def window(windows, account_id, now, seconds):
        """The account's deque of call times, trimmed to the last `seconds`."""
        times = windows.setdefault(account_id, deque())
        while times and times[0] <= now - seconds:
            times.popleft()
        return times

    def held(self, call):
        """Whether the call's account is in learning mode and new to a running installation:
        its new destinations (R06) and the [policy] learning_* caps are enforced, not only
        logged, since nothing vouches yet for an account that may have signed up to pump calls.
        The accounts enrolled within learning_days of the first one are the customers a new
        installation finds already calling (dialers, call centres among them): they learn freely."""
        acc = call.account
        return (acc.learning(call.now) and self.first_enrolled is not None
                and acc.created >= self.first_enrolled + self.cfg.policy.learning_days * 86400)

    def learning_cap(self, call, name):
        """[policy] learning_NAME for an account `held`, else None: it applies whatever the
        account's own limits."""
        return getattr(self.cfg.policy, f"learning_{name}") if self.held(call) else None

    def daily_limit(self, call):
        """The account's daily quota for the call's hours, or None; off hours, an account under
        the learning caps has [policy] learning_daily_quota_off at most."""
        if not call.off_hours:
            return call.account.daily_quota
        return tighter(call.account.daily_quota_off, self.learning_cap(call, "daily_quota_off"))

    # -- counting, after the verdict, and anomaly alerts -------------------------------------

    def read_count(self, call, name):
        """A counter of the call's account, read once per verdict and kept for _count: 'pair'
        (A->B attempts within ab_window, blocked_until, row exists), 'minute' (approved calls in
        the last 60 s, row exists), 'today' (approved calls today in the call's hours),
        'new_destination' (calls approved today to the call's new destination), 'new_countries'
        (the new destination countries called within the last 10 minutes and since the latest R16
        block ended, row exists) or 'spend' (the estimated cost of today's approved calls). MySQL
        locks the pair, minute, new-destination, new-countries and spend rows until the verdict
        commits, so racing nodes take turns; the quota is taken atomically by _count."""
        counts = call.counts
        if name not in counts:
            acc, p, lock = call.account, self.cfg.policy, not call.dry_run
            if name == "pair":
                counts[name] = self.counters.pair(acc.id, call.number, call.now, p.ab_window, lock)
            elif name == "minute":
                counts[name] = self.counters.recent_calls(acc.id, call.now, 60, lock)
            elif name == "new_destination":
                counts[name] = self.counters.new_destination_calls(acc.id, call.day, call.dest_country, lock)
            elif name == "new_countries":
                since = max(call.now - NEW_DESTINATION_WINDOW, acc.blocked_until or 0.0)
                counts[name] = self.counters.new_destination_window(acc.id, since, lock)
            elif name == "spend":
                counts[name] = self.counters.spent(acc.id, call.day, lock)
            else:
                counts[name] = self.counters.approved(acc.id, call.day, call.bucket)
        return counts[name]

    def _count(self, call, approved):
        """The one place where a verdict writes counters. What it writes depends on the verdict
        only, never on which rule rejected: an A->B attempt counts whatever the verdict (and
        blocks the pair past ab_max_calls); a call to a high-risk destination or a blacklisted
        number takes away the account's new-destination allowance (in this engine's memory); a
        rejected call that would have made the account's
        new_destinations_per_10min-th new destination country blocks the account where R16 is
        enforced (R16 rejects it when no rule before does); an approved call counts toward the daily quota, the
        per-minute window, the new destination countries of the last 10 minutes (R16) and, with
        its estimated cost, the daily spend."""
        acc, p = call.account, self.cfg.policy
        if call.dry_run or acc.id is None:
            return
        # The quota first: it may have been taken meanwhile, or its claim conflict with another
        # node's, and the verdict evaluated again must not find counted in memory (LeasedCounters)
        # what this try wrote before.
        limit = self.daily_limit(call)
        quota_taken = approved and limit is not None and self.read_count(call, "today") < limit
        if quota_taken and not self.counters.take_quota(acc.id, call.day, call.bucket, limit):
            raise CounterMoved(f"the daily quota of {acc.name} was reached meanwhile on another node")
        if dials_high_risk(self, call):
            if len(self.dialed_high_risk) >= MAX_CACHED:
                self.dialed_high_risk.clear()
            self.dialed_high_risk[acc.id] = call.now
        if call.pair_counted:
            times, blocked_until, existed = self.read_count(call, "pair")
            times = times[-p.ab_max_calls:] + [call.now]
            if blocked_until <= call.now and len(times) > p.ab_max_calls:
                blocked_until = call.now + p.ab_block
            self.counters.write_pair(acc.id, call.number, times, call.now, blocked_until, existed)
        if not approved:
            if burst_countries(self, call) and not burst_is_soft(self, call):
                self._block_account(call, call.now + p.anomaly_block)
            return
        if not quota_taken:  # no quota, or over it while learning: counted all the same
            self.counters.count_approved(acc.id, call.day, call.bucket)
        limit, cap = minute_limits(self, call)
        keep = max(limit or 0, cap or 0)
        if keep:
            self.counters.add_call(acc.id, self.read_count(call, "minute"), call.now, keep)
        if new_destination(self, call):
            self._count_new_destination(call)
        if counts_toward_burst(self, call):
            countries, existed = self.read_count(call, "new_countries")
            self.counters.write_new_destination_window(acc.id, {**countries, call.dest_country: call.now}, call.now, existed)
        if source_not_allowed(call) and usual_from_abroad(self, call):
            self._alert_away(call)
        if call.cost:
            self.counters.add_spend(acc.id, call.day, call.cost)
        self._check_anomalies(call)

    def _block_account(self, call, until):
        """R16 blocks the account on every node and worker: its row changes, which moves the
        accounts serial (the others follow within reload_interval), and this engine reads it again
        on its next call. While the database is unavailable the block holds in this engine only."""
        acc = call.account
        key = (acc.user, acc.domain)
        if call.from_memory:
            if key in self.accounts:
                self.accounts[key] = replace(self.accounts[key], blocked_until=until)
            return
        update_account_row(self.db, acc.id, {"blocked_until": until}, call.now)
        self.accounts.pop(key, None)

    def _count_new_destination(self, call):
        acc, iso, p = call.account, call.dest_country, self.cfg.policy
        self.counters.count_new_destination(acc.id, call.day, iso)
        calls = self.read_count(call, "new_destination") + 1
        self._anomaly(call, f"NEW_DST_{iso}", f"new destination {self.countries.label(iso)}: call {calls} of the "
                      f"{p.new_destination_calls} a day approved while it is neither allowed nor learned (learned after "
                      f"{p.train_min_country_calls} approved calls)",
                      f"To allow it: {PROG} allow {acc.user} {acc.domain} --dest {iso}\n"
                      f"If it is not expected: {PROG} block {acc.user} {acc.domain}")

    def _alert_away(self, call):
        acc, iso = call.account, call.source_country
        # The rule of the first-seen alert of a source country: the two share one rate limit.
        self._anomaly(call, f"NEW_SRC_{iso}", f"call from {self.countries.label(iso)}, a source country not allowed for "
                      f"{acc.name}, approved: from there it may call the destinations it calls from home and {iso} "
                      f"itself; any other call from there is rejected R04",
                      f"If {acc.user} is travelling, nothing to do. To allow calls from there for good: "
                      f"{PROG} allow {acc.user} {acc.domain} --source {iso}\n"
                      f"If it is not expected: {PROG} block {acc.user} {acc.domain}")

    def _check_anomalies(self, call):
        acc, p = call.account, self.cfg.policy
        for direction, iso in (("dst", call.dest_country), ("src", call.source_country)):
            if iso and (acc.id, direction, iso) not in self.seen and not call.from_memory:
                if len(self.seen) >= MAX_CACHED:
                    self.seen.clear()
                self.seen.add((acc.id, direction, iso))
                if self.unseen is None:
                    self._mark_first_seen(call, direction, iso)
                else:
                    self.unseen.append((call, direction, iso))
        threshold = acc.anomaly_daily
        if threshold is not None:
            self._check_daily_volume(call, threshold)
        if call.off_hours and p.offhours_burst:
            times = self.window(self.offhours, acc.id, call.now, 600)
            times.append(call.now)
            burst = len(times)
            if burst == p.offhours_burst:
                self._anomaly(call, "OFFHOURS_BURST", f"{burst} off-hours calls within 10 minutes",
                              f"{PROG} block {acc.user} {acc.domain}")

    def _mark_first_seen(self, call, direction, iso):
        if mark_first_seen(self.db, call.account.id, direction, iso, call.now):
            self._first_seen_notice(call, direction, iso)

    def _mark_first_seen_all(self, unseen):
        for mark in first_seen_marks(self.db, unseen):
            self._first_seen_notice(*mark)

    def _first_seen_notice(self, call, direction, iso):
        acc = call.account
        if acc.created < call.now - 86400:  # a normal to differ from
            what = "to the new destination" if direction == "dst" else "from the new source country"
            self._anomaly(call, f"NEW_{direction.upper()}_{iso}", f"first call {what} {self.countries.label(iso)}",
                          f"If expected, nothing to do; if not: {PROG} block {acc.user} {acc.domain}")

    def _check_daily_volume(self, call, threshold):
        acc, p = call.account, self.cfg.policy
        key = (acc.id, call.day)
        if key not in self.today:
            if self.today and next(iter(self.today))[1] != call.day:
                self.today.clear()
            self.today[key] = self.counters.approved(acc.id, call.day) - 1
        self.today[key] += 1
        if self.today[key] == threshold + 1:
            self._anomaly(call, "DAILY_VOLUME", f"{self.today[key]} approved calls today, above the usual "
                          f"maximum of {threshold} (mean + {p.anomaly_sigma:g} x stddev of its history)",
                          f"{PROG} show {acc.user} {acc.domain}")

    def _anomaly(self, call, rule, what, undo):
        acc = call.account
        self.alerts.add(AlertEvent(
            "anomaly", acc.name, rule, f"TFPS anomaly: {acc.name}: {what}",
            f"Account {acc.name} called {call.number} ({self.countries.label(call.dest_country)}) from "
            f"{call.attempt.source_ip or 'unknown IP'}: {what}.\nThe call was approved; this is a notice only.\n{undo}",
            {"number": call.number, "dest_country": call.dest_country, "source_ip": call.attempt.source_ip}, acc.email))

    # -- the call log -------------------------------------------------------------------------

    def record(self, verdict, sip_response, latency_ms):
        a, acc = verdict.attempt, verdict.account
        would = verdict.would
        self.log_rows.append((
            a.ts, storable(a.call_id, 255), acc.id if acc else None, storable(a.user, 128), storable(a.domain, 255),
            storable(a.from_uri, 512), storable(a.number, 64), verdict.number[:32], storable(a.source_ip, 45),
            storable(a.user_agent, 255), verdict.source_country, verdict.dest_country, int(verdict.off_hours),
            a.concurrent_calls, verdict.code, would.code if would else "", storable(verdict.reason, 512), sip_response[:64],
            a.reputation.score if a.reputation else None, self.node[:64], round(latency_ms, 3),
            storable(would.undo if would else verdict.undo, 255), verdict.cost, row_key()))
        if len(self.log_rows) > self.cfg.database.max_unflushed_rows:
            self._bound_log_rows()
        if acc and acc.id is not None and a.ts - self.last_seen_noted.get(acc.id, -LAST_SEEN_STEP) >= LAST_SEEN_STEP:
            if len(self.last_seen_noted) >= MAX_CACHED:
                self.last_seen_noted.clear()
            self.last_seen_noted[acc.id] = self.last_seen[acc.id] = a.ts
        if not verdict.approved or would:
            self._alert_rejection(verdict, sip_response)

    def _alert_rejection(self, verdict, sip_response):
        a, acc = verdict.attempt, verdict.account
        rejection = verdict.would if verdict.approved else None
        code, reason = (rejection.code, rejection.reason) if rejection else (verdict.code, verdict.reason)
        undo = rejection.undo if rejection else verdict.undo
        kind = "would-reject" if rejection else "rejection"
        name = acc.name if acc else f"{a.user}@{a.domain}"
        headline = "would have been rejected" if rejection else "rejected"
        body = (f"Call from {name} to {verdict.number or a.number} ({self.countries.label(verdict.dest_country)}) "
                f"{headline} with {code}: {reason}.\n"
                f"Source IP {a.source_ip or '-'} ({verdict.source_country or 'country unknown'}), "
                f"User-Agent {a.user_agent or '-'}, {'off' if verdict.off_hours else 'business'} hours, "
                f"Call-ID {a.call_id or '-'}, answered {sip_response}.\n")
        if undo:
            body += f"If this is a false positive: {undo}\n"
        link = "" if rejection else self._approval_link(verdict)
        if link:
            body += f"The account owner can allow it with one click: {link}\n"
        self.alerts.add(AlertEvent(kind, name, code, f"TFPS {code}: {name} -> {verdict.number or a.number} {headline}",
                                   body, {"code": code, "reason": reason, "number": verdict.number, "undo": undo,
                                          "approve_url": link,
                                          "dest_country": verdict.dest_country, "source_ip": a.source_ip,
                                          "user_agent": a.user_agent, "call_id": a.call_id, "enforced": not rejection},
                                   acc.email if acc else ""))

    def _approval_link(self, verdict):
        """[http] public_url/approve/TOKEN lifting this rejection, or '' when links are off or the
        rejection is not the owner's to lift (a high-tier destination, one the administrator denied)."""
        h, acc = self.cfg.http, verdict.account
        lifts = APPROVABLE.get(verdict.code)
        if not (h.public_url and h.secret and lifts and acc and acc.id is not None):
            return ""
        if lifts == "dest":
            iso = verdict.dest_country
            if not iso or f"!{iso}" in acc.dest_countries or self.tiers.of(verdict.number, iso)[0] == "high":
                return ""
            value = iso
        elif lifts == "source":
            value = verdict.source_country
            if not value:
                return ""
        else:
            value = self._local_day(verdict.attempt.ts)[0]
        token = approval_token(h.secret, acc.name, verdict.code, value, verdict.attempt.ts + h.approval_ttl)
        return f"{h.public_url.rstrip('/')}/approve/{token}"

    def flush(self, now=None, release=False):
        """Make the verdicts' counters durable (SQLite: the group transaction; counters written
        behind, and with `release` every unspent lease given back), then write the buffered call
        log rows, last-seen times, first-seen countries (with counters written behind) and alerts
        in a transaction of their own: a call log that cannot be written never takes the counters
        with it. Rows stay buffered while the database is unavailable; a row the database
        refuses is logged and dropped alone. With a call log writer, the rows, first-seen countries,
        last-seen times and alerts go to its thread instead. A conflict with another node's writes (a deadlock;
        on Galera, a certification failure) is tried again, as a verdict is: a stopping server
        has no next flush."""
        return again_after_conflicts(self.db, lambda: self._flush(now, release), "flush")

    def _flush(self, now, release):
        if self.db.in_transaction:
            self.db.commit()
        self.counters.write_behind(now or time.time(), release)
        rows, self.log_rows = self.log_rows, []
        seen, self.last_seen = self.last_seen, {}
        unseen, self.unseen = self.unseen, [] if self.unseen is not None else None
        if self.call_log:
            while self.call_log.firsts:
                self._first_seen_notice(*self.call_log.firsts.popleft())
            events, self.alerts.events = self.alerts.events, []
            self.call_log.put(rows, unseen or (), seen, (self.alerts, events, now or time.time()) if events else None)
            return
        if not (rows or seen or unseen or self.alerts.events):
            return
        events = len(self.alerts.events)
        try:
            self.db.begin()
            if rows:
                self.dropped_rows += write_call_log(self.db, rows)
            update_last_seen(self.db, sorted(seen.items()))
            if unseen:
                self._mark_first_seen_all(unseen)
            self.alerts.write(self.db, now or time.time())
            self.db.commit()
            self.alerts.events = []
        except BaseException as exc:
            self.db.rollback(exc)
            del self.alerts.events[events:]
            if unseen:
                self.unseen[:0] = unseen
            self.log_rows[:0] = rows
            self._bound_log_rows()
            for account_id, ts in seen.items():
                self.last_seen.setdefault(account_id, ts)
            raise

    def unwritten_rows(self):
        """Call log rows not yet in the database or the spool."""
        return len(self.log_rows) + (self.call_log.queued if self.call_log else 0)

    def queued_alerts(self):
        """Alerts not yet in the database's outbox."""
        return len(self.alerts.events) + (self.call_log.queued_alerts if self.call_log else 0)

    def lost_rows(self):
        """Call log rows lost: refused by the database, or past max_unflushed_rows."""
        return self.dropped_rows + (self.call_log.dropped if self.call_log else 0)

    def spool_log_rows(self):
        """The database is unavailable: move the rows held in memory to the spool; what it cannot
        take waits in memory (within max_unflushed_rows)."""
        if not (self.spool and self.log_rows):
            return
        taken, refusing = self.spool.offer(self.log_rows)
        del self.log_rows[:taken]
        if refusing and refusing != self.spool_refusing:
            log.error("call log spool %s %s; rows wait in memory, up to max_unflushed_rows", self.spool.path, refusing)
        self.spool_refusing = refusing

    def _bound_log_rows(self):
        """While the database is unavailable rows wait in memory, up to max_unflushed_rows."""
        excess = len(self.log_rows) - self.cfg.database.max_unflushed_rows
        if excess > 0:
            del self.log_rows[:excess]
            self.dropped_rows += excess
            log.error("call log: %d unwritten row(s) dropped, the oldest, to stay within max_unflushed_rows = %d "
                      "(%d dropped in all)", excess, self.cfg.database.max_unflushed_rows, self.dropped_rows)


def default_account(cfg, user, domain, now):
    """A new account as enrollment creates it: the [policy] default_* limits, learning first."""
    p = cfg.policy
    learning = p.learning_days > 0
    return Account(None, user, domain, p.default_concurrent_calls, p.default_concurrent_calls_off,
                   p.default_daily_quota, p.default_daily_quota_off, set(p.default_source_countries),
                   set(p.default_destination_countries), False, "", "learning" if learning else "enforcing",
                   now + p.learning_days * 86400 if learning else None, set(), now, None)


def insert_account(db, acc):
    """Store a new account; returns True when it was new."""
    return insert_account_row(db, {
        "user": acc.user, "domain": acc.domain, "concurrent_calls": acc.concurrent_calls,
        "concurrent_calls_off": acc.concurrent_calls_off, "daily_quota": acc.daily_quota,
        "daily_quota_off": acc.daily_quota_off, "source_countries": format_countries(acc.source_countries),
        "dest_countries": format_countries(acc.dest_countries), "blocked": int(acc.blocked), "email": acc.email,
        "state": acc.state, "learning_until": acc.learning_until, "pinned": ",".join(sorted(acc.pinned)),
        "created": acc.created, "updated": acc.created})


def describe_limits(acc):
    def show(value):
        return "unlimited" if value is None else str(value)
    return (f"concurrent {show(acc.concurrent_calls)}/{show(acc.concurrent_calls_off)} (business/off), "
            f"daily quota {show(acc.daily_quota)}/{show(acc.daily_quota_off)}, "
            + (f"daily spend {acc.daily_spend:g}, " if acc.daily_spend is not None else "") +
            f"destinations {format_countries(acc.dest_countries) or 'none'}, sources {format_countries(acc.source_countries) or 'none'}")


# =============================================================================================
# 11. Training: limits learned from each account's own history and its domain's; daily jobs under a cluster lock
# =============================================================================================

@dataclass
class Proposal:
    account: Account
    changes: list            # (field, current, proposed, why)
    skipped: str = ""        # why nothing was learned


EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
MINUTE_HEADROOM = 2  # a learned calls-per-minute limit is twice the busiest minute: a campaign may outdo the last
# A learned business-hours quota or concurrency is at least half again the busiest business day or
# the highest business-hours concurrency of the window. The history holds approved calls only, so it
# never shows what a limit rejected: a limit at the busiest day (or at a mean plus a few stddevs,
# which rare campaign days among quiet ones stay above) could never rise with a customer that grows
# or a campaign larger than the last. Off hours keep no such room: nobody is there to notice a
# weekend PBX hack, and a customer's growth and campaigns are business-hours traffic.
LIMIT_HEADROOM = 1.5
SETTLE = 300  # seconds after a day's end when every node's calls of that day are in call_log


def day_number(now, tz):
    """Days since 1970-01-01 of the calendar day `now` falls on in `tz`."""
    return int((now + dt.datetime.fromtimestamp(now, tz).utcoffset().total_seconds()) // 86400)


def day_bounds(day, tz):
    """[start, end) of calendar day number `day` in `tz`, as Unix times."""
    date = dt.date.fromordinal(day + EPOCH_ORDINAL)
    return (dt.datetime.combine(date, dt.time(), tz).timestamp(),
            dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tz).timestamp())


def aggregate_days(cfg, db, now):
    """Sum up call_log per account for the days of the training window that are over and not
    summed up yet, and the minute peaks of days summed up before schema version 4. Returns the
    first day left to call_log (today, or yesterday within SETTLE seconds of midnight). Nodes
    racing here sum each day once: the history_days row decides."""
    p = cfg.policy
    today = day_number(now, p.tz)
    first = today - p.train_window_days
    for day in days_without_minute_peaks(db, first):
        fill_minute_peaks(db, day, *day_bounds(day, p.tz))
    done = summed_days(db, first)
    for day in range(first, today):
        if day in done:
            continue
        start, end = day_bounds(day, p.tz)
        if end > now - SETTLE:
            return day
        sum_up_day(db, day, start, end, now)
    return today


class AccountHistory:
    """One account's approved calls over the training window: the first day with calls, per
    bucket ('biz' = business-hours calls on business days, 'off' = off-hours calls, 'all') the
    sum and the sum of squares of calls per complete day, the most business-hours calls of a
    complete business day, the highest reported concurrency per bucket (0 business hours, 1 off
    hours), the most calls within 60 s, and calls per destination and source country."""

    __slots__ = ("first", "sums", "busiest_biz", "peak", "minute_peak", "dst", "src")

    def __init__(self, first):
        self.first = first
        self.sums = {"biz": [0, 0], "off": [0, 0], "all": [0, 0]}
        self.busiest_biz = 0
        self.peak = {0: None, 1: None}
        self.minute_peak = 0  # most approved calls within 60 s
        self.dst = {}
        self.src = {}

    def add_day(self, biz, off, business):
        if business:
            self.busiest_biz = max(self.busiest_biz, biz)
        for key, calls in (("biz", biz if business else 0), ("off", off), ("all", biz + off)):
            self.sums[key][0] += calls
            self.sums[key][1] += calls * calls

    def add_peak(self, bucket, peak):
        if peak is not None:
            self.peak[bucket] = max(int(peak), self.peak[bucket] or 0)

    def mean_std(self, key, days):
        """Mean and population stddev of calls per day over `days` days, days without calls included."""
        total, squares = self.sums[key]
        return total / days, math.sqrt(max(days * squares - total * total, 0)) / days


def history(cfg, db, now, account_ids=None):
    """AccountHistory per account id (all accounts, or those in `account_ids`): the complete
    days of the training window from the daily sums, what is not summed up yet (today so far)
    from call_log."""
    p = cfg.policy
    today = day_number(now, p.tz)
    since = today - p.train_window_days
    unsummed = aggregate_days(cfg, db, now)
    business = business_day_numbers(p, now)
    business_set = set(business)
    stats = {}
    for (acc_id, first, b, b2, o, o2, a, a2, peak_biz, peak_off, peak_minute,
         busiest_biz) in summed_history(db, since, unsummed, business, account_ids):
        h = stats[acc_id] = AccountHistory(int(first))
        h.sums = {"biz": [int(b), int(b2)], "off": [int(o), int(o2)], "all": [int(a), int(a2)]}
        h.busiest_biz = int(busiest_biz or 0)
        h.add_peak(0, peak_biz)
        h.add_peak(1, peak_off)
        h.minute_peak = int(peak_minute or 0)
    for acc_id, direction, iso, calls in summed_countries(db, since, unsummed, account_ids):
        getattr(stats[acc_id], direction)[iso] = int(calls)

    for day in range(unsummed, today + 1):  # day by day: each has its own bounds (and offset, on DST days)
        start, end = day_bounds(day, p.tz)
        for acc_id, biz, off, peak_biz, peak_off in approved_day_sums(db, start, min(end, now), account_ids):
            h = stats.setdefault(acc_id, AccountHistory(day))
            h.first = min(h.first, day)
            if day < today:
                h.add_day(int(biz), int(off), day in business_set)
            h.add_peak(0, peak_biz)
            h.add_peak(1, peak_off)
        for acc_id, peak in minute_peaks(approved_times(db, start, min(end, now), account_ids)).items():
            stats[acc_id].minute_peak = max(stats[acc_id].minute_peak, peak)
        for acc_id, direction, iso, calls in approved_country_counts(db, start, min(end, now), account_ids):
            counts = getattr(stats.setdefault(acc_id, AccountHistory(day)), direction)  # a first call since the query above
            counts[iso] = counts.get(iso, 0) + int(calls)
    return stats


def business_day_numbers(p, now):
    """The day numbers of the training window that have business hours and are no holidays, in order."""
    today = day_number(now, p.tz)
    return [d for d in range(today - p.train_window_days - 1, today)
            if _has_business_hours(p, dt.date.fromordinal(d + EPOCH_ORDINAL))]


# How each learned limit comes about, formatted with the values own_limits() keeps for it
LIMIT_REASONS = {
    "daily_quota": "{} days: mean {:.2f} + {:g} x stddev {:.2f}, at least busiest day {} x {:g} = {}, bounds {}..{}",
    "daily_quota_off": "{} days: mean {:.2f} + {:g} x stddev {:.2f} = {}, bounds {}..{}",
    "concurrent_calls": "highest reported concurrency {} x {:g}, at least + 1, bounds {}..{}",
    "concurrent_calls_off": "highest reported concurrency {} + 1, bounds {}..{}",
    "calls_per_minute": "busiest 60 s: {} approved calls x {}, bounds {}..{}",
}


def own_limits(cfg, stats, days, business_days):
    """{field: (value, values of its LIMIT_REASONS)}: the limits learned from one account's own
    history of `days` complete days, `business_days` of them business days, within the
    train_min_*/train_max_* bounds. Training runs over every account daily: the reasons are
    formatted only for the values that change."""
    p = cfg.policy
    limits = {}
    if business_days:
        mean, std = stats.mean_std("biz", business_days)
        raw = max(math.ceil(mean + p.train_sigma * std), math.ceil(stats.busiest_biz * LIMIT_HEADROOM))
        low, high = p.train_min_daily_quota, p.train_max_daily_quota
        limits["daily_quota"] = (min(max(raw, low), high), (business_days, mean, p.train_sigma, std, stats.busiest_biz,
                                                            LIMIT_HEADROOM, raw, low, high))
    if days:
        mean, std = stats.mean_std("off", days)
        raw = math.ceil(mean + p.train_sigma * std)
        low, high = p.train_min_daily_quota_off, p.train_max_daily_quota_off
        limits["daily_quota_off"] = (min(max(raw, low), high), (days, mean, p.train_sigma, std, raw, low, high))
    peak = stats.peak[0]
    if peak is not None:
        low, high = p.train_min_concurrent, p.train_max_concurrent
        limits["concurrent_calls"] = (min(max(peak + 1, math.ceil(peak * LIMIT_HEADROOM), low), high),
                                      (peak, LIMIT_HEADROOM, low, high))
    peak = stats.peak[1]
    if peak is not None:
        low, high = p.train_min_concurrent_off, p.train_max_concurrent_off
        limits["concurrent_calls_off"] = (min(max(peak + 1, low), high), (peak, low, high))
    if stats.minute_peak:
        low, high = p.train_min_calls_per_minute, p.train_max_calls_per_minute
        limits["calls_per_minute"] = (min(max(stats.minute_peak * MINUTE_HEADROOM, low), high),
                                      (stats.minute_peak, MINUTE_HEADROOM, low, high))
    return limits


def trainable(cfg, stats, now, business):
    """(complete days, business days) of an account's history, or a reason why training leaves it alone."""
    if not stats:
        return "no approved calls in the training window"
    days = day_number(now, cfg.policy.tz) - stats.first  # complete days only
    if days < cfg.policy.train_min_days:
        return f"{days} day(s) of history, fewer than train_min_days = {cfg.policy.train_min_days}"
    return days, len(business) - bisect.bisect_left(business, stats.first)


# Training also learns per domain. An account's history is short at first and its own: a dialer
# trunk whose first two weeks held no campaign day learns an office phone's limits, although its
# sibling trunks, the same customer's same equipment, have run campaigns all along. The accounts of
# one domain (one customer) behave alike, and together they have seen more. So every limit an
# account learns (quotas, concurrency, calls per minute) is at least the median of what the
# domain's accounts with train_min_days of history learn from their own (the lower median of an
# even count): not the domain's largest, so one busy receptionist among 50 office phones, or one
# hacked account, raises nobody's limits, and a domain of one or two accounts changes nothing.
# Off hours this adds no room beyond what a typical account of the customer does itself (an
# office's typical phone has off-hours limits at or near the train_min_* bounds).

def learned_limits(cfg, accounts, stats, now, business):
    """{account id: own_limits()} of the `accounts` with train_min_days of history."""
    learned = {}
    for acc in accounts:
        span = trainable(cfg, stats.get(acc.id), now, business)
        if not isinstance(span, str):
            learned[acc.id] = own_limits(cfg, stats[acc.id], *span)
    return learned


def domain_limits(accounts, learned):
    """{domain: {field: (median, accounts)}}: per domain and limit, the lower median of what its
    accounts learn from their own history (`learned`: learned_limits())."""
    values = {}
    for acc in accounts:
        for field_name, (value, _reason) in learned.get(acc.id, {}).items():
            values.setdefault(acc.domain, {}).setdefault(field_name, []).append(value)
    return {domain: {field_name: (sorted(limits)[(len(limits) - 1) // 2], len(limits))
                     for field_name, limits in fields.items()} for domain, fields in values.items()}


def propose(cfg, acc, stats, now, high_risk, business, own, domain):
    """What training would change on one account, and why. `stats`: its AccountHistory;
    `business`: business_day_numbers(); `own`: its own_limits() (learned_limits() holds them for
    every trainable account); `domain`: domain_limits() of its domain, or None."""
    p = cfg.policy
    span = trainable(cfg, stats, now, business)
    if isinstance(span, str):
        return Proposal(acc, [], span)
    days = span[0]
    changes = []

    def changed(field_name, value):
        return field_name not in acc.pinned and value != getattr(acc, field_name)

    for field_name, (value, reason) in own.items():
        typical, accounts = (domain or {}).get(field_name, (None, 0))
        raised = typical is not None and typical > value
        if changed(field_name, typical if raised else value):
            why = LIMIT_REASONS[field_name].format(*reason)
            if raised:
                why += f"; own {value}, raised to the median of the {accounts} accounts of domain {acc.domain}"
            changes.append((field_name, getattr(acc, field_name), typical if raised else value, why))
    for field_name, used in (("dest_countries", stats.dst), ("source_countries", stats.src)):
        current = getattr(acc, field_name)
        if field_name in acc.pinned or "*" in current:
            continue
        new = {iso for iso, calls in used.items() if calls >= p.train_min_country_calls
               and iso not in high_risk and iso not in current}
        if new:
            changes.append((field_name, format_countries(current), format_countries(current | new),
                            f"used in >= {p.train_min_country_calls} approved calls: {format_countries(new)}"))
    mean, std = stats.mean_std("all", days)
    anomaly = math.floor(mean + p.anomaly_sigma * std)
    if anomaly != acc.anomaly_daily:
        changes.append(("anomaly_daily", acc.anomaly_daily, anomaly,
                        f"alert above mean {mean:.2f} + {p.anomaly_sigma:g} x stddev {std:.2f} calls a day"))
    return Proposal(acc, changes)


def _has_business_hours(p, day):
    return day not in p.holidays and bool(p.business_hours.ranges[day.weekday()])


def apply_proposal(db, proposal, now):
    update_account_row(db, proposal.account.id, {field_name: proposed for field_name, _, proposed, _why in proposal.changes}, now)


def train(cfg, db, now, account=None, dry_run=False):
    """Learn limits for every account (or one). Returns the proposals; applies them unless dry_run."""
    if account is None:
        accounts = [Account.from_row(r) for r in load_accounts(db)]
    else:
        accounts = [account]
    return train_accounts(cfg, db, now, accounts, dry_run, everyone=account is None)


def train_accounts(cfg, db, now, accounts, dry_run=False, everyone=False):
    """Propose (and unless dry_run apply) what `accounts` learn; their domains' other accounts
    (`everyone`: `accounts` are all) give the domains' medians (domain_limits)."""
    if everyone:
        peers = accounts
    else:
        peers = [Account.from_row(r) for r in load_accounts_of_domains(db, {a.domain for a in accounts})]
    stats = history(cfg, db, now, None if everyone else sorted({a.id for a in (*peers, *accounts)}))
    high_risk = high_risk_countries(cfg, db)
    business = business_day_numbers(cfg.policy, now)
    own = learned_limits(cfg, peers, stats, now, business)
    typical = domain_limits(peers, own)
    proposals = [propose(cfg, acc, stats.get(acc.id), now, high_risk, business, own.get(acc.id),
                         typical.get(acc.domain)) for acc in accounts]
    if not dry_run:
        db.begin()
        for proposal in proposals:
            apply_proposal(db, proposal, now)
        if everyone:
            learn_domain_destinations(cfg, db, now, accounts, stats, high_risk)
        db.commit()
    return proposals


def domain_destinations(cfg, accounts, stats, high_risk):
    """{domain: destinations its accounts call regularly}: countries that at least two of the
    domain's accounts, and at least a quarter of those with history, each called in
    train_min_country_calls approved calls of the window. High-risk countries are never learned."""
    callers, active = {}, {}
    for acc in accounts:
        history = stats.get(acc.id)
        if not history:
            continue
        active[acc.domain] = active.get(acc.domain, 0) + 1
        for iso, calls in history.dst.items():
            if calls >= cfg.policy.train_min_country_calls and iso not in high_risk:
                callers.setdefault(acc.domain, {}).setdefault(iso, 0)
                callers[acc.domain][iso] += 1
    return {domain: {iso for iso, n in counts.items() if n >= max(2, active[domain] / 4)}
            for domain, counts in callers.items()}


def learn_domain_destinations(cfg, db, now, accounts, stats, high_risk):
    """Store each domain's regular destinations, a normal for its quiet and new accounts."""
    learned = domain_destinations(cfg, accounts, stats, high_risk)
    known = {row[0]: Domain.from_row(row) for row in load_domains(db)}
    for domain in sorted(set(learned) | set(known)):
        countries = learned.get(domain, set())
        if domain not in known and not countries or domain in known and known[domain].learned_dest == countries:
            continue
        save_domain(db, domain, {"learned_dest": format_countries(countries)}, now)
        log.info("domain %s: destinations learned from its accounts: %s", domain, format_countries(countries) or "none")


def finish_learning(cfg, db, now):
    """Accounts whose learning period ended: train them and switch them to enforcing."""
    accounts = [Account.from_row(r) for r in load_accounts_done_learning(db, now)]
    if not accounts:
        return 0
    for proposal in train_accounts(cfg, db, now, accounts):
        acc = proposal.account
        update_account_row(db, acc.id, {"state": "enforcing"}, now)
        log.info("account %s leaves learning mode: %s", acc.name,
                 "; ".join(f"{f} {c} -> {n}" for f, c, n, _ in proposal.changes) or proposal.skipped or "limits unchanged")
    return len(accounts)


APPROVED_COLUMNS = {"dest": "dest_countries", "source": "source_countries"}  # what an approval of a country widens


def end_approvals(db, now):
    """Take back the countries allowed through approval links once [http] approval_days have
    passed (unless a later approval of the same country still runs). Returns how many ended."""
    ended = load_ended_approvals(db, now)
    for token_id, user, domain, rule, value in ended:
        end_approval(db, token_id)
        row = load_account(db, user, domain)
        if row is None:
            continue
        acc = Account.from_row(row)
        if not running_approvals(db, acc.id, rule, value, now):
            column = APPROVED_COLUMNS[APPROVABLE[rule]]
            update_account_row(db, acc.id, {column: format_countries(getattr(acc, column) - {value})}, now)
            log.info("approval of %s %s for %s ended", rule, value, acc.name)
    return len(ended)


def purge(cfg, db, now, older_than):
    cutoff = now - older_than
    return purge_rows(db, call_log_before=cutoff,
                      counter_day_before=dt.datetime.fromtimestamp(cutoff, cfg.policy.tz).date().isoformat(),
                      ab_pairs_before=now - cfg.policy.ab_window, rate_windows_before=now - 60,
                      new_destination_windows_before=now - NEW_DESTINATION_WINDOW,
                      new_destination_day_before=dt.datetime.fromtimestamp(now, cfg.policy.tz).date().isoformat(),
                      history_day_before=day_number(cutoff, cfg.policy.tz), now=now,
                      # a used approval link is remembered as long as the call log, and at least
                      # as long as any link can be valid: it must not work twice
                      approvals_before=min(cutoff, now - MAX_APPROVAL_TTL))


def daily_summaries(cfg, db, alerts, now):
    """One alert per account that had rejections on the previous calendar day."""
    local = dt.datetime.fromtimestamp(now, cfg.policy.tz)
    end = local.replace(hour=0, minute=0, second=0, microsecond=0)
    start = (end - dt.timedelta(days=1))
    per_account, emails = {}, {}
    for user, domain, code, calls, email in rejections_per_account(db, start.timestamp(), end.timestamp()):
        per_account.setdefault((user, domain), []).append((code, int(calls)))
        emails[(user, domain)] = email or ""
    for (user, domain), codes in per_account.items():
        lines = "\n".join(f"  {code}: {calls}" for code, calls in sorted(codes))
        alerts.add(AlertEvent(
            "summary", f"{user}@{domain}", "SUMMARY",
            f"TFPS daily summary {start.date().isoformat()}: {user}@{domain}",
            f"Rejected (or, in monitor/learning mode, would-be rejected) calls of {user}@{domain} on "
            f"{start.date().isoformat()}:\n{lines}\nDetails: {PROG} calls --account {user}@{domain} --since 48h",
            {"day": start.date().isoformat(), "codes": dict(codes)}, emails[(user, domain)]))
    return len(per_account)


class DailyJobs:
    """Training at train_at, the rejection summary at summary_at, the purge after training, and the
    end of learning periods. Each daily job runs on one node only, under a lock named by day."""

    def __init__(self, cfg, db, engine=None):
        """`engine`: the engine whose buffered calls the jobs must see and whose caches must
        follow their changes at once (replay, tests). Without one (the server, which runs the
        jobs on a thread of their own) the loop follows the changes like any other, within
        reload_interval, and the summaries are written here."""
        self.cfg = cfg
        self.db = db
        self.engine = engine
        self.alerts = engine.alerts if engine else AlertQueue(cfg.alerts, cfg.policy.tz)
        self.done = {}

    def _flush(self, now):
        if self.engine:
            self.engine.flush(now)
        elif self.alerts.events:
            self.db.begin()
            self.alerts.flush(self.db, now)
            self.db.commit()

    def _follow_changes(self):
        if self.engine:
            self.engine.check_for_changes()

    def run_due(self, now=None):
        """Run what is due. Returns when something is next due, for a caller with simulated
        time; the server calls every 30 s regardless, since accounts change under it."""
        now = now or time.time()
        p = self.cfg.policy
        learning_ends = next_learning_end(self.db)
        if learning_ends is not None and learning_ends <= now:
            self._flush(now)  # train on every call so far
            finish_learning(self.cfg, self.db, now)
            self._follow_changes()
            learning_ends = next_learning_end(self.db)
        if end_approvals(self.db, now):
            self._follow_changes()
        local = dt.datetime.fromtimestamp(now, p.tz)
        today = local.date().isoformat()
        due = [learning_ends] if learning_ends is not None else []
        for name, at in (("train", p.train_at), ("purge", p.train_at), ("summary", self.cfg.alerts.summary_at)):
            at = parse_clock(at)
            if self.done.get(name) != today and (local.hour, local.minute) >= at:
                self.done[name] = today
                if acquire_lock(self.db, f"{name}:{today}", self.cfg.server.node_name, now, 2 * 86400):
                    self._run(name, now)
            day = local.date() + dt.timedelta(days=1 if self.done.get(name) == today else 0)
            due.append(dt.datetime.combine(day, dt.time(*at), p.tz).timestamp())
        return min(due)

    def _run(self, name, now):
        self._flush(now)
        if name == "train":
            proposals = train(self.cfg, self.db, now)
            log.info("daily training: %d account(s) changed", sum(1 for x in proposals if x.changes))
        elif name == "purge":
            log.info("daily purge: %s", purge(self.cfg, self.db, now, self.cfg.policy.retention_days * 86400))
        else:
            log.info("daily summary: %d account(s) with rejections", daily_summaries(self.cfg, self.db, self.alerts, now))
            self._flush(now)
        self._follow_changes()


# =============================================================================================
# 12. Replay: the real engine over historical CDRs with simulated time (backtesting)
# =============================================================================================

REPLAY_COLUMNS = ("time", "user", "domain", "number")
OPTIONAL_COLUMNS = ("source_ip", "user_agent", "concurrent_calls", "source_country", "label")


def read_cdrs(path):
    """The rows of a CDR file, sorted by time, each a tuple: (ts, time as written, user, domain,
    number, source_ip, user_agent, concurrent_calls or None, source_country, label)."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            return _cdr_rows(path, reader)
        except UnicodeDecodeError:
            raise UserError(not_utf8(path)) from None
        except csv.Error as exc:
            raise UserError(f"{path}:{reader.line_num}: {exc}") from None


def _cdr_rows(path, reader):
    header = [name.strip() for name in next(reader, [])]
    missing = [c for c in REPLAY_COLUMNS if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (header row required)")
    # an absent optional column reads field -1: the "" appended to every row
    pick = operator.itemgetter(*(header.index(c) if c in header else -1 for c in REPLAY_COLUMNS + OPTIONAL_COLUMNS))
    width = max(header.index(c) for c in REPLAY_COLUMNS) + 1
    rows = []
    # a CDR repeats its accounts and concurrent_calls values: each distinct one is checked once
    valid_users, valid_domains, concurrent_calls = set(), set(), {"": None}
    for fields in reader:
        if not fields:
            continue
        if len(fields) < width:
            raise UserError(f"{path}:{reader.line_num}: fewer fields than the header")
        fields += [""] * (len(header) - len(fields))
        fields.append("")
        when, user, domain, number, ip, ua, calls, source_country, label = map(str.strip, pick(fields))
        try:
            ts = dt.datetime.fromisoformat(when)
        except ValueError:
            ts = None
        if ts is None or ts.tzinfo is None:
            raise UserError(f"{path}:{reader.line_num}: time {when[:40]!r} is not ISO 8601 with offset")
        if calls not in concurrent_calls:
            if not (re.fullmatch(r"[0-9]{1,10}", calls) and int(calls) <= INT_MAX):
                raise UserError(f"{path}:{reader.line_num}: concurrent_calls {calls[:40]!r} is not a whole number "
                                f"from 0 to {INT_MAX}")
            concurrent_calls[calls] = int(calls)
        try:
            ts = timestamp_of(ts)
            if user not in valid_users:
                account_user(user)
                valid_users.add(user)
            if domain not in valid_domains:
                account_domain(domain)
                valid_domains.add(domain)
        except ValueError as exc:
            raise UserError(f"{path}:{reader.line_num}: {exc}") from None
        rows.append((ts, when, user, domain, number, ip, ua, concurrent_calls[calls], source_country, label.lower()))
    rows.sort(key=operator.itemgetter(0))  # stable: rows of the same second keep their order
    return rows


PARALLEL_REPLAY_ROWS = 20000  # below this, starting processes costs more than it saves


def replay(cfg, path, db_url=None, jobs=None):
    """Run the engine over a CDR file; returns the report as a dict.

    A replay into a fresh in-memory database runs as `jobs` processes (default: one per CPU for
    PARALLEL_REPLAY_ROWS rows or more), each over a share of the accounts with a database of its
    own. Accounts do not influence one another (counters, training, learning and alerts are all
    per account), so the merged report is the one a single process gives. A replay into a
    database given by URL runs in one process."""
    rows = read_cdrs(path)
    if jobs is None:
        jobs = (os.cpu_count() or 1) if len(rows) >= PARALLEL_REPLAY_ROWS else 1
    if db_url or jobs == 1 or not hasattr(os, "fork"):
        tally = replay_rows(cfg, rows, db_url)
    else:
        owners, shards = shard_by_domain(rows, jobs)
        tally = merge_tallies(in_processes(lambda shard: replay_rows(cfg, rows, None, owners, shard), list(range(shards))))
    return replay_report(tally, len(rows))


def shard_by_domain(rows, count):
    """Share the domains out among at most `count` shards, about as many rows in each: the
    accounts of a domain stay together, since training learns a domain's destinations from all
    of its accounts. Returns (the shard of each row, the number of shards)."""
    per_domain = {}
    for row in rows:
        key = row[3].lower()
        per_domain[key] = per_domain.get(key, 0) + 1
    count = max(1, min(count, len(per_domain), 255))
    loads, shard_of = [0] * count, {}
    for key, calls in sorted(per_domain.items(), key=lambda item: (-item[1], item[0])):
        shard = loads.index(min(loads))
        shard_of[key] = shard
        loads[shard] += calls
    return bytes(shard_of[row[3].lower()] for row in rows), count


def in_processes(work, items):
    """work(item) for each item, each but the first in a forked child that inherits `items` and
    sends its JSON result back through a pipe."""
    children = []
    for item in items[1:]:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:  # whatever happens, the child ends here and never returns into the caller's code
                os.close(read_end)
                try:
                    text = json.dumps({"result": work(item)})
                except BaseException as exc:
                    text = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
                with os.fdopen(write_end, "w", encoding="utf-8") as fh:
                    fh.write(text)
            finally:
                os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    try:
        results, errors = [work(items[0])], []
    except BaseException:
        for pid, read_end in children:
            os.kill(pid, signal.SIGTERM)
            os.close(read_end)
            os.waitpid(pid, 0)
        raise
    for pid, read_end in children:
        with os.fdopen(read_end, encoding="utf-8") as fh:
            text = fh.read()
        os.waitpid(pid, 0)
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {"error": "the worker process died"}
        if "error" in answer:
            errors.append(answer["error"])
        else:
            results.append(answer["result"])
    if errors:
        raise UserError(f"replay worker failed: {errors[0]}")
    return results


def replay_rows(cfg, rows, db_url=None, owners=None, shard=0):
    """The engine over read_cdrs() rows; returns the tally replay_report() reads. With `owners`
    (shard_by_domain), only the rows of `shard`'s accounts are decided, while the daily jobs
    still run at the times of all rows, as in a single process."""
    db = open_database(db_url or "sqlite://:memory:")
    alerts = AlertTally(cfg.alerts, cfg.policy.tz)
    engine = Engine(cfg, db, alerts, counters=None if db_url else PrivateCounters())
    if engine.first_enrolled is None and rows:
        engine.first_enrolled = rows[0][0]  # the installation starts with the CDR, in every shard alike (Engine.held)
    jobs = DailyJobs(cfg, db, engine)
    enforce = cfg.server.mode != "monitor"
    codes, rejected_accounts, legit_codes = {}, {}, {}
    fraud = fraud_blocked = legit = legit_blocked = 0
    episodes, open_episode = [], {}
    next_jobs = 0.0
    for index, (ts, when, user, domain, number, ip, ua, calls, source_country, label) in enumerate(rows):
        if ts >= next_jobs:
            next_jobs = jobs.run_due(ts)
        if owners is not None and owners[index] != shard:
            continue
        attempt = CallAttempt(user, domain, number, ip, ua, calls, ts, source_country=source_country)
        verdict = engine.decide(attempt, enforce=enforce)
        engine.record(verdict, "replay", 0.0)
        if len(engine.log_rows) >= 5000:
            engine.flush(ts)
        approved = verdict.code == APPROVED
        codes[verdict.code] = codes.get(verdict.code, 0) + 1
        account = f"{user}@{domain}"
        if not approved:
            per_code = rejected_accounts.setdefault(account, {})
            per_code[verdict.code] = per_code.get(verdict.code, 0) + 1
        if label == "fraud":
            fraud += 1
            fraud_blocked += not approved
            episode = open_episode.get(account)
            if episode is None:
                episode = open_episode[account] = {"account": account, "start": when, "calls": 0,
                                                   "leaked_before_first_block": None, "_leaked": 0, "_row": index}
                episodes.append(episode)
            episode["calls"] += 1
            if episode["leaked_before_first_block"] is None:
                if approved:
                    episode["_leaked"] += 1
                else:
                    episode["leaked_before_first_block"] = episode["_leaked"]
        elif label == "legit":
            legit += 1
            legit_blocked += not approved
            if not approved:
                legit_codes[verdict.code] = legit_codes.get(verdict.code, 0) + 1
            open_episode.pop(account, None)
    engine.flush()
    db.close()
    return {"codes": codes, "rejected_accounts": rejected_accounts, "fraud": fraud, "fraud_blocked": fraud_blocked,
            "legit": legit, "legit_blocked": legit_blocked, "legit_codes": legit_codes, "episodes": episodes,
            "alerts": alerts.counts}


def merge_tallies(tallies):
    merged = {"codes": {}, "rejected_accounts": {}, "fraud": 0, "fraud_blocked": 0, "legit": 0, "legit_blocked": 0,
              "legit_codes": {}, "episodes": [], "alerts": {}}
    for tally in tallies:
        for key in ("codes", "legit_codes", "alerts"):
            for name, count in tally[key].items():
                merged[key][name] = merged[key].get(name, 0) + count
        merged["rejected_accounts"].update(tally["rejected_accounts"])
        for key in ("fraud", "fraud_blocked", "legit", "legit_blocked"):
            merged[key] += tally[key]
        merged["episodes"] += tally["episodes"]
    merged["episodes"].sort(key=operator.itemgetter("_row"))
    return merged


def replay_report(tally, rows):
    episodes = tally["episodes"]
    for episode in episodes:
        del episode["_row"]
        leaked = episode.pop("_leaked")
        episode["blocked"] = episode["leaked_before_first_block"] is not None
        if not episode["blocked"]:
            episode["leaked_before_first_block"] = leaked
    fraud, fraud_blocked, legit, legit_blocked = (tally[k] for k in ("fraud", "fraud_blocked", "legit", "legit_blocked"))
    return {"rows": rows, "codes": dict(sorted(tally["codes"].items())),
            "rejected_accounts": dict(sorted(tally["rejected_accounts"].items())),
            "fraud_calls": fraud, "fraud_blocked": fraud_blocked,
            "fraud_blocked_pct": round(100.0 * fraud_blocked / fraud, 2) if fraud else None,
            "legit_calls": legit, "legit_blocked": legit_blocked,
            "legit_blocked_pct": round(100.0 * legit_blocked / legit, 2) if legit else None,
            "legit_blocked_by_code": dict(sorted(tally["legit_codes"].items(), key=lambda item: (-item[1], item[0]))),
            "episodes": episodes, "alerts": dict(sorted(tally["alerts"].items()))}


# =============================================================================================
# 13. SIP service: sans-IO behaviour of a redirect server, from bytes in to bytes out
# =============================================================================================

ALLOWED_METHODS = "INVITE, ACK, CANCEL, OPTIONS, BYE"
SIP_METHODS = {"INVITE", "ACK", "CANCEL", "OPTIONS", "BYE", "REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO",
               "REFER", "MESSAGE", "UPDATE", "PRACK"}  # others are counted as "other" in /metrics
VERDICT_PREFIX = re.compile(r"(?:A00|R\d\d)")
TRYING_DELAY = 0.1  # a verdict still pending after this gets a 100 Trying (RFC 3261 §17.2.1: 200 ms at most)


IDENTITY_HEADER = "P-tfps"
LEGACY_IDENTITY_HEADERS = ("X-tfps", "P-Received", "P-Source", "P-UA", "P-Calls")


def call_identity(msg, uri, from_addr, packet_ip, now, legacy=False):
    """The CallAttempt a request describes: P-tfps (added by the nearest proxy), with
    `legacy` also the X-tfps/P-* headers, then the From URI, the packet's source and the
    User-Agent header. A caller must not choose the identity that is checked: an identity
    header that appears twice, or that is not UTF-8, leaves its defect for rule R12."""
    user, domain = from_addr.uri.user, from_addr.uri.host
    ip, ua, calls = packet_ip, msg.header("user-agent") or "", None
    names = (IDENTITY_HEADER,) + (LEGACY_IDENTITY_HEADERS if legacy else ())
    keys = [key for key, _ in msg.headers]
    defect = next((f"more than one {name} header" for name in names if keys.count(name.lower()) > 1), "")
    defect = defect or next((f"bytes that are not UTF-8 in the {name} header" for name in names
                             if UNDECODABLE.search(msg.header(name.lower()) or "")), "")
    if legacy:
        x_tfps = msg.header("x-tfps")
        if x_tfps and "@" in x_tfps:
            user, _, domain = x_tfps.strip().partition("@")
        ip = msg.header("p-received") or msg.header("p-source") or ip
        ua = msg.header("p-ua") or ua
        calls = msg.header("p-calls") or calls
    p_tfps = msg.header(IDENTITY_HEADER.lower())
    if p_tfps is not None:
        fields = p_tfps.split(";")
        if len(fields) > 5:  # a User-Agent with ';' in it: the count is always the last field
            fields = fields[:3] + [";".join(fields[3:-1]), fields[-1]]
        fields += [""] * (5 - len(fields))
        user, domain = fields[0].strip() or user, fields[1].strip() or domain
        ip, ua, calls = fields[2].strip() or ip, fields[3].strip() or ua, fields[4].strip() or calls
    calls = str(calls).strip() if calls is not None else ""
    return CallAttempt(user=user, domain=domain, number=dialed_number(uri.user), source_ip=without_port(ip.strip()),
                       user_agent=ua.strip(), concurrent_calls=int(calls) if CALL_COUNT_RE.fullmatch(calls) else None,
                       ts=now, call_id=msg.header("call-id") or "", from_uri=from_addr.raw_uri, defect=defect)


def without_port(ip):
    """'192.0.2.1:5060' -> '192.0.2.1', '[2001:db8::1]:5060' -> '2001:db8::1'; dialplans pass both forms."""
    m = ADDRESS_WITH_PORT_RE.fullmatch(ip)
    return (m.group(1) or m.group(2)) if m else ip


HEADER_BREAKS = re.compile(r"[\r\n\x00]+")


def header_safe(text):
    return HEADER_BREAKS.sub(" ", text)[:300]


def top_via_value(via, addr):
    """The top Via as echoed in responses, with received and rport (RFC 3261 §18.2.1, RFC 3581)."""
    value = via.raw
    if "rport" in via.params and not via.params["rport"]:
        value = EMPTY_RPORT_RE.sub(f";rport={addr[1]}", value, count=1)
    if via.host != addr[0] or "rport" in via.params:
        value += f";received={addr[0]}"
    return value


def response_dest(endpoint, addr, via):
    """Where responses go: over UDP always back to the packet's source address and port, as
    with rport (RFC 3581). The Via sent-by port and maddr are not obeyed: a forged request
    must not direct answers at a third party. `endpoint` is opaque here but for its transport."""
    if endpoint.transport == "tcp":
        return endpoint, (addr[0], via.port or 5060)  # where to connect should this connection close
    return endpoint, addr


class PendingInvite:
    """Application state of an INVITE transaction while its verdict is computed."""

    __slots__ = ("msg", "vias", "attempt", "started", "done", "from_host")

    def __init__(self, msg, vias, attempt, started, from_host):
        self.msg = msg
        self.vias = vias
        self.attempt = attempt
        self.started = started  # when the request arrived: latencies include its wait
        self.done = False
        self.from_host = from_host


CONTACT_USER_SAFE = "-_.!~*'()&=+$,;?/"  # left as they are in the user of a 302's Contact, with letters and digits
PLAIN_CONTACT_USER = re.compile(f"[A-Za-z0-9{re.escape(CONTACT_USER_SAFE)}]*")  # nothing to quote: most numbers


INVITE_REQUESTS = ("sip_requests", (("method", "INVITE"),))  # the Metrics key
SHED_ANSWERS = 16384  # R98 answers kept for retransmissions: about 2 s of them at 9,000 a second


@dataclass
class ShedInvite:
    """An INVITE that SipService answered R98 itself, without a transaction (see _shed)."""
    verdict: Verdict
    waited: float   # seconds between its arrival and its turn: its latency


def overload_verdict(settings, attempt, waited, crowded=False):
    """R98 for a request (an INVITE, an HTTP check) that waited longer than [server]
    overload_after before its turn, or that was read from a `crowded` receive queue (more than
    half full, until drained to an eighth: the next requests would be dropped), or None. Past the
    sustainable rate a late answer is worse than a quick R98: the PBX times out and treats TFPS
    as down. `overload` chooses what R98 answers; monitor mode approves. `attempt` is None for
    an INVITE, answered without reading its identity."""
    limit = settings.overload_after
    if not limit or (waited <= limit and not crowded):
        return None
    reason = (f"TFPS overloaded: request waited {waited:.2f} s > overload_after {limit:g} s" if waited > limit else
              f"TFPS overloaded: receive queue crowded (request waited {waited:.2f} s)")
    if settings.overload == "approve" or settings.mode == "monitor":
        return Verdict(APPROVED, f"{OVERLOADED} {reason}; approved", attempt, would=Rejection(OVERLOADED, reason))
    return Verdict(OVERLOADED, reason, attempt)


class SipService:
    """What a redirect server says, and when, without sockets, threads or a clock.

    `receive(data, endpoint, addr, now, arrived, crowded)` takes one request (a datagram, or a
    message a StreamFramer cut from a stream) that arrived at `arrived` (default `now`), read
    from a crowded receive queue if `crowded` (receive_queue_crowded), and returns
    (sends, invite): the (dest, bytes) to send now, and the INVITE transaction that needs a
    verdict, or None. Its `data` is a PendingInvite whose `attempt` the owner decides (from
    any thread, in any time), then hands back with `answer(tx, verdict, now)`. An INVITE that
    waited longer than overload_after, or came from a crowded queue while overload_after is set,
    is answered R98 at once: `invite` is then a ShedInvite
    for the owner to count, unless `exempt(number)` (emergency calls) gives it the full path.
    `poll(now)` fires the timers (retransmissions, 100 Trying, the end of transactions);
    `next_deadline()` says when it is due again. `dest` is (endpoint, address); of an
    endpoint this class only reads `transport`."""

    def __init__(self, settings, metrics=None, exempt=None):
        self.settings = settings  # the [server] section
        self.metrics = metrics or Metrics()  # requests by method, responses by status
        self.exempt = exempt or (lambda number: False)
        self.transactions = TransactionLayer(settings.max_transactions)
        # INVITE transaction key -> (dest, bytes) of the latest R98 answers, oldest first; ordered so
        # that dropping the oldest costs the same however many went before (a dict's first key
        # is found past the slots of the keys deleted before it)
        self.shed_answers = OrderedDict()
        self.shed_last = 0.0      # when the latest was given
        self.trying = deque()     # (when, key, serial) of INVITEs that may need a 100 Trying, in time order
        self._resent = {}         # source IP -> (second, bytes retransmitted to it in that second)
        self.counters = {"malformed": 0, "overflow": 0, "resend_dropped": 0}

    def configure(self, settings):
        """A reloaded [server] section; transactions in progress keep their state."""
        self.settings = settings
        self.transactions.limit = settings.max_transactions

    # -- requests in ----------------------------------------------------------------------------

    def receive(self, data, endpoint, addr, now, arrived=None, crowded=False):
        reliable = endpoint.transport == "tcp"
        if data[:4] == b"ACK " and (self.transactions.absorb_ack(data, reliable, now) or acknowledges_stateless_answer(data)):
            return [], None
        arrived = now if arrived is None else min(arrived, now)
        limit = self.settings.overload_after
        overloaded = bool(limit) and (crowded or now - arrived > limit)
        if data[:7] == b"INVITE ":
            if self.shed_answers and now - self.shed_last > 64 * T1:  # no INVITE is retransmitted longer (Timer B)
                self.shed_answers.clear()
            shed = overloaded and self._shed_plain(data, endpoint, addr, now, now - arrived, crowded)
            if shed:
                return shed
            answered = self.shed_answers and self.shed_answers.get(TransactionLayer.invite_key(data))
            if answered:  # a retransmission of an INVITE answered R98: the same answer, no second verdict
                return self._within_budget([answered], now), None
        try:
            msg = parse_message(data)
            if not msg.is_request:
                return [], None  # a redirect server sends no requests, so responses match nothing
            self.metrics.inc("sip_requests", method=msg.method if msg.method in SIP_METHODS else "other")
            vias = msg.vias()
        except SipError:
            self.counters["malformed"] += 1
            return [], None
        if not vias:
            self.counters["malformed"] += 1
            return [], None
        top = vias[0]
        dest = response_dest(endpoint, addr, top)
        via_values = [top_via_value(top, addr)] + [v.raw for v in vias[1:]]
        try:
            uri, from_addr = validate_request(msg)
        except SipError as exc:
            self.counters["malformed"] += 1
            if msg.method == "ACK":
                return [], None
            return [(dest, self._stateless(msg, exc.status, exc.reason, via_values))], None
        if msg.method == "INVITE" and overloaded:
            shed = self._shed(msg, self.transactions.key(msg, top), dest, via_values, uri.user,
                              from_addr.uri.host or uri.host, now, now - arrived, crowded)
            if shed:
                return shed
        try:
            tx, repeats = self.transactions.receive(msg, top, dest, reliable, now)
        except TransactionTableFull:
            return [self._refuse_overflow(msg, dest, via_values)], None
        sends = self._within_budget(repeats, now)
        if tx is None:
            return sends, None
        required = unsupported_extensions(msg) if msg.method in ("INVITE", "OPTIONS", "BYE") else []
        if required:
            return self._respond(tx, msg, via_values, 420, now, headers=[("Unsupported", ", ".join(required))]), None
        if msg.method == "INVITE":
            return self._invite(tx, msg, uri, from_addr, via_values, addr, now, arrived)
        if msg.method == "OPTIONS":
            return self._respond(tx, msg, via_values, 200, now, headers=[("Allow", ALLOWED_METHODS),
                                                                      ("Accept", "application/sdp")]), None
        if msg.method == "CANCEL":
            return self._cancel(tx, msg, top, via_values, now), None
        if msg.method == "BYE":
            return self._respond(tx, msg, via_values, 481, now), None
        return self._respond(tx, msg, via_values, 405, now, headers=[("Allow", ALLOWED_METHODS)]), None

    def reject_stream(self, buffer, exc, endpoint, addr):
        """A stream that cannot be framed: the answer to its first message, if it can be read;
        the owner then closes the connection."""
        self.counters["malformed"] += 1
        try:
            msg = parse_message(bytes(buffer[:8192]))
            if msg.is_request and msg.method != "ACK":
                vias = msg.vias()
                via_values = [top_via_value(vias[0], addr)] + [v.raw for v in vias[1:]]
                return [((endpoint, addr), self._stateless(msg, exc.status, exc.reason, via_values))]
        except (SipError, IndexError):
            pass
        return []

    @staticmethod
    def _refusal(msg, uri_user):
        """The status refusing an INVITE before any verdict, or None."""
        user = dialed_number(uri_user)
        return (483 if (msg.header("max-forwards") or "70").lstrip("0") == "" else
                484 if not user else 482 if VERDICT_PREFIX.match(user) else None)

    def _invite(self, tx, msg, uri, from_addr, vias, addr, now, arrived):
        refusal = self._refusal(msg, uri.user)
        if refusal:
            return self._respond(tx, msg, vias, refusal, now), None
        attempt = call_identity(msg, uri, from_addr, addr[0], 0.0, self.settings.legacy_headers)
        tx.data = PendingInvite(msg, vias, attempt, arrived, from_addr.uri.host or uri.host)
        self.trying.append((now + TRYING_DELAY, tx.key, tx.serial))
        return [], tx

    def _shed(self, request, key, dest, vias, uri_user, from_host, now, waited, crowded):
        """An INVITE that waited longer than overload_after, or was read from a `crowded` queue,
        answered R98 at once and without a transaction: past the sustainable rate each answer
        must cost as little as it can. Its ACK is told by the To tag and dropped unread; the
        latest SHED_ANSWERS answers are kept for retransmissions, which get the same bytes (a
        later one is a request of its own). Returns (sends, ShedInvite), or None for the full
        path: a retransmission of an INVITE held in a transaction, one to refuse, an exempt number.
        `request` is a SipMessage, or a PlainInvite (_shed_plain)."""
        number = dialed_number(uri_user)
        if (key in self.transactions.table or self._refusal(request, uri_user) or unsupported_extensions(request)
                or self.exempt(number)):
            return None
        verdict = overload_verdict(self.settings, None, waited, crowded)
        status, headers, _summary = self._verdict_response(verdict, number, from_host)
        self.metrics.inc_key(("sip_responses", (("status", status),)))
        data = build_response(request, status, vias=vias, to_tag=stateless_tag(), headers=headers,
                              server=self.settings.server_header)
        if len(self.shed_answers) >= SHED_ANSWERS:
            self.shed_answers.popitem(last=False)
        self.shed_answers[key] = (dest, data)
        self.shed_last = now
        return [(dest, data)], ShedInvite(verdict, waited)

    def _shed_plain(self, data, endpoint, addr, now, waited, crowded):
        """_shed for an INVITE that read_plain_invite reads, before parse_message: the common
        INVITE costs a third less. Also answers its retransmissions. None for the full path."""
        plain = read_plain_invite(data)
        if plain is None:
            return None
        top = plain.vias[0]
        key = self.transactions.key(plain, top)
        answered = self.shed_answers.get(key)
        if answered:
            return self._within_budget([answered], now), None
        vias = [top_via_value(top, addr)] + [via.raw for via in plain.vias[1:]]
        shed = self._shed(plain, key, response_dest(endpoint, addr, top), vias, plain.user, plain.from_host,
                          now, waited, crowded)
        if shed:  # else the full path counts it
            self.metrics.inc_key(INVITE_REQUESTS)
        return shed

    def _cancel(self, tx, msg, top, vias, now):
        invite = self.transactions.find_invite(msg, top)
        if invite is None:
            return self._respond(tx, msg, vias, 481, now)
        sends = self._respond(tx, msg, vias, 200, now)
        pending = invite.data
        if not invite.answered and isinstance(pending, PendingInvite) and not pending.done:
            pending.done = True
            sends += self._respond(invite, pending.msg, pending.vias, 487, now)
            log.info("call-id=%s cancelled before its verdict", pending.attempt.call_id)
        return sends

    # -- verdicts in ----------------------------------------------------------------------------

    @staticmethod
    def awaits_verdict(tx):
        """The INVITE still wants its verdict: not answered, cancelled or ended meanwhile."""
        return isinstance(tx.data, PendingInvite) and not tx.data.done

    def pending(self):
        """The INVITE transactions still waiting for their verdicts."""
        return [tx for tx in self.transactions.table.values() if self.awaits_verdict(tx)]

    def answer(self, tx, verdict, now):
        """The final response to an INVITE from its verdict (None: there is none to give).
        Returns (sends, summary of the answer for the call log, latency in ms), or None when
        the INVITE no longer wants it."""
        if not self.awaits_verdict(tx):
            return None
        pending = tx.data
        pending.done = True
        latency = (now - pending.started) * 1000
        if verdict is None:  # the peer learns that there is no verdict, the log says why
            sends = self._respond(tx, pending.msg, pending.vias, 500, now, "TFPS Database Unavailable",
                                  headers=[("X-TFPS-Reason", "no verdict: database unavailable")])
            return sends, "500", latency
        status, headers, summary = self._verdict_response(verdict, pending.attempt.number, pending.from_host)
        return self._respond(tx, pending.msg, pending.vias, status, now, headers=headers), summary, latency

    def _verdict_response(self, verdict, number, from_host):
        headers = [("X-TFPS-Code", verdict.code), ("X-TFPS-Reason", header_safe(verdict.reason))]
        if self.settings.mode == "failover":
            status = 503 if verdict.approved else 603
            return status, headers, f"{status}"
        host = self.settings.redirect_host or from_host
        host = f"[{host}]" if ":" in host else host
        user = number if PLAIN_CONTACT_USER.fullmatch(number) else urllib.parse.quote(
            number, safe=CONTACT_USER_SAFE, errors="surrogateescape")
        return 302, [("Contact", f"<sip:{verdict.code}{user}@{host}>")] + headers, f"302 {verdict.code}"

    # -- timers ---------------------------------------------------------------------------------

    def poll(self, now):
        sends = self._within_budget(self.transactions.poll(now), now)
        while self.trying and self.trying[0][0] <= now:
            _, key, serial = self.trying.popleft()
            tx = self.transactions.table.get(key)
            if tx is not None and tx.serial == serial and self.awaits_verdict(tx) and not tx.answered:
                sends += self._respond(tx, tx.data.msg, tx.data.vias, 100, now)
        return sends

    def next_deadline(self):
        deadlines = [d for d in (self.transactions.next_deadline(), self.trying[0][0] if self.trying else None)
                     if d is not None]
        return min(deadlines) if deadlines else None

    # -- responses out --------------------------------------------------------------------------

    def _respond(self, tx, msg, vias, status, now, reason=None, headers=()):
        data = build_response(msg, status, reason, vias=vias, to_tag=tx.to_tag if status > 100 else None, headers=headers,
                              server=self.settings.server_header)
        self.metrics.inc_key(("sip_responses", (("status", status),)))
        if status >= 200:
            tx.data = None  # the request is answered: only the response bytes stay, until Timer H or the ACK
        return self.transactions.respond(tx, status, data, now)

    def _stateless(self, msg, status, reason, vias, headers=()):
        self.metrics.inc("sip_responses", status=status)
        return build_response(msg, status, reason, vias=vias, to_tag=stateless_tag(), headers=headers,
                              server=self.settings.server_header)

    def _refuse_overflow(self, msg, dest, vias):
        """An answer without a transaction: the table is full (a flood, or verdicts far too slow).
        500, not 503: in failover mode 503 means approved."""
        self.counters["overflow"] += 1
        if self.counters["overflow"] % 10000 == 1:
            log.error("%d transactions held (max_transactions): new requests answered 500 (%d so far)",
                      len(self.transactions.table), self.counters["overflow"])
        return dest, self._stateless(msg, 500, "TFPS Overloaded", vias, headers=[("Retry-After", "5")])

    def _within_budget(self, repeats, now):
        """Retransmitted responses, within resend_bytes_per_source per source and second: a
        forged source must not turn retransmissions into a flood aimed at a third party."""
        sends = []
        second = int(now)
        for dest, data in repeats:
            ip = dest[1][0]
            when, spent = self._resent.get(ip, (0, 0))
            if when != second:
                if len(self._resent) > 65536:
                    self._resent.clear()
                when, spent = second, 0
            if spent + len(data) > self.settings.resend_bytes_per_source:
                self.counters["resend_dropped"] += 1
                continue
            self._resent[ip] = (second, spent + len(data))
            sends.append((dest, data))
        return sends


# =============================================================================================
# 14. Server: one selectors event loop that moves bytes and timers for UDP and TCP
# =============================================================================================

UNTRUSTED_LOG_LINES = 20
RESERVED_FILES = 64  # descriptors kept for the database, logs, lookups and alerts


FULL_COLLECTION_INTERVAL = 600.0  # seconds between a server's full garbage collections
# Seconds between two tries of an unavailable database at most: until a try succeeds, quotas
# count from zero in memory (failure = continue), so a longer pause would let an account run up
# its limits again well after the database is back; a connection every 2 s costs a database little.
RECONNECT_PAUSE = 2.0
# Seconds between two write-backs of SQLite's write-ahead log by a server: about 1 MB of log at
# 1,000 calls/s, written back on a thread of its own (Database.tune_for_serving)
WAL_WRITE_BACK_INTERVAL = 1.0


def keep_full_collections_off_the_request_path():
    """A full garbage collection walks every live object (transactions, counter windows): 60-80 ms
    at a few thousand calls a second on a small VM, which every call arriving meanwhile waits out.
    Python starts one each time the objects that survived young collections grow by a quarter,
    every few seconds under load; the request path leaves no reference cycles for it to find.
    Young collections go on as before; the owner runs a full one every FULL_COLLECTION_INTERVAL.
    What is loaded now lives as long as the process and is kept out of collections altogether."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, INT_MAX)


OVERLOAD_NOTICE_INTERVAL = 60.0
MAX_KERNEL_WAIT = 64.0  # a wall clock stepped forward must not make a datagram look older than any transaction lives
# Linux asm-generic value; Python's socket module does not name it
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else 0)
TIMESTAMP_SPACE = socket.CMSG_SPACE(16)  # struct timespec
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if sys.platform.startswith("linux") else 0)
RECEIVE_QUEUE_USE = struct.Struct("=II")  # the first two of the kernel's sk_meminfo: bytes queued, bytes allowed


def kernel_arrival(ancillary, read_at):
    """When a datagram read at `read_at` (monotonic) reached the socket, from its SO_TIMESTAMPNS
    (wall clock) if the kernel gave one: time spent in the receive buffer counts as waiting."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            stamp = int.from_bytes(data[:8], sys.byteorder, signed=True) + int.from_bytes(data[8:16], sys.byteorder, signed=True) / 1e9
            return read_at - min(max(time.time() - stamp, 0.0), MAX_KERNEL_WAIT)
    return read_at


def tcp_connections_allowed():
    """tcp_max_connections = auto: what the open-file limit leaves beside RESERVED_FILES."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 16 if soft == resource.RLIM_INFINITY else max(8, soft - RESERVED_FILES)


RECEIVE_BUFFER = 4 << 20             # bytes of requests a UDP listener's kernel queue holds: room for bursts
SMALLEST_RECEIVE_BUFFER = 256 << 10
RECEIVE_QUEUE_PERIOD = 0.25          # seconds between two looks at how long requests waited in the kernel queue


class ReceiveQueueBound:
    """The size of a UDP listener's kernel receive buffer, kept to what the server answers in
    time. The kernel's queue is first in, first out: past the sustainable rate a buffer holding
    seconds of requests makes every request wait seconds, so that every INVITE is answered R98,
    late, and none is checked. When the requests read in a period waited longer than twice
    overload_after, the buffer shrinks in proportion: the kernel drops the excess (the PBX
    retransmits it after T1) and what is read is fresh enough for a real verdict. Once they wait
    less than half of overload_after it doubles, back to RECEIVE_BUFFER for bursts."""

    def __init__(self, largest=RECEIVE_BUFFER, smallest=SMALLEST_RECEIVE_BUFFER):
        self.largest, self.smallest = largest, smallest
        self.size = largest
        self.longest_wait = 0.0  # seconds, of the requests read since the last resize

    def resize(self, overload_after):
        """The size for the next period, or None to keep the current one."""
        waited, self.longest_wait = self.longest_wait, 0.0
        if not overload_after:
            size = self.largest
        elif waited > 2 * overload_after:
            size = max(self.smallest, int(self.size * 2 * overload_after / waited))
        elif waited < overload_after / 2:
            size = min(self.largest, self.size * 2)
        else:
            size = self.size
        if size == self.size:
            return None
        self.size = size
        return size


def receive_queue_crowded(sock, was_crowded=False):
    """The socket's kernel receive queue is crowded: more than half full, or, `was_crowded` at
    the last look, not yet drained to an eighth. Past the sustainable rate the queue fills before
    its requests have waited overload_after (a 4 MB buffer holds about 0.3 s of INVITEs and ACKs
    at 12,000 calls/s), and what does not fit is dropped, answered only after the PBX's
    retransmission 500 ms later, or never: the INVITEs read from a crowded queue are answered R98
    at once. Were they answered R98 only while it is more than half full, the queue would stay at
    half, and a stall of the loop of a tenth of a second would fill the rest (30,000 calls/s)."""
    try:
        queued, allowed = RECEIVE_QUEUE_USE.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, RECEIVE_QUEUE_USE.size))
    except (OSError, struct.error):  # no SO_MEMINFO here
        return False
    return (8 if was_crowded else 2) * queued > allowed


class UdpEndpoint:
    def __init__(self, sock, number=0):
        self.sock = sock
        self.number = number  # among the server's UDP listeners
        self.transport = "udp"
        self.receive_buffer = ReceiveQueueBound()  # its size, by how long requests wait in it
        self.crowded = False  # its kernel queue at the last read (receive_queue_crowded)

    def send(self, data, addr):
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)


class TcpConnection:
    def __init__(self, sock, addr, max_size, now):
        self.sock = sock
        self.addr = addr
        self.framer = StreamFramer(max_size)
        self.outbuf = bytearray()
        self.last_active = now
        self.closed = False
        self.connecting = False  # an outgoing connection whose connect() has not completed
        self.transport = "tcp"

    def send(self, data, _addr=None):
        if self.closed:
            return
        if not self.outbuf and not self.connecting:
            try:
                sent = self.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.closed = True
                return
            data = data[sent:]
        self.outbuf += data


DEFAULT_LEASE = 32  # quota calls a server claims at a time when [database] quota_lease = auto


def server_workers(cfg):
    return cfg.server.workers or usable_cpus()


# Read once per process: the supervisor and every worker it forks, restarted ones too, must count
# the same workers (whose spools are orphans, how the sockets are shared) though an operator may
# change the quota while they run.
@functools.cache
def usable_cpus(proc_cgroup="/proc/self/cgroup", cgroup_root="/sys/fs/cgroup"):
    """The CPUs this process can keep busy: those its affinity mask allows (taskset, systemd's
    CPUAffinity=, a container's cpuset), fewer where a cgroup v2 CPU quota on its cgroup or a
    parent's (systemd's CPUQuota=, docker --cpus) allows less, rounded up. os.cpu_count() counts
    every CPU of the machine, and workers beyond these would only take turns on them."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open(proc_cgroup, encoding="utf-8", errors="surrogateescape") as fh:  # cgroup names are any bytes
            group = next((line[4:].strip().strip("/") for line in fh if line.startswith("0::/")), None)
    except (OSError, ValueError):
        group = None
    while group is not None:  # from the process's cgroup up to the root (cgroup v2 only)
        try:
            with open(os.path.join(cgroup_root, group, "cpu.max"), encoding="ascii") as fh:
                quota, period = fh.read().split()[:2]
            if quota != "max" and int(quota) > 0 and int(period) > 0:
                cpus = min(cpus, -(-int(quota) // int(period)))
        except (OSError, ValueError):
            pass  # no CPU controller at this level, or no quota
        group = None if not group else os.path.dirname(group)
    return max(1, cpus)


def orphan_spools(cfg, worker):
    """Spool files of workers that this configuration no longer runs, for the one process or
    the first worker to write at start: after `[server] workers` was changed."""
    if worker not in (None, 0):
        return []
    base = spool_path(cfg)
    directory, name = os.path.split(base)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    workers = 0 if worker is None else server_workers(cfg)
    numbered = (re.fullmatch(re.escape(name) + r"\.(\d+)(?:\.replay)?", entry) for entry in names)
    orphans = sorted({f"{base}.{m.group(1)}" for m in numbered if m and int(m.group(1)) >= workers})
    return orphans + ([base] if worker == 0 and (os.path.exists(base) or os.path.exists(base + ".replay")) else [])


def lease_block(cfg):
    """Quota calls claimed at a time. A server leases unless told not to: on MySQL a verdict then
    waits on no database round trip, and on SQLite it holds no group transaction, which would
    keep the file locked from other workers and from the call log thread: the call log would be
    written on the event loop, 15-20 ms a flush at 2,000 calls/s that every call arriving
    meanwhile waits out."""
    return DEFAULT_LEASE if cfg.database.quota_lease is None else cfg.database.quota_lease


def listening_socket(item, reuse_port=False):
    """A socket bound to one [server] listen item (transport, host, port); UserError if it cannot be."""
    transport, host, port = item
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    if transport == "tcp":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {format_listen(item)}: {exc.strerror}"
                        + (" (another TFPS or SIP server runs there?)" if exc.errno == errno.EADDRINUSE else "")) from None
    return sock


def probe_listeners(listen):
    """Bind every listen item without SO_REUSEPORT and let go: fails when anybody holds one, so
    that workers sharing the port never join another server's group silently."""
    for item in listen:
        listening_socket(item).close()


FROM_URI = re.compile(rb"^(?:from|f)[ \t]*:[^\r\n]*?(sips?:[^>;?\s]+)", re.I | re.M)
# A handed-over datagram: when it arrived (monotonic), the peer's port, the listener, the lengths of
# the peer's address and of the datagram; then the address and the datagram.
HANDOFF_HEADER = struct.Struct("!dHHBI")
HANDOFF_BATCH = 32768  # bytes of datagrams for one worker sent together: one wake-up of it, not one each
# UDP answers of one batch of requests sent together, this many at a time at most. Sent one by one
# between verdicts, each woke the PBX's process anew (15-25 µs of the loop's CPU on loopback, 6-8
# µs in a group); an answer waits for the verdicts of at most this many others (about 1 ms).
UDP_SEND_GROUP = 8


# What the From URI of a UDP request hashes to its worker with: the sum of its first 32 bytes,
# each with bit 0x20 set (letters in lower case), modulo the workers. The kernel computes the
# same in the program that steers each datagram to the socket of its worker (steering_program).
STEERED_URI_BYTES = 32
STEERING_CASE_FOLD = bytes(b | 0x20 for b in range(256))
STEERING_WINDOW = 400  # bytes of a datagram in which the program looks for its From header
SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
BPF_SLOTS = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k


def uri_worker(uri, workers):
    """The worker of a From URI (bytes, as FROM_URI reads it)."""
    return sum(uri[:STEERED_URI_BYTES].translate(STEERING_CASE_FOLD)) % workers


def steering_program(workers):
    """A classic BPF program for SO_ATTACH_REUSEPORT_CBPF that picks, for a UDP datagram, the
    socket of the worker its From URI hashes to (uri_worker), the workers' sockets having joined
    the port's group in their order. It looks for "\\nFrom:" (any case) in the first
    STEERING_WINDOW bytes, then for "sip:" or "sips" in the 24 bytes after it, and sums up to
    STEERED_URI_BYTES bytes up to the first of > ; ? or a byte up to a space. Where it finds no
    From header (compact form, too far, no SIP), it returns `workers` and the kernel hashes the
    source address as without a program; the worker that reads such a datagram hands it over as
    before. Classic BPF has no loops: every position is a block of its own (4,096 at most)."""
    code = []

    def op(kind, k=0, jt=0, jf=0):
        code.append((kind, jt, jf, k))

    LD_W_ABS, LD_H_ABS, LD_W_IND, LD_B_IND, LD_MEM, LD_IMM = 0x20, 0x28, 0x40, 0x50, 0x60, 0x00
    LDX_MEM, LDX_IMM, ST, STX, AND, OR, ADD, ADD_X, MOD = 0x61, 0x01, 0x02, 0x03, 0x54, 0x44, 0x04, 0x0c, 0x94
    JA, JEQ, JGT = 0x05, 0x15, 0x25
    TAX, TXA, RET_K, RET_A = 0x07, 0x87, 0x06, 0x16
    found_from, found_scheme = [], []  # the JA instructions to point at the blocks below
    for i in range(STEERING_WINDOW):  # "\nFRO" then "M:", bit 0x20 cleared in the letters
        op(LD_W_ABS, i)
        op(AND, 0xFFDFDFDF)
        op(JEQ, 0x0A46524F, 0, 5)
        op(LD_H_ABS, i + 4)
        op(AND, 0xDFFF)
        op(JEQ, 0x4D3A, 0, 2)
        op(LDX_IMM, i + 6)
        found_from.append(len(code))
        op(JA)
    op(RET_K, workers)
    scheme_scan = len(code)
    for k in range(24):  # "sip:" or "sips", bit 0x20 set in the letters
        op(LD_W_IND, k)
        op(OR, 0x20202000)
        op(JEQ, 0x7369703A, 1, 0)
        op(JEQ, 0x73697073, 0, 4)
        op(TXA)
        op(ADD, k)
        op(TAX)
        found_scheme.append(len(code))
        op(JA)
    op(RET_K, workers)
    hashing = len(code)
    op(LD_IMM, 0)
    op(ST, 0)
    op(STX, 1)
    ends = []
    for j in range(STEERED_URI_BYTES):
        op(LDX_MEM, 1)
        op(LD_B_IND, j)
        op(JEQ, ord(">"), 3, 0)
        op(JEQ, ord(";"), 2, 0)
        op(JEQ, ord("?"), 1, 0)
        op(JGT, 0x20, 1, 0)
        ends.append(len(code))
        op(JA)
        op(OR, 0x20)
        op(TAX)
        op(LD_MEM, 0)
        op(ADD_X)
        op(ST, 0)
    end = len(code)
    op(LD_MEM, 0)
    op(MOD, workers)
    op(RET_A)
    for at, target in [(at, scheme_scan) for at in found_from] + [(at, hashing) for at in found_scheme] + [(at, end) for at in ends]:
        kind, jt, jf, _ = code[at]
        code[at] = (kind, jt, jf, target - at - 1)
    return code


def bind_worker_sockets(listen, workers):
    """Each worker's UDP sockets, bound by the supervisor in the workers' order, so that worker k's
    socket is at index k of its port's SO_REUSEPORT group (steering_program) however the workers
    start or are started again, and the group steered by caller."""
    sockets = [[] for _ in range(workers)]
    for item in listen:
        if item[0] != "udp":
            continue
        group = []
        try:
            for _ in range(workers):
                group.append(listening_socket(item, reuse_port=True))
        except UserError:
            for bound in [sock for own in sockets for sock in own] + group:
                bound.close()
            raise
        if steer_by_caller(group, workers):
            log.info("UDP requests on %s steered to the worker of their caller by the kernel", format_listen(item))
        for number, sock in enumerate(group):
            sockets[number].append(sock)
    return sockets


def steer_by_caller(sockets, workers):
    """Attach steering_program to the SO_REUSEPORT group of `sockets` (one port's, in the
    workers' order). False where the kernel refuses it (not Linux, no classic BPF for
    reuseport): the workers then hand requests over as before."""
    program = steering_program(workers)
    filters = ctypes.create_string_buffer(b"".join(BPF_SLOTS.pack(*insn) for insn in program))
    try:
        sockets[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                              struct.pack("@HP", len(program), ctypes.addressof(filters)))
        return True
    except OSError as exc:
        log.info("UDP requests not steered to their workers by the kernel (%s): the workers hand them over", exc.strerror)
        return False


class WorkerHandoff:
    """How the workers share a PBX that sends every request from one port, which SO_REUSEPORT
    alone gives to one worker: a UDP request belongs to the worker that the URI of its From
    header hashes to (uri_worker). The kernel steers most requests to it (steering_program); the
    worker that reads another's hands it over on a Unix datagram socket (with the peer's address
    and the datagram's arrival time). The From of a call's requests (INVITE,
    retransmissions, ACK, CANCEL) is the same, so they reach the worker that holds the
    transaction, whichever port they come from; and the calls of one caller reach one worker,
    which keeps its per-minute, A->B and new-country windows (kept in each worker's memory)
    whole. The load spreads over the workers by caller. The owner answers from its own socket
    on the same port. What one read of the socket brings is handed over in one datagram per
    owner: waking another process costs more than the copy."""

    def __init__(self, inboxes, number, reports=None, udp_sockets=()):
        self.inboxes = inboxes   # one Unix datagram socket pair per worker: (its end, the others' end)
        self.number = number
        self.batches = {}        # owner -> headers, addresses and datagrams not sent yet
        self.reports = reports   # a Unix datagram socket pair: (worker 0's end, the others' end)
        self.udp_sockets = udp_sockets  # this worker's, bound by the supervisor, in [server] listen order

    @staticmethod
    def sockets(workers):
        pairs = []
        for _ in range(workers):
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for sock in pair:
                sock.setblocking(False)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            pairs.append(pair)
        return pairs

    @property
    def inbox(self):
        return self.inboxes[self.number][0]

    def report(self, data):
        """Send this worker's metrics to worker 0 (WorkerReports); left out when its socket is full."""
        with contextlib.suppress(OSError):
            self.reports[1].send(data)

    def owner(self, data):
        """The worker of the request's From URI (this one for a message without one: it is
        answered 400 or dropped where it was read). The From header precedes any body, so the
        first match is the header's."""
        m = FROM_URI.search(data)
        return uri_worker(m.group(1), len(self.inboxes)) if m else self.number

    def forward(self, owner, listener, addr, arrived, data):
        """Hand a datagram over, with the next send(). Returns the entries of a batch that went
        full and could not be sent (see send)."""
        host = addr[0].encode("ascii")
        batch = self.batches.get(owner)
        if batch is None:
            batch = self.batches[owner] = bytearray()
        batch += HANDOFF_HEADER.pack(arrived, addr[1], listener, len(host), len(data))
        batch += host
        batch += data
        if len(batch) < HANDOFF_BATCH:
            return []
        del self.batches[owner]
        return self._send(owner, batch)

    def send(self):
        """Send what was handed over. Returns the entries an owner's inbox had no room for
        (the owner is stopped or far behind), as (listener, addr, arrived, data): the reader
        answers them itself."""
        batches, self.batches = self.batches, {}
        return [entry for owner, batch in batches.items() for entry in self._send(owner, batch)]

    def _send(self, owner, batch):
        try:
            self.inboxes[owner][1].send(batch)
            return []
        except OSError:
            return self.unpack(bytes(batch))

    @staticmethod
    def unpack(packet):
        """The (listener, (host, port), arrived, data) of the datagrams handed over in `packet`."""
        entries, start = [], 0
        while start + HANDOFF_HEADER.size <= len(packet):
            arrived, port, listener, host_length, length = HANDOFF_HEADER.unpack_from(packet, start)
            start += HANDOFF_HEADER.size
            host, data = packet[start:start + host_length], packet[start + host_length:start + host_length + length]
            start += host_length + length
            if len(data) < length:
                break
            entries.append((listener, (host.decode("ascii"), port), arrived, data))
        return entries


# Seconds between two reports of a worker's metrics to worker 0, and the age past which a report's
# gauges are left out of /metrics (the worker stopped or hangs)
METRICS_REPORT_INTERVAL = 1.0
METRICS_REPORT_STALE = 5.0


def keyed_counters(counters):
    """{(kind, name, labels): value} of the [kind, name, labels, value] items of a
    Server.metrics_sample, as it comes, or read back from JSON (labels as lists)."""
    return {(kind, name, tuple(map(tuple, labels))): value for kind, name, labels, value in counters}


def add_counters(totals, counters):
    """Add keyed counters into `totals` (a histogram's value, its slots, slot by slot); returns it."""
    for key, value in counters.items():
        if key not in totals:
            totals[key] = value
        elif key[0] == "histogram":
            totals[key] = [a + b for a, b in zip(totals[key], value)]
        else:
            totals[key] += value
    return totals


class WorkerReports:
    """What the other workers report of their metrics, every METRICS_REPORT_INTERVAL, to worker
    0, whose /metrics adds it to its own. A worker started again counts from zero: the counters of
    the last report of its predecessor (another pid) stay in the sums, so that they never go down
    (what it counted after that report, a second's worth at most, is lost). Gauges are summed over
    the reports of the last METRICS_REPORT_STALE seconds; the database is up when it is for all."""

    def __init__(self):
        self.latest = {}  # worker number -> (when received, monotonic; pid; keyed counters; gauges)
        self.bases = {}   # worker number -> keyed counters of its predecessors

    def take(self, sample, received):
        """On the loop. An entry is replaced, never changed, and the dicts are copied whole where
        the HTTP thread reads them (totals): it sees one state or the next."""
        number = sample["worker"]
        previous = self.latest.get(number)
        if previous and previous[1] != sample["pid"]:
            self.bases[number] = add_counters(dict(self.bases.get(number, {})), previous[2])
        self.latest[number] = (received, sample["pid"], keyed_counters(sample["counters"]), sample["gauges"])

    def totals(self, own, now):
        """(counters, gauges, verdicts per worker, workers reporting) of this worker's sample
        `own` and the others' reports."""
        latest, bases = self.latest.copy(), self.bases.copy()
        counters, gauges, per_worker, reporting = {}, dict(own["gauges"]), {}, 1
        for number, worker in [(own["worker"], keyed_counters(own["counters"]))] + [
                (number, add_counters(dict(counts), bases.get(number, {})))
                for number, (_, _, counts, _) in sorted(latest.items())]:
            per_worker[number] = worker.get(("counter", "verdicts", ()), 0)
            add_counters(counters, worker)
        for received, _, _, worker_gauges in latest.values():
            if now - received > METRICS_REPORT_STALE:
                continue
            reporting += 1
            for name, value in worker_gauges.items():
                gauges[name] = min(gauges.get(name, 1), value) if name == "database_up" else gauges.get(name, 0) + value
        return counters, gauges, per_worker, reporting


class Supervisor:
    """[server] workers > 1: that many worker processes, each a Server with its own loop and
    database connection on the same ports (SO_REUSEPORT). Each UDP request goes to the worker of
    its From URI, so that the retransmissions of a transaction reach the worker that holds it:
    the kernel steers it there (bind_worker_sockets), and a worker that reads another's hands it
    over (WorkerHandoff). A worker that dies is started again, on the same UDP sockets; SIGTERM,
    SIGINT and SIGHUP are passed on to the workers."""

    RESTART_PAUSE = 1.0  # a worker that exits sooner after its start cannot serve: stop them all

    def __init__(self, cfg, run_worker):
        self.cfg = cfg
        self.run_worker = run_worker   # run_worker(number, worker_handoff) -> exit status, in the worker process
        self.workers = {}              # pid -> (worker number, when started)
        self.stopping = False
        self.inboxes = None            # WorkerHandoff.sockets(), kept open here for workers started again
        self.reports = None            # the socket pair of the workers' metrics reports to worker 0
        self.udp_sockets = None        # bind_worker_sockets(): each worker's, kept open here

    def run(self):
        probe_listeners(self.cfg.server.listen)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._pass_on)
        self.inboxes = WorkerHandoff.sockets(server_workers(self.cfg))
        self.reports = WorkerHandoff.sockets(1)[0]
        self.udp_sockets = bind_worker_sockets(self.cfg.server.listen, server_workers(self.cfg))
        for number in range(server_workers(self.cfg)):
            self._start(number)
        log.info("supervising %d workers", len(self.workers))
        failed = False
        while self.workers:
            pid, status = os.wait()
            if pid not in self.workers:
                continue
            number, started = self.workers.pop(pid)
            if self.stopping:
                continue
            how = f"exited with status {os.waitstatus_to_exitcode(status)}" if os.WIFEXITED(status) else \
                  f"was killed by signal {os.WTERMSIG(status)}"
            lived = time.monotonic() - started
            if os.WIFEXITED(status) and lived < self.RESTART_PAUSE:  # it could not start (a port, the database)
                log.error("worker %d (pid %d) %s at once: stopping the others", number, pid, how)
                failed = True
                self._pass_on(signal.SIGTERM)
                continue
            log.error("worker %d (pid %d) %s; starting it again", number, pid, how)
            time.sleep(max(0.0, self.RESTART_PAUSE - lived))  # a worker killed over and over costs no busy loop
            self._start(number)
        return 1 if failed else 0

    def _start(self, number):
        pid = os.fork()
        if pid == 0:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            status = 1
            try:
                status = self.run_worker(number, WorkerHandoff(self.inboxes, number, self.reports, self.udp_sockets[number]))
            except UserError as exc:
                log.error("worker %d: %s", number, exc)
                status = 2
            except BaseException:
                log.exception("worker %d failed", number)
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers[pid] = (number, time.monotonic())

    def _pass_on(self, signum, _frame=None):
        if signum != signal.SIGHUP:
            self.stopping = True
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


class Server:
    def __init__(self, cfg, db, config_path=None, worker=None, worker_handoff=None):
        """`worker`: the number of this process among several workers (its own spool file);
        `worker_handoff`: how they share UDP requests (WorkerHandoff)."""
        self.cfg = cfg.freeze()
        self.worker = worker or 0
        self.worker_handoff = worker_handoff
        self.worker_reports = WorkerReports()  # worker 0's: the other workers' metrics
        self.udp_endpoints = []  # of the UDP listeners, in the order of [server] listen (as in every worker)
        self.config_path = config_path
        self.db = db
        db.tune_for_serving()
        self.lease_block = block = lease_block(cfg)
        leases = LeasedCounters(db, f"{cfg.server.node_name}/{os.getpid()}", block, cfg.database.lease_ttl) if block else None
        self.engine = Engine(cfg, db, counters=leases)
        self.engine.spool = CallLogSpool(spool_path(cfg, worker), cfg.database.spool_max_mb << 20)
        self.orphan_spools = [CallLogSpool(path, 0) for path in orphan_spools(cfg, worker)]
        self.metrics = Metrics()
        self.sip = SipService(cfg.server, self.metrics, exempt=lambda number: emergency_number(number, self.cfg.policy))
        self.selector = selectors.DefaultSelector()
        self.timers = []
        self._seq = 0
        self.connections = {}
        self.udp_out = None            # (endpoint, bytes, address) to send, while sending_together
        self.outgoing = {}  # (ip, port) -> TcpConnection opened to send responses (RFC 3261 §18.2.2)
        self.listeners = []
        self.stopping = False
        self.reload_requested = False
        self.counters = {"untrusted": 0, "oversized": 0, "verdicts": 0, "accept_paused": 0, "tcp_refused": 0,
                         "handed_over": 0}
        self.overload_noted = -OVERLOAD_NOTICE_INTERVAL  # when (monotonic) R98 answers were last logged and alerted
        self._trusted_cache = {}
        self._untrusted_logged = {}     # source -> when it was last logged
        self._untrusted_minute = [0, 0]  # (minute, lines logged in it)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.reputation = ReputationService(cfg, db.url, self.wake)
        self.loaded_lists = deque()  # what the list-loading thread hands to the loop
        self.loading_lists = False
        self.lists_reason = "lists reloaded"  # what the log says once they are in place
        self.dispatcher = AlertDispatcher(cfg, db.url)
        self.database_down = None      # since when (monotonic) the database has been unavailable
        self.reconnected = deque()     # a new connection, from the reconnecting thread to the loop
        self.threads_stop = threading.Event()
        self.from_threads = deque()    # (callback, args) that other threads (HTTP) want run on the loop
        self.wake_pending = False      # a wake-up byte is on its way: the loop will look at every queue

    # -- sockets ------------------------------------------------------------------------------

    @property
    def tcp_max_connections(self):
        return self.cfg.server.tcp_max_connections or tcp_connections_allowed()

    def bind(self):
        """Every listener, before anything is served; none if one cannot be had. SO_REUSEADDR
        only on TCP (a restart must not wait for TIME_WAIT): on UDP it would let a second
        instance take the port silently. Several workers share each port with SO_REUSEPORT; the
        supervisor made sure beforehand that nobody else holds it (probe_listeners)."""
        bound_for_us = list(self.worker_handoff.udp_sockets) if self.worker_handoff else []
        for item in self.cfg.server.listen:
            transport, host, _ = item
            if transport == "udp" and bound_for_us:
                sock = bound_for_us.pop(0)
            else:
                try:
                    sock = listening_socket(item, reuse_port=server_workers(self.cfg) > 1)
                except UserError:
                    for bound in self.listeners:
                        bound.close()
                    raise
            sock.setblocking(False)
            if transport == "udp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                with contextlib.suppress(OSError):  # without kernel timestamps a datagram's age starts when it is read
                    if SO_TIMESTAMPNS:
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                endpoint = UdpEndpoint(sock, len(self.udp_endpoints))
                self.udp_endpoints.append(endpoint)
                self.selector.register(sock, selectors.EVENT_READ, ("udp", endpoint))
            else:
                sock.listen(512)
                self.selector.register(sock, selectors.EVENT_READ, ("listen", None))
            self.listeners.append(sock)
            log.info("listening on %s", format_listen((transport, host, sock.getsockname()[1])))
        if self.worker_handoff:
            self.selector.register(self.worker_handoff.inbox, selectors.EVENT_READ, ("handoff", None))
            if self.worker == 0:
                self.selector.register(self.worker_handoff.reports[0], selectors.EVENT_READ, ("reports", None))

    def wake(self):
        """Make the loop look at what other threads queued for it. The loop clears wake_pending
        once it has read the bytes and before it empties the queues, so an item queued while a
        byte is on its way is seen without another (a send and a receive saved per HTTP check
        under load)."""
        if self.wake_pending:
            return
        self.wake_pending = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    # -- timers -------------------------------------------------------------------------------

    def call_later(self, delay, callback, *args):
        self._seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._seq, callback, args))

    def every(self, interval, callback):
        def tick():
            try:
                callback()
            except Exception as exc:
                if not self._database_unavailable(exc):
                    log.error("%s failed: %s", callback.__name__, exc)
            self.call_later(interval, tick)
        self.call_later(interval, tick)

    def _run_timers(self):
        now = time.monotonic()
        with self.sending_together():
            while self.timers and self.timers[0][0] <= now:
                _, _, callback, args = heapq.heappop(self.timers)
                try:
                    callback(*args)
                except Exception:  # a failing timer must never stop the loop
                    log.exception("timer %s failed", getattr(callback, "__name__", callback))
            for dest, data in self.sip.poll(now):
                self._send(dest, data)

    def _timeout(self):
        deadlines = [d for d in (self.timers[0][0] if self.timers else None, self.sip.next_deadline()) if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else 1.0

    # -- the loop -----------------------------------------------------------------------------

    def start_call_log_writer(self):
        """The call log written on a thread of its own (CallLogWriter); not with the group
        transaction of SQLite (no leases), which holds the file's write lock from one flush to
        the next: a second connection would wait for it in vain."""
        if self.db.dialect == "mysql" or (self.lease_block and not self.db.in_memory):
            timeout = self.cfg.database.timeout if self.db.dialect == "mysql" else None
            self.engine.call_log = CallLogWriter(self.db.url, self.engine.spool, self.cfg.database.max_unflushed_rows,
                                                 timeout)
            if isinstance(self.engine.counters, LeasedCounters):
                self.engine.counters.writer = self.engine.call_log

    def run(self):
        self.start_call_log_writer()
        try:
            self._replay_spools(self.db)
        except Exception as exc:
            if not self._database_unavailable(exc):
                log.error("call log spool not written to the database: %s", exc)
        self.bind()
        self.every(self.cfg.database.flush_interval, self._flush)
        self.every(self.cfg.database.reload_interval, self._check_for_changes)
        self.every(5.0, self._close_idle_connections)
        self.every(RECEIVE_QUEUE_PERIOD, self._bound_receive_queues)
        if self.worker_handoff and self.worker:
            self.every(METRICS_REPORT_INTERVAL, self._report_metrics)
        threading.Thread(target=self._run_daily_jobs, name="daily-jobs", daemon=True).start()
        if self.db.dialect == "sqlite" and not self.db.in_memory and self.worker == 0:
            threading.Thread(target=self._write_back_the_wal, name="wal-write-back", daemon=True).start()
        self.dispatcher.start()
        # The threads (call log, reputation, HTTP) take turns with the loop on the interpreter
        # lock; Python's default of 5 ms a turn would show in the verdicts' latency.
        sys.setswitchinterval(0.0005)
        keep_full_collections_off_the_request_path()
        self.every(FULL_COLLECTION_INTERVAL, gc.collect)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup_signal)
        log.info("TFPS %s serving in %s mode, database %s, Python %s (%s)", __version__, self.cfg.server.mode,
                 redact_url(self.db.url), platform.python_version(), sys.executable)
        while not self.stopping:
            for key, events in self.selector.select(self._timeout()):
                kind, obj = key.data
                try:
                    if kind == "udp":
                        self._read_udp(key.fileobj, obj)
                    elif kind == "handoff":
                        self._read_handoff(key.fileobj)
                    elif kind == "reports":
                        self._read_reports(key.fileobj)
                    elif kind == "listen":
                        self._accept(key.fileobj)
                    elif kind == "tcp":
                        self._service_tcp(obj, events)
                    else:
                        self._drain_wake()
                except Exception:  # one bad packet or peer must never stop the loop
                    log.exception("unexpected error while handling %s traffic", kind)
            self._run_timers()
            if self.reload_requested:
                self.reload_requested = False
                self.reload_config()
        self.shutdown()

    def _on_stop_signal(self, signum, frame):
        self.stopping = True

    def _on_hup_signal(self, signum, frame):
        self.reload_requested = True

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        self.wake_pending = False  # after the bytes are read: a wake() from now on sends one that stays
        self.reputation.deliver()
        while self.from_threads:
            callback, args = self.from_threads.popleft()
            callback(*args)
        self._take_reconnected()
        while self.loaded_lists:
            loaded = self.loaded_lists.popleft()
            self.loading_lists = False
            if loaded:
                self.engine.install(loaded)
                log.info("%s", self.lists_reason)
                self.lists_reason = "lists reloaded"

    def _check_for_changes(self):
        if self.database_down is None:
            self.engine.check_for_changes(reload_lists=self._start_loading_lists)

    def _flush(self):
        if self.database_down is None:
            self.engine.flush()
        else:
            self.engine.spool_log_rows()

    def _replay_spools(self, db):
        """Write the spooled call log rows (this server's spool, and those of workers no longer
        run) to `db`; database errors propagate, the rows stay spooled. A spool that cannot be
        read is logged and left for later."""
        for spool in (self.engine.spool, *self.orphan_spools):
            try:
                spool.replay(db)
            except OSError as exc:
                log.error("call log spool %s cannot be read: %s", spool.path, exc)

    def _run_daily_jobs(self):
        """Training, purge, summaries and the end of learning on a thread and a connection of
        their own: a long query must not hold up verdicts. Their changes reach the loop like
        any other change (reload_interval)."""
        jobs = DailyJobs(self.cfg, None)
        while not self.threads_stop.wait(30.0):
            try:
                jobs.cfg = self.cfg  # the one in service: a SIGHUP may have replaced it
                jobs.alerts.acfg, jobs.alerts.tz = self.cfg.alerts, self.cfg.policy.tz
                jobs.db = jobs.db or Database(self.db.url)
                jobs.run_due()
            except Exception as exc:
                log.error("daily jobs: %s", exc)
                if jobs.db:
                    jobs.db.close()
                jobs.db = None
        if jobs.db:
            jobs.db.close()

    def _write_back_the_wal(self):
        """SQLite: the write-ahead log of every process serving the file written back into it every
        WAL_WRITE_BACK_INTERVAL seconds, on this thread and a connection of its own; one process
        does it (worker 0). The log would otherwise grow for as long as the server runs."""
        db = failing = None
        while not self.threads_stop.wait(WAL_WRITE_BACK_INTERVAL):
            try:
                db = db or Database(self.db.url)
                db.write_back_wal()
                failing = None
            except Exception as exc:
                if str(exc) != failing:
                    log.error("write-ahead log not written back into %s: %s", redact_url(self.db.url), exc)
                failing = str(exc)
                if db:
                    db.close()
                db = None
        if db:
            db.close()

    def _start_loading_lists(self):
        """Large lists take a few hundred milliseconds to load: a thread does it, calls go on."""
        if not self.loading_lists:
            self.loading_lists = True
            threading.Thread(target=self._load_lists, name="lists", daemon=True).start()

    def _load_lists(self):
        loaded = None
        try:
            db = Database(self.db.url)
            try:
                loaded = load_lists(self.cfg, db)
            finally:
                db.close()
        except Exception as exc:
            log.error("loading the changed lists failed (next try in %g s): %s", self.cfg.database.reload_interval, exc)
        self.loaded_lists.append(loaded)
        self.wake()

    def shutdown(self):
        log.info("stopping: answering pending transactions")
        for tx in self.sip.pending():
            self._finish_invite(tx, Reputation(tx.data.attempt.source_ip, False, detail="server stopping"))
        for dest, data in self.sip.poll(time.monotonic()):
            self._send(dest, data)
        for conn in list(self.connections.values()):
            self._flush_tcp(conn)
        self.threads_stop.set()
        self.dispatcher.stop()
        self.reputation.close()
        self._try_the_database_once_more()
        try:
            self.engine.flush(release=True)
        except Exception as exc:
            self.engine.spool_log_rows()
            log.error("stopping with the database unavailable (%s): call log rows spooled to %s (%d in all), "
                      "%d unwritten", exc, self.engine.spool.path, self.engine.spool.spooled, len(self.engine.log_rows))
        finally:
            if self.engine.call_log:
                lost = self.engine.call_log.close(2 * self.cfg.database.timeout + 5)
                if lost:
                    log.error("stopping: %d call log row(s) neither written nor spooled in time, lost", lost)
            self.db.close()
            for sock in self.listeners:
                sock.close()
        c, s = self.counters, self.sip.counters
        overloaded = sum(self._overload_answers().values())
        log.info("stopped after %d verdicts, %d of them R98 (%d packets from untrusted sources dropped, %d malformed, "
                 "%d oversized; %d requests refused for max_transactions, %d retransmissions over "
                 "resend_bytes_per_source, %d TCP connections refused, %d call log rows lost)", c["verdicts"], overloaded,
                 c["untrusted"], s["malformed"], c["oversized"], s["overflow"], s["resend_dropped"], c["tcp_refused"],
                 self.engine.lost_rows())

    def _try_the_database_once_more(self):
        """Stopping while the database is down: take the reconnecting thread's connection, or try
        one (within [database] timeout), so that the rows and counts kept meanwhile are written
        now rather than spooled to wait for the next start."""
        self._take_reconnected()
        if self.database_down is None:
            return
        try:
            db = self._connect_answering()
        except Exception as exc:
            log.info("stopping: the database is still unavailable: %s", exc)
            return
        self._database_back(db)

    def _take_reconnected(self):
        """Use the connection the reconnecting thread handed over, if any."""
        while self.reconnected:
            self._database_back(self.reconnected.popleft())

    def _connect_answering(self, prepare=None):
        """A new connection to the database that answers, with `prepare(db)` done on it."""
        db = Database(self.db.url, timeout=self.cfg.database.timeout)
        try:
            db.probe()
            db.tune_for_serving()
            if prepare:
                prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _database_unavailable(self, exc):
        """True when `exc` says the database cannot be used now; the first time, verdicts turn to
        the [database] failure policy and a thread starts reconnecting."""
        if not (isinstance(exc, self.db.errors) and self.db.unavailable(exc)):
            return False
        self.metrics.inc("database_errors")
        if self.database_down is None:
            self.database_down = time.monotonic()
            log.error("database %s unavailable (%s); until it is back, %s, call log rows go to the spool %s; "
                      "reconnecting in the background", redact_url(self.db.url), exc,
                      "verdicts are decided from memory" if self.cfg.database.failure == "continue"
                      else "INVITEs are answered 500", self.engine.spool.path)
            threading.Thread(target=self._reconnect, name="reconnect", daemon=True).start()
        return True

    def _reconnect(self):
        """Off the loop, with back-off up to RECONNECT_PAUSE: connect until the database answers,
        then hand the new connection to the loop."""
        delay = 0.25
        while not self.stopping:
            try:
                db = self._connect_answering(self._replay_spools)  # off the loop: a long outage leaves many rows
            except Exception as exc:
                log.info("database still unavailable, next try in %.2g s: %s", delay, exc)
                self.threads_stop.wait(delay)
                delay = min(2 * delay, RECONNECT_PAUSE)
                continue
            self.reconnected.append(db)
            self.wake()
            return

    def _database_back(self, db):
        old, self.db = self.db, db
        self.metrics.inc("database_reconnects")
        if old.in_transaction:  # SQLite: verdicts not yet committed by a flush
            with contextlib.suppress(*old.errors):
                old.commit()
        old.close()
        self.engine.use_database(db)
        log.warning("database back after %.1f s; writing the %d call log row(s) kept meanwhile",
                    time.monotonic() - self.database_down, len(self.engine.log_rows))
        self.database_down = None
        self.engine.accounts.clear()  # changed meanwhile, maybe
        try:
            self.engine.charge_outage_counts()
            self.engine.flush()
            self._replay_spools(db)  # what was spooled since the reconnecting thread wrote the spool
        except Exception as exc:
            if not self._database_unavailable(exc):
                log.error("flush failed: %s", exc)

    def reload_config(self):
        try:
            cfg = Config.load(self.config_path)
        except UserError as exc:
            log.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        if cfg.server.listen != self.cfg.server.listen:
            log.warning("SIGHUP: listen changed; it takes effect at the next restart")
            cfg.replace("server", "listen", self.cfg.server.listen)
        self.configure(cfg.freeze())
        self._trusted_cache.clear()
        self.loading_lists = False  # load them again, with the new configuration
        self.lists_reason = f"SIGHUP: configuration and lists reloaded (mode {self.cfg.server.mode})"
        self._start_loading_lists()

    def configure(self, cfg):
        """Put a new Config in service here and in every object that reads it."""
        self.cfg = cfg
        self.engine.configure(cfg)
        self.sip.configure(cfg.server)
        self.reputation.configure(cfg)
        self.dispatcher.acfg = cfg.alerts

    # -- transports ---------------------------------------------------------------------------

    def trusted(self, ip):
        ok = self._trusted_cache.get(ip)
        if ok is None:
            addr = parse_ip(ip.split("%")[0])
            ok = any(addr in net for net in self.cfg.server.trusted_peers)
            if len(self._trusted_cache) > 65536:
                self._trusted_cache.clear()
            self._trusted_cache[ip] = ok
        if not ok:
            self.counters["untrusted"] += 1
            self._log_untrusted(ip)
        return ok

    def _log_untrusted(self, ip):
        """Once a minute per source, at most UNTRUSTED_LOG_LINES lines a minute in all: a newcomer
        learns which address to add, a flood from forged sources does not flood the journal."""
        now = time.monotonic()
        minute = int(now // 60)
        if self._untrusted_minute[0] != minute:
            self._untrusted_minute = [minute, 0]
            if len(self._untrusted_logged) > 10000:
                self._untrusted_logged.clear()
        if now - self._untrusted_logged.get(ip, -60.0) < 60 or self._untrusted_minute[1] >= UNTRUSTED_LOG_LINES:
            return
        self._untrusted_logged[ip] = now
        self._untrusted_minute[1] += 1
        log.warning("dropping SIP from untrusted source %s: add it to [server] trusted_peers if it is a PBX or proxy "
                    "(%d packets from untrusted sources dropped so far)", ip, self.counters["untrusted"])

    def _read_udp(self, sock, endpoint):
        """Up to 64 datagrams: the other workers' are handed over first, then this one's answered."""
        limit = self.cfg.server.max_message_size
        sharing = self.worker_handoff
        receive_buffer = endpoint.receive_buffer
        own = []
        crowded = endpoint.crowded = bool(self.cfg.server.overload_after) and receive_queue_crowded(sock, endpoint.crowded)
        for _ in range(64):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(65536, TIMESTAMP_SPACE)
            except OSError:  # nothing more to read (BlockingIOError), or an ICMP error
                break
            if not self.trusted(addr[0]):
                continue
            if len(data) > limit:
                self.counters["oversized"] += 1
                continue
            if data.strip(b"\r\n\0 "):
                read_at = time.monotonic()
                arrived = kernel_arrival(ancillary, read_at)
                receive_buffer.longest_wait = max(receive_buffer.longest_wait, read_at - arrived)
                if acknowledges_stateless_answer(data):
                    continue  # nothing holds it (see SipService.receive): dropped before any other work
                if sharing:
                    owner = sharing.owner(data)
                    if owner != sharing.number:
                        self.counters["handed_over"] += 1
                        own += sharing.forward(owner, endpoint.number, addr, arrived, data)
                        continue
                own.append((endpoint.number, addr[:2], arrived, data))
        if sharing:
            own += sharing.send()
        with self.sending_together():
            for _listener, addr, arrived, data in own:
                self.on_message(data, endpoint, addr, arrived, crowded)

    def _read_handoff(self, inbox):
        """Requests that another worker read and handed over (WorkerHandoff): about 64 of them,
        as from a UDP socket, before the loop's timers get their turn."""
        handled = 0
        with self.sending_together():
            while handled < 64:
                try:
                    packet = inbox.recv(HANDOFF_BATCH + 65536 + 512)
                except OSError:
                    return
                for listener, addr, arrived, data in WorkerHandoff.unpack(packet):
                    handled += 1
                    if listener < len(self.udp_endpoints):
                        self.on_message(data, self.udp_endpoints[listener], addr, arrived)

    def _read_reports(self, inbox):
        """The other workers' metrics (WorkerReports), for /metrics."""
        for _ in range(64):
            try:
                data = inbox.recv(1 << 20)
            except OSError:
                return
            sample = json.loads(data)
            self.worker_reports.take(sample, time.monotonic())

    def _report_metrics(self):
        self.worker_handoff.report(json.dumps(self.metrics_sample()).encode())

    def metrics_sample(self):
        """This worker's counters (what only grows, as [kind, name, labels, value]; a histogram's
        value is its slots) and gauges, for /metrics: worker 0 adds up those of every worker."""
        counts, histograms = self.metrics.snapshot()
        engine = self.engine
        plain = {**self.counters, **self.sip.counters, "alert_delivery_failures": self.dispatcher.failures,
                 "call_log_dropped_rows": engine.lost_rows(), "call_log_spooled_rows": engine.spool.spooled,
                 "call_log_spool_damaged_lines": engine.spool.damaged}
        counters = ([["count", name, labels, value] for (name, labels), value in counts.items()]
                    + [["histogram", name, labels, slots] for (name, labels), slots in histograms.items()]
                    + [["counter", name, (), value] for name, value in plain.items()]
                    + [["reputation", result, (), n] for result, n in self.reputation.lookups.copy().items()])
        gauges = {"sip_transactions": len(self.sip.transactions.table), "tcp_connections": len(self.connections),
                  "reputation_lookups_in_flight": len(self.reputation.waiting),
                  "call_log_unflushed_rows": engine.unwritten_rows(), "alerts_in_memory": engine.queued_alerts(),
                  "database_up": int(self.database_down is None)}
        return {"worker": self.worker, "pid": os.getpid(), "counters": counters, "gauges": gauges}

    def metrics_totals(self):
        """(counters, gauges, verdicts per worker, workers reporting): this worker's metrics_sample
        and, in worker 0, the other workers' reports (WorkerReports.totals)."""
        return self.worker_reports.totals(self.metrics_sample(), time.monotonic())

    def _accept(self, listener):
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._pause_accepting(listener, exc)
            return
        if not self.trusted(addr[0]):
            sock.close()
            return
        if len(self.connections) >= self.tcp_max_connections:
            self.counters["tcp_refused"] += 1
            if self.counters["tcp_refused"] % 1000 == 1:
                log.warning("refusing TCP connections: tcp_max_connections = %d reached (%d refused so far)",
                            self.tcp_max_connections, self.counters["tcp_refused"])
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = TcpConnection(sock, addr[:2], self.cfg.server.max_message_size, time.monotonic())
        self.connections[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, ("tcp", conn))

    def _pause_accepting(self, listener, exc):
        """Out of file descriptors: the pending connection stays in the backlog and the listener
        stays readable, so accepting again at once would spin. Pause for a second; UDP and the
        open connections go on."""
        self.selector.unregister(listener)
        self.call_later(1.0, self.selector.register, listener, selectors.EVENT_READ, ("listen", None))
        self.counters["accept_paused"] += 1
        if self.counters["accept_paused"] % 60 == 1:
            log.error("cannot accept TCP connections: %s (%d connections open, open-file limit %d); pausing accept for 1 s; "
                      "raise LimitNOFILE or lower tcp_max_connections", exc.strerror, len(self.connections),
                      resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def _connect(self, addr):
        """A connection to `addr` for responses whose request's connection has closed (RFC 3261
        §18.2.2: the received address and the sent-by port); None when none can be opened."""
        conn = self.outgoing.get(addr)
        if conn is not None and not conn.closed:
            return conn
        if len(self.connections) >= self.tcp_max_connections:
            log.warning("no TCP connection to %s for a response: tcp_max_connections reached", addr[0])
            return None
        sock = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        error = sock.connect_ex(addr)
        if error not in (0, errno.EINPROGRESS):
            log.info("cannot open a TCP connection to %s:%d for a response: %s", addr[0], addr[1], os.strerror(error))
            sock.close()
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = TcpConnection(sock, addr, self.cfg.server.max_message_size, time.monotonic())
        conn.connecting = error == errno.EINPROGRESS
        self.connections[sock.fileno()] = self.outgoing[addr] = conn
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("tcp", conn))
        return conn

    def _service_tcp(self, conn, events):
        if events & selectors.EVENT_WRITE and conn.connecting:
            error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                log.info("TCP connection to %s:%d for a response failed: %s", *conn.addr, os.strerror(error))
                self._close_tcp(conn)
                return
            conn.connecting = False
        if events & selectors.EVENT_WRITE:
            self._flush_tcp(conn)
        if not events & selectors.EVENT_READ or conn.closed:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_tcp(conn)
            return
        conn.last_active = time.monotonic()
        try:
            messages = conn.framer.feed(data)
        except SipError as exc:
            self._reject_stream(conn, exc)
            return
        for message in messages:
            self.on_message(message, conn, conn.addr, conn.last_active)
        self._flush_tcp(conn)

    def _reject_stream(self, conn, exc):
        """A stream that cannot be framed: answer what can be answered, then close it."""
        for _dest, data in self.sip.reject_stream(conn.framer.buffer, exc, conn, conn.addr):
            conn.send(data)
        self._flush_tcp(conn)
        self._close_tcp(conn)

    def _flush_tcp(self, conn):
        if conn.outbuf and not conn.closed and not conn.connecting:
            try:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
            except BlockingIOError:
                pass
            except OSError:
                conn.closed = True
        if conn.closed:
            self._close_tcp(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf or conn.connecting else 0)
        self.selector.modify(conn.sock, events, ("tcp", conn))

    def _close_tcp(self, conn):
        conn.closed = True
        if self.connections.pop(conn.sock.fileno(), None) is not None:
            self.selector.unregister(conn.sock)
        if self.outgoing.get(conn.addr) is conn:
            del self.outgoing[conn.addr]
        conn.sock.close()

    def _bound_receive_queues(self):
        for endpoint in self.udp_endpoints:
            size = endpoint.receive_buffer.resize(self.cfg.server.overload_after)
            if size is not None:
                with contextlib.suppress(OSError):
                    endpoint.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                log.debug("UDP receive buffer of listener %d: %d kB", endpoint.number, size >> 10)

    def _close_idle_connections(self):
        cutoff = time.monotonic() - self.cfg.server.tcp_idle_timeout
        for conn in [c for c in self.connections.values() if c.last_active < cutoff]:
            self._close_tcp(conn)

    @contextlib.contextmanager
    def sending_together(self):
        """The UDP datagrams sent meanwhile go out UDP_SEND_GROUP at a time, and the rest at the end."""
        self.udp_out = []
        try:
            yield
        finally:
            self._send_udp_out()
            self.udp_out = None

    def _send_udp_out(self):
        out, self.udp_out = self.udp_out, []
        for endpoint, data, addr in out:
            endpoint.send(data, addr)

    def _send(self, dest, data):
        endpoint, addr = dest
        if endpoint.transport == "udp" and self.udp_out is not None:
            self.udp_out.append((endpoint, data, addr))
            if len(self.udp_out) >= UDP_SEND_GROUP:
                self._send_udp_out()
            return
        if endpoint.transport == "tcp" and endpoint.closed:
            endpoint = self._connect(addr)
            if endpoint is None:
                return
        endpoint.send(data, addr)
        if endpoint.transport == "tcp" and not endpoint.closed:
            self._flush_tcp(endpoint)

    # -- verdicts -----------------------------------------------------------------------------

    def on_message(self, data, endpoint, addr, arrived=None, crowded=False):
        sends, invite = self.sip.receive(data, endpoint, addr, time.monotonic(), arrived, crowded)
        for dest, packet in sends:
            self._send(dest, packet)
        if isinstance(invite, ShedInvite):  # answered R98: no reputation, no engine, no database
            self._note_overload(invite.verdict, invite.waited * 1000, "sip", invite.waited)
        elif invite is not None:
            self._check(invite)

    def _note_overload(self, verdict, latency, via, waited):
        """An R98 answered over `via` (sip, http): counted in the metrics like any verdict, with
        a log line and an alert at most once every OVERLOAD_NOTICE_INTERVAL, but neither a call
        log row nor a log line of its own. Past the sustainable rate every answer must cost as
        little as it can: a row and a line would each cost about as much CPU as the answer itself
        (and the journal drops lines past its rate limit, 10,000 in 30 s)."""
        self.metrics.inc(f"{via}_overload", answer="approve" if verdict.approved else "reject")
        self._count_verdict(verdict, latency, via)
        now = time.monotonic()
        if now - self.overload_noted < OVERLOAD_NOTICE_INTERVAL:
            return
        self.overload_noted = now
        answered = self._overload_answers()
        what = "approved" if verdict.approved else "rejected"
        limit = self.cfg.server.overload_after
        why = (f"waited longer than overload_after {limit:g} s before their turn (this one {waited:.2f} s)" if waited > limit else
               f"came from a crowded receive queue, filled past half and not yet drained to an eighth (this one waited {waited:.2f} s)")
        text = (f"Requests {why}: answered R98 and {what} without checks (overload = {self.cfg.server.overload}); "
                f"{answered['reject']} rejected and {answered['approve']} approved so far (counted, not written to the call log)")
        log.warning("%s", text)
        node = self.engine.node or socket.gethostname()
        self.engine.alerts.add(AlertEvent("overload", node, OVERLOADED, f"TFPS {OVERLOADED}: {node} overloaded",
                                          f"{text}.\nCalls are answered faster than they can be checked: add workers or "
                                          f"nodes, or find what slows the server (database latency, reputation lookups).\n",
                                          {"code": OVERLOADED, "waited": round(waited, 3), **answered}))

    def _overload_answers(self):
        """R98 answers so far, SIP and HTTP: {"reject": n, "approve": n}."""
        return {answer: self.metrics.counter("sip_overload", answer=answer) + self.metrics.counter("http_overload", answer=answer)
                for answer in ("reject", "approve")}

    def _check(self, tx):
        """An INVITE's verdict, once its source's reputation is known where it is wanted."""
        tx.data.attempt.ts = time.time()
        self._with_reputation(tx.data.attempt, lambda reputation: self._finish_invite(tx, reputation))

    def _with_reputation(self, attempt, finish):
        """finish(reputation) at once (None: the reputation is in the attempt, or not wanted), or
        once a lookup on the worker pool answers, or after reputation_timeout, whichever comes
        first: `finish` must ignore the second call."""
        ip = attempt.source_ip
        if (self.reputation.wanted(ip) and not self.engine.lists.ip_white.match(ip)
                and not emergency_number(attempt.number, self.cfg.policy)):
            rep = self._known_reputation(ip, attempt.ts)
            if rep is None and self.reputation.paused(attempt.ts):
                rep = Reputation(ip, False, detail="lookups paused by the service's rate limit")
            if rep is None:
                self.reputation.request(ip, finish)
                self.call_later(self.cfg.reputation.reputation_timeout, finish,
                                Reputation(ip, False, detail=f"no answer within {self.cfg.reputation.reputation_timeout:g} s"))
                return
            attempt.reputation = rep
        finish(None)

    def _known_reputation(self, ip, now):
        try:
            return self.reputation.known(self.db if self.database_down is None else None, ip, now)
        except Exception as exc:
            if not self._database_unavailable(exc):
                raise
            return self.reputation.known(None, ip, now)

    def _finish_invite(self, tx, reputation):
        if not self.sip.awaits_verdict(tx):  # answered already (CANCEL, timeout) and maybe ACKed
            return
        attempt = tx.data.attempt
        self._note_reputation(attempt, reputation)
        verdict = self._decide(attempt)
        sends, summary, latency = self.sip.answer(tx, verdict, time.monotonic())
        for dest, packet in sends:
            self._send(dest, packet)
        if verdict is not None:
            self._record_verdict(verdict, summary, latency, "sip")

    def _note_reputation(self, attempt, reputation):
        if reputation is not None:
            attempt.reputation = reputation
            if not reputation.ok:
                log.warning("call-id=%s reputation of %s unavailable (%s): reputation_failure = %s", attempt.call_id,
                            attempt.source_ip, reputation.detail, self.cfg.reputation.reputation_failure)

    def _record_verdict(self, verdict, summary, latency, via):
        """The call log row, the metrics and the log line of a verdict that was answered."""
        self.engine.record(verdict, summary, latency)
        self._count_verdict(verdict, latency, via)
        if self.cfg.server.log_verdicts:
            a = verdict.attempt
            log.info("verdict %s", logfmt(call_id=a.call_id, account=f"{a.user}@{a.domain}", number=verdict.number or a.number,
                                          code=verdict.code, reason=verdict.reason, source_ip=a.source_ip, via=via,
                                          latency_ms=round(latency, 2)))

    def _count_verdict(self, verdict, latency, via):
        self.counters["verdicts"] += 1
        self.metrics.inc_key(("verdicts", (("code", verdict.code), ("mode", self.cfg.server.mode), ("via", via))))
        self.metrics.observe_key(("decision", (("via", via),)), latency / 1000)

    # -- requests from other threads (the HTTP interface) -------------------------------------

    def call_from_thread(self, callback, *args):
        """Run callback(*args) on the loop soon; safe from any thread."""
        self.from_threads.append((callback, args))
        self.wake()

    def check(self, attempt, handoff, queued):
        """On the loop: decide an attempt that came from the HTTP decision API exactly like an
        INVITE's (reputation lookup, engine, counting, call log; R98, counted only, once it
        waited past overload_after since `queued`, monotonic); the Handoff gets (Verdict, latency ms), or
        None when there is no verdict (database unavailable)."""
        started = time.monotonic()
        overload = overload_verdict(self.cfg.server, attempt, started - queued)
        if overload and not emergency_number(attempt.number, self.cfg.policy):
            latency = (time.monotonic() - queued) * 1000
            self._note_overload(overload, latency, "http", started - queued)
            handoff.set((overload, latency))
            return

        def finish(reputation):
            if handoff.done:  # the lookup timed out before, or the other way round
                return
            self._note_reputation(attempt, reputation)
            verdict = self._decide(attempt)
            if verdict is None:
                handoff.set(None)
                return
            latency = (time.monotonic() - started) * 1000
            self._record_verdict(verdict, f"HTTP {verdict.code}", latency, "http")
            handoff.set((verdict, latency))

        self._with_reputation(attempt, finish)

    def _decide(self, attempt):
        """The verdict; from memory while the database is unavailable and [database] failure is
        continue; None when there is none to give."""
        enforce = self.cfg.server.mode != "monitor"
        if self.database_down is None:
            try:
                return self.engine.decide(attempt, enforce=enforce)
            except Exception as exc:
                if not self._database_unavailable(exc):
                    log.exception("call-id=%s no verdict", attempt.call_id)
                    return None
                log.error("call-id=%s: database unavailable: %s", attempt.call_id, exc)
        if self.cfg.database.failure == "continue" or emergency_number(attempt.number, self.cfg.policy):
            return self.engine.decide_from_memory(attempt, enforce=enforce)
        return None


# =============================================================================================
# 15. Admin: account, list and report operations behind the CLI
# =============================================================================================

def find_account(db, user, domain):
    domain = domain.lower()
    row = load_account(db, user, domain)
    if row is None:
        raise UserError(f"unknown account {user}@{domain} ({PROG} list shows the accounts; {PROG} add creates one)")
    return Account.from_row(row)


def today_key(cfg, now):
    return dt.datetime.fromtimestamp(now, cfg.policy.tz).date().isoformat()


def calls_today(db, cfg, account_id, now):
    return approved_by_bucket(db, account_id, today_key(cfg, now))


def update_account(db, acc, now, end_learning=True, inherit=(), **fields):
    """Write changed account fields and pin them against training; the fields of `inherit`
    (given with their default values) are unpinned: they come from the domain or training again."""
    pinned = (set(acc.pinned) | {f for f in fields if f in POLICY_FIELDS}) - set(inherit)
    values = {k: (format_countries(v) if isinstance(v, (set, frozenset)) else v) for k, v in fields.items()}
    values["pinned"] = ",".join(sorted(pinned))
    if end_learning:
        values["state"] = "enforcing"
    update_account_row(db, acc.id, values, now)


def set_blocked(db, acc, blocked, now):
    """`block`: the administrator's block (R14), until `unblock`. `unblock` lifts it and an R16
    block in force; the new destinations called before then no longer count toward R16."""
    fields = {"blocked": int(blocked)}
    if not blocked and acc.blocked_by_r16(now):
        fields["blocked_until"] = now
    update_account(db, acc, now, end_learning=False, **fields)


def r16_block_end(acc, cfg, now):
    """When the R16 block of the account ends, '' when none is in force."""
    return fmt_time(acc.blocked_until, cfg.policy.tz) if acc.blocked_by_r16(now) else ""


def account_limits(acc):
    """The four limits, None for unlimited (JSON null)."""
    return {field: getattr(acc, field) for field in LIMIT_FIELDS}


def account_records(db, cfg, now):
    """Every account as `list` shows it."""
    records = []
    for acc in (Account.from_row(r) for r in load_accounts(db, by_domain=True)):
        today = calls_today(db, cfg, acc.id, now)
        records.append({"user": acc.user, "domain": acc.domain, "created": fmt_time(acc.created, cfg.policy.tz),
                        "state": acc.state if acc.learning(now) else "enforcing", **account_limits(acc),
                        "dest_countries": format_countries(acc.dest_countries),
                        "source_countries": format_countries(acc.source_countries), "blocked": acc.blocked,
                        "blocked_until": r16_block_end(acc, cfg, now), "calls_today": today["biz"] + today["off"]})
    return records


LAST_VERDICT_FIELDS = ("time", "number", "dest", "source_ip", "code", "would", "reason")


def account_details(db, cfg, acc, now):
    """(what `show` shows of an account, its last 10 verdicts as LAST_VERDICT_FIELDS rows). The
    limits and countries are those that apply; `sources` says where each comes from (account,
    domain, learned or default)."""
    today = calls_today(db, cfg, acc.id, now)
    verdicts = query_calls(db, 0, f"{acc.user}@{acc.domain}", limit=10)
    effective, sources = effective_policy(acc, find_domain(db, acc.domain), cfg.policy)
    spent = load_spend(db, acc.id, today_key(cfg, now), lock=False)
    info = {"account": acc.name, "state": acc.state if acc.learning(now) else "enforcing",
            "learning_until": fmt_time(acc.learning_until, cfg.policy.tz) if acc.learning(now) else "",
            "created": fmt_time(acc.created, cfg.policy.tz), "last_seen": fmt_time(acc.last_seen, cfg.policy.tz),
            "blocked": acc.blocked, "blocked_until": r16_block_end(acc, cfg, now), "email": acc.email,
            **account_limits(effective), "daily_spend": effective.daily_spend,
            "dest_countries": format_countries(effective.dest_countries),
            "source_countries": format_countries(effective.source_countries), "pinned": ",".join(sorted(acc.pinned)),
            "anomaly_daily": acc.anomaly_daily, "calls_per_minute": effective.calls_per_minute or cfg.policy.max_calls_per_minute,
            "approved_today_business": today["biz"], "approved_today_off": today["off"],
            "estimated_spend_today": round(spent[0] if spent else 0.0, 4), "sources": sources}
    return info, [(fmt_time(r[0], cfg.policy.tz), r[3], r[4], r[5], r[7], r[8], r[9]) for r in verdicts]


def find_domain(db, name):
    """The domain's policy; a domain without a row inherits everything."""
    row = load_domain(db, name)
    return Domain.from_row(row) if row else Domain(name)


def domain_setting(value):
    """How `domain show` and `domain list` print what a domain sets itself."""
    if value is None:
        return "inherit"
    if isinstance(value, frozenset):
        return format_countries(value) or "none"
    return "unlimited" if value == UNLIMITED else value


def domain_details(db, cfg, name):
    """What `domain show` shows: per field what the domain sets (or inherit), what applies to
    a new account of the domain, and where that comes from."""
    domain = find_domain(db, name)
    effective, sources = effective_policy(default_account(cfg, "", name, 0), domain, cfg.policy)
    fields = [{"field": f, "domain": domain_setting(getattr(domain, f)),
               "effective": format_countries(getattr(effective, f)) if f in COUNTRY_FIELDS else getattr(effective, f),
               "from": sources[f]} for f in POLICY_FIELDS]
    return {"domain": name, "accounts": domain_account_counts(db).get(name, 0),
            "learned_dest": format_countries(domain.learned_dest), "fields": fields}


def domain_records(db):
    """Every domain with a policy or with accounts, as `domain list` shows them."""
    counts = domain_account_counts(db)
    domains = {row[0]: Domain.from_row(row) for row in load_domains(db)}
    return [{"domain": name, "accounts": counts.get(name, 0),
             **{f: domain_setting(getattr(domains.get(name) or Domain(name), f)) for f in POLICY_FIELDS},
             "learned_dest": format_countries(domains[name].learned_dest) if name in domains else ""}
            for name in sorted(set(counts) | set(domains))]


def domain_value(field_name, value):
    """A value given to `domain set` -> its column: INHERIT is NULL, unlimited is UNLIMITED."""
    if value == INHERIT:
        return None
    if field_name in COUNTRY_FIELDS:
        return format_countries(value)
    return UNLIMITED if value is None else value


def update_domain(db, name, fields, now):
    save_domain(db, name, {f: domain_value(f, v) for f, v in fields.items()}, now)


def domain_countries_after(cfg, db, name, command, given):
    """The country fields of a domain after `allow` or `deny` of `given` ({column: codes}); a
    field the domain inherits starts from its [policy] default."""
    domain, known = find_domain(db, name), country_table(db).by_iso
    fields = {}
    for column, codes in given.items():
        if codes:
            current = getattr(domain, column)
            current = policy_default(cfg.policy, column) if current is None else current
            fields[column] = allowed_after(command, current, codes, known, column == "dest_countries")
    return fields


def account_countries_after(acc, command, given, known):
    """The country fields of an account after `allow` or `deny` of `given` ({column: codes})."""
    return {column: allowed_after(command, getattr(acc, column), codes, known, column == "dest_countries")
            for column, codes in given.items() if codes}


def tier_high_notes(cfg, countries, dest):
    """What allowing the destinations `dest` does not change: those of tier high stay rejected."""
    tiers = DestinationTiers(cfg.policy, countries)
    return [f"note: {countries.label(iso)} is of tier high: calls there stay rejected (R06) unless the number is "
            f"whitelisted ({PROG} whitelist add number +NUMBER)" for iso in sorted(dest or ()) if tiers.by_iso[iso] == "high"]


def allowed_after(command, current, codes, known, dest):
    """A country set after `allow` or `deny` of `codes`: a denied destination is kept as !CC, as
    one of tier low would be allowed by being absent."""
    denied = {f"!{c}" for c in codes if c in known} if dest else set()
    return (current - denied) | codes if command == "allow" else (current - codes) | denied


def reset_account(db, cfg, acc, now):
    return clear_account_counters(db, acc.id, today_key(cfg, now), now)


def remove_account(db, acc):
    delete_account(db, acc.id)


def approval_account(db, cfg, approval):
    """The account an approval link names, once it is checked that the link may still lift its
    rejection (a country made high-risk or denied since the alert is not). Raises UserError."""
    user, _, domain = approval.account.rpartition("@")
    acc = find_account(db, user, domain)
    if APPROVABLE[approval.rule] == "dest":
        if approval.value in cfg.policy.high_risk_countries:
            raise UserError(f"{approval.value} is a high-risk destination: only the administrator can allow it")
        if f"!{approval.value}" in acc.dest_countries:
            raise UserError(f"the administrator denied {approval.value} to {acc.name}")
    return acc


def approval_effect(cfg, approval):
    """What confirming the approval does, as a sentence for the account owner."""
    lifts, value = APPROVABLE[approval.rule], approval.value
    if lifts == "quota":
        hours = "off-hours" if approval.rule == "R09" else "business-hours"
        return f"{approval.account} gets a new {hours} daily quota for {value}."
    direction = "to destination" if lifts == "dest" else "from source country"
    return f"{approval.account} may call {direction} {value} for {cfg.http.approval_days} days."


def apply_approval(db, cfg, approval, now, client_ip, user_agent):
    """Lift the rejection an approval link names, as `allow --dest/--source` or a reset of the
    day's quota would, and record who confirmed it. Once only: UserError when used before."""
    acc = approval_account(db, cfg, approval)
    lifts = APPROVABLE[approval.rule]
    db.begin()
    try:
        if not record_approval(db, approval.token_id, acc.id, approval.rule, approval.value, now,
                               None if lifts == "quota" else now + cfg.http.approval_days * 86400,
                               storable(client_ip, 45), storable(user_agent, 255)):
            raise UserError("this approval link has been used already")
        if lifts == "quota":
            clear_daily_counter(db, acc.id, approval.value, "off" if approval.rule == "R09" else "biz")
        else:
            column = APPROVED_COLUMNS[lifts]
            update_account(db, acc, now, end_learning=False, **{column: getattr(acc, column) | {approval.value}})
        db.commit()
    except BaseException as exc:
        db.rollback(exc)
        raise
    log.info("approval: %s %s %s confirmed from %s", acc.name, approval.rule, approval.value, client_ip)



def normalize_list_value(kind, value, policy=None, countries=None):
    """Validate and canonicalize one list entry; raises ValueError. A number prefix is read as a
    dialed number is (`policy` and `countries` needed): '+43', '0043' and '43' are one entry."""
    value = value.strip()
    if kind == "number":
        return dialed_prefix(value, policy, countries)
    if kind == "ip":
        return str(ipaddress.ip_network(value, strict=False))
    if not value or len(value) > 255 or not value.isprintable():
        raise ValueError("a User-Agent pattern must have 1 to 255 printable characters")
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return value


# Codes people type that ISO 3166-1 does not assign (UK, EL are the EU's), or assigns no longer.
COUNTRY_ALIASES = {"UK": "GB", "EL": "GR", "YU": "RS", "TP": "TL", "ZR": "CD", "BU": "MM", "SU": "RU", "DD": "DE", "FX": "FR"}


def unknown_countries(codes, countries):
    """'' when every code of `codes` ('*' and '!CC' aside) is in the country table, else what is
    wrong, naming the nearest ISO code where there is one."""
    unknown = sorted(c for c in codes if c != "*" and c.lstrip("!") not in countries.by_iso)
    hints = [f"{c} (nearest: {COUNTRY_ALIASES[c]}, {countries.name(COUNTRY_ALIASES[c])})" if c in COUNTRY_ALIASES else c
             for c in unknown]
    return f"not in the country table: {', '.join(hints)}" if unknown else ""


def lint(cfg, db):
    """Entries that never do what they were meant to: (where, problem, fix) for each."""
    p = cfg.policy
    countries = country_table(db)
    tiers = DestinationTiers(p, countries)
    findings = []
    for key in ("low_risk_countries", "high_risk_countries", "default_source_countries", "default_destination_countries"):
        problem = unknown_countries(getattr(p, key), countries)
        if problem:
            findings.append((f"[policy] {key}", problem, "correct it in tfps.conf"))
    for key in ("low_risk_prefixes", "high_risk_prefixes"):
        for entry in getattr(p, key):
            try:
                dialed_prefix(entry, p, countries)
            except ValueError as exc:
                findings.append((f"[policy] {key}", str(exc), "correct it in tfps.conf"))
    try:
        read_rate_deck(p, countries)
    except ConfigError as exc:
        findings.append(("[policy] rate_deck", str(exc), "correct the file, or empty [policy] rate_deck"))
    for kind, prefix in sorted(load_list(db, "number")):
        if not prefix.startswith("0"):
            continue
        command = f"{PROG} {kind}list"
        try:
            fixed = dialed_prefix(prefix, p, countries)
            fix = f"{command} remove number {prefix}; {command} add number +{fixed}"
        except ValueError:
            fixed, fix = "", f"{command} remove number {prefix}"
        findings.append((f"{kind}list number {prefix}", "no E.164 number starts with 0, so it never matches"
                         + (f"; as dialed it is +{fixed}" if fixed else ""), fix))
    for acc in (Account.from_row(r) for r in load_accounts(db, by_domain=True)):
        for option, codes in (("--dest", acc.dest_countries), ("--source", acc.source_countries)):
            problem = unknown_countries(codes, countries)
            if problem:
                wrong = ",".join(c for c in sorted(codes) if c != "*" and c.lstrip("!") not in countries.by_iso)
                findings.append((f"account {acc.name}", problem, f"{PROG} deny {acc.user} {acc.domain} {option} {wrong}"))
        high = sorted(c for c in acc.dest_countries if tiers.by_iso.get(c) == "high")
        if high:
            findings.append((f"account {acc.name}", f"allows {', '.join(high)} of tier high: calls there stay rejected (R06) "
                             "unless the number is whitelisted", f"{PROG} whitelist add number +NUMBER (the numbers meant)"))
    for iso, _name, _prefixes, risk, *_ in sorted(load_country_risks(db)):
        if risk not in (*TIERS, "normal"):
            findings.append((f"countries {iso}", f"risk {risk!r} is none of low, medium, high, normal",
                             f"give {iso} its tier with [policy] low_risk_countries or high_risk_countries in tfps.conf"))
    return findings


def read_list_file(path, kind, policy, countries):
    """Entries of an import file: one per line, '#' starts a comment. Returns (values, errors)."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(not_utf8(path)) from None
    values, errors = [], []
    for number, line in enumerate(lines, 1):
        text = line if kind == "ua" and not line.lstrip().startswith("#") else line.split("#", 1)[0]
        if not text.strip():
            continue
        try:
            values.append(normalize_list_value(kind, text, policy, countries))
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
    return values, errors


def probe(number, server, *, user="probe", domain="tfps.invalid", transport="udp", ip=None, ua=None, calls=None, timeout=5.0):
    """Send a real INVITE, ACK a final answer; returns (response SipMessage, round trip ms) or None."""
    host, port = parse_listen(f"{transport}:{server}")[1:]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        local_ip, local_port = sock.getsockname()[:2]
        local = f"[{local_ip}]" if ":" in local_ip else local_ip
        target = f"[{host}]" if ":" in host else host
        branch, tag, call_id = BRANCH_COOKIE + secrets.token_hex(8), secrets.token_hex(4), f"{secrets.token_hex(8)}@tfps-probe"
        ruri = f"sip:{number}@{target}:{port}"
        common = [f"Via: SIP/2.0/{transport.upper()} {local}:{local_port};branch={branch};rport", "Max-Forwards: 70",
                  f"From: <sip:{user}@{domain}>;tag={tag}"]
        extra = [f"User-Agent: {ua or 'TFPS probe ' + __version__}"]
        if ip or calls is not None:
            extra.append(f"P-tfps: {user};{domain};{ip or ''};{ua or ''};{'' if calls is None else calls}")
        invite = "\r\n".join([f"INVITE {ruri} SIP/2.0", *common, f"To: <{ruri}>", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
                              f"Contact: <sip:{user}@{local}:{local_port}>", *extra, "Content-Length: 0", "", ""]).encode()
        started = time.monotonic()
        response = _probe_exchange(sock, invite, transport, started + timeout)
        if response is None:
            return None
        rtt = (time.monotonic() - started) * 1000
        if response.status >= 300:
            ack = "\r\n".join([f"ACK {ruri} SIP/2.0", *common, f"To: {response.header('to')}", f"Call-ID: {call_id}",
                               "CSeq: 1 ACK", "Content-Length: 0", "", ""]).encode()
            sock.send(ack)
        return response, rtt
    except OSError as exc:
        raise UserError(f"probe to {server} over {transport}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _probe_exchange(sock, invite, transport, deadline):
    framer = StreamFramer(1 << 20)
    interval, next_send = T1, time.monotonic()
    while time.monotonic() < deadline:
        if next_send is not None and time.monotonic() >= next_send:
            sock.send(invite)
            next_send = time.monotonic() + interval if transport == "udp" else None
            interval = min(interval * 2, T2)
        sock.settimeout(max(0.01, min(deadline, next_send or deadline) - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (socket.timeout, ConnectionRefusedError):
            continue
        if not data:
            return None
        for raw in (framer.feed(data) if transport == "tcp" else [data]):
            msg = parse_message(raw)
            if not msg.is_request and msg.status >= 200:
                return msg
            if not msg.is_request:
                next_send = None  # a provisional answer stops retransmissions
    return None


# =============================================================================================
# 16. HTTP: decision API, Prometheus metrics, health checks and the admin API, on threads of their own
# =============================================================================================

class HttpError(Exception):
    """An answer other than 200, with a JSON body {"error": message, "parameter": name}."""

    def __init__(self, status, message, parameter=None, headers=()):
        super().__init__(message)
        self.status = status
        self.parameter = parameter
        self.headers = list(headers)


@dataclass
class Route:
    method: str
    pattern: re.Pattern   # matched against the whole path, still percent-encoded
    handler: object       # handler(api, request) -> (status, JSON-able value or str)
    needs_token: bool     # the admin API: [http] api_token as a bearer token


@dataclass
class HttpRequest:
    method: str
    path: str
    params: dict          # query parameters, each given once, UTF-8 decoded
    body: bytes
    headers: object       # http.client.HTTPMessage
    client_ip: str
    groups: dict = field(default_factory=dict)  # the route pattern's named groups, percent-decoded

    def json(self):
        """The body as a JSON object. Raises HttpError 400."""
        if not self.body:
            return {}
        try:
            value = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"the body is not UTF-8 JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HttpError(400, "the body must be a JSON object")
        return value

    @property
    def wants_text(self):
        return self.params.get("format") == "text" or "text/plain" in (self.headers.get("Accept") or "")


def query_decoded(raw):
    """A query name or value as text: '+' is a space, %XX a byte of UTF-8. Raises UnicodeDecodeError."""
    if raw.isascii() and "%" not in raw and "+" not in raw:  # most values of a check: nothing to decode
        return raw
    return urllib.parse.unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")


def query_parameters(query):
    """'a=1&b=x' -> {'a': '1', 'b': 'x'}; each name once, names and values UTF-8. Raises HttpError 400."""
    params = {}
    for item in query.split("&"):
        if not item:
            continue
        raw_name, _, raw_value = item.partition("=")
        try:
            name = query_decoded(raw_name)
        except UnicodeDecodeError:
            raise HttpError(400, "a parameter name is not UTF-8") from None
        try:
            value = query_decoded(raw_value)
        except UnicodeDecodeError:
            raise HttpError(400, f"{name}: not UTF-8 text", name) from None
        if name in params:
            raise HttpError(400, f"{name}: given more than once", name)
        params[name] = value
    return params


def parameter(values, name, parse, default=None):
    """values[name] through a config parser (its ValueError is a 400 naming the parameter)."""
    value = values.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, list):
        value = ",".join(map(str, value))
    elif isinstance(value, (dict, float)) or not isinstance(value, (str, int)):
        raise HttpError(400, f"{name}: must be a string or an integer", name)
    try:
        return parse(str(value))
    except ValueError as exc:
        raise HttpError(400, f"{name}: {exc}", name) from None


def required(values, name, parse):
    value = parameter(values, name, parse)
    if value is None:
        raise HttpError(400, f"{name}: missing", name)
    return value


def _dialable(text):
    """A number as a PBX dials it: digits, a leading '+' and visual separators, at most 64 characters."""
    value = printable(text, 64, "a dialed number", spaces=True)
    digits = VISUAL_SEPARATORS.sub("", value)
    if not re.fullmatch(r"\+?[0-9]{1,%d}" % MAX_NUMBER_DIGITS, digits):
        raise ValueError(f"must be digits, optionally with a leading '+' (at most {MAX_NUMBER_DIGITS})")
    return value


def _ip_address(text):
    ip = without_port(text.strip())
    if parse_ip(ip) is None:
        raise ValueError(f"{text.strip()[:64]!r} is not an IP address")
    return ip


# The parameters of the earlier hosted TFPS web service: name -> (parser, required)
CHECK_PARAMETERS = {
    "dialed_number": (_dialable, True),
    "from_user": (account_user, True),
    "domain": (account_domain, True),
    "source_ip": (_ip_address, False),
    "user_agent": (lambda text: printable(text, 255, "a User-Agent", spaces=True), False),
    "sim_calls": (_integer(0, 999999), False),
    "call_id": (_name(255), False),
    "format": (_choice("json", "text"), False),
}


def check_attempt(values, now):
    """The CallAttempt that the decision API's parameters describe, checked like SIP input."""
    unknown = sorted(set(values) - set(CHECK_PARAMETERS))
    if unknown:
        raise HttpError(400, f"{unknown[0]}: unknown parameter (known: {', '.join(CHECK_PARAMETERS)})", unknown[0])
    got = {name: (required if needed else parameter)(values, name, parse)
           for name, (parse, needed) in CHECK_PARAMETERS.items()}
    return CallAttempt(user=got["from_user"], domain=got["domain"], number=got["dialed_number"],
                       source_ip=got["source_ip"] or "", user_agent=got["user_agent"] or "",
                       concurrent_calls=got["sim_calls"], ts=now, call_id=got["call_id"] or f"http-{random.getrandbits(64):016x}")


def verdict_answer(verdict, latency):
    a = verdict.attempt
    return {"code": verdict.code, "approved": verdict.approved, "reason": verdict.reason, "number": verdict.number,
            "destination_country": verdict.dest_country or "", "source_country": verdict.source_country or "",
            "off_hours": verdict.off_hours, "would_code": verdict.would.code if verdict.would else "",
            "undo": verdict.undo, "account": f"{a.user}@{a.domain}", "call_id": a.call_id, "latency_ms": round(latency, 3)}


# -- handlers: handler(api, request) -> (status, body) -----------------------------------------

def http_check(api, request):
    values = request.params if request.method == "GET" else request.json()
    attempt = check_attempt(values, time.time())
    handoff = Handoff()
    api.server.call_from_thread(api.server.check, attempt, handoff, time.monotonic())
    try:
        result = handoff.wait(api.cfg.http.check_timeout)
    except TimeoutError:
        raise HttpError(504, f"no verdict within check_timeout ({api.cfg.http.check_timeout:g} s)") from None
    if result is None:
        raise HttpError(503, "no verdict: database unavailable ([database] failure = reject)")
    answer = verdict_answer(*result)
    wants_text = values.get("format") == "text" or (values.get("format") is None and request.wants_text)
    return 200, answer["code"] if wants_text else answer


def http_healthz(api, request):
    """The event loop answers within a second."""
    started = time.monotonic()
    handoff = Handoff()
    api.server.call_from_thread(handoff.set, True)
    try:
        handoff.wait(1.0)
    except TimeoutError:
        raise HttpError(503, "the event loop did not answer within 1 s") from None
    return 200, {"status": "ok", "loop_ms": round((time.monotonic() - started) * 1000, 3)}


def http_readyz(api, request):
    """Ready for calls: the server's database connection is up, the database answers, lists loaded."""
    server = api.server
    if server.database_down is not None:
        raise HttpError(503, f"database unavailable for {time.monotonic() - server.database_down:.1f} s")
    if not getattr(server.engine, "lists", None):
        raise HttpError(503, "lists not loaded")
    try:
        db = Database(server.db.url, timeout=max(api.cfg.database.timeout, 1.0))
        try:
            db.probe()
        finally:
            db.close()
    except Exception as exc:  # whatever it is, the answer is "not ready" and why
        raise HttpError(503, f"database unreachable: {exc}") from None
    return 200, {"status": "ready"}


def http_metrics(api, request):
    return 200, PrometheusText(render_metrics(api))


def http_accounts(api, request):
    with api.database() as db:
        return 200, account_records(db, api.cfg, time.time())


def _request_account(db, request):
    try:
        return find_account(db, account_user(request.groups["user"]), account_domain(request.groups["domain"]))
    except ValueError as exc:
        raise HttpError(400, f"account: {exc}", "account") from None


def _account_answer(api, db, acc):
    info, rows = account_details(db, api.cfg, find_account(db, acc.user, acc.domain), time.time())
    return 200, dict(info, last_verdicts=[dict(zip(LAST_VERDICT_FIELDS, r)) for r in rows])


def http_account(api, request):
    with api.database() as db:
        return _account_answer(api, db, _request_account(db, request))


def _limit_or_unlimited(text):
    return None if text in ("None", "null") else _limit(text)


def _settable(body, known):
    """HttpError 400 unless the body names one or more of `known` and nothing else."""
    unknown = sorted(set(body) - set(known))
    if unknown or not body:
        raise HttpError(400, f"give one or more of {', '.join(known)}" + (f" (unknown: {unknown[0]})" if unknown else ""),
                        unknown[0] if unknown else None)


def http_account_set(api, request):
    body = request.json()
    _settable(body, (*LIMIT_FIELDS, "email"))
    fields = {name: parameter(body, name, _limit_or_unlimited) for name in LIMIT_FIELDS if name in body}
    if "email" in body:
        fields["email"] = parameter(body, "email", lambda text: printable(text, 255, "an e-mail address"), "")
    with api.database() as db:
        acc = _request_account(db, request)
        update_account(db, acc, time.time(), **fields)
        return _account_answer(api, db, acc)


COUNTRY_OPTIONS = {"dest": "dest_countries", "source": "source_countries"}


def _country_changes(request):
    """(allow or deny, {column: codes}, the country table) of an allow or deny request:
    {"dest": "GB,FR", "source": ["DE"]}. Allowed codes must be in the table; deny accepts codes
    that are not (it cleans them up)."""
    codes = {column: parameter(request.json(), option, _countries) for option, column in COUNTRY_OPTIONS.items()}
    if not any(codes.values()):
        raise HttpError(400, "give dest and/or source: country codes", "dest")
    command = request.path.rpartition("/")[2]
    checked = {option: codes[column] for option, column in COUNTRY_OPTIONS.items()} if command == "allow" else {}
    return command, codes, checked


def _allowed_destinations(command, codes):
    return codes["dest_countries"] if command == "allow" else ()


def http_account_countries(api, request):
    """allow or deny destination and source countries as `allow`/`deny` do; a denied destination
    is kept as !CC."""
    command, codes, checked = _country_changes(request)
    with api.database() as db:
        acc = _request_account(db, request)
        countries = _known_countries(db, checked)
        update_account(db, acc, time.time(), **account_countries_after(acc, command, codes, countries.by_iso))
        status, answer = _account_answer(api, db, acc)
        return status, dict(answer, notes=tier_high_notes(api.cfg, countries, _allowed_destinations(command, codes)))


def http_account_block(api, request):
    with api.database() as db:
        acc = _request_account(db, request)
        set_blocked(db, acc, request.path.endswith("/block"), time.time())
        return _account_answer(api, db, acc)


def http_account_reset(api, request):
    with api.database() as db:
        acc = _request_account(db, request)
        counters, pairs = reset_account(db, api.cfg, acc, time.time())
        status, answer = _account_answer(api, db, acc)
        return status, dict(answer, cleared_counters=counters, cleared_ab_pairs=pairs)


def http_account_learn(api, request):
    """{"days": N} puts the account in learning mode for N more days; {"stop": true} ends it."""
    body = request.json()
    days = parameter(body, "days", _integer(0, MAX_DAYS))
    if (days is None) == (body.get("stop") is not True):
        raise HttpError(400, 'give either "days": N or "stop": true', "days")
    now = time.time()
    with api.database() as db:
        acc = _request_account(db, request)
        if days is None:
            update_account(db, acc, now, end_learning=True)
        else:
            update_account_row(db, acc.id, {"state": "learning", "learning_until": now + days * 86400}, now)
        return _account_answer(api, db, acc)


def _request_domain(request):
    try:
        return account_domain(request.groups["domain"])
    except ValueError as exc:
        raise HttpError(400, f"domain: {exc}", "domain") from None


def _known_countries(db, given):
    """The country table, once every code of `given` ({parameter: codes}) is in it; else a 400
    naming the parameter and the nearest ISO code, as the CLI does."""
    countries = country_table(db)
    for name, codes in given.items():
        problem = unknown_countries(codes or (), countries)
        if problem:
            raise HttpError(400, f"{name}: {problem}", name)
    return countries


def _domain_answer(api, db, name, fields, countries, dest):
    update_domain(db, name, fields, time.time())
    return 200, dict(domain_details(db, api.cfg, name), notes=tier_high_notes(api.cfg, countries, dest))


def http_domains(api, request):
    with api.database() as db:
        return 200, domain_records(db)


def http_domain(api, request):
    name = _request_domain(request)
    with api.database() as db:
        return 200, domain_details(db, api.cfg, name)


# `domain set`: a limit is N, "unlimited" (or null) or "inherit"; countries are codes or "inherit"
DOMAIN_SETTINGS = {**{name: _inherit_or(_limit) for name in LIMIT_FIELDS}, "daily_spend": _inherit_or(_budget),
                   **{name: _inherit_or(_countries) for name in COUNTRY_FIELDS}}


def http_domain_set(api, request):
    body = request.json()
    _settable(body, POLICY_FIELDS)
    fields = {name: parameter(body, name, DOMAIN_SETTINGS[name], frozenset() if name in COUNTRY_FIELDS else None)
              for name in body}
    name = _request_domain(request)
    given = {f: codes for f, codes in fields.items() if f in COUNTRY_FIELDS and codes != INHERIT}
    with api.database() as db:
        countries = _known_countries(db, given)
        return _domain_answer(api, db, name, fields, countries, given.get("dest_countries"))


def http_domain_countries(api, request):
    """allow or deny destination and source countries of a domain, as for an account."""
    command, codes, checked = _country_changes(request)
    name = _request_domain(request)
    with api.database() as db:
        countries = _known_countries(db, checked)
        fields = domain_countries_after(api.cfg, db, name, command, codes)
        return _domain_answer(api, db, name, fields, countries, _allowed_destinations(command, codes))


def _list_kind(request):
    color, kind = request.groups["color"], request.groups["kind"]
    if color == "white" and kind == "ua":
        raise HttpError(404, "there is no User-Agent whitelist")
    return color, kind


def http_list(api, request):
    color, kind = _list_kind(request)
    with api.database() as db:
        return 200, [{kind: value, "note": note, "added": fmt_time(created, api.cfg.policy.tz)}
                     for value, note, created in list_entries(db, color, kind)]


def _list_value(api, db, kind, values):
    """The entry named by the `value` parameter, read as the CLI reads it (numbers as dialed)."""
    return required(values, "value", lambda text: normalize_list_value(kind, text, api.cfg.policy, country_table(db)))


def http_list_add(api, request):
    color, kind = _list_kind(request)
    body = request.json()
    note = parameter(body, "note", lambda text: printable(text, 255, "a note", spaces=True), "")
    with api.database() as db:
        value = _list_value(api, db, kind, body)
        added, _ = list_add(db, color, kind, [value], note, time.time())
    return (201 if added else 200), {"list": f"{color}list", "kind": kind, "value": value, "added": bool(added)}


def http_list_remove(api, request):
    color, kind = _list_kind(request)
    with api.database() as db:
        value = _list_value(api, db, kind, request.params)
        if not list_remove(db, color, kind, value):
            raise HttpError(404, f"{color}list {kind} {value}: not present")
    return 200, {"list": f"{color}list", "kind": kind, "value": value, "removed": True}


def http_calls(api, request):
    p = request.params
    since = parameter(p, "since", parse_duration, 86400.0)
    with api.database() as db:
        rows = query_calls(db, time.time() - since, parameter(p, "account", _account),
                           parameter(p, "code", _verdict_code), parameter(p, "limit", _integer(1, 10000), 50))
    names = ("time", "user", "domain", "number", "dest_country", "source_ip", "source_country", "code", "would_code",
             "reason", "sip_response", "latency_ms", "node")
    return 200, [dict(zip(names, (fmt_time(r[0], api.cfg.policy.tz), *r[1:]))) for r in rows]


def http_stats(api, request):
    since = parameter(request.params, "since", parse_duration, 7 * 86400.0)
    with api.database() as db:
        by_code, top_accounts, top_countries = call_stats(db, time.time() - since)
    return 200, {"by_code": [{"code": c, "would_code": w, "calls": n} for c, w, n in by_code],
                 "top_accounts": [{"account": f"{u}@{d}", "calls": n, "rejected": r} for u, d, n, r in top_accounts],
                 "top_destinations": [{"country": c, "calls": n, "rejected": r} for c, n, r in top_countries]}


# -- approval pages: public (the account owner opens them from an alert), outside allow_from ----

class HtmlPage(str):
    """A body served as text/html."""


APPROVE_PREFIX = "/approve/"
PAGE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:36em;margin:2em auto;padding:0 1em;line-height:1.5}"
              "button{font-size:1.1em;padding:.6em 1.4em}")


def html_page(title, *paragraphs, form=""):
    """A small self-contained page; the paragraphs are escaped here."""
    body = "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
    return HtmlPage(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                    f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                    f'<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex">'
                    f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>"
                    f"<body><h1>{html.escape(title)}</h1>{body}{form}</body></html>")


def _approval(api, request, now):
    """(Approval, account) of the link requested, or (None, the refusal's (status, page))."""
    secret = api.cfg.http.secret
    if not secret:
        return None, (404, html_page("Approval links are off", "This server has no [http] secret."))
    try:
        approval = read_approval_token(secret, request.groups["token"], now)
    except (ValueError, TypeError) as exc:
        return None, (410 if "expired" in str(exc) else 403, html_page("This link cannot be used", str(exc)))
    with api.database() as db:
        used = load_approval(db, approval.token_id)
        if used:
            return None, (410, html_page("Already approved", f"This link was used on {fmt_time(used[0], api.cfg.policy.tz)} "
                                                             f"from {used[2]}; a link works once."))
        try:
            return (approval, approval_account(db, api.cfg, approval)), None
        except UserError as exc:
            return None, (403, html_page("This link cannot be used", str(exc)))


def http_approve_page(api, request):
    """What the link would allow, and a button that POSTs the confirmation: opening the link
    (a mail scanner prefetching it) changes nothing."""
    found, refusal = _approval(api, request, time.time())
    if refusal:
        return refusal
    approval, _ = found
    expires = fmt_time(approval.expires, api.cfg.policy.tz)
    form = '<form method="post"><button type="submit">Confirm</button></form>'
    return 200, html_page("Allow this call?", approval_effect(api.cfg, approval),
                          f"Confirm only if you placed the call that was rejected ({approval.rule}). "
                          f"This link can be used once, until {expires}.", form=form)


def http_approve(api, request):
    now = time.time()
    found, refusal = _approval(api, request, now)
    if refusal:
        return refusal
    approval, _ = found
    try:
        with api.database() as db:
            apply_approval(db, api.cfg, approval, now, request.client_ip, request.headers.get("User-Agent") or "")
    except UserError as exc:  # used by a concurrent request since _approval looked
        return 410, html_page("This link cannot be used", str(exc))
    return 200, html_page("Approved", approval_effect(api.cfg, approval),
                          f"Calls follow within {api.cfg.database.reload_interval:g} s.")


# -- the dashboard: dashboard.html, which fetches /v1/dashboard every 10 s ------------------------

DASHBOARD_PATHS = ("/", "/v1/dashboard")
DASHBOARD_HOURS = 24
DASHBOARD_SETTLED = 300  # seconds after which an hour's call log rows are taken as all written


def http_dashboard_page(api, request):
    try:
        return 200, HtmlPage(read_packaged("dashboard.html", UserError))
    except UserError as exc:
        raise HttpError(500, str(exc)) from None


def most_first(counts, top=10):
    """The `top` (name, count) pairs of the largest counts, ties by name."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]


def http_dashboard(api, request):
    """What the dashboard shows: the last 24 h of the call log (every node's), and this node's
    reputation lookups and alert queue (every worker's)."""
    server, now, tz = api.server, time.time(), api.cfg.policy.tz
    first_hour = int(now // 3600) - DASHBOARD_HOURS + 1
    hours = range(first_hour, first_hour + DASHBOARD_HOURS)
    with api.database() as db:
        summaries = [api.call_log_hour(db, hour, now) for hour in hours]
        rejections = recent_rejections(db, first_hour * 3600, 50)
        outbox, failed, oldest = pending_alerts(db)
    counters, gauges, _, _ = server.metrics_totals()
    per_code, nodes, accounts, countries = {}, {}, {}, {}
    for i, (verdicts, rejected) in enumerate(summaries):
        for code, node, calls, last in verdicts:
            per_code.setdefault(code, [0] * DASHBOARD_HOURS)[i] += calls
            seen = nodes.setdefault(node, [0, 0.0])
            seen[0], seen[1] = seen[0] + calls, max(seen[1], last)
        for user, domain, country, calls in rejected:
            accounts[f"{user}@{domain}"] = accounts.get(f"{user}@{domain}", 0) + calls
            countries[country] = countries.get(country, 0) + calls
    rejection_names = ("time", "user", "domain", "number", "dest_country", "source_ip", "code", "would_code", "reason",
                       "undo", "node")
    return 200, {
        "node": api.cfg.server.node_name, "version": __version__, "generated": fmt_time(now, tz),
        "hours": [fmt_time(hour * 3600, tz, "%H:%M") for hour in hours],
        "verdicts_per_hour": dict(sorted(per_code.items())),
        "top_accounts": [{"account": a, "rejected": n} for a, n in most_first(accounts)],
        "top_destinations": [{"country": c, "rejected": n} for c, n in most_first(countries)],
        "recent_rejections": [dict(zip(rejection_names, (fmt_time(r[0], tz), *r[1:]))) for r in rejections],
        "reputation": {**{result: n for (kind, result, _), n in counters.items() if kind == "reputation"},
                       "in_flight": gauges["reputation_lookups_in_flight"]},
        "alerts": {"in_memory": gauges["alerts_in_memory"], "outbox": outbox, "retrying": failed,
                   "oldest": fmt_time(oldest, tz) if oldest else "",
                   "delivery_failures": counters[("counter", "alert_delivery_failures", ())]},
        "database_up": gauges["database_up"] == 1,
        "nodes": [{"node": node, "calls": calls, "last_call": fmt_time(last, tz)} for node, (calls, last) in sorted(nodes.items())],
    }


ACCOUNT_PATH = r"/v1/accounts/(?P<user>[^/@]+)@(?P<domain>[^/@]+)"
DOMAIN_PATH = r"/v1/domains/(?P<domain>[^/@]+)"
LIST_PATH = r"/v1/lists/(?P<color>black|white)/(?P<kind>number|ip|ua)"

# (method, path pattern, handler, needs_token): the one place a route is added
ROUTES = [Route(method, re.compile(pattern), handler, needs_token) for method, pattern, handler, needs_token in (
    ("GET", r"/check", http_check, False),
    ("POST", r"/v1/check", http_check, False),
    ("GET", r"/metrics", http_metrics, False),
    ("GET", r"/healthz", http_healthz, False),
    ("GET", r"/readyz", http_readyz, False),
    ("GET", r"/v1/accounts", http_accounts, True),
    ("GET", ACCOUNT_PATH, http_account, True),
    ("POST", ACCOUNT_PATH + r"/set", http_account_set, True),
    ("POST", ACCOUNT_PATH + r"/(?:allow|deny)", http_account_countries, True),
    ("POST", ACCOUNT_PATH + r"/(?:block|unblock)", http_account_block, True),
    ("POST", ACCOUNT_PATH + r"/reset", http_account_reset, True),
    ("POST", ACCOUNT_PATH + r"/learn", http_account_learn, True),
    ("GET", r"/v1/domains", http_domains, True),
    ("GET", DOMAIN_PATH, http_domain, True),
    ("POST", DOMAIN_PATH + r"/set", http_domain_set, True),
    ("POST", DOMAIN_PATH + r"/(?:allow|deny)", http_domain_countries, True),
    ("GET", LIST_PATH, http_list, True),
    ("POST", LIST_PATH, http_list_add, True),
    ("DELETE", LIST_PATH, http_list_remove, True),
    ("GET", r"/v1/calls", http_calls, True),
    ("GET", r"/v1/stats", http_stats, True),
    ("GET", r"/", http_dashboard_page, False),
    ("GET", r"/v1/dashboard", http_dashboard, False),
    ("GET", APPROVE_PREFIX + r"(?P<token>[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", http_approve_page, False),
    ("POST", APPROVE_PREFIX + r"(?P<token>[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)", http_approve, False),
)]
# a fixed path (/check, /metrics, ...) -> the routes it matches: a check tries one pattern, not all
ROUTES_BY_PATH = {route.pattern.pattern: [r for r in ROUTES if r.pattern.fullmatch(route.pattern.pattern)]
                  for route in ROUTES if re.escape(route.pattern.pattern) == route.pattern.pattern}


# -- /metrics ---------------------------------------------------------------------------------

class PrometheusText(str):
    """A /metrics body: served as the Prometheus text exposition format 0.0.4."""


# name -> (type, help); the names without the tfps_ prefix and the _total suffix of counters
METRIC_HELP = {
    "build_info": ("gauge", "TFPS version; always 1"),
    "start_time_seconds": ("gauge", "when the server started, seconds since the epoch"),
    "verdicts": ("counter", "verdicts by code, server mode and interface (sip, http)"),
    "decision_duration_seconds": ("histogram", "time from the request to its verdict, reputation lookups included"),
    "sip_requests": ("counter", "SIP requests received from trusted sources, by method"),
    "sip_responses": ("counter", "SIP responses sent, by status (retransmissions not counted)"),
    "sip_dropped": ("counter", "SIP packets or connections dropped, by reason"),
    "sip_transactions": ("gauge", "SIP transactions held"),
    "sip_handed_over": ("counter", "UDP requests that a worker read and handed over to the worker of their caller"),
    "sip_overload": ("counter", "INVITEs answered R98 at once, having waited longer than overload_after or come from a crowded receive queue, by answer (reject, approve)"),
    "http_overload": ("counter", "HTTP checks answered R98 at once, having waited longer than overload_after, by answer (reject, approve)"),
    "tcp_connections": ("gauge", "SIP TCP connections open"),
    "reputation_lookups": ("counter", "reputation answers: hit (cached), miss (looked up), failure (lookup failed)"),
    "reputation_lookups_in_flight": ("gauge", "IP addresses being looked up now"),
    "alerts_queued": ("gauge", "alerts not yet delivered: in memory and in the outbox"),
    "alert_delivery_failures": ("counter", "alert deliveries that failed (retried later)"),
    "database_up": ("gauge", "1 while the server's database connection works"),
    "database_errors": ("counter", "database operations that failed because the database was unavailable"),
    "database_reconnects": ("counter", "reconnections after the database was unavailable"),
    "call_log_unflushed_rows": ("gauge", "call log rows held in memory, not yet written"),
    "call_log_dropped_rows": ("counter", "call log rows lost: refused by the database or past max_unflushed_rows"),
    "call_log_spooled_rows": ("counter", "call log rows written to the spool file while the database was unavailable"),
    "call_log_spool_damaged_lines": ("counter", "spool lines skipped when replayed: cut short by a crash, or not a row"),
    "list_entries": ("gauge", "entries of the loaded lists"),
    "worker_verdicts": ("counter", "verdicts by worker process (several workers: how the callers spread over them)"),
    "workers_reporting": ("gauge", "worker processes whose counts are in these figures: this one, and those that reported in the last 5 s"),
    "accounts": ("gauge", "accounts by state (learning, enforcing, blocked)"),
    "http_requests": ("counter", "HTTP requests answered, by route and status"),
}


def metric_lines(name, samples):
    """Exposition lines of one metric: samples are (labels dict, value) or, for a histogram,
    (labels dict, [count per bucket..., count above, sum])."""
    kind, text = METRIC_HELP[name]
    full = f"tfps_{name}" + ("_total" if kind == "counter" else "")
    lines = [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]

    def labelled(metric, labels):
        if not labels:
            return metric
        pairs = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), chr(92) + "n")}"'
                         for k, v in labels.items())
        return f"{metric}{{{pairs}}}"

    for labels, value in samples:
        if kind != "histogram":
            lines.append(f"{labelled(full, labels)} {value}")
            continue
        cumulative = 0
        for bound, count in zip(Metrics.LATENCY_BUCKETS + (float("inf"),), value[:-1]):
            cumulative += count
            lines.append(f"{labelled(full + '_bucket', dict(labels, le='+Inf' if bound == float('inf') else repr(bound)))} {cumulative}")
        lines.append(f"{labelled(full + '_sum', labels)} {value[-1]!r}")
        lines.append(f"{labelled(full + '_count', labels)} {cumulative}")
    return lines


def list_sizes(lists):
    networks = lambda nets: sum(len(table) for version in nets.nets.values() for table in version.values())
    return {"number_black": len(lists.number_black.items), "number_white": len(lists.number_white.items),
            "ip_black": networks(lists.ip_black), "ip_white": networks(lists.ip_white),
            "user_agent": len(lists.user_agents.patterns), "countries": len(lists.countries.by_iso)}


def render_metrics(api):
    """The exposition text: state read where it lives (the loop's objects, read-only; the
    database through this request's own connection), counters from the Metrics objects."""
    server = api.server
    counters, gauges, per_worker, reporting = server.metrics_totals()
    http_counts, _ = api.metrics.snapshot()
    counts = {(name, labels): value for (kind, name, labels), value in counters.items() if kind == "count"}
    grouped = {}
    for (name, labels), value in [*counts.items(), *http_counts.items()]:
        grouped.setdefault(name, []).append((dict(labels), value))
    c = {name: value for (kind, name, _), value in counters.items() if kind == "counter"}

    def count(name, **labels):
        return counts.get((name, tuple(labels.items())), 0)
    samples = {
        "build_info": [({"version": __version__}, 1)],
        "start_time_seconds": [({}, round(api.started, 3))],
        "verdicts": grouped.get("verdicts", []),
        "decision_duration_seconds": [(dict(labels), slots) for (kind, name, labels), slots in counters.items()
                                      if kind == "histogram" and name == "decision"],
        "sip_requests": grouped.get("sip_requests", []),
        "sip_responses": grouped.get("sip_responses", []),
        "sip_dropped": [({"reason": reason}, c[key]) for reason, key in (
            ("untrusted", "untrusted"), ("malformed", "malformed"), ("oversized", "oversized"),
            ("overloaded", "overflow"), ("resend_budget", "resend_dropped"), ("tcp_refused", "tcp_refused"))],
        "sip_transactions": [({}, gauges["sip_transactions"])],
        "sip_handed_over": [({}, c["handed_over"])],
        "sip_overload": [({"answer": answer}, count("sip_overload", answer=answer)) for answer in ("reject", "approve")],
        "http_overload": [({"answer": answer}, count("http_overload", answer=answer)) for answer in ("reject", "approve")],
        "tcp_connections": [({}, gauges["tcp_connections"])],
        "reputation_lookups": [({"result": result}, n) for (kind, result, _), n in counters.items() if kind == "reputation"],
        "reputation_lookups_in_flight": [({}, gauges["reputation_lookups_in_flight"])],
        "alert_delivery_failures": [({}, c["alert_delivery_failures"])],
        "database_up": [({}, gauges["database_up"])],
        "database_errors": [({}, count("database_errors"))],
        "database_reconnects": [({}, count("database_reconnects"))],
        "call_log_unflushed_rows": [({}, gauges["call_log_unflushed_rows"])],
        "call_log_dropped_rows": [({}, c["call_log_dropped_rows"])],
        "call_log_spooled_rows": [({}, c["call_log_spooled_rows"])],
        "call_log_spool_damaged_lines": [({}, c["call_log_spool_damaged_lines"])],
        "list_entries": [({"list": name}, n) for name, n in list_sizes(server.engine.lists).items()],
        "worker_verdicts": [({"worker": number}, n) for number, n in sorted(per_worker.items())],
        "workers_reporting": [({}, reporting)],
        "http_requests": grouped.get("http_requests", []),
    }
    queued = gauges["alerts_in_memory"]
    try:
        if server.database_down is not None:
            raise HttpError(503, "database unavailable")
        with api.database(timeout=max(api.cfg.database.timeout, 1.0)) as db:
            queued += table_size(db, "alert_outbox")
            rows = accounts_by_state(db, time.time())
        by_state = {"learning": 0, "enforcing": 0, "blocked": 0}
        by_state.update({state: int(n) for state, n in rows})
        samples["accounts"] = [({"state": state}, n) for state, n in by_state.items()]
        samples["alerts_queued"] = [({}, int(queued))]
    except HttpError:  # the database is unavailable: these are left out, the rest is served
        pass
    lines = []
    for name in METRIC_HELP:
        if name in samples:
            lines += metric_lines(name, samples[name])
    return "\n".join(lines) + "\n"


# -- the server -------------------------------------------------------------------------------

MAX_KNOWN_CLIENTS = 4096  # client addresses whose allow_from answer is kept


class HttpInterface:
    """The HTTP interface of a running Server: a thread accepting connections and a thread per
    connection (at most [http] max_connections). Checks go to the server's event loop through
    Server.call_from_thread and come back on a Handoff; admin requests and scrapes use a short
    connection of their own to the database, never the loop's."""

    def __init__(self, server):
        self.server = server
        self.metrics = Metrics()
        self.metrics_lock = threading.Lock()  # several connection threads count
        self.dashboard_hours = {}  # hour -> call_log_hour() of a settled hour
        self.dashboard_lock = threading.Lock()
        self.started = time.time()
        self.allowed_ips = ((), {})  # (the allow_from they were decided for, client IP -> allowed)
        host, port = self.cfg.http.listen
        self.httpd = _HttpServer(self, (host, port))
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.25,), name="http", daemon=True)

    @property
    def cfg(self):
        """The server's Config in service (a SIGHUP replaces it)."""
        return self.server.cfg

    @property
    def address(self):
        host, port = self.httpd.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self):
        self.thread.start()
        log.info("HTTP interface on %s (admin API %s)", self.address, "on" if self.cfg.http.api_token else "off: no [http] api_token")

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    @contextlib.contextmanager
    def database(self, timeout=10.0):
        """A connection of this request's own; HttpError 503 when the database cannot be used."""
        db = None
        try:
            db = Database(self.server.db.url, timeout=timeout)
            yield db
        except UserError as exc:
            if isinstance(exc, DatabaseError):
                raise HttpError(503, str(exc)) from None
            raise
        except sqlite3.Error as exc:
            raise HttpError(503, f"database error: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("pymysql"):
                raise HttpError(503, f"database error: {exc.args[-1] if exc.args else exc}") from None
            raise
        finally:
            if db is not None:
                db.close()

    def call_log_hour(self, db, hour, now):
        """call_log_hour(), kept for an hour that ended more than DASHBOARD_SETTLED seconds ago (its
        rows are written by then): a dashboard refresh reads only the current hour's rows."""
        with self.dashboard_lock:
            kept = self.dashboard_hours.get(hour)
        if kept is not None:
            return kept
        summary = call_log_hour(db, hour)
        if (hour + 1) * 3600 + DASHBOARD_SETTLED <= now:
            with self.dashboard_lock:
                self.dashboard_hours[hour] = summary
                for old in [h for h in self.dashboard_hours if h <= hour - DASHBOARD_HOURS]:
                    del self.dashboard_hours[old]
        return summary

    def count(self, route, status):
        with self.metrics_lock:
            self.metrics.inc("http_requests", route=route, status=status)

    def authorized(self, request):
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        expected = self.cfg.http.api_token
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())

    def has_dashboard_token(self, request):
        """The dashboard is also served outside allow_from to the api_token, given as a bearer
        token or as ?token= (a bookmark on a phone)."""
        token = request.params.get("token")
        if not self.cfg.http.api_token or token is None:
            return bool(self.cfg.http.api_token) and self.authorized(request)
        return hmac.compare_digest(token.encode(), self.cfg.http.api_token.encode())

    def allowed(self, ip):
        """Decided once per client address while allow_from stays (a SIGHUP may change it): a
        keep-alive client parses its address once, not on every check."""
        allow_from = self.cfg.http.allow_from
        decided_for, known = self.allowed_ips
        if decided_for is not allow_from:
            known = {}
            self.allowed_ips = (allow_from, known)
        allowed = known.get(ip)
        if allowed is None:
            addr = parse_ip(ip.split("%")[0])
            allowed = addr is not None and any(addr in net for net in allow_from)
            if len(known) < MAX_KNOWN_CLIENTS:
                known[ip] = allowed
        return allowed

    def answer(self, request):
        """(status, body, extra headers) for a request whose head and body have arrived."""
        public = request.path.startswith(APPROVE_PREFIX) or (request.path in DASHBOARD_PATHS and self.has_dashboard_token(request))
        if not self.allowed(request.client_ip) and not public:
            return "forbidden", 403, {"error": f"{request.client_ip} is not in [http] allow_from"}, []
        candidates = ROUTES_BY_PATH.get(request.path, ROUTES)
        matches = [(route, m) for route in candidates if (m := route.pattern.fullmatch(request.path))]
        if not matches:
            return "unknown", 404, {"error": f"no such resource: {request.path[:200]}"}, []
        chosen = next(((route, m) for route, m in matches if route.method == request.method), None)
        if chosen is None:
            allow = ", ".join(sorted({route.method for route, _ in matches}))
            return "unknown", 405, {"error": f"{request.method} not allowed here (allowed: {allow})"}, [("Allow", allow)]
        route, match = chosen
        name = route.handler.__name__.removeprefix("http_")
        if route.needs_token:
            if not self.cfg.http.api_token:
                return name, 404, {"error": "the admin API is off: set [http] api_token"}, []
            if not self.authorized(request):
                return name, 401, {"error": "a valid bearer token is required (Authorization: Bearer TOKEN)"}, \
                    [("WWW-Authenticate", 'Bearer realm="tfps"')]
        try:
            request.groups = {k: urllib.parse.unquote(v, errors="strict") for k, v in match.groupdict().items()}
            status, body = route.handler(self, request)
            return name, status, body, []
        except UnicodeDecodeError:
            return name, 400, {"error": "the path is not UTF-8"}, []
        except HttpError as exc:
            body = {"error": str(exc)}
            if exc.parameter:
                body["parameter"] = exc.parameter
            return name, exc.status, body, exc.headers
        except UserError as exc:  # the Admin functions' refusals: an unknown account, ...
            return name, 404 if str(exc).startswith("unknown") else 409, {"error": str(exc)}, []


def http_listen_error(address, exc):
    host, port = address
    return UserError(f"cannot listen on [http] listen = {f'[{host}]' if ':' in host else host}:{port}: {exc.strerror}")


def probe_http_listen(address):
    """Bind [http] listen as the HTTP interface will and let go: with several workers a taken
    port is one line before any worker starts, as with one process."""
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise http_listen_error(address, exc) from None


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, api, address):
        self.api = api
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.open_connections = 0
        self.lock = threading.Lock()
        self.reading = {}  # handler -> monotonic deadline for its request to have arrived
        try:
            super().__init__(address, _HttpHandler)
        except OSError as exc:
            raise http_listen_error(address, exc) from None

    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: no reverse DNS lookup of the address

    def process_request(self, request, client_address):
        with self.lock:
            full = self.open_connections >= self.api.cfg.http.max_connections
            if not full:
                self.open_connections += 1
        if full:
            with contextlib.suppress(OSError):
                body = b'{"error": "too many connections ([http] max_connections)"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.open_connections -= 1

    def service_actions(self):
        """Every 0.25 s: close the connections whose request is overdue (slow clients, idle
        keep-alive), so that none holds a thread longer than request_timeout."""
        now = time.monotonic()
        for handler, deadline in list(self.reading.items()):
            if now > deadline:
                self.reading.pop(handler, None)
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    date_header = (0, "")  # (second, the Date header of that second), shared by the connections

    def version_string(self):
        return self.server.api.cfg.server.server_header

    def date_time_string(self):
        """The Date header, formatted once a second rather than for every answer."""
        second = int(time.time())
        known, text = _HttpHandler.date_header
        if known != second:
            text = super().date_time_string(second)
            _HttpHandler.date_header = (second, text)
        return text

    def setup(self):
        self.timeout = self.server.api.cfg.http.request_timeout
        super().setup()
        # an answer leaves at once even while an earlier one is unacknowledged (Nagle would hold
        # it until the client's delayed ACK, 40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self):
        self.server.reading[self] = time.monotonic() + self.server.api.cfg.http.request_timeout
        try:
            super().handle_one_request()
        except OSError:  # the client left, or the connection was closed for being too slow
            self.close_connection = True
        finally:
            self.server.reading.pop(self, None)

    def do_GET(self):
        self.dispatch()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def dispatch(self):
        api = self.server.api
        path, _, query = self.path.partition("?")
        name, status, body, headers = "unknown", 400, None, []
        try:
            if self.headers.get("Transfer-Encoding"):
                raise HttpError(411, "send the body with a Content-Length, not chunked")
            length = self.headers.get("Content-Length") or "0"
            if not length.isdigit():
                raise HttpError(400, "bad Content-Length")
            if int(length) > api.cfg.http.max_body_size:
                self.close_connection = True
                raise HttpError(413, f"the body is larger than [http] max_body_size ({api.cfg.http.max_body_size} bytes)")
            data = self.rfile.read(int(length)) if int(length) else b""
            if len(data) < int(length):
                self.close_connection = True
                return
            self.server.reading.pop(self, None)
            request = HttpRequest(self.command, path, query_parameters(query), data, self.headers, self.client_address[0])
            name, status, body, headers = api.answer(request)
        except HttpError as exc:
            body = {"error": str(exc)}
            if exc.parameter:
                body["parameter"] = exc.parameter
            status = exc.status
        except Exception:  # a bug must cost one request, never the thread or the server
            log.exception("HTTP %s %s failed", self.command, path[:200])
            status, body = 500, {"error": "internal error (see the server log)"}
        api.count(name, status)
        self.reply(status, body, headers)

    def reply(self, status, body, headers=()):
        if isinstance(body, PrometheusText):
            data, kind = body.encode(), "text/plain; version=0.0.4; charset=utf-8"
        elif isinstance(body, HtmlPage):
            data, kind = body.encode(), "text/html; charset=utf-8"
        elif isinstance(body, str):
            data, kind = body.encode(), "text/plain; charset=utf-8"
        else:
            data, kind = (json.dumps(body, default=str) + "\n").encode(), "application/json"
        head = [f"{self.protocol_version} {status} {http.HTTPStatus(status).phrase}", f"Server: {self.version_string()}",
                f"Date: {self.date_time_string()}", f"Content-Type: {kind}", f"Content-Length: {len(data)}",
                "Cache-Control: no-store", *(f"{key}: {value}" for key, value in headers)]
        if self.close_connection:
            head.append("Connection: close")
        # one write: head and body leave in one segment
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (data if self.command != "HEAD" else b""))
        self.log_request(status, len(data))

    def send_error(self, code, message=None, explain=None):
        """Errors found while reading the request line and headers, as JSON like the others."""
        self.close_connection = True
        self.reply(code, {"error": message or http.HTTPStatus(code).phrase})

    def log_message(self, fmt, *args):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("HTTP %s %s", self.client_address[0], fmt % args)



# =============================================================================================
# 17. CLI: argparse subcommands and main()
# =============================================================================================

def print_table(headers, rows, as_json=False):
    if as_json:
        print(json.dumps([dict(zip(headers, row)) for row in rows], indent=2, default=str))
        return
    text = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in text:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def fmt_limit(value):
    return "unlimited" if value is None else value


def fmt_value(value):
    """How a table shows a value: yes/no for booleans, as JSON shows true/false."""
    return ("yes" if value else "no") if isinstance(value, bool) else value


def arg_type(parse):
    """An argparse type from one of the config parsers, keeping its error message."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def text_arg(longest, spaces=False):
    return arg_type(lambda text: printable(text, longest, "the value", spaces))


count_arg = arg_type(_limit)
setting_arg = arg_type(_inherit_or(_limit))
spend_arg = arg_type(_inherit_or(_budget))
calls_arg = arg_type(_integer(0, INT_MAX))
countries_arg = arg_type(_countries)
duration_arg = arg_type(parse_duration)
listen_arg = arg_type(parse_listen)
account_arg = arg_type(_account)
number_arg = text_arg(64, spaces=True)  # call_log.dialed holds 64 characters


def server_arg(text):
    try:
        parse_listen(f"udp:{text}")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (IPv6 as [::1]:5060)") from None
    return text


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help="configuration file (default /etc/tfps/tfps.conf if present)")
    common.add_argument("--db", type=arg_type(_database_url), metavar="URL", help="database URL, overriding [database] url")
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    account = argparse.ArgumentParser(add_help=False)
    account.add_argument("user", type=arg_type(account_user))
    account.add_argument("domain", type=arg_type(account_domain))
    limits = argparse.ArgumentParser(add_help=False)
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument("--concurrent", type=setting_arg, default=argparse.SUPPRESS, metavar="N", help="concurrent calls, business hours")
    policy.add_argument("--concurrent-off", type=setting_arg, default=argparse.SUPPRESS, metavar="N", help="concurrent calls, off hours")
    policy.add_argument("--daily-quota", type=setting_arg, default=argparse.SUPPRESS, metavar="N", help="approved calls a day, business hours")
    policy.add_argument("--daily-quota-off", type=setting_arg, default=argparse.SUPPRESS, metavar="N", help="approved calls a day, off hours")
    policy.add_argument("--daily-spend", type=spend_arg, default=argparse.SUPPRESS, metavar="AMOUNT",
                        help="estimated cost of approved calls a day (R17); N, unlimited or inherit")
    limits = argparse.ArgumentParser(add_help=False, parents=[policy])
    limits.add_argument("--email", type=text_arg(255), metavar="ADDR", help="the account's alert address")
    countries = argparse.ArgumentParser(add_help=False)
    countries.add_argument("--dest", type=countries_arg, metavar="CC,...", help="destination countries")
    countries.add_argument("--source", type=countries_arg, metavar="CC,...", help="source countries")

    parser = argparse.ArgumentParser(prog=PROG, description="TFPS, the Telephony Fraud Prevention System.")
    parser.add_argument("--version", action="version", version=f"TFPS {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the SIP server")
    p.add_argument("--listen", action="append", type=listen_arg, metavar="SPEC", help="udp:HOST:PORT or tcp:HOST:PORT (repeatable)")
    p.add_argument("--mode", choices=("redirect", "failover", "monitor"))
    sub.add_parser("initdb", parents=[common], help="create or migrate the database in place")
    p = sub.add_parser("config", parents=[common], help="configuration tools")
    p.add_argument("action", choices=("check",), help="check: validate and print the effective configuration")
    sub.add_parser("list", parents=[common, json_opt], help="list accounts")
    sub.add_parser("show", parents=[common, account, json_opt], help="one account: limits, today's counters, last verdicts")
    sub.add_parser("add", parents=[common, account, limits, countries], help="pre-provision an account")
    sub.add_parser("remove", parents=[common, account], help="remove an account and its counters")
    sub.add_parser("reset", parents=[common, account], help="zero today's counters and A->B blocks of an account")
    sub.add_parser("set", parents=[common, account, limits], help="set limits by hand (pinned against training)")
    sub.add_parser("allow", parents=[common, account, countries], help="allow destination/source countries")
    sub.add_parser("deny", parents=[common, account, countries], help="remove allowed destination/source countries")
    sub.add_parser("block", parents=[common, account], help="reject every call of an account (R14)")
    sub.add_parser("unblock", parents=[common, account], help="lift a block, the administrator's or R16's")
    p = sub.add_parser("learn", parents=[common, account], help="put an account in learning mode, or end it")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--days", type=arg_type(_integer(0, MAX_DAYS)), metavar="N", help="learn for N more days")
    g.add_argument("--stop", action="store_true", help="end learning now and enforce")
    for color in ("blacklist", "whitelist"):
        p = sub.add_parser(color, parents=[common, json_opt], help=f"manage the {color} of numbers, IPs" + (" and User-Agents" if color == "blacklist" else ""))
        p.add_argument("action", choices=("add", "remove", "list", "import"))
        p.add_argument("kind", choices=("number", "ip", "ua") if color == "blacklist" else ("number", "ip"))
        p.add_argument("value", nargs="?", help="prefix, CIDR or regex; a file for import")
        p.add_argument("--note", type=text_arg(255, spaces=True), default="", help="a note stored with added entries")
    p = sub.add_parser("domain", help="per-domain (customer) policy inherited by the domain's accounts")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    domain = argparse.ArgumentParser(add_help=False)
    domain.add_argument("domain", type=arg_type(account_domain))
    actions.add_parser("list", parents=[common, json_opt], help="domains with a policy or accounts")
    actions.add_parser("show", parents=[common, domain, json_opt], help="what the domain sets and what applies to its accounts")
    d = actions.add_parser("set", parents=[common, domain, policy],
                           help="set limits (N, unlimited, or inherit for the [policy] default) and countries")
    d.add_argument("--dest", type=arg_type(_inherit_or(_countries)), metavar="CC,...", help="destination countries, or inherit")
    d.add_argument("--source", type=arg_type(_inherit_or(_countries)), metavar="CC,...", help="source countries, or inherit")
    actions.add_parser("allow", parents=[common, domain, countries], help="allow destination/source countries")
    actions.add_parser("deny", parents=[common, domain, countries], help="deny destination/source countries")
    p = sub.add_parser("calls", parents=[common, json_opt], help="verdict history")
    p.add_argument("--account", type=account_arg, metavar="USER@DOMAIN")
    p.add_argument("--code", type=arg_type(_verdict_code), metavar="CODE", help="A00, R01 ... R15 (also matches would-be rejections)")
    p.add_argument("--since", type=duration_arg, default=86400.0, metavar="DURATION", help="default 24h")
    p.add_argument("--limit", type=arg_type(_integer(1)), default=50, metavar="N")
    p = sub.add_parser("stats", parents=[common, json_opt], help="verdicts by code, top accounts and destinations")
    p.add_argument("--since", type=duration_arg, default=7 * 86400.0, metavar="DURATION", help="default 7d")
    p = sub.add_parser("check", parents=[common, account, json_opt], help="evaluate a hypothetical call without counting it")
    p.add_argument("number", type=number_arg)
    p.add_argument("--ip", type=text_arg(64), default="", help="the caller's source IP")
    p.add_argument("--ua", type=text_arg(255, spaces=True), default="", help="the caller's User-Agent")
    p.add_argument("--calls", type=calls_arg, help="concurrent calls reported by the PBX")
    p.add_argument("--country", type=arg_type(_country), help="source country, instead of a reputation lookup")
    p.add_argument("--at", metavar="TIME", help="ISO 8601 time of the call (default now)")
    p = sub.add_parser("probe", parents=[common], help="send a real INVITE to a TFPS server and show the answer")
    p.add_argument("number", type=number_arg)
    p.add_argument("--server", required=True, type=server_arg, metavar="HOST:PORT")
    p.add_argument("--from", dest="from_", type=account_arg, default="probe@tfps.invalid", metavar="USER@DOMAIN")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--ip", type=text_arg(64), help="caller IP passed in P-tfps")
    p.add_argument("--ua", type=text_arg(255, spaces=True), help="caller User-Agent")
    p.add_argument("--calls", type=calls_arg, help="concurrent calls passed in P-tfps")
    p.add_argument("--timeout", type=arg_type(_duration(0.01, 3600)), default=5.0, metavar="SECONDS")
    sub.add_parser("lint", parents=[common, json_opt],
                   help="report list entries, country codes and tiers that never do what they were meant to")
    p = sub.add_parser("purge", parents=[common], help="delete call log rows and expired state")
    p.add_argument("--older-than", type=duration_arg, required=True, metavar="DURATION", help="e.g. 90d")
    p = sub.add_parser("reputation", parents=[common, json_opt], help="show the reputation of an IP (cached or fresh)")
    p.add_argument("ip")
    p.add_argument("--fresh", action="store_true", help="ignore the cache")
    p = sub.add_parser("train", parents=[common, json_opt], help="learn limits from the call history")
    p.add_argument("--dry-run", action="store_true", help="show current -> proposed values, change nothing")
    p.add_argument("--account", type=account_arg, metavar="USER@DOMAIN")
    p = sub.add_parser("replay", parents=[common, json_opt], help="backtest the policy on a CDR file")
    p.add_argument("cdr", metavar="CDR.csv")
    p.add_argument("--jobs", type=arg_type(_integer(1)), metavar="N",
                   help="processes for a replay in memory (default: one per CPU)")
    return parser


def load_config(args):
    cfg = Config.load(args.config or default_config_path())
    if getattr(args, "db", None):
        cfg.set("database", "url", args.db)
    if getattr(args, "mode", None):
        cfg.set("server", "mode", args.mode)
    if getattr(args, "listen", None):
        cfg.replace("server", "listen", args.listen)
    return cfg


def cmd_serve(args, cfg):
    setup_logging(cfg.server.log_level)
    open_database(cfg.database.url).close()  # the schema, created or migrated with the CLI's patience
    config_path = args.config or default_config_path()
    if server_workers(cfg) == 1:
        return serve_worker(cfg, config_path, http=True)
    # one HTTP interface, in worker 0: its port is not shared
    if cfg.http.listen:
        probe_http_listen(cfg.http.listen)
    return Supervisor(cfg, lambda number, worker_handoff: serve_worker(cfg, config_path, http=number == 0, worker=number,
                                                                       worker_handoff=worker_handoff)).run()


def serve_worker(cfg, config_path, http, worker=None, worker_handoff=None):
    db = Database(cfg.database.url, timeout=cfg.database.timeout)
    server = Server(cfg, db, config_path, worker, worker_handoff)
    api = HttpInterface(server) if http and cfg.http.listen else None
    if api:
        api.start()
    try:
        server.run()
    finally:
        if api:
            api.stop()
    return 0


def cmd_initdb(args, cfg):
    db = Database(cfg.database.url)
    old, new, added = db.initdb()
    action = "created" if old == 0 else ("migrated" if old != new or added else "checked")
    print(f"database {redact_url(db.url)} {action}: schema version {new}" + (f"; {', '.join(added)}" if added else ""))
    print(f"{table_size(db, 'countries')} countries, {table_size(db, 'ua_list')} User-Agent patterns")
    return 0


def cmd_config(args, cfg):
    print(f"# {args.config or default_config_path() or 'built-in defaults'}: OK")
    shown = cfg.effective()
    shown["database"]["url"] = redact_url(shown["database"]["url"])
    for section, keys in shown.items():
        print(f"\n[{section}]")
        for key, value in keys.items():
            print(f"{key} = {value}")
    return 0


def cmd_list(args, cfg, db):
    records = account_records(db, cfg, time.time())
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print_table(["user", "domain", "created", "state", "concurrent", "daily_quota", "dest", "source", "blocked", "calls_today"],
                [(r["user"], r["domain"], r["created"], r["state"],
                  f"{fmt_limit(r['concurrent_calls'])}/{fmt_limit(r['concurrent_calls_off'])}",
                  f"{fmt_limit(r['daily_quota'])}/{fmt_limit(r['daily_quota_off'])}", r["dest_countries"],
                  r["source_countries"], f"R16 until {r['blocked_until']}" if r["blocked_until"] and not r["blocked"]
                  else fmt_value(r["blocked"]), r["calls_today"]) for r in records])
    return 0


def cmd_show(args, cfg, db):
    info, rows = account_details(db, cfg, find_account(db, args.user, args.domain), time.time())
    headers = list(LAST_VERDICT_FIELDS)
    if args.json:
        print(json.dumps(dict(info, last_verdicts=[dict(zip(headers, r)) for r in rows]), indent=2, default=str))
        return 0
    sources = info.pop("sources")
    for key, value in info.items():
        shown = fmt_limit(value) if key in POLICY_FIELDS[:5] else "not learned" if key == "anomaly_daily" and value is None else value
        source = f"  ({sources[key]})" if key in sources else ""
        if key == "blocked_until" and value:
            source = f"  (R16; lift it: {PROG} unblock {args.user} {args.domain})"
        print(f"{key:24} {fmt_value(shown)}{source}")
    print("\nlast verdicts:")
    print_table(headers, rows)
    return 0


def _limit_fields(args):
    fields = {}
    for option, column in (("concurrent", "concurrent_calls"), ("concurrent_off", "concurrent_calls_off"),
                           ("daily_quota", "daily_quota"), ("daily_quota_off", "daily_quota_off"),
                           ("daily_spend", "daily_spend")):
        if hasattr(args, option):
            fields[column] = getattr(args, option)
    return fields


def _update_account_fields(db, cfg, acc, fields, end_learning=True):
    """update_account with `inherit` values turned into the [policy] default, unpinned."""
    inherit = {f for f, v in fields.items() if v == INHERIT}
    fields = {f: policy_default(cfg.policy, f) if f in inherit else v for f, v in fields.items()}
    update_account(db, acc, time.time(), end_learning=end_learning, inherit=inherit, **fields)


def check_countries(args, cfg, db):
    """--dest and --source codes must be in the country table; allowing a destination of tier
    high is said to change nothing. Returns the notes to print."""
    countries = country_table(db)
    for option in ("dest", "source"):
        problem = unknown_countries(getattr(args, option) or (), countries)
        if problem:
            raise UsageError(f"--{option}: {problem}")
    return tier_high_notes(cfg, countries, args.dest)


def cmd_add(args, cfg, db):
    notes = check_countries(args, cfg, db)
    if not insert_account(db, default_account(cfg, args.user, args.domain, time.time())):
        raise UserError(f"account {args.user}@{args.domain} already exists")
    acc = find_account(db, args.user, args.domain)
    fields = _limit_fields(args)
    if args.email is not None:
        fields["email"] = args.email
    if args.dest:
        fields["dest_countries"] = args.dest
    if args.source:
        fields["source_countries"] = args.source
    _update_account_fields(db, cfg, acc, fields, end_learning=False)
    print(f"added {acc.name}: {describe_limits(find_account(db, args.user, args.domain))}")
    print(*notes, sep="\n", end="\n" if notes else "")
    return 0


def cmd_set(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    fields = _limit_fields(args)
    if args.email is not None:
        fields["email"] = args.email
    if not fields:
        raise UserError("nothing to set: give --concurrent, --concurrent-off, --daily-quota, --daily-quota-off, "
                        "--daily-spend or --email")
    _update_account_fields(db, cfg, acc, fields)
    inherited = sorted(f for f, v in fields.items() if v == INHERIT)
    print(f"{acc.name}: {describe_limits(find_account(db, args.user, args.domain))} (pinned: "
          f"{', '.join(sorted(set(fields) - set(inherited))) or 'none'}"
          + (f"; inherited again: {', '.join(inherited)}" if inherited else "") + ")")
    return 0


def cmd_allow(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    if not (args.dest or args.source):
        raise UserError(f"nothing to {args.command}: give --dest CC,... and/or --source CC,...")
    notes = check_countries(args, cfg, db) if args.command == "allow" else []  # deny also cleans up unknown codes
    fields = account_countries_after(acc, args.command, {"dest_countries": args.dest, "source_countries": args.source},
                                     country_table(db).by_iso)
    update_account(db, acc, time.time(), **fields)
    print(f"{acc.name}: {describe_limits(find_account(db, args.user, args.domain))}")
    print(*notes, sep="\n", end="\n" if notes else "")
    return 0


def cmd_domain(args, cfg, db):
    if args.action == "list":
        records = domain_records(db)
        if args.json:
            print(json.dumps(records, indent=2, default=str))
        else:
            print_table(["domain", "accounts", *POLICY_FIELDS, "learned_dest"], [tuple(r.values()) for r in records])
        return 0
    if args.action == "show":
        details = domain_details(db, cfg, args.domain)
        if args.json:
            print(json.dumps(details, indent=2, default=str))
            return 0
        print(f"domain {details['domain']}: {details['accounts']} account(s); destinations learned from its accounts: "
              f"{details['learned_dest'] or 'none'}")
        print_table(["field", "domain", "effective", "from"],
                    [(f["field"], f["domain"], fmt_limit(f["effective"]) if f["field"] not in COUNTRY_FIELDS else f["effective"],
                      f["from"]) for f in details["fields"]])
        return 0
    if args.action == "set":
        fields = _limit_fields(args)
        for option, column in (("dest", "dest_countries"), ("source", "source_countries")):
            if getattr(args, option) is not None:
                fields[column] = getattr(args, option)
        if not fields:
            raise UsageError("nothing to set: give --concurrent, --concurrent-off, --daily-quota, --daily-quota-off, "
                             "--daily-spend, --dest or --source")
        notes = check_countries(argparse.Namespace(**{o: None if getattr(args, o) == INHERIT else getattr(args, o)
                                                      for o in ("dest", "source")}), cfg, db)
    else:
        if not (args.dest or args.source):
            raise UsageError(f"nothing to {args.action}: give --dest CC,... and/or --source CC,...")
        notes = check_countries(args, cfg, db) if args.action == "allow" else []
        fields = domain_countries_after(cfg, db, args.domain, args.action,
                                        {"dest_countries": args.dest, "source_countries": args.source})
    update_domain(db, args.domain, fields, time.time())
    details = domain_details(db, cfg, args.domain)
    print(f"{args.domain}: " + ", ".join(f"{f['field']} {f['domain']} (applies: {fmt_limit(f['effective'])})"
                                         for f in details["fields"] if f["field"] in fields))
    print(*notes, sep="\n", end="\n" if notes else "")
    return 0


def cmd_block(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    set_blocked(db, acc, args.command == "block", time.time())
    print(f"{acc.name} {'blocked' if args.command == 'block' else 'unblocked'}; running servers follow within "
          f"{cfg.database.reload_interval:g} s")
    return 0


def cmd_learn(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    now = time.time()
    if args.stop:
        update_account(db, acc, now, end_learning=True)
        print(f"{acc.name} is enforcing")
    else:
        update_account_row(db, acc.id, {"state": "learning", "learning_until": now + args.days * 86400}, now)
        print(f"{acc.name} is learning until {fmt_time(now + args.days * 86400, cfg.policy.tz)}")
    return 0


def cmd_remove(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    remove_account(db, acc)
    print(f"removed {acc.name}")
    return 0


def cmd_reset(args, cfg, db):
    acc = find_account(db, args.user, args.domain)
    counters, pairs = reset_account(db, cfg, acc, time.time())
    print(f"{acc.name}: today's counters cleared ({counters} bucket(s)), {pairs} A->B pair(s) cleared; servers that "
          f"keep them in memory forget them within reload_interval ({cfg.database.reload_interval:g} s)")
    return 0


def cmd_list_admin(args, cfg, db):
    color = "black" if args.command == "blacklist" else "white"
    now = time.time()
    if args.action == "list":
        rows = [(value, note, fmt_time(created, cfg.policy.tz)) for value, note, created in list_entries(db, color, args.kind)]
        print_table([args.kind, "note", "added"], rows, args.json)
        return 0
    if not args.value:
        raise UsageError(f"{args.command} {args.action} {args.kind} needs a value" + (" (a file)" if args.action == "import" else ""))
    if args.action == "import":
        values, errors = read_list_file(args.value, args.kind, cfg.policy, country_table(db))
        added, present = list_add(db, color, args.kind, values, args.note or f"import {os.path.basename(args.value)}", now)
        for error in errors:
            print(error, file=sys.stderr)
        print(f"imported {args.value}: {added} added, {present} already present, {len(errors)} invalid")
        return 1 if errors and not values else 0
    try:
        value = normalize_list_value(args.kind, args.value, cfg.policy, country_table(db))
    except ValueError as exc:
        raise UserError(f"{args.command} {args.kind}: {exc}") from None
    if args.action == "add":
        added, _ = list_add(db, color, args.kind, [value], args.note, now)
        print(f"{args.command} {args.kind} {value}: {'added' if added else 'already present'}")
        return 0
    if not list_remove(db, color, args.kind, value):
        raise UserError(f"{args.command} {args.kind} {value}: not present")
    print(f"{args.command} {args.kind} {value}: removed")
    return 0


def cmd_calls(args, cfg, db):
    rows = query_calls(db, time.time() - args.since, args.account, args.code, args.limit)
    print_table(["time", "account", "number", "dest", "source_ip", "src", "code", "would", "reason", "response", "ms", "node"],
                [(fmt_time(r[0], cfg.policy.tz), f"{r[1]}@{r[2]}", *r[3:11], round(r[11], 2), r[12]) for r in rows], args.json)
    return 0


def cmd_stats(args, cfg, db):
    by_code, top_accounts, top_countries = call_stats(db, time.time() - args.since)
    spent, blocked = estimated_spend(db, time.time() - args.since)
    if args.json:
        print(json.dumps({"by_code": [{"code": c, "would_code": w, "calls": n} for c, w, n in by_code],
                          "top_accounts": [{"account": f"{u}@{d}", "calls": n, "rejected": r} for u, d, n, r in top_accounts],
                          "top_destinations": [{"country": c, "calls": n, "rejected": r} for c, n, r in top_countries],
                          "estimated_spend": {"approved": round(spent, 4), "blocked": round(blocked, 4)}}, indent=2))
        return 0
    total = sum(n for _c, _w, n in by_code)
    approved = sum(n for c, _w, n in by_code if c == APPROVED)
    print(f"{total} verdicts since {fmt_time(time.time() - args.since, cfg.policy.tz)}: {approved} approved, {total - approved} rejected")
    print(f"estimated spend (rate deck x {cfg.policy.assumed_call_minutes:g} min a call): {spent:.2f} approved, "
          f"{blocked:.2f} blocked\n")
    print_table(["code", "would_code", "calls"], by_code)
    print()
    print_table(["account", "calls", "rejected"], [(f"{u}@{d}", n, r) for u, d, n, r in top_accounts])
    print()
    print_table(["destination", "calls", "rejected"], top_countries)
    return 0


def cmd_check(args, cfg, db):
    engine = Engine(cfg, db)
    tz = cfg.policy.tz
    try:
        ts = parse_time_arg(args.at, tz) if args.at else time.time()
    except ValueError as exc:
        raise UsageError(f"--at: {exc}") from None
    attempt = CallAttempt(args.user, args.domain, args.number, args.ip, args.ua, args.calls, ts, source_country=args.country or "")
    client = ReputationClient(cfg.reputation)
    if args.ip and not args.country and client.enabled and is_public_ip(args.ip) and not engine.lists.ip_white.match(args.ip):
        attempt.reputation = cached_reputation(db, args.ip, ts) or client.fetch(args.ip)
    verdict = engine.decide(attempt, count=False)
    result = {"code": verdict.code, "reason": verdict.reason, "number": verdict.number, "dest_country": verdict.dest_country,
              "source_country": verdict.source_country, "off_hours": verdict.off_hours,
              "would_code": verdict.would.code if verdict.would else "", "undo": verdict.undo}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{verdict.code}  {verdict.reason}")
        print(f"number {verdict.number or '-'} ({engine.countries.label(verdict.dest_country)}), "
              f"{'off' if verdict.off_hours else 'business'} hours, source country {verdict.source_country or 'unknown'}")
        if verdict.undo:
            print(f"to allow it: {verdict.undo}")
    return 0


def cmd_lint(args, cfg, db):
    findings = lint(cfg, db)
    if args.json:
        print(json.dumps([{"where": w, "problem": p, "fix": f} for w, p, f in findings], indent=2))
    elif findings:
        print_table(["where", "problem", "fix"], findings)
    else:
        print("no findings")
    return 1 if findings else 0


def cmd_probe(args, cfg):
    user, _, domain = args.from_.partition("@")
    result = probe(args.number, args.server, user=user, domain=domain, transport=args.transport, ip=args.ip,
                   ua=args.ua, calls=args.calls, timeout=args.timeout)
    if result is None:
        print(f"no answer from {args.server} over {args.transport} within {args.timeout:g} s")
        return 1
    response, rtt = result
    print(f"SIP/2.0 {response.status} {response.reason}")
    if response.header("contact"):
        print(f"Contact: {response.header('contact')}")
    print(f"code: {response.header('x-tfps-code') or '-'}")
    print(f"reason: {response.header('x-tfps-reason') or '-'}")
    print(f"round trip: {rtt:.2f} ms")
    return 0


def cmd_purge(args, cfg, db):
    counts = purge(cfg, db, time.time(), args.older_than)
    print(", ".join(f"{table}: {n} deleted" for table, n in counts.items()))
    return 0


def cmd_reputation(args, cfg, db):
    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"{args.ip!r} is not an IP address") from None
    now = time.time()
    rep = None if args.fresh else cached_reputation(db, args.ip, now)
    origin = "cache"
    if rep is None:
        if not is_public_ip(args.ip):
            raise UserError(f"{args.ip} is a private or special-purpose address: never looked up")
        client = ReputationClient(cfg.reputation)
        if not client.enabled:
            raise UserError("reputation lookups are off: set abuseipdb_key or apiban_key in [reputation]")
        try:
            rep = client.fetch(args.ip, now)
        except RateLimited as exc:
            raise UserError(f"reputation service: {exc}") from None
        store_reputation(db, rep, cfg.reputation.reputation_ttl)
        origin = "fresh"
    result = {"ip": rep.ip, "ok": rep.ok, "score": rep.score, "country": rep.country, "whitelisted": rep.whitelisted,
              "apiban": rep.apiban, "source": rep.source, "detail": rep.detail, "origin": origin,
              "age_seconds": round(now - rep.checked, 1)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:12} {value}")
    return 0 if rep.ok else 1


def cmd_train(args, cfg, db):
    account = None
    if args.account:
        account = find_account(db, *args.account.split("@", 1))
    now = time.time()
    if not args.dry_run and not acquire_lock(db, "train", cfg.server.node_name, now, 3600):
        raise UserError("another node is training right now; try again later")
    try:
        proposals = train(cfg, db, now, account, dry_run=args.dry_run)
    finally:
        if not args.dry_run:
            release_lock(db, "train", cfg.server.node_name)
    rows = []
    for proposal in proposals:
        if not proposal.changes:
            rows.append((proposal.account.name, "-", "", "", proposal.skipped or "no change"))
        for field_name, current, proposed, why in proposal.changes:
            rows.append((proposal.account.name, field_name, fmt_limit(current), proposed, why))
    print_table(["account", "field", "current", "proposed" if args.dry_run else "learned", "why"], rows, args.json)
    return 0


def cmd_replay(args, cfg):
    logging.getLogger("tfps").setLevel(logging.ERROR)
    report = replay(cfg, args.cdr, args.db, args.jobs)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['rows']} CDR rows replayed")
    print_table(["code", "calls"], list(report["codes"].items()))
    if report["rejected_accounts"]:
        print("\naccounts with rejections:")
        print_table(["account", "rejections"], [(a, ", ".join(f"{c}x{n}" for c, n in sorted(codes.items())))
                                                  for a, codes in sorted(report["rejected_accounts"].items())])
    if report["fraud_calls"] or report["legit_calls"]:
        print(f"\nfraud calls blocked: {report['fraud_blocked']}/{report['fraud_calls']} ({report['fraud_blocked_pct']}%)")
        print(f"legitimate calls blocked: {report['legit_blocked']}/{report['legit_calls']} ({report['legit_blocked_pct']}%)")
        if report["legit_blocked_by_code"]:
            print("rules that blocked legitimate calls, most first: "
                  + ", ".join(f"{code} {calls}" for code, calls in report["legit_blocked_by_code"].items()))
        print_table(["account", "episode start", "calls", "leaked before first block", "blocked"],
                    [(e["account"], e["start"], e["calls"], e["leaked_before_first_block"], e["blocked"]) for e in report["episodes"]])
    if report["alerts"]:
        print("\nalerts that would have been raised (before rate limiting; none is sent by a replay):")
        print_table(["kind", "alerts"], list(report["alerts"].items()))
    return 0


class UsageError(Exception):
    """A bad argument found after parsing: usage and exit code 2."""


COMMANDS_WITHOUT_DB = {"serve": cmd_serve, "initdb": cmd_initdb, "config": cmd_config, "probe": cmd_probe, "replay": cmd_replay}
COMMANDS = {"list": cmd_list, "show": cmd_show, "add": cmd_add, "remove": cmd_remove, "reset": cmd_reset, "set": cmd_set,
            "allow": cmd_allow, "deny": cmd_allow, "block": cmd_block, "unblock": cmd_block, "learn": cmd_learn,
            "blacklist": cmd_list_admin, "whitelist": cmd_list_admin, "calls": cmd_calls, "stats": cmd_stats,
            "check": cmd_check, "lint": cmd_lint, "domain": cmd_domain, "purge": cmd_purge, "reputation": cmd_reputation, "train": cmd_train}


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # argv bytes that are not UTF-8 arrive as lone surrogates
            parser.error(f"argument {arg!r} is not UTF-8 text")
    args = parser.parse_args(argv)
    if args.command != "serve":
        setup_logging("warning")
    db = None
    try:
        cfg = load_config(args)
        if args.command in COMMANDS_WITHOUT_DB:
            return COMMANDS_WITHOUT_DB[args.command](args, cfg)
        db = open_database(cfg.database.url)
        return COMMANDS[args.command](args, cfg, db)
    except BrokenPipeError:  # `tfps.py calls | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"tfps: {exc}", file=sys.stderr)
        return 1
    except (sqlite3.Error, OSError) as exc:
        print(f"tfps: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__module__.startswith("pymysql"):
            print(f"tfps: database error: {exc.args[-1] if exc.args else exc}", file=sys.stderr)
            return 1
        raise
    finally:
        if db is not None:
            db.close()


if __name__ == "__main__":
    sys.exit(main())
