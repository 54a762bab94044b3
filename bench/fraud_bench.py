#!/usr/bin/env python3
"""Labeled fraud benchmark: how much fraud TFPS blocks, and how many customers' calls with it.

The generator writes 89 days of a UK operator's international calls (home GB, Europe/London,
UK bank holidays) as the CDR CSV that `tfps.py replay` reads, every row labeled `legit` or
`fraud`, with two more columns replay ignores: `episode` (the fraud episode a row belongs to)
and `scenario` (what produced it). The scorer replays each file with the real `tfps.py replay`
in a subprocess into a fresh SQLite file, under the default configuration with only the home
country, timezone, business hours and holidays set, reads every verdict back from the call log
and scores them against the labels.

The traffic is drawn from what operators see, not from TFPS's rules: destinations per account
follow a long tail over the countries a UK business calls, with premium and satellite ranges and
small-island countries for the fraud (see LEGIT_DESTINATIONS and IRSF_DESTINATIONS).

    python3 bench/fraud_bench.py --seeds 1-5                  # both shapes, one table
    python3 bench/fraud_bench.py --seeds 3 --shapes small --keep /tmp/fb
    python3 bench/fraud_bench.py --generate /tmp/cdr.csv --seeds 7 --shapes large
"""

import argparse
import bisect
import contextlib
import csv
import datetime as dt
import heapq
import json
import math
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
TFPS = REPO / "tfps.py"

TZ = ZoneInfo("Europe/London")
START = dt.date(2026, 3, 2)          # a Monday; the period crosses the clock change of 29 March
DAYS = 89                            # within retention_days (90): replay purges nothing we score
UK_BANK_HOLIDAYS = (dt.date(2026, 4, 3), dt.date(2026, 4, 6), dt.date(2026, 5, 4), dt.date(2026, 5, 25))
BUSINESS_HOURS = "mon-fri 09:00-18:00"

CDR_COLUMNS = ("time", "user", "domain", "number", "source_ip", "user_agent", "concurrent_calls", "source_country",
               "label", "episode", "scenario")

# Destinations a UK business calls: ISO code -> (weight in the UK's outgoing international traffic,
# E.164 ranges as (calling code + leading digits, digits after them)). US and Canadian numbers use
# area codes of the mainland only; Spanish landlines are Madrid's and Barcelona's (+34 90x are
# freephone, shared-cost and premium ranges); JE, GG and IM are the Crown dependencies' mobile
# ranges, which share +44 with the UK. The weights are coarse: what matters is the long tail.
LEGIT_DESTINATIONS = {
    "IE": (14, [("3538", 8), ("3531", 7)]), "US": (13, [("1212", 7), ("1646", 7), ("1415", 7), ("1312", 7), ("1617", 7)]),
    "FR": (9, [("336", 8), ("331", 8)]), "DE": (9, [("4915", 9), ("4930", 8), ("4989", 8)]),
    "ES": (7, [("346", 8), ("3491", 7), ("3493", 7)]), "IN": (8, [("919", 9), ("9111", 8), ("9122", 8)]),
    "PL": (6, [("485", 8), ("4822", 7)]), "NG": (5, [("234803", 7), ("234806", 7), ("2341", 7)]),
    "PK": (5, [("923", 9), ("9242", 8)]), "NL": (5, [("316", 8), ("3120", 7)]), "IT": (4, [("393", 9), ("3906", 8)]),
    "BE": (3, [("324", 8), ("322", 7)]), "PT": (3, [("3519", 8), ("3512", 8)]), "CH": (2, [("417", 8), ("4144", 7)]),
    "AU": (3, [("614", 8), ("612", 8)]), "CA": (3, [("1416", 7), ("1604", 7), ("1514", 7)]),
    "ZA": (2, [("2782", 7), ("2721", 7)]), "AE": (2, [("97150", 7), ("9714", 7)]), "CN": (2, [("86138", 8), ("8610", 8)]),
    "PH": (2, [("63917", 7), ("632", 8)]), "RO": (2, [("407", 8), ("4021", 7)]), "GH": (1.5, [("23324", 7), ("23330", 7)]),
    "KE": (1, [("2547", 8)]), "BD": (1.5, [("8801", 9)]), "TR": (1, [("905", 9), ("90212", 7)]),
    "GR": (1, [("3069", 8), ("3021", 8)]), "SE": (1, [("467", 8), ("468", 7)]), "DK": (0.8, [("452", 7)]),
    "NO": (0.6, [("474", 7)]), "AT": (0.8, [("43664", 7), ("431", 7)]), "HK": (0.8, [("8529", 7)]),
    "SG": (0.8, [("659", 7)]), "JM": (0.5, [("1876", 7)]), "LT": (0.5, [("3706", 7)]), "MA": (0.4, [("2126", 8)]),
    "LK": (0.3, [("947", 8)]), "JE": (0.8, [("447797", 6)]), "GG": (0.6, [("4479111", 5)]), "IM": (0.6, [("447624", 6)]),
}
EMERGENCY_NUMBERS = ("999", "112")

