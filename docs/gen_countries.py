"""Generate the `countries` seed block of schema.sql from phonenumbers metadata.

This script was used once to write the INSERT between the lines
"-- BEGIN SEED countries" and "-- END SEED countries" in schema.sql. To
refresh the data (e.g. after upgrading phonenumbers), run it from the repo root:

    python3 docs/gen_countries.py

Only the block between the two markers is rewritten; the rest of schema.sql is
left untouched. A set of known numbers is then resolved against the generated
rows and the script fails if any of them lands in the wrong country.

Each row's `prefixes` is a comma-separated list of E.164 digit prefixes. A
number belongs to the row holding its longest matching prefix. When several
regions share a country code, the main region gets the bare code. Each other
region gets the code plus its leading digits (from the metadata, or worked out
from its number patterns when the metadata has none, e.g. CA or GG).
"""
import functools
import itertools
import pathlib
import re

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneMetadata, PhoneNumber
from phonenumbers.geocoder import _region_display_name  # English region names (geocoder data)

SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "schema.sql"
BEGIN = "-- BEGIN SEED countries"
END = "-- END SEED countries"
# Tier high (README, Destination tiers): the seed's high-risk list, and the island states and
# territories of the Pacific (+67x to +69x) and of the South Atlantic and Indian Ocean with fewer than
# 300,000 inhabitants, whose few, costly number ranges international revenue share fraud pumps.
HIGH_RISK = {"CU", "LV", "TN", "DZ", "MA", "AF", "IQ", "LK", "MV", "TD", "GN", "EE", "MG",
             "NR", "TO", "PW", "WF", "CK", "NU", "WS", "KI", "NC", "TV", "PF", "TK", "FM", "MH", "NF",
             "AC", "SH", "TA", "FK", "IO"}
# Names the geocoder data lacks or spells in an outdated way.
NAMES = {"AC": "Ascension Island", "TA": "Tristan da Cunha", "XK": "Kosovo",
         "CD": "Democratic Republic of the Congo", "MK": "North Macedonia", "SZ": "Eswatini"}
# Subscriber digits appended to a prefix to get sample numbers for probing.
FILLERS = [d * 12 for d in "0123456789"] + ["234567890123", "555010012345"]
CHECKS = {"18765551234": "JM", "18095551234": "DO", "18295551234": "DO", "18495551234": "DO",
          "12645551234": "AI", "12685551234": "AG", "12845551234": "VG", "14735551234": "GD",
          "16495551234": "TC", "16645551234": "MS", "17675551234": "DM", "18695551234": "KN",
          "14165551234": "CA", "12125551234": "US", "74951234567": "RU", "77011234567": "KZ",
          "447400123456": "GB", "441481123456": "GG", "441534123456": "JE", "441624123456": "IM",
          "390669812345": "VA", "390212345678": "IT", "5355512345": "CU", "37167123456": "LV",
          "4791234567": "NO", "358181234567": "AX", "358401234567": "FI", "5999": "CW",
          "5997": "BQ", "6723": "NF",
          "447911123456": "GG"}  # 7911[17] is Guernsey mobile in phonenumbers, 7911[028] UK


def english_name(region):
    name = NAMES.get(region) or _region_display_name(region, "en")
    name = re.sub(r"(?<=\S) (And|Of|The) ", lambda m: " " + m.group(1).lower() + " ", name)
    return name[:64]


def minimal(prefixes):
    """Drop prefixes already covered by a shorter one in the same set."""
    return sorted(p for p in prefixes if not any(p[:i] in prefixes for i in range(1, len(p))))


def expand_leading_digits(pattern):
    """'658|876' -> ['658', '876']; '8[024]9' -> ['809', '829', '849'].

    Tries every digit string of a given length; goes one digit deeper while
    some match uses the whole string (a longer alternative may be cut off).
    """
    rx = re.compile(pattern)
    for depth in range(3, 8):
        strings = map("".join, itertools.product("0123456789", repeat=depth))
        found = {m.group() for m in map(rx.match, strings) if m}
        if found and max(map(len, found)) < depth:
            return minimal(found)
    raise ValueError(f"cannot expand leading digits {pattern!r}")


TYPES = ("fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost",
         "personal_number", "voip", "pager", "uan", "voicemail")


@functools.cache
def patterns(region):
    """Compiled national number patterns of a region, by number type."""
    meta = PhoneMetadata.metadata_for_region(region)
    descs = {t: getattr(meta, t) for t in TYPES}
    return {t: re.compile(d.national_number_pattern)
            for t, d in descs.items() if d and d.national_number_pattern}


