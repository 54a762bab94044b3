"""Number normalization and longest-prefix country resolution, on the country table of a real
database (the seed loaded by open_database)."""

import pytest

import tfps
from conftest import write_config


@pytest.fixture(scope="module")
def countries(tmp_path_factory):
    db = tfps.open_database(f"sqlite://{tmp_path_factory.mktemp('numbers') / 'tfps.db'}")
    table = tfps.Lists(db).countries
    db.close()
    return table


@pytest.fixture(scope="module")
def policy():
    return tfps.Config.load(None).policy


def policy_from(tmp_path, **keys):
    return tfps.Config.load(write_config(tmp_path / "numbers.conf", {"policy": keys})).policy


# -- normalization: E.164 by default -----------------------------------------------------------

@pytest.mark.parametrize("dialed, expected", [
    ("5548987654321", "5548987654321"),          # the TFPS contract: E.164 without '+'
    ("+5548987654321", "5548987654321"),
    ("005548987654321", "5548987654321"),        # international access prefix 00
    ("0115548987654321", "5548987654321"),       # international access prefix 011
    ("+1 (212) 555-1234", "12125551234"),        # visual separators
    ("+1.212.555.1234", "12125551234"),
    ("00 44 20 7946 0000", "442079460000"),
    ("011-49-30-123456", "4930123456"),
    ("(0044) 20.7946-0000", "442079460000"),
    ("1\t212 555 1234", "12125551234"),
    ("2125551234", "2125551234"),                # national_numbers = no: read as E.164 as is
])
def test_normalize_default(countries, policy, dialed, expected):
    assert tfps.normalize_number(dialed, policy, countries) == expected


@pytest.mark.parametrize("dialed", [
    "12125551234abc", "1212555ABCD", "", "+", "++12125551234", "1212*5551234", "#12125551234",
    "1212555'1234", "1212%27555", "\u0661\u0662\u0663\u0664\u0665",  # Arabic-Indic digits: not ASCII
    "+1+2125551234", "12125551234;", "sip:12125551234",
])
def test_non_dialable_is_none(countries, policy, dialed):
    assert tfps.normalize_number(dialed, policy, countries) is None


def test_dialed_number_drops_user_parameters():
    assert tfps.dialed_number("12125551234;npdi;rn=12125550000") == "12125551234"
    assert tfps.dialed_number("12125551234") == "12125551234"


def test_custom_international_prefixes(tmp_path, countries):
    p = policy_from(tmp_path, international_prefixes="0011, 00")  # Australia dials 0011
    assert tfps.normalize_number("00114930123456", p, countries) == "4930123456"
    assert tfps.normalize_number("004930123456", p, countries) == "4930123456"
    # 011 is no longer an access prefix: the digits are read as E.164 as they are
    assert tfps.normalize_number("0114930123456", p, countries) == "0114930123456"


# -- normalization: national numbers of home_country ---------------------------------------------

@pytest.mark.parametrize("home, dialed, expected", [
    ("US", "2125551234", "12125551234"),         # no trunk prefix dialed: country code added
    ("US", "12125551234", "12125551234"),        # NANP trunk prefix 1 removed, then added back
    ("US", "1 (212) 555-1234", "12125551234"),
    ("US", "+442079460000", "442079460000"),     # '+' is international
    ("US", "011442079460000", "442079460000"),   # so is the access prefix
    ("US", "00442079460000", "442079460000"),
    ("GB", "02079460000", "442079460000"),       # trunk prefix 0 removed, 44 added
    ("GB", "020 7946 0000", "442079460000"),
    ("GB", "07700900123", "447700900123"),
    ("GB", "+12125551234", "12125551234"),
    ("GB", "0012125551234", "12125551234"),
    ("gb", "02079460000", "442079460000"),       # home_country is case-insensitive
    ("DE", "030123456", "4930123456"),
    ("DE", "(030) 12-34-56", "4930123456"),
    ("DE", "0033123456789", "33123456789"),
    ("DE", "+4930123456", "4930123456"),
])
def test_normalize_national(tmp_path, countries, home, dialed, expected):
    p = policy_from(tmp_path, national_numbers="yes", home_country=home)
    assert tfps.normalize_number(dialed, p, countries) == expected