# International revenue share fraud: premium and satellite ranges and small-island countries that
# the published IRSF lists name again and again, high-risk for today's TFPS or not.
IRSF_DESTINATIONS = {
    "premium": [("37090", 6), ("38190", 6), ("48704", 6), ("48703", 6), ("43900", 6), ("49900", 7), ("32900", 5),
                ("37190", 6), ("372900", 4)],
    "island_satellite": [("68890", 3), ("870772", 6), ("8816", 8), ("88213", 6), ("67573", 6), ("6797", 6), ("6907", 4)],
    "africa": [("25261", 7), ("23276", 6), ("22462", 7), ("26377", 7), ("22077", 5), ("24106", 6), ("2379", 6)],
    "caribbean": [("535", 7), ("1876", 7), ("1649", 7), ("1284", 7)],
}
PREMIUM_NOT_HIGH_RISK = [("37090", 6), ("38190", 6), ("25261", 7), ("23276", 6), ("26377", 7), ("68890", 3),
                         ("870772", 6), ("8816", 8), ("48703", 6)]

# public ranges by the country they are in, for offices, homes, hotels and attackers
ADDRESS_RANGES = {
    "GB": ["81.2", "86.128", "109.144", "195.194", "62.172", "217.155", "31.94", "90.196"],
    "ES": ["83.47", "88.12"], "US": ["72.21", "98.174"], "FR": ["90.84", "82.64"], "DE": ["84.150", "91.64"],
    "AE": ["94.200"], "PT": ["85.240"], "IN": ["117.196"], "PS": ["185.93"], "NG": ["105.112"], "RO": ["89.38"],
    "VN": ["14.161"], "NL": ["45.134"], "RU": ["5.188"], "BR": ["177.72"],
}
PHONES = ["Yealink SIP-T46U 108.86.0.45", "Yealink SIP-T54W 96.86.0.100", "Poly VVX 450 6.4.3.5018",
          "Grandstream GXP2170 1.0.11.41", "Cisco-CP8845/12.8.1", "snom D785/10.1.159.12", "Fanvil X6U 2.12.1",
          "Panasonic_KX-HDV230/12.060"]
SOFTPHONES = ["Zoiper rv2.10.19.3", "Bria 6 6.5.3", "MicroSIP/3.21.3", "Linphone/5.2.0 (belle-sip/5.2.0)"]
PBX_AGENTS = ["FPBX-16.0.40(18.20.0)", "3CX Phone System 18.0.9.20", "Asterisk PBX 20.5.2"]
DIALER_AGENT = "VICIdial 2.14-917a"
DOMAIN_NAMES = ["harbourfreight.co.uk", "greenleaf-legal.co.uk", "northgate-health.org.uk", "brightwater-it.com",
                "castlebank-lettings.co.uk", "meridian-contact.co.uk", "pennine-foods.co.uk", "oakridge-accountants.co.uk",
                "riverside-travel.co.uk", "clearline-outreach.co.uk", "summit-engineering.co.uk", "kingsway-clinic.co.uk",
                "lakeside-logistics.co.uk", "albion-retail.co.uk", "westfield-media.co.uk", "thames-consulting.co.uk"]
MAX_SEEDS = 1000                     # a typo such as 1-50000 is refused, not run for days
EPISODE_KINDS = ("weekend_hack", "slow_drip", "lunch_phone", "stolen_abroad", "fresh_pump", "same_number", "scanner",
                 "holiday_attack")


@dataclass(frozen=True)
class Shape:
    accounts: int
    domains: int
    episodes_per_kind: int


SHAPES = {"tiny": Shape(accounts=12, domains=4, episodes_per_kind=1),       # for the tests
          "small": Shape(accounts=40, domains=5, episodes_per_kind=1),
          "large": Shape(accounts=160, domains=13, episodes_per_kind=2)}


@dataclass
class Account:
    user: str
    domain: str
    ip: str
    ua: str
    rate: float                 # international calls on a working day
    destinations: list          # ISO codes, most called first
    weights: list               # cumulative, for bisect
    first_day: int
    scenario: str               # what its calls are: office, call_centre, dialer, growth, new_account


@dataclass
class Call:
    start: float                # Unix time
    seconds: float              # how long it lasts, which makes the concurrency the PBX reports
    account: Account
    number: str
    ip: str
    ua: str
    source_country: str
    label: str
    episode: str
    scenario: str
    country: str = ""           # where a legitimate call goes, for the share of new destinations


# --- generator ------------------------------------------------------------------------------

def moment(day, hours):
    """Unix time of `hours` after local midnight of day `day` of the period."""
    midnight = dt.datetime.combine(START + dt.timedelta(days=day), dt.time(), TZ)
    return (midnight + dt.timedelta(hours=hours)).timestamp()


