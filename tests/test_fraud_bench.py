"""bench/fraud_bench.py: the labeled traffic it generates (labels, episodes, the shapes the
benchmark promises, one output per seed), the scorer on a hand-made replay result, and one real
`tfps.py replay` scored end to end."""

import csv
import datetime as dt
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from conftest import REPO
import tfps

sys.path.insert(0, str(REPO / "bench"))
import fraud_bench as fb  # noqa: E402

BENCH = REPO / "bench" / "fraud_bench.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("fraud") / "tiny.csv"
    rows, new_destinations = fb.generate(path, 3, "tiny")
    return path, rows, new_destinations


def by_episode(rows):
    episodes = defaultdict(list)
    for row in rows:
        if row["episode"]:
            episodes[row["episode"]].append(row)
    return episodes


def when(row):
    return dt.datetime.fromisoformat(row["time"])


def test_every_fraud_call_belongs_to_an_episode_and_every_kind_occurs(tiny):
    _, rows, _ = tiny
    assert {row["label"] for row in rows} == {"legit", "fraud"}
    for row in rows:
        assert bool(row["episode"]) == (row["label"] == "fraud"), row
    episodes = by_episode(rows)
    assert sorted(name.split("-")[1] for name in episodes) == sorted(fb.EPISODE_KINDS)
    for name, calls in episodes.items():
        assert {row["scenario"] for row in calls} == {name.split("-")[1]}
        assert len(calls) >= 10, name  # enough calls that "at most 3 leaked" means something