def test_national_numbers_still_rejects_non_dialable(tmp_path, countries):
    p = policy_from(tmp_path, national_numbers="yes", home_country="GB")
    assert tfps.normalize_number("0207946000X", p, countries) is None


def test_national_numbers_off_keeps_digits(tmp_path, countries):
    p = policy_from(tmp_path, national_numbers="no", home_country="GB")
    assert tfps.normalize_number("02079460000", p, countries) == "02079460000"


# -- country resolution by longest prefix --------------------------------------------------------

NANP = [
    ("18765551234", "JM"), ("18095551234", "DO"), ("18295551234", "DO"), ("18495551234", "DO"),
    ("12645551234", "AI"), ("12685551234", "AG"), ("12845551234", "VG"), ("14735551234", "GD"),
    ("16495551234", "TC"), ("16645551234", "MS"), ("17675551234", "DM"), ("18695551234", "KN"),
    ("14165551234", "CA"), ("16045551234", "CA"), ("12125551234", "US"), ("13055551234", "US"),
    ("17875551234", "PR"), ("12425551234", "BS"),
]

SHARED = [
    ("74951234567", "RU"), ("79161234567", "RU"), ("77011234567", "KZ"), ("77272123456", "KZ"),
    ("442079460000", "GB"), ("447700900123", "GB"), ("441481123456", "GG"), ("441534123456", "JE"),
    ("441624123456", "IM"),
    ("390669812345", "VA"), ("3906698", "VA"), ("390612345678", "IT"), ("39066912345", "IT"),
    ("4722123456", "NO"), ("4779123456", "SJ"),
    ("358912345678", "FI"), ("35818123456", "AX"),
    ("59991234567", "CW"), ("5997123456", "BQ"),
    ("6723123456", "NF"),
    ("262262123456", "RE"), ("33123456789", "FR"), ("4930123456", "DE"), ("5312345678", "CU"),
    ("61212345678", "AU"),
]


@pytest.mark.parametrize("number, iso", NANP + SHARED)
def test_country_lookup(countries, number, iso):
    assert countries.lookup(number) == iso


@pytest.mark.parametrize("number", ["9991234567", "999", "8001234567", "0", "0123456", "28012345"])
def test_unknown_country_code(countries, number):
    assert countries.lookup(number) is None


def test_lookup_of_a_bare_prefix_and_empty(countries):
    assert countries.lookup("1") == "US"
    assert countries.lookup("7") == "RU"
    assert countries.lookup("44") == "GB"
    assert countries.lookup("") is None


def test_country_table_facts(countries):
    assert len(countries.by_iso) >= 240
    gb, us, de = countries.by_iso["GB"], countries.by_iso["US"], countries.by_iso["DE"]
    assert (gb.calling_code, gb.trunk_prefix) == ("44", "0")
    assert (us.calling_code, us.trunk_prefix) == ("1", "1")
    assert (de.calling_code, de.trunk_prefix) == ("49", "0")
    assert countries.label("CU") == "CU (Cuba)"
    assert countries.label(None) == "unknown"


def test_normalize_then_lookup(tmp_path, countries):
    """The two steps together, as the engine runs them."""
    p = policy_from(tmp_path, national_numbers="yes", home_country="US")
    assert countries.lookup(tfps.normalize_number("1 (876) 555-1234", p, countries)) == "JM"
    assert countries.lookup(tfps.normalize_number("011 44 1534 123456", p, countries)) == "JE"
    assert countries.lookup(tfps.normalize_number("(416) 555-1234", p, countries)) == "CA"


BOTH_BACKENDS = [
    ("18765551234", "JM"), ("77011234567", "KZ"), ("74951234567", "RU"), ("441481123456", "GG"),
    ("390669812345", "VA"), ("35818123456", "AX"), ("14165551234", "CA"), ("9991234567", None),
]


def test_country_lookup_same_on_both_backends(db_url):
    """The seed loads the same table into SQLite and MariaDB (long prefix lists included)."""
    db = tfps.open_database(db_url)
    try:
        table = tfps.Lists(db).countries
        assert len(table.by_iso) >= 240
        assert len(table.by_prefix) > 300
        assert [table.lookup(number) for number, _ in BOTH_BACKENDS] == [iso for _, iso in BOTH_BACKENDS]
    finally:
        db.close()