def is_working_day(day):
    date = START + dt.timedelta(days=day)
    return date.weekday() < 5 and date not in UK_BANK_HOLIDAYS


def address(rng, country):
    return f"{rng.choice(ADDRESS_RANGES[country])}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def number_in(rng, ranges, dialing=None):
    """A number in one of `ranges`, written the way PBX users dial it: 00 mostly, or +."""
    head, length = rng.choice(ranges)
    prefix = dialing if dialing is not None else ("00" if rng.random() < 0.8 else "+")
    return prefix + head + "".join(rng.choice("0123456789") for _ in range(length))


def destination_profile(rng, base_order, spread):
    """An account's destinations: a noisy copy of its domain's ranking, cut to `spread` countries,
    weighted by Zipf (1 / rank^1.1) so the last ones are called about once a month."""
    noisy = sorted(base_order, key=lambda iso: -LEGIT_DESTINATIONS[iso][0] * rng.lognormvariate(0, 1.2))
    chosen = noisy[:spread]
    total, cumulative = 0.0, []
    for rank, _ in enumerate(chosen, 1):
        total += 1 / rank ** 1.1
        cumulative.append(total)
    return chosen, [w / total for w in cumulative]


def make_domains(rng, shape):
    """The customers: one 24/7 call centre, one dialer, one customer that grows, offices for the
    rest. Returns the accounts."""
    names = rng.sample(DOMAIN_NAMES, shape.domains)
    kinds = ["call_centre", "dialer", "growth"] + ["office"] * (shape.domains - 3)
    sizes = [max(2, round(rng.paretovariate(1.2))) for _ in names]
    sizes[0] = max(sizes[0], shape.accounts // 8)           # the call centre's agents
    sizes[1] = 3                                             # the dialer's trunks
    scale = (shape.accounts - sizes[0] - sizes[1]) / sum(sizes[2:])
    sizes[2:] = [max(1, round(s * scale)) for s in sizes[2:]]
    sizes[-1] += shape.accounts - sum(sizes)
    accounts = []
    for name, kind, size in zip(names, kinds, sizes):
        office_ip, phone, extensions = address(rng, "GB"), rng.choice(PHONES), rng.choice([100, 200, 2000, 4000])
        if kind == "dialer":
            phone = DIALER_AGENT
        ranking = sorted(LEGIT_DESTINATIONS, key=lambda iso: -LEGIT_DESTINATIONS[iso][0] * rng.lognormvariate(0, 0.8))
        for n in range(size):
            user = str(extensions + n) if kind != "dialer" else f"trunk{n + 1}"
            if kind == "call_centre":
                rate, spread = rng.uniform(8, 20), rng.randint(6, 12)
            elif kind == "dialer":
                rate, spread = rng.uniform(3, 8), rng.randint(3, 5)
            else:
                rate, spread = rng.lognormvariate(math.log(2.5), 0.9), rng.randint(2, 18)
            home_worker = kind == "office" and rng.random() < 0.15
            destinations, weights = destination_profile(rng, ranking, spread)
            first_day = rng.randint(15, 70) if kind not in ("call_centre", "dialer") and rng.random() < 0.08 else 0
            accounts.append(Account(user, name, address(rng, "GB") if home_worker else office_ip,
                                    rng.choice(SOFTPHONES) if home_worker else phone, min(rate, 60.0),
                                    destinations, weights, first_day,
                                    kind if kind != "office" else ("new_account" if first_day else "office")))
    return accounts


def pick_destination(rng, account):
    return account.destinations[bisect.bisect_left(account.weights, rng.random())]


def legit_number(rng, account, book):
    """Most calls go to numbers the account has called before; some to new ones."""
    iso = pick_destination(rng, account)
    known = book.setdefault((account.user, account.domain, iso), [])
    if known and rng.random() < 0.6:
        return rng.choice(known), iso
    number = number_in(rng, LEGIT_DESTINATIONS[iso][1], "+" if iso in ("JE", "GG", "IM") else None)
    known.append(number)
    return number, iso


def office_hour(rng):
    """Office calls: a morning and an afternoon peak, a few early or late."""
    hour = rng.gauss(10.5, 1.3) if rng.random() < 0.5 else rng.gauss(15.0, 1.5)
    return min(max(hour, 7.5), 19.5)


def legit_calls(rng, accounts, travellers):
    calls, book = [], {}
    for account in accounts:
        trip = travellers.get((account.user, account.domain))
        for day in range(account.first_day, DAYS):
            working = is_working_day(day)
            if account.scenario == "call_centre":
                for _ in range(poisson(rng, account.rate * (0.8 if working else 0.6))):
                    hour = rng.uniform(0, 24)
                    if 1 <= hour < 6 and rng.random() < 0.4:
                        hour = rng.uniform(6, 24)           # nights are quieter, and normal
                    calls.append(legit_call(rng, account, book, day, hour, "call_centre"))
                continue
            if account.scenario == "dialer":
                calls += dialer_day(rng, account, book, day, working)
                continue
            growth = 1 + 0.8 * day / DAYS if account.scenario == "growth" else 1.0
            expected = account.rate * growth * (1.0 if working else 0.03)
            for _ in range(poisson(rng, expected)):
                call = legit_call(rng, account, book, day, office_hour(rng), account.scenario)
                if trip and trip[0] <= day < trip[0] + 7:
                    call.ip, call.ua, call.source_country, call.scenario = trip[2], trip[3], trip[1], "traveller"
                    if rng.random() < 0.15:
                        call.number, call.country = number_in(rng, LEGIT_DESTINATIONS[trip[1]][1]), trip[1]
                calls.append(call)
                if rng.random() < 0.05:                      # no answer: dialled again a little later
                    calls.append(Call(call.start + rng.uniform(20, 90), call.seconds, account, call.number, call.ip,
                                      call.ua, call.source_country, "legit", "", call.scenario, call.country))
            if rng.random() < 1 / 400:
                calls.append(Call(moment(day, rng.uniform(0, 24)), rng.uniform(60, 600), account,
                                  rng.choice(EMERGENCY_NUMBERS), account.ip, account.ua, "GB", "legit", "", "emergency"))
    return calls


def legit_call(rng, account, book, day, hour, scenario):
    number, iso = legit_number(rng, account, book)
    return Call(moment(day, hour), rng.lognormvariate(math.log(180), 0.9), account, number, account.ip, account.ua, "GB",
                "legit", "", "crown_dependency" if iso in ("JE", "GG", "IM") else scenario, iso)


def dialer_day(rng, account, book, day, working):
    """A campaign day brings bursts of 25 calls in 100 s; other working days a few calls."""
    if not working:
        return []
    if rng.random() >= 0.3:
        return [legit_call(rng, account, book, day, office_hour(rng), "dialer") for _ in range(poisson(rng, account.rate))]
    calls = []
    for _ in range(rng.randint(2, 6)):
        begin = moment(day, rng.uniform(9.5, 17.5))
        for k in range(25):
            call = legit_call(rng, account, book, day, 0, "dialer")
            call.start, call.seconds = begin + k * 4 + rng.uniform(0, 3), rng.uniform(15, 120)
            calls.append(call)
    return calls


def poisson(rng, mean):
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def pick_travellers(rng, accounts):
    """Four people abroad for a week, calling from a hotel or a client's network with a softphone:
    (user, domain) -> (first day, country, source IP, User-Agent)."""
    office = [a for a in accounts if a.scenario in ("office", "growth") and a.rate > 1]
    trips = {}
    for account in rng.sample(office, min(4, len(office))):
        country = rng.choice(["ES", "US", "FR", "DE", "AE", "PT", "IN"])
        trips[(account.user, account.domain)] = (rng.randint(10, DAYS - 8), country, address(rng, country),
                                                 rng.choice(SOFTPHONES))
    return trips


def fraud_episodes(rng, accounts, shape, seed):
    """Every kind of episode `episodes_per_kind` times, on victims picked per episode (a fresh
    account's episode on an account of its own)."""
    victims = [a for a in accounts if a.scenario in ("office", "growth") and a.first_day == 0]
    calls = []
    for round_ in range(shape.episodes_per_kind):
        for kind in EPISODE_KINDS:
            episode = f"s{seed}-{kind}-{round_ + 1}"
            victim = rng.choice(victims)
            if kind == "fresh_pump":
                victim = signed_up_for_fraud(rng, victim.domain)
            calls += EPISODE_MAKERS[kind](rng, victim, episode)
    return calls


def signed_up_for_fraud(rng, domain):
    """A new extension on a customer's PBX, or half the time a new customer: a fraudster signing up."""
    if rng.random() < 0.5:
        brand, number = rng.choice(["voip", "sip", "tel", "call"]), rng.randint(10, 99)
        domain = f"{brand}{number}-{rng.choice(['uk', 'connect', 'direct'])}.co.uk"
    return Account(str(rng.randint(5000, 5999)), domain, address(rng, "GB"), rng.choice(SOFTPHONES), 0, [], [],
                   rng.randint(25, DAYS - 5), "fraud")


def fraud_call(start, seconds, victim, number, ip, ua, country, episode):
    return Call(start, seconds, victim, number, ip, ua, country, "fraud", episode, episode.split("-")[1])


def weekend_hack(rng, victim, episode):
    """A hacked PBX from Friday night to Sunday: the rate and the concurrency climb for hours."""
    friday = rng.choice([d for d in range(21, DAYS - 3) if (START + dt.timedelta(days=d)).weekday() == 4])
    t, end = moment(friday, rng.uniform(20, 23.5)), moment(friday, rng.uniform(36, 54))
    ua, calls, gap = rng.choice(PBX_AGENTS), [], 900.0
    while t < end:
        calls.append(fraud_call(t, rng.uniform(300, 2400), victim, number_in(rng, PREMIUM_NOT_HIGH_RISK), victim.ip, ua,
                                "GB", episode))
        gap = max(90.0, gap * 0.95)
        t += rng.uniform(0.5, 1.5) * gap
    return calls


def slow_drip(rng, victim, episode):
    """Two or three calls on working days for weeks, to a few premium numbers: under any quota."""
    first, numbers = rng.randint(21, DAYS - 25), [number_in(rng, IRSF_DESTINATIONS["premium"]) for _ in range(4)]
    calls = []
    for day in range(first, first + 21):
        if is_working_day(day):
            for _ in range(rng.randint(1, 3)):
                calls.append(fraud_call(moment(day, office_hour(rng)), rng.uniform(900, 2400), victim, rng.choice(numbers),
                                        victim.ip, victim.ua, "GB", episode))
    return calls


def lunch_phone(rng, victim, episode):
    """A compromised phone inside the office: same address, same User-Agent, at lunch time."""
    day = rng.choice([d for d in range(21, DAYS) if is_working_day(d)])
    t, end, calls = moment(day, rng.uniform(12, 12.5)), moment(day, 13.75), []
    pool = IRSF_DESTINATIONS["africa"] + IRSF_DESTINATIONS["island_satellite"]
    while t < end:
        calls.append(fraud_call(t, rng.uniform(300, 1500), victim, number_in(rng, pool), victim.ip, victim.ua, "GB", episode))
        t += rng.uniform(20, 120)
    return calls


def stolen_abroad(rng, victim, episode):
    """The victim's password used from abroad, with the victim's own User-Agent, at night."""
    country = rng.choice(["PS", "NG", "RO", "VN", "NL", "RU", "BR"])
    day, ip = rng.randint(21, DAYS - 2), address(rng, country)
    t, calls = moment(day, rng.uniform(0, 4)), []
    pool = [r for group in IRSF_DESTINATIONS.values() for r in group]
    for _ in range(rng.randint(40, 120)):
        calls.append(fraud_call(t, rng.uniform(300, 3000), victim, number_in(rng, pool), ip, victim.ua, country, episode))
        t += rng.uniform(5, 60)
    return calls


def fresh_pump(rng, account, episode):
    """An account signed up for the fraud: premium destinations from its first call, for two days."""
    calls = []
    for day in (account.first_day, account.first_day + 1):
        t = moment(day, rng.uniform(9, 14))
        for _ in range(rng.randint(25, 45)):
            calls.append(fraud_call(t, rng.uniform(600, 3000), account,
                                    number_in(rng, IRSF_DESTINATIONS["premium"] + IRSF_DESTINATIONS["island_satellite"]),
                                    account.ip, account.ua, "GB", episode))
            t += rng.uniform(30, 400)
    return calls


def same_number(rng, victim, episode):
    """One premium number called again and again, just slower than a redial loop."""
    number = number_in(rng, IRSF_DESTINATIONS["premium"] + IRSF_DESTINATIONS["africa"])
    day = rng.randint(21, DAYS - 1)
    t, calls = moment(day, rng.uniform(8, 20)), []
    for _ in range(rng.randint(40, 90)):
        calls.append(fraud_call(t, rng.uniform(30, 200), victim, number, victim.ip, victim.ua, "GB", episode))
        t += rng.uniform(35, 240)
    return calls


def scanner(rng, victim, episode):
    """A scanner with a guessed password and a spoofed desk-phone User-Agent, trying dial plans:
    the same destinations behind every international prefix it knows."""
    country = rng.choice(["PS", "NL", "RU", "US"])
    ip, ua = address(rng, country), rng.choice(PHONES)
    day = rng.randint(21, DAYS - 1)
    t, calls = moment(day, rng.uniform(0, 24)), []
    for _ in range(rng.randint(30, 80)):
        head, length = rng.choice([("972592", 6), ("970599", 6), ("4420", 8), ("88213", 6), ("37090", 6)])
        prefix = rng.choice(["00", "011", "+", "000", "9011", "900", "0000", ""])
        calls.append(fraud_call(t, rng.uniform(5, 40), victim, prefix + head + "".join(rng.choice("0123456789")
                                                                                   for _ in range(length)),
                                ip, ua, country, episode))
        t += rng.uniform(1, 4)
    return calls


def holiday_attack(rng, victim, episode):
    """A bank holiday, when nobody is in the office to notice: a day of calls from the office PBX."""
    day = (rng.choice(UK_BANK_HOLIDAYS) - START).days
    t, end, calls = moment(day, rng.uniform(7, 10)), moment(day, rng.uniform(17, 22)), []
    pool = [r for group in IRSF_DESTINATIONS.values() for r in group]
    ua = rng.choice(PBX_AGENTS + [victim.ua])
    while t < end:
        calls.append(fraud_call(t, rng.uniform(300, 2400), victim, number_in(rng, pool), victim.ip, ua, "GB", episode))
        t += rng.uniform(30, 300)
    return calls


EPISODE_MAKERS = {"weekend_hack": weekend_hack, "slow_drip": slow_drip, "lunch_phone": lunch_phone,
                  "stolen_abroad": stolen_abroad, "fresh_pump": fresh_pump, "same_number": same_number,
                  "scanner": scanner, "holiday_attack": holiday_attack}


def with_concurrency(calls):
    """Sort by time; each call gets the number of its account's calls in progress, itself included,
    as the PBX reports it."""
    calls.sort(key=lambda c: c.start)
    active, rows = {}, []
    for call in calls:
        key = (call.account.user, call.account.domain)
        ends = active.setdefault(key, [])
        while ends and ends[0] <= call.start:
            heapq.heappop(ends)
        heapq.heappush(ends, call.start + call.seconds)
        rows.append((call, len(ends)))
    return rows


def new_destination_share(calls, settled_days=14):
    """Percent of the legitimate calls, after an account's first `settled_days`, that go to a
    country the account has not called before: the figure to hold against the published 0.3 to
    0.9 % of calls to a country new for the caller."""
    first_call, seen, calls_after, new_after = {}, set(), 0, 0
    for call in calls:
        if call.label != "legit" or not call.country:
            continue
        key = (call.account.user, call.account.domain)
        first_call.setdefault(key, call.start)
        new = (key, call.country) not in seen
        seen.add((key, call.country))
        if call.start - first_call[key] > settled_days * 86400:
            calls_after += 1
            new_after += new
    return percent(new_after, calls_after)


def generate(path, seed, shape_name):
    """Write the labeled CDR file of one seed and shape; returns (its rows as dicts, the share of
    new destinations)."""
    rng = random.Random(f"{shape_name}-{seed}")
    shape = SHAPES[shape_name]
    accounts = make_domains(rng, shape)
    travellers = pick_travellers(rng, accounts)
    calls = legit_calls(rng, accounts, travellers)
    fraud = fraud_episodes(rng, accounts, shape, seed)
    rows, ordered = [], with_concurrency(calls + fraud)
    for call, concurrent in ordered:
        when = dt.datetime.fromtimestamp(int(call.start), TZ).isoformat()
        rows.append(dict(zip(CDR_COLUMNS, (when, call.account.user, call.account.domain, call.number, call.ip, call.ua,
                                           concurrent, call.source_country, call.label, call.episode, call.scenario))))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, CDR_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows, new_destination_share(call for call, _ in ordered)


def write_config(path):
    """The default configuration with only the home country, timezone, business hours and holidays."""
    holidays = ", ".join(d.isoformat() for d in UK_BANK_HOLIDAYS)
    Path(path).write_text(f"[server]\nlog_level = error\n\n[policy]\nhome_country = GB\ntimezone = Europe/London\n"
                          f"business_hours = {BUSINESS_HOURS}\nholidays = {holidays}\n", encoding="utf-8")


# --- scorer ---------------------------------------------------------------------------------

def run_replay(tfps, cdr, workdir, timeout):
    """The real `tfps.py replay` into a fresh SQLite file; returns (its JSON report, the call log
    as (ts, user, domain, dialed, code) in the order of the verdicts, seconds)."""
    config, database = Path(workdir) / "tfps.conf", Path(workdir) / "replay.db"
    write_config(config)
    database.unlink(missing_ok=True)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(tfps), "replay", str(cdr), "-c", str(config), "--db", f"sqlite://{database}",
                           "--json"], capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"tfps.py replay exited {done.returncode}: {done.stderr.strip()[-500:]}")
    with contextlib.closing(sqlite3.connect(database)) as db:
        logged = db.execute("SELECT ts, user, domain, dialed, code FROM call_log ORDER BY id").fetchall()
    return json.loads(done.stdout), logged, seconds