def owner(cc, national):
    """Region a national number belongs to, judged by the number patterns.

    If the fixed-line pattern of exactly one non-main region accepts it, that
    region wins (e.g. Western Sahara's 5288/5289, which Morocco's pattern also
    covers); otherwise the first region, in phonenumbers' order (main first),
    whose patterns accept it.
    """
    regions = COUNTRY_CODE_TO_REGION_CODE[cc]
    accepting = [r for r in regions if any(p.fullmatch(national) for p in patterns(r).values())]
    local = [r for r in accepting if r != regions[0] and "fixed_line" in patterns(r)
             and patterns(r)["fixed_line"].fullmatch(national)]
    return local[0] if len(local) == 1 else (accepting or [None])[0]


def regions_under(cc, prefix, lengths):
    """Regions owning sample national numbers that start with prefix."""
    return {owner(cc, prefix + filler[:length - len(prefix)])
            for length in lengths if length > len(prefix) for filler in FILLERS} - {None}


def probe(cc, region):
    """Leading national digits of a region that has no leading_digits metadata.

    Every prefix of a fixed depth (area codes for NANP, 4 digits elsewhere) is
    classified with sample numbers; prefixes where any region but the main one
    shows up are split up to two digits further. Sibling prefixes are then
    merged upwards as long as none of them belongs to another region.
    """
    main = phonenumbers.region_code_for_country_code(cc)
    lengths = PhoneMetadata.metadata_for_region(main).general_desc.possible_length
    depth = 3 if cc == 1 else 4
    todo = ["".join(d) for d in itertools.product("0123456789", repeat=depth)]
    mine = set()
    while todo:
        prefix = todo.pop()
        found = regions_under(cc, prefix, lengths)
        if found == {region}:
            mine.add(prefix)
        elif found - {main} and len(prefix) < depth + 2:
            todo.extend(prefix + d for d in "0123456789")
    merged = True
    while merged:
        merged = False
        for parent in sorted({p[:-1] for p in mine if len(p) > 1}):
            children = [parent + d for d in "0123456789"]
            if all(c in mine or not regions_under(cc, c, lengths) for c in children):
                mine = {p for p in mine if not p.startswith(parent)} | {parent}
                merged = True
                break
    return minimal(mine)


def build_rows():
    rows = []
    for cc, regions in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        main = phonenumbers.region_code_for_country_code(cc)
        for region in regions:
            if region not in phonenumbers.SUPPORTED_REGIONS:  # '001' non-geographic
                continue
            meta = PhoneMetadata.metadata_for_region(region)
            if region == main:
                national = [""]
            elif meta.leading_digits:
                national = expand_leading_digits(meta.leading_digits)
            else:
                national = probe(cc, region)
            if not national:
                print(f"warning: no prefixes found for {region} (+{cc})")
            prefixes = [f"{cc}{n}" for n in national]
            rows.append((region, english_name(region), ",".join(prefixes),
                         "high" if region in HIGH_RISK else "normal", str(cc), meta.national_prefix or ""))
    return sorted(rows)


def resolve(rows, number):
    best = max(((p, iso) for iso, _, prefixes, *_ in rows for p in prefixes.split(",")
                if p and number.startswith(p)), key=lambda t: len(t[0]), default=(None, None))
    return best[1]


def sql_block(rows):
    quote = lambda s: "'" + s.replace("'", "''") + "'"
    values = ",\n".join("  (" + ", ".join(map(quote, row)) + ")" for row in rows)
    return f"INSERT IGNORE INTO countries (iso, name, prefixes, risk, calling_code, trunk_prefix) VALUES\n{values};\n"


def main():
    rows = build_rows()
    all_prefixes = [p for row in rows for p in row[2].split(",") if p]
    assert len(all_prefixes) == len(set(all_prefixes)), "a prefix is assigned to two regions"
    assert all(len(row[2]) <= 2048 for row in rows), "prefixes column too long"
    failures = {n: (want, resolve(rows, n)) for n, want in CHECKS.items() if resolve(rows, n) != want}
    for number, (want, got) in failures.items():
        print(f"check failed: {number} -> {got}, expected {want}")
    assert not failures, f"{len(failures)} resolution checks failed"

    text = SCHEMA.read_text(encoding="utf-8")
    start = text.index(BEGIN)
    start = text.index("\n", start) + 1
    stop = text.index(END, start)
    SCHEMA.write_text(text[:start] + sql_block(rows) + text[stop:], encoding="utf-8")
    print(f"wrote {len(rows)} countries to {SCHEMA}")


if __name__ == "__main__":
    main()