def test_the_file_is_what_replay_reads_sorted_and_inside_the_period(tiny):
    path, rows, _ = tiny
    with open(path, newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == [{k: str(v) for k, v in row.items()} for row in rows]
    read = tfps.read_cdrs(str(path))
    assert [r[1] for r in read] == [row["time"] for row in rows]  # replay's order is the file's order
    times = [when(row) for row in rows]
    assert all(t.utcoffset() is not None for t in times)
    first = dt.datetime.combine(fb.START, dt.time(), fb.TZ)
    assert first <= times[0] and times[-1] < first + dt.timedelta(days=fb.DAYS)
    assert all(row["concurrent_calls"] >= 1 for row in rows)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_traffic(tiny, tmp_path):
    path, _, _ = tiny
    fb.generate(tmp_path / "again.csv", 3, "tiny")
    fb.generate(tmp_path / "other.csv", 4, "tiny")
    assert (tmp_path / "again.csv").read_bytes() == path.read_bytes()
    assert (tmp_path / "other.csv").read_bytes() != path.read_bytes()


def test_legitimate_destinations_are_the_countries_they_claim_in_the_shipped_table(tmp_path):
    db = tfps.open_database(f"sqlite://{tmp_path / 'countries.db'}")
    countries = tfps.CountryTable(db.query("SELECT iso, name, prefixes, risk, calling_code, trunk_prefix FROM countries"))
    db.close()
    for iso, (_, ranges) in fb.LEGIT_DESTINATIONS.items():
        for head, length in ranges:
            assert countries.lookup(head + "0" * length) == iso, (iso, head)


def test_the_episodes_have_the_shapes_they_are_named_after(tiny):
    _, rows, _ = tiny
    legit = [row for row in rows if row["label"] == "legit"]
    own = {}
    for row in legit:
        if row["scenario"] != "traveller":
            own[(row["user"], row["domain"])] = (row["source_ip"], row["user_agent"])
    for name, calls in by_episode(rows).items():
        kind, account = name.split("-")[1], (calls[0]["user"], calls[0]["domain"])
        assert {(row["user"], row["domain"]) for row in calls} == {account}
        if kind == "lunch_phone":
            assert {(row["source_ip"], row["user_agent"]) for row in calls} == {own[account]}
            assert all(12 <= when(row).hour < 14 for row in calls)
        if kind == "stolen_abroad":
            assert {row["user_agent"] for row in calls} == {own[account][1]}
            assert {row["source_country"] for row in calls} != {"GB"}
        if kind == "scanner":
            assert {row["user_agent"] for row in calls} <= set(fb.PHONES)
            assert len({row["number"][:4] for row in calls}) > 3  # it tries several dial plans
        if kind == "weekend_hack":
            hours = (when(calls[-1]) - when(calls[0])).total_seconds() / 3600
            assert hours > 8 and when(calls[0]).weekday() == 4
            concurrency = [row["concurrent_calls"] for row in calls]
            assert max(concurrency[len(calls) // 2:]) > 2 * max(concurrency[:10])
        if kind == "holiday_attack":
            assert {when(row).date() for row in calls} <= set(fb.UK_BANK_HOLIDAYS)
        if kind == "same_number":
            assert len({row["number"] for row in calls}) == 1
        if kind == "fresh_pump":
            assert account not in own  # the account makes no call before its fraud
        if kind == "slow_drip":
            assert max(Counter(when(row).date() for row in calls).values()) <= 3


def test_the_legitimate_shapes_are_there(tiny):
    _, rows, new_destinations = tiny
    legit = [row for row in rows if row["label"] == "legit"]
    scenarios = Counter(row["scenario"] for row in legit)
    assert {"call_centre", "dialer", "growth", "traveller"} <= set(scenarios)
    travellers = [row for row in legit if row["scenario"] == "traveller"]
    assert travellers and all(row["source_country"] != "GB" for row in travellers)
    centre = [when(row).hour for row in legit if row["scenario"] == "call_centre"]
    assert sum(h < 6 for h in centre) > 0.05 * len(centre)  # its nights are normal
    dialer = sorted(when(row).timestamp() for row in legit if row["scenario"] == "dialer" and row["user"] == "trunk1")
    assert any(dialer[i + 24] - dialer[i] <= 100 for i in range(len(dialer) - 24))  # 25 calls in 100 s
    assert 0 < new_destinations < 2


def test_the_large_operator_has_its_crown_dependency_calls_and_emergency_calls(tmp_path):
    rows, _ = fb.generate(tmp_path / "large.csv", 1, "large")
    assert len({(row["user"], row["domain"]) for row in rows if row["label"] == "legit"}) == 160
    assert len({row["domain"] for row in rows if row["label"] == "legit"}) == 13
    assert {row["number"][:7] for row in rows if row["scenario"] == "crown_dependency"} == {"+447797", "+447911", "+447624"}
    assert {row["number"] for row in rows if row["scenario"] == "emergency"} == {"999", "112"}
    assert {row["scenario"] for row in rows} >= {"new_account", "crown_dependency", "emergency"}


def row(label, episode="", scenario="office", user="100", domain="a.example", number="0033123456789"):
    return {"label": label, "episode": episode, "scenario": scenario, "user": user, "domain": domain, "number": number}


def test_the_scorer_counts_a_hand_made_replay_result():
    rows = [row("legit"), row("legit"), row("legit", scenario="traveller"), row("legit"),
            row("fraud", "s1-scanner-1", "scanner"), row("fraud", "s1-scanner-1", "scanner"),
            row("fraud", "s1-weekend_hack-1", "weekend_hack"), row("fraud", "s1-scanner-1", "scanner"),
            row("fraud", "s1-weekend_hack-1", "weekend_hack"), row("fraud", "s1-scanner-1", "scanner")]
    codes = ["A00", "R06", "R04", "R06",
             "A00", "R01",
             "A00", "A00",                # the scanner leaks again after it was first blocked
             "A00", "R07"]
    result = fb.score(rows, codes)
    assert (result["legit_calls"], result["legit_blocked"], result["legit_blocked_pct"]) == (4, 3, 75.0)
    assert result["legit_blocking_rules"] == {"R06": 2, "R04": 1}
    assert list(result["legit_blocking_rules"]) == ["R06", "R04"]  # most first
    assert result["legit_by_scenario"] == {"office": {"calls": 3, "blocked": 2}, "traveller": {"calls": 1, "blocked": 1}}
    assert (result["fraud_calls"], result["fraud_blocked"], result["fraud_blocked_pct"]) == (6, 2, 33.33)
    assert result["episodes"] == {"s1-scanner-1": {"calls": 4, "leaked": 2, "first_block": 2},
                                  "s1-weekend_hack-1": {"calls": 2, "leaked": 2, "first_block": None}}
    assert (result["max_leaked"], result["unlogged"]) == (2, 0)
    result.update(shape="tiny", seed=1, replay_seconds=1.0, new_destination_pct=0.5)
    total = fb.totals([result, dict(result, seed=2)])
    assert (total["legit_calls"], total["fraud_blocked"], total["episodes"], total["max_leaked"]) == (8, 4, 4, 2)
    assert total["leaked_by_kind"] == {"scanner": 4, "weekend_hack": 4}


def test_the_call_log_is_matched_to_the_cdr_rows_in_order():
    rows = [dict(row("legit", number=number), time=f"2026-03-02T10:00:0{i}+00:00")
            for i, number in enumerate(["0033123", "999", "0049123"])]
    t = dt.datetime(2026, 3, 2, 10, tzinfo=dt.timezone.utc).timestamp()
    logged = [(t, "100", "a.example", "0033123", "A00"), (t + 1, "100", "a.example", "999", "R07"),
              (t + 2, "100", "a.example", "0049123", "R06")]
    assert fb.verdicts_by_row(rows, logged) == ["A00", "R07", "R06"]
    assert fb.verdicts_by_row(rows, logged[:1] + logged[2:]) == ["A00", None, "R06"]  # a call decided without a log row
    with pytest.raises(RuntimeError, match="call log row 2 .*0049999.* matches no CDR row"):
        fb.verdicts_by_row(rows, logged[:1] + [(t + 2, "100", "a.example", "0049999", "R06")])
    with pytest.raises(RuntimeError, match="call log row 1 "):
        fb.verdicts_by_row(rows, [(t + 60, "100", "a.example", "0033123", "A00")])  # another time
    result = fb.score(rows, ["A00", None, "R06"])
    assert (result["unlogged"], result["legit_blocked"], result["legit_blocking_rules"]) == (1, 1, {"R06": 1})


def test_one_seed_through_the_real_replay(tmp_path):
    result = fb.bench_one(fb.TFPS, 3, "tiny", tmp_path, timeout=300)
    assert result["rows"] == result["legit_calls"] + result["fraud_calls"] > 1000
    assert result["unlogged"] == 0
    assert sum(e["calls"] for e in result["episodes"].values()) == result["fraud_calls"]
    assert len(result["episodes"]) == len(fb.EPISODE_KINDS)
    assert sum(result["legit_blocking_rules"].values()) == result["legit_blocked"]
    config = (tmp_path / "tfps.conf").read_text()
    assert "home_country = GB" in config and "timezone = Europe/London" in config and "2026-04-06" in config


def test_a_scorer_that_disagrees_with_replay_is_an_error():
    result = {"legit_calls": 10, "legit_blocked": 1, "fraud_calls": 5, "fraud_blocked": 5}
    fb.agrees_with_replay(result, dict(result, rows=15))
    with pytest.raises(RuntimeError, match="legit_blocked = 2, the scorer counted 1"):
        fb.agrees_with_replay(result, dict(result, legit_blocked=2))


@pytest.mark.parametrize("args, message", [(["--seeds", "x"], "is not a list of seeds"),
                                           (["--seeds", "5-1"], "names no seed"),
                                           (["--seeds", "1-99999999999"], "names more than 1000 seeds"),
                                           (["--shapes", "huge"], "unknown shape huge"),
                                           (["--timeout", "-1"], "is not a number of seconds above 0"),
                                           (["--timeout", "nan"], "is not a number of seconds above 0")])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