def agrees_with_replay(result, report):
    """Replay counts the labels itself: its figures and the scorer's must be the same."""
    for key in ("legit_calls", "legit_blocked", "fraud_calls", "fraud_blocked"):
        if report.get(key) != result[key]:
            raise RuntimeError(f"replay reports {key} = {report.get(key)}, the scorer counted {result[key]}")


def verdicts_by_row(rows, logged):
    """The verdict code of each CDR row, from the call log, which replay writes in the order of the
    CDR (decided in time order; the CDR is written sorted). A row the log skips (a call the
    engine decides without logging it) gets None; a log row that matches no CDR row, in order,
    means the log cannot be scored."""
    codes, next_logged = [], 0
    for row in rows:
        if next_logged < len(logged):
            ts, user, domain, dialed, code = logged[next_logged]
            if (user, domain, dialed) == (row["user"], row["domain"], row["number"][:64]) \
                    and abs(ts - dt.datetime.fromisoformat(row["time"]).timestamp()) < 1:
                codes.append(code)
                next_logged += 1
                continue
        codes.append(None)
    if next_logged < len(logged):
        ts, user, domain, dialed, _ = logged[next_logged]
        raise RuntimeError(f"call log row {next_logged + 1} ({user}@{domain} {dialed} at {ts}) matches no CDR row in order")
    return codes


def score(rows, codes):
    """Figures of one replay: rows as generated (label, episode, scenario), codes the verdicts in
    the same order (None: not in the call log). A call is blocked when it has a code other than
    A00; an episode's leaked calls are its approved ones, wherever they come in the episode."""
    legit = fraud = legit_blocked = fraud_blocked = 0
    legit_rules, legit_by_scenario, episodes = Counter(), {}, {}
    for row, code in zip(rows, codes):
        blocked = code not in (None, "A00")
        if row["label"] == "fraud":
            fraud += 1
            fraud_blocked += blocked
            episode = episodes.setdefault(row["episode"], {"calls": 0, "leaked": 0, "first_block": None})
            episode["calls"] += 1
            if blocked and episode["first_block"] is None:
                episode["first_block"] = episode["calls"]
            episode["leaked"] += not blocked
        else:
            legit += 1
            legit_blocked += blocked
            tally = legit_by_scenario.setdefault(row["scenario"], [0, 0])
            tally[0] += 1
            tally[1] += blocked
            if blocked:
                legit_rules[code] += 1
    return {"rows": len(rows), "unlogged": codes.count(None), "legit_calls": legit, "legit_blocked": legit_blocked,
            "legit_blocked_pct": percent(legit_blocked, legit), "legit_blocking_rules": dict(legit_rules.most_common()),
            "legit_by_scenario": {name: {"calls": c, "blocked": b} for name, (c, b) in sorted(legit_by_scenario.items())},
            "fraud_calls": fraud, "fraud_blocked": fraud_blocked, "fraud_blocked_pct": percent(fraud_blocked, fraud),
            "episodes": episodes, "max_leaked": max((e["leaked"] for e in episodes.values()), default=0)}


def percent(part, whole):
    return round(100.0 * part / whole, 2) if whole else None


def bench_one(tfps, seed, shape, workdir, timeout):
    cdr = Path(workdir) / f"fraud-{shape}-{seed}.csv"
    rows, new_destinations = generate(cdr, seed, shape)
    report, logged, seconds = run_replay(tfps, cdr, workdir, timeout)
    result = score(rows, verdicts_by_row(rows, logged))
    agrees_with_replay(result, report)
    result.update(shape=shape, seed=seed, replay_seconds=round(seconds, 1), new_destination_pct=new_destinations)
    return result


# --- report ---------------------------------------------------------------------------------

def leak_column(result, kind):
    """`leaked/calls` of the episodes of one kind, e.g. 12/240 or 0/35+3/60."""
    parts = [f"{e['leaked']}/{e['calls']}" for name, e in sorted(result["episodes"].items()) if name.split("-")[1] == kind]
    return "+".join(parts) or "-"


def top_rules(rules, count=3):
    return " ".join(f"{code}:{n}" for code, n in list(rules.items())[:count]) or "-"


def print_table(results):
    headers = ["shape", "seed", "rows", "legit", "legit blk%", "fraud", "fraud blk%", "max leak", *EPISODE_KINDS,
               "top rules blocking legit", "replay s"]
    lines = []
    for r in results:
        lines.append([r["shape"], str(r["seed"]), f"{r['rows']:,}", f"{r['legit_calls']:,}", f"{r['legit_blocked_pct']:.2f}",
                      f"{r['fraud_calls']:,}", f"{r['fraud_blocked_pct']:.2f}", str(r["max_leaked"]),
                      *(leak_column(r, kind) for kind in EPISODE_KINDS), top_rules(r["legit_blocking_rules"]),
                      f"{r['replay_seconds']:.1f}"])
    total = totals(results)
    lines.append(["all", "", f"{total['rows']:,}", f"{total['legit_calls']:,}", f"{total['legit_blocked_pct']:.2f}",
                  f"{total['fraud_calls']:,}", f"{total['fraud_blocked_pct']:.2f}", str(total["max_leaked"]),
                  *(f"{total['leaked_by_kind'][k]}/{total['calls_by_kind'][k]}" for k in EPISODE_KINDS),
                  top_rules(total["legit_blocking_rules"]), f"{total['replay_seconds']:.1f}"])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for line in lines:
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))
    print(f"(episode columns: calls approved / calls of the episode; goal: fraud blocked >= 99 %, legit blocked "
          f"<= 0.5 %, at most 3 calls leaked per episode; {total['episodes']} episodes, {total['episodes_over_goal']} "
          f"leaked more than 3)")
    print("legit blocked by scenario (all runs): " + ", ".join(
        f"{name} {v['blocked']}/{v['calls']}" for name, v in sorted(total["legit_by_scenario"].items())))
    if total["unlogged"]:
        print(f"{total['unlogged']:,} calls have no call log row: counted as approved")
    shares = [r["new_destination_pct"] for r in results]
    print(f"traffic: {min(shares)} to {max(shares)} % of the legitimate calls after an account's first 14 days go to a "
          f"country new for the account (published measurements: 0.3 to 0.9 %)")


def totals(results):
    total = {"rows": 0, "unlogged": 0, "legit_calls": 0, "legit_blocked": 0, "fraud_calls": 0, "fraud_blocked": 0,
             "replay_seconds": 0.0}
    rules, by_scenario = Counter(), {}
    leaked_by_kind, calls_by_kind, episodes = Counter(), Counter(), []
    for r in results:
        for key in total:
            total[key] += r[key]
        rules.update(r["legit_blocking_rules"])
        for name, v in r["legit_by_scenario"].items():
            tally = by_scenario.setdefault(name, {"calls": 0, "blocked": 0})
            tally["calls"] += v["calls"]
            tally["blocked"] += v["blocked"]
        for name, e in r["episodes"].items():
            leaked_by_kind[name.split("-")[1]] += e["leaked"]
            calls_by_kind[name.split("-")[1]] += e["calls"]
            episodes.append(e["leaked"])
    total.update(legit_blocked_pct=percent(total["legit_blocked"], total["legit_calls"]),
                 fraud_blocked_pct=percent(total["fraud_blocked"], total["fraud_calls"]),
                 legit_blocking_rules=dict(rules.most_common()), legit_by_scenario=by_scenario,
                 leaked_by_kind=leaked_by_kind, calls_by_kind=calls_by_kind, episodes=len(episodes),
                 episodes_over_goal=sum(n > 3 for n in episodes), max_leaked=max(episodes, default=0))
    return total


def parse_seeds(text):
    """'1-5', '3', '1,4,9' or '1-3,7' -> [1, 2, ...]."""
    seeds = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            seeds += range(int(low), min(int(high or low), int(low) + MAX_SEEDS) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds such as 1-5 or 1,3,7") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed")
    if len(seeds) > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"{text!r} names more than {MAX_SEEDS} seeds")
    return seeds


def parse_timeout(text):
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def parse_shapes(text):
    shapes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise argparse.ArgumentTypeError(f"unknown shape {', '.join(unknown) or repr(text)}; shapes: {', '.join(SHAPES)}")
    return shapes


def main(argv=None):
    parser = argparse.ArgumentParser(description="Labeled fraud benchmark: fraud blocked, customers blocked, leaks per "
                                                 "episode, from the real tfps.py replay.")
    parser.add_argument("--seeds", type=parse_seeds, default=[1], metavar="LIST", help="e.g. 1-5 (default 1)")
    parser.add_argument("--shapes", type=parse_shapes, default=["small", "large"], metavar="LIST",
                        help="operators to generate: " + ", ".join(f"{name} ({shape.accounts} accounts, {shape.domains} domains)"
                                                                   for name, shape in SHAPES.items()))
    parser.add_argument("--tfps", type=Path, default=TFPS, metavar="PATH",
                        help="the tfps.py to replay with (default this checkout's)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep the CDR files, the configuration and the replay databases in DIR")
    parser.add_argument("--generate", type=Path, metavar="CSV", help="only write the CDR file of the first seed and shape")
    parser.add_argument("--timeout", type=parse_timeout, default=600.0, metavar="SECONDS",
                        help="longest one replay may take")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        if args.generate:
            rows, new_destinations = generate(args.generate, args.seeds[0], args.shapes[0])
            print(f"{args.generate}: {len(rows):,} rows, {sum(r['label'] == 'fraud' for r in rows):,} of them fraud; "
                  f"{new_destinations} % of the legitimate calls after an account's first 14 days go to a new country")
            return 0
        if not args.tfps.is_file():
            parser.error(f"{args.tfps}: no such file")
        results = []
        with tempfile.TemporaryDirectory(prefix="fraud-bench-") as scratch:
            for shape in args.shapes:
                for seed in args.seeds:
                    workdir = args.keep / f"{shape}-{seed}" if args.keep else Path(scratch)
                    workdir.mkdir(parents=True, exist_ok=True)
                    results.append(bench_one(args.tfps, seed, shape, workdir, args.timeout))
                    print(f"{shape} seed {seed}: {results[-1]['rows']:,} rows replayed in "
                          f"{results[-1]['replay_seconds']:.1f} s", file=sys.stderr, flush=True)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"fraud_bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"results": results, "totals": totals(results)}, indent=2, default=dict))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
