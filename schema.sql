-- TFPS database schema: the one source of truth for both backends.
--
-- Written in the MySQL/MariaDB dialect, so `mysql tfps < schema.sql` works as is.
-- `tfps.py initdb` reads this same file, rewrites the few dialect differences for
-- SQLite (AUTO_INCREMENT becomes the rowid, ENGINE clauses, inline INDEX lines, INSERT IGNORE; a table with a
-- composite primary key is made WITHOUT ROWID, clustered by that key as in InnoDB), creates
-- what is missing and adds columns that an older database lacks.
--
-- Conventions: times are Unix epoch seconds (DOUBLE), calendar days are 'YYYY-MM-DD'
-- strings in the configured timezone, country codes are ISO 3166-1 alpha-2, numbers are
-- E.164 digits without '+'. A NULL limit means unlimited; 0 means none allowed.

CREATE TABLE IF NOT EXISTS meta (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  value BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT IGNORE INTO meta (name, value) VALUES ('schema_version', 6);
-- Moved by every change of accounts or lists (see the triggers below); servers poll them.
INSERT IGNORE INTO meta (name, value) VALUES ('accounts_serial', 0);
INSERT IGNORE INTO meta (name, value) VALUES ('lists_serial', 0);

CREATE TABLE IF NOT EXISTS accounts (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user VARCHAR(128) NOT NULL,
  domain VARCHAR(255) NOT NULL,
  concurrent_calls INT NULL,
  concurrent_calls_off INT NULL,
  daily_quota INT NULL,
  daily_quota_off INT NULL,
  source_countries VARCHAR(1024) NOT NULL DEFAULT '',
  dest_countries VARCHAR(1024) NOT NULL DEFAULT '',
  blocked TINYINT NOT NULL DEFAULT 0,
  email VARCHAR(255) NOT NULL DEFAULT '',
  state VARCHAR(16) NOT NULL DEFAULT 'enforcing',
  learning_until DOUBLE NULL,
  pinned VARCHAR(255) NOT NULL DEFAULT '',
  created DOUBLE NOT NULL,
  last_seen DOUBLE NULL,
  anomaly_daily INT NULL,
  updated DOUBLE NOT NULL,
  daily_spend DOUBLE NULL,
  -- learned by training from the busiest minutes (R15); NULL = [policy] max_calls_per_minute
  calls_per_minute INT NULL,
  -- end of the latest R16 block (schema version 6): in force while in the future; `unblock` sets
  -- it to the time it lifts the block. New destinations called before it never count toward R16.
  blocked_until DOUBLE NULL,
  UNIQUE (user, domain)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Per-domain (customer) policy, inherited by the domain's accounts for every value the account
-- has not set itself (pinned). NULL = inherit the [policy] default; a limit of -1 = unlimited.
-- dest_countries and source_countries NULL = inherit; learned_dest: destinations the domain's
-- accounts call regularly (training), normal for a quiet or new account of the domain.
CREATE TABLE IF NOT EXISTS domains (
  domain VARCHAR(255) NOT NULL PRIMARY KEY,
  concurrent_calls INT NULL,
  concurrent_calls_off INT NULL,
  daily_quota INT NULL,
  daily_quota_off INT NULL,
  daily_spend DOUBLE NULL,
  source_countries VARCHAR(1024) NULL,
  dest_countries VARCHAR(1024) NULL,
  learned_dest VARCHAR(1024) NOT NULL DEFAULT '',
  updated DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Approved calls per account, calendar day and bucket ('biz' or 'off').
CREATE TABLE IF NOT EXISTS daily_counters (
  account_id BIGINT NOT NULL,
  day CHAR(10) NOT NULL,
  bucket CHAR(3) NOT NULL,
  approved INT NOT NULL DEFAULT 0,
  -- Quota leases claimed from this row (schema version 4). Each claim writes it: on a Galera
  -- cluster a locking read is not certified across nodes, a written row is, so claims racing
  -- on different nodes conflict (error 1213) and the later one is evaluated again.
  claims INT NOT NULL DEFAULT 0,
  PRIMARY KEY (account_id, day, bucket)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Blocks of an account's daily quota claimed by a node ([database] quota_lease) and not yet
-- written to daily_counters: spent or unspent. approved + the calls of live leases never exceed
-- the quota. `expires` moves forward at each write-behind; an expired lease (a node killed)
-- is given back by the next claim. `wanted`: another node found the quota taken and asks for the
-- unspent part back.
CREATE TABLE IF NOT EXISTS quota_leases (
  account_id BIGINT NOT NULL,
  day CHAR(10) NOT NULL,
  bucket CHAR(3) NOT NULL,
  node VARCHAR(128) NOT NULL,
  calls INT NOT NULL DEFAULT 0,
  expires DOUBLE NOT NULL,
  wanted INT NOT NULL DEFAULT 0,
  PRIMARY KEY (account_id, day, bucket, node),
  INDEX idx_quota_leases_node (node)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Estimated cost of the approved calls per account and calendar day (rate deck price x
-- [policy] assumed_call_minutes): the daily spend budget, R17.
CREATE TABLE IF NOT EXISTS spend_counters (
  account_id BIGINT NOT NULL,
  day CHAR(10) NOT NULL,
  spend DOUBLE NOT NULL DEFAULT 0,
  PRIMARY KEY (account_id, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Calls approved per account, calendar day and destination country while the country was new
-- to the account (tier medium, neither allowed nor learned): [policy] new_destination_calls a day.
CREATE TABLE IF NOT EXISTS new_destination_days (
  account_id BIGINT NOT NULL,
  day CHAR(10) NOT NULL,
  iso CHAR(2) NOT NULL,
  calls INT NOT NULL DEFAULT 0,
  PRIMARY KEY (account_id, day, iso)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The new destination countries each account called within the last 10 minutes (R16), each with
-- the time of its latest call ('FR:1764754321.125,DE:...'), exact across nodes (schema version 6).
CREATE TABLE IF NOT EXISTS new_destination_windows (
  account_id BIGINT NOT NULL PRIMARY KEY,
  calls TEXT NOT NULL,
  last_call DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- A->B pairs: times of the latest attempts (a sliding window of ab_window seconds, at most
-- ab_max_calls + 1 of them, comma-separated) and blocks.
CREATE TABLE IF NOT EXISTS ab_pairs (
  account_id BIGINT NOT NULL,
  number VARCHAR(32) NOT NULL,
  times TEXT NOT NULL,
  last_attempt DOUBLE NOT NULL,
  blocked_until DOUBLE NOT NULL DEFAULT 0,
  PRIMARY KEY (account_id, number)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Times of each account's latest approved calls (at most max_calls_per_minute of them,
-- comma-separated): R15, exact across nodes.
CREATE TABLE IF NOT EXISTS rate_windows (
  account_id BIGINT NOT NULL PRIMARY KEY,
  times TEXT NOT NULL,
  last_call DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- When `tfps reset` last cleared an account's counters: servers that count in memory (quota
-- leases) forget the account's windows when they see it.
CREATE TABLE IF NOT EXISTS counter_resets (
  account_id BIGINT NOT NULL PRIMARY KEY,
  reset_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Countries an account has been seen calling (dst) or calling from (src).
CREATE TABLE IF NOT EXISTS account_seen (
  account_id BIGINT NOT NULL,
  direction CHAR(3) NOT NULL,
  iso CHAR(2) NOT NULL,
  first_seen DOUBLE NOT NULL,
  PRIMARY KEY (account_id, direction, iso)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Number prefixes: kind 'black' or 'white'.
CREATE TABLE IF NOT EXISTS number_list (
  kind VARCHAR(5) NOT NULL,
  prefix VARCHAR(32) NOT NULL,
  note VARCHAR(255) NOT NULL DEFAULT '',
  created DOUBLE NOT NULL,
  PRIMARY KEY (kind, prefix)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- IPv4/IPv6 networks in CIDR form: kind 'black' or 'white'.
CREATE TABLE IF NOT EXISTS ip_list (
  kind VARCHAR(5) NOT NULL,
  cidr VARCHAR(64) NOT NULL,
  note VARCHAR(255) NOT NULL DEFAULT '',
  created DOUBLE NOT NULL,
  PRIMARY KEY (kind, cidr)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- User-Agent blacklist: case-insensitive regular expressions.
CREATE TABLE IF NOT EXISTS ua_list (
  pattern VARCHAR(255) NOT NULL PRIMARY KEY,
  note VARCHAR(255) NOT NULL DEFAULT '',
  created DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- E.164 country codes; prefixes is a comma-separated list, resolved by longest match.
-- risk is the country's destination tier when 'high' or 'low'; 'normal' leaves it to the home
-- country's zone (low) or medium ([policy] low_risk_countries and high_risk_countries come first;
-- README, Destination tiers). calling_code and
-- trunk_prefix turn national numbers into E.164 when national_numbers = yes.
CREATE TABLE IF NOT EXISTS countries (
  iso CHAR(2) NOT NULL PRIMARY KEY,
  name VARCHAR(64) NOT NULL,
  prefixes VARCHAR(2048) NOT NULL,
  risk VARCHAR(8) NOT NULL DEFAULT 'normal',
  calling_code VARCHAR(4) NOT NULL DEFAULT '',
  trunk_prefix VARCHAR(4) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- IP reputation answers (AbuseIPDB, APIBAN), shared by all nodes.
CREATE TABLE IF NOT EXISTS reputation_cache (
  ip VARCHAR(45) NOT NULL PRIMARY KEY,
  ok TINYINT NOT NULL,
  score INT NULL,
  country CHAR(2) NOT NULL DEFAULT '',
  whitelisted TINYINT NOT NULL DEFAULT 0,
  apiban TINYINT NOT NULL DEFAULT 0,
  source VARCHAR(32) NOT NULL DEFAULT '',
  detail VARCHAR(255) NOT NULL DEFAULT '',
  checked DOUBLE NOT NULL,
  expires DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per verdict.
CREATE TABLE IF NOT EXISTS call_log (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  ts DOUBLE NOT NULL,
  call_id VARCHAR(255) NOT NULL DEFAULT '',
  account_id BIGINT NULL,
  user VARCHAR(128) NOT NULL DEFAULT '',
  domain VARCHAR(255) NOT NULL DEFAULT '',
  from_uri VARCHAR(512) NOT NULL DEFAULT '',
  dialed VARCHAR(64) NOT NULL DEFAULT '',
  number VARCHAR(32) NOT NULL DEFAULT '',
  source_ip VARCHAR(45) NOT NULL DEFAULT '',
  user_agent VARCHAR(255) NOT NULL DEFAULT '',
  source_country CHAR(2) NOT NULL DEFAULT '',
  dest_country CHAR(2) NOT NULL DEFAULT '',
  off_hours TINYINT NOT NULL DEFAULT 0,
  concurrent_calls INT NULL,
  code CHAR(3) NOT NULL,
  would_code CHAR(3) NOT NULL DEFAULT '',
  reason VARCHAR(512) NOT NULL DEFAULT '',
  sip_response VARCHAR(64) NOT NULL DEFAULT '',
  abuse_score INT NULL,
  node VARCHAR(64) NOT NULL DEFAULT '',
  latency_ms DOUBLE NOT NULL DEFAULT 0,
  undo_command VARCHAR(255) NOT NULL DEFAULT '',
  cost DOUBLE NULL,
  -- made with the row, the time first and then 64 random bits: a row written twice (replayed from
  -- the spool after a crash) is kept once
  row_key CHAR(32) NULL,
  INDEX idx_call_log_ts (ts),
  INDEX idx_call_log_user (user, domain, ts),
  UNIQUE INDEX uq_call_log_row_key (row_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Approved calls per account and calendar day (days since 1970-01-01 in [policy] timezone),
-- summed up from call_log once a day is over, so that training reads one row per account and
-- day instead of every call of the window. history_days lists the days summed up.
CREATE TABLE IF NOT EXISTS history_days (
  day INT NOT NULL PRIMARY KEY,
  aggregated DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS account_days (
  account_id BIGINT NOT NULL,
  day INT NOT NULL,
  calls_biz INT NOT NULL DEFAULT 0,
  calls_off INT NOT NULL DEFAULT 0,
  peak_biz INT NULL,
  peak_off INT NULL,
  peak_minute INT NULL,
  PRIMARY KEY (account_id, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The same days' approved calls per destination (dst) and source (src) country.
CREATE TABLE IF NOT EXISTS account_day_countries (
  account_id BIGINT NOT NULL,
  day INT NOT NULL,
  direction CHAR(3) NOT NULL,
  iso CHAR(2) NOT NULL,
  calls INT NOT NULL,
  PRIMARY KEY (account_id, direction, iso, day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Alerts waiting for delivery; a row is deleted once every channel has taken it.
CREATE TABLE IF NOT EXISTS alert_outbox (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  created DOUBLE NOT NULL,
  kind VARCHAR(16) NOT NULL,
  account VARCHAR(400) NOT NULL DEFAULT '',
  code VARCHAR(8) NOT NULL DEFAULT '',
  subject VARCHAR(255) NOT NULL,
  body TEXT NOT NULL,
  payload TEXT NOT NULL,
  recipients VARCHAR(1024) NOT NULL DEFAULT '',
  email_pending TINYINT NOT NULL DEFAULT 0,
  webhook_pending TINYINT NOT NULL DEFAULT 0,
  attempts INT NOT NULL DEFAULT 0,
  next_try DOUBLE NOT NULL DEFAULT 0,
  last_error VARCHAR(255) NOT NULL DEFAULT '',
  INDEX idx_alert_outbox_next (next_try)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Alert rate limiting: one alert per account and rule per interval.
CREATE TABLE IF NOT EXISTS alert_throttle (
  account VARCHAR(400) NOT NULL,
  rule VARCHAR(16) NOT NULL,
  last_sent DOUBLE NOT NULL,
  suppressed INT NOT NULL DEFAULT 0,
  PRIMARY KEY (account, rule)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Approval links used (one row each: a link works once), who confirmed them and when; a country
-- allowed through one is taken back at `until` (a quota reset has none) and `ended` set.
CREATE TABLE IF NOT EXISTS approvals (
  token_id CHAR(24) NOT NULL PRIMARY KEY,
  account_id BIGINT NOT NULL,
  rule CHAR(3) NOT NULL,
  value VARCHAR(16) NOT NULL,
  approved DOUBLE NOT NULL,
  until DOUBLE NULL,
  ended TINYINT NOT NULL DEFAULT 0,
  client_ip VARCHAR(45) NOT NULL,
  user_agent VARCHAR(255) NOT NULL DEFAULT '',
  INDEX idx_approvals_until (ended, until)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Cluster-wide locks (daily training, daily jobs): held until expires.
CREATE TABLE IF NOT EXISTS locks (
  name VARCHAR(64) NOT NULL PRIMARY KEY,
  holder VARCHAR(128) NOT NULL,
  expires DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Running servers reload lists when lists_serial moves and re-read accounts when
-- accounts_serial moves. These triggers move them for every change, including ones made
-- directly in the database. An account's own activity (last_seen) is not a change, nor is a
-- new account: nodes read accounts on first use.
CREATE TRIGGER accounts_revised AFTER UPDATE ON accounts FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial' AND NOT (
    NEW.user <=> OLD.user AND NEW.domain <=> OLD.domain AND NEW.concurrent_calls <=> OLD.concurrent_calls AND
    NEW.concurrent_calls_off <=> OLD.concurrent_calls_off AND NEW.daily_quota <=> OLD.daily_quota AND NEW.daily_quota_off <=> OLD.daily_quota_off AND
    NEW.source_countries <=> OLD.source_countries AND NEW.dest_countries <=> OLD.dest_countries AND NEW.blocked <=> OLD.blocked AND
    NEW.email <=> OLD.email AND NEW.state <=> OLD.state AND NEW.learning_until <=> OLD.learning_until AND
    NEW.pinned <=> OLD.pinned AND NEW.anomaly_daily <=> OLD.anomaly_daily AND NEW.daily_spend <=> OLD.daily_spend AND
    NEW.calls_per_minute <=> OLD.calls_per_minute AND NEW.blocked_until <=> OLD.blocked_until);
CREATE TRIGGER accounts_removed AFTER DELETE ON accounts FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial';
CREATE TRIGGER domains_added AFTER INSERT ON domains FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial';
CREATE TRIGGER domains_changed AFTER UPDATE ON domains FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial';
CREATE TRIGGER domains_removed AFTER DELETE ON domains FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'accounts_serial';
CREATE TRIGGER number_list_added AFTER INSERT ON number_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER number_list_changed AFTER UPDATE ON number_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER number_list_removed AFTER DELETE ON number_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ip_list_added AFTER INSERT ON ip_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ip_list_changed AFTER UPDATE ON ip_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ip_list_removed AFTER DELETE ON ip_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ua_list_added AFTER INSERT ON ua_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ua_list_changed AFTER UPDATE ON ua_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER ua_list_removed AFTER DELETE ON ua_list FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER countries_added AFTER INSERT ON countries FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER countries_changed AFTER UPDATE ON countries FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';
CREATE TRIGGER countries_removed AFTER DELETE ON countries FOR EACH ROW
  UPDATE meta SET value = value + 1 WHERE name = 'lists_serial';

-- Default User-Agent blacklist: well-known SIP scanners and attack tools.
INSERT IGNORE INTO ua_list (pattern, note, created) VALUES
  ('friendly-scanner', 'SIPVicious', 0),
  ('sipvicious', 'SIPVicious', 0),
  ('sipcli', 'sipcli scanner', 0),
  ('VaxSIPUserAgent', 'VaxSIP attack tool', 0),
  ('VaxUserAgent', 'VaxSIP attack tool', 0),
  ('SIVuS', 'SIVuS scanner', 0),
  ('Nsauditor', 'Nsauditor scanner', 0),
  ('SipReg', 'SipReg brute forcer', 0),
  ('Custom SIP', 'scanner', 0),
  ('Nmap NSE', 'Nmap scripting engine', 0),
  ('sipscan', 'sipscan', 0),
  ('sipsorcery', 'SIPSorcery scanner', 0),
  ('pplsip', 'pplsip scanner', 0),
  ('^PBX$', 'exact: scanner', 0),
  ('^Trixbox$', 'exact: scanner', 0),
  ('^SipClient$', 'exact: scanner', 0);

-- BEGIN SEED countries (generated by docs/gen_countries.py; do not edit by hand)
INSERT IGNORE INTO countries (iso, name, prefixes, risk, calling_code, trunk_prefix) VALUES
  ('AC', 'Ascension Island', '247', 'high', '247', ''),
  ('AD', 'Andorra', '376', 'normal', '376', ''),
  ('AE', 'United Arab Emirates', '971', 'normal', '971', '0'),
  ('AF', 'Afghanistan', '93', 'high', '93', '0'),
  ('AG', 'Antigua and Barbuda', '1268', 'normal', '1', '1'),
  ('AI', 'Anguilla', '1264', 'normal', '1', '1'),
  ('AL', 'Albania', '355', 'normal', '355', '0'),
  ('AM', 'Armenia', '374', 'normal', '374', '0'),
  ('AO', 'Angola', '244', 'normal', '244', ''),
  ('AR', 'Argentina', '54', 'normal', '54', '0'),
  ('AS', 'American Samoa', '1684', 'normal', '1', '1'),
  ('AT', 'Austria', '43', 'normal', '43', '0'),
  ('AU', 'Australia', '61', 'normal', '61', '0'),
  ('AW', 'Aruba', '297', 'normal', '297', ''),
  ('AX', 'Åland Islands', '35818', 'normal', '358', '0'),
  ('AZ', 'Azerbaijan', '994', 'normal', '994', '0'),
  ('BA', 'Bosnia and Herzegovina', '387', 'normal', '387', '0'),
  ('BB', 'Barbados', '1246', 'normal', '1', '1'),
  ('BD', 'Bangladesh', '880', 'normal', '880', '0'),
  ('BE', 'Belgium', '32', 'normal', '32', '0'),
  ('BF', 'Burkina Faso', '226', 'normal', '226', ''),
  ('BG', 'Bulgaria', '359', 'normal', '359', '0'),
  ('BH', 'Bahrain', '973', 'normal', '973', ''),
  ('BI', 'Burundi', '257', 'normal', '257', ''),
  ('BJ', 'Benin', '229', 'normal', '229', ''),
  ('BL', 'Saint Barthélemy', '59059027,59059028,59059029,59059051,59059052,59059087', 'normal', '590', '0'),
  ('BM', 'Bermuda', '1441', 'normal', '1', '1'),
  ('BN', 'Brunei', '673', 'normal', '673', ''),
  ('BO', 'Bolivia', '591', 'normal', '591', '0'),
  ('BQ', 'Bonaire, Sint Eustatius and Saba', '5993,5994,5997', 'normal', '599', ''),
  ('BR', 'Brazil', '55', 'normal', '55', '0'),
  ('BS', 'Bahamas', '1242', 'normal', '1', '1'),
  ('BT', 'Bhutan', '975', 'normal', '975', ''),
  ('BW', 'Botswana', '267', 'normal', '267', ''),
  ('BY', 'Belarus', '375', 'normal', '375', '8'),
  ('BZ', 'Belize', '501', 'normal', '501', ''),
  ('CA', 'Canada', '1204,1226,1236,1249,1250,1257,1263,1273,1289,1306,1343,1354,1365,1367,1368,1382,1403,1416,1418,1428,1431,1437,1438,1450,1468,1474,1506,1514,1519,1548,1579,1581,1584,1587,1600,1604,1613,1622,1633,1639,1647,1672,1683,1705,1709,1742,1753,1778,1780,1782,1807,1819,1825,1867,1873,1879,1902,1905,1942', 'normal', '1', '1'),
  ('CC', 'Cocos Islands', '61851002,61851031,61851060,61851089,61851223,61891010,61891011,61891012,61891029,61891122,61891150,61891179,61891182,61891308,61891322,61891368,6189162,61891702,61891703', 'normal', '61', '0'),
  ('CD', 'Democratic Republic of the Congo', '243', 'normal', '243', '0'),
  ('CF', 'Central African Republic', '236', 'normal', '236', ''),
  ('CG', 'Congo', '242', 'normal', '242', ''),
  ('CH', 'Switzerland', '41', 'normal', '41', '0'),
  ('CI', 'Côte d''Ivoire', '225', 'normal', '225', ''),
  ('CK', 'Cook Islands', '682', 'high', '682', ''),
  ('CL', 'Chile', '56', 'normal', '56', ''),
  ('CM', 'Cameroon', '237', 'normal', '237', ''),
  ('CN', 'China', '86', 'normal', '86', '0'),
  ('CO', 'Colombia', '57', 'normal', '57', '0'),
  ('CR', 'Costa Rica', '506', 'normal', '506', ''),
  ('CU', 'Cuba', '53', 'high', '53', '0'),
  ('CV', 'Cape Verde', '238', 'normal', '238', ''),
  ('CW', 'Curaçao', '599', 'normal', '599', ''),
  ('CX', 'Christmas Island', '61851001,61851030,61851059,61851088,61851222,61851235,61891006,61891007,61891008,61891009,61891121,61891149,61891178,61891181,61891312,61891326,61891375,6189164,61891700,61891701,61891710,61891711,61891712', 'normal', '61', '0'),
  ('CY', 'Cyprus', '357', 'normal', '357', ''),
  ('CZ', 'Czech Republic', '420', 'normal', '420', ''),
  ('DE', 'Germany', '49', 'normal', '49', '0'),
  ('DJ', 'Djibouti', '253', 'normal', '253', ''),
  ('DK', 'Denmark', '45', 'normal', '45', ''),
  ('DM', 'Dominica', '1767', 'normal', '1', '1'),
  ('DO', 'Dominican Republic', '18001,1809,1829,1849', 'normal', '1', '1'),
  ('DZ', 'Algeria', '213', 'high', '213', '0'),
  ('EC', 'Ecuador', '593', 'normal', '593', '0'),
  ('EE', 'Estonia', '372', 'high', '372', ''),
  ('EG', 'Egypt', '20', 'normal', '20', '0'),
  ('EH', 'Western Sahara', '2125288,2125289', 'normal', '212', '0'),
  ('ER', 'Eritrea', '291', 'normal', '291', '0'),
  ('ES', 'Spain', '34', 'normal', '34', ''),
  ('ET', 'Ethiopia', '251', 'normal', '251', '0'),
  ('FI', 'Finland', '358', 'normal', '358', '0'),
  ('FJ', 'Fiji', '679', 'normal', '679', ''),
  ('FK', 'Falkland Islands', '500', 'high', '500', ''),
  ('FM', 'Micronesia', '691', 'high', '691', ''),
  ('FO', 'Faroe Islands', '298', 'normal', '298', ''),
  ('FR', 'France', '33', 'normal', '33', '0'),
  ('GA', 'Gabon', '241', 'normal', '241', ''),
  ('GB', 'United Kingdom', '44', 'normal', '44', '0'),
  ('GD', 'Grenada', '1473', 'normal', '1', '1'),
  ('GE', 'Georgia', '995', 'normal', '995', '0'),
  ('GF', 'French Guiana', '594', 'normal', '594', '0'),
  ('GG', 'Guernsey', '441481,447781,447839,4479111,4479117,44980,44981', 'normal', '44', '0'),
  ('GH', 'Ghana', '233', 'normal', '233', '0'),
  ('GI', 'Gibraltar', '350', 'normal', '350', ''),
  ('GL', 'Greenland', '299', 'normal', '299', ''),
  ('GM', 'Gambia', '220', 'normal', '220', ''),
  ('GN', 'Guinea', '224', 'high', '224', ''),
  ('GP', 'Guadeloupe', '590', 'normal', '590', '0'),
  ('GQ', 'Equatorial Guinea', '240', 'normal', '240', ''),
  ('GR', 'Greece', '30', 'normal', '30', ''),
  ('GT', 'Guatemala', '502', 'normal', '502', ''),
  ('GU', 'Guam', '1671', 'normal', '1', '1'),
  ('GW', 'Guinea-Bissau', '245', 'normal', '245', ''),
  ('GY', 'Guyana', '592', 'normal', '592', ''),
  ('HK', 'Hong Kong', '852', 'normal', '852', ''),
  ('HN', 'Honduras', '504', 'normal', '504', ''),
  ('HR', 'Croatia', '385', 'normal', '385', '0'),
  ('HT', 'Haiti', '509', 'normal', '509', ''),
  ('HU', 'Hungary', '36', 'normal', '36', '06'),
  ('ID', 'Indonesia', '62', 'normal', '62', '0'),
  ('IE', 'Ireland', '353', 'normal', '353', '0'),
  ('IL', 'Israel', '972', 'normal', '972', '0'),
  ('IM', 'Isle of Man', '441624,4474576,447524,447624', 'normal', '44', '0'),
  ('IN', 'India', '91', 'normal', '91', '0'),
  ('IO', 'British Indian Ocean Territory', '246', 'high', '246', ''),
  ('IQ', 'Iraq', '964', 'high', '964', '0'),
  ('IR', 'Iran', '98', 'normal', '98', '0'),
  ('IS', 'Iceland', '354', 'normal', '354', ''),
  ('IT', 'Italy', '39', 'normal', '39', ''),
  ('JE', 'Jersey', '441534,447509,4477003,4477007,4477008,447797,447829,447937', 'normal', '44', '0'),
  ('JM', 'Jamaica', '1658,1876', 'normal', '1', '1'),
  ('JO', 'Jordan', '962', 'normal', '962', '0'),
  ('JP', 'Japan', '81', 'normal', '81', '0'),
  ('KE', 'Kenya', '254', 'normal', '254', '0'),
  ('KG', 'Kyrgyzstan', '996', 'normal', '996', '0'),
  ('KH', 'Cambodia', '855', 'normal', '855', '0'),
  ('KI', 'Kiribati', '686', 'high', '686', '0'),
  ('KM', 'Comoros', '269', 'normal', '269', ''),
  ('KN', 'Saint Kitts and Nevis', '1869', 'normal', '1', '1'),
  ('KP', 'North Korea', '850', 'normal', '850', '0'),
  ('KR', 'South Korea', '82', 'normal', '82', '0'),
  ('KW', 'Kuwait', '965', 'normal', '965', ''),
  ('KY', 'Cayman Islands', '1345', 'normal', '1', '1'),
  ('KZ', 'Kazakhstan', '77', 'normal', '7', '8'),
  ('LA', 'Laos', '856', 'normal', '856', '0'),
  ('LB', 'Lebanon', '961', 'normal', '961', '0'),
  ('LC', 'Saint Lucia', '1758', 'normal', '1', '1'),
  ('LI', 'Liechtenstein', '423', 'normal', '423', '0'),
  ('LK', 'Sri Lanka', '94', 'high', '94', '0'),
  ('LR', 'Liberia', '231', 'normal', '231', '0'),
  ('LS', 'Lesotho', '266', 'normal', '266', ''),
  ('LT', 'Lithuania', '370', 'normal', '370', '0'),
  ('LU', 'Luxembourg', '352', 'normal', '352', ''),
  ('LV', 'Latvia', '371', 'high', '371', ''),
  ('LY', 'Libya', '218', 'normal', '218', '0'),
  ('MA', 'Morocco', '212', 'high', '212', '0'),
  ('MC', 'Monaco', '377', 'normal', '377', '0'),
  ('MD', 'Moldova', '373', 'normal', '373', '0'),
  ('ME', 'Montenegro', '382', 'normal', '382', '0'),
  ('MF', 'Saint Martin', '59059000,59059007,59059009,59059013,59059030,59059043,59059050,59059056,59059058,59059077,59059079', 'normal', '590', '0'),
  ('MG', 'Madagascar', '261', 'high', '261', '0'),
  ('MH', 'Marshall Islands', '692', 'high', '692', '1'),
  ('MK', 'North Macedonia', '389', 'normal', '389', '0'),
  ('ML', 'Mali', '223', 'normal', '223', ''),
  ('MM', 'Myanmar', '95', 'normal', '95', '0'),
  ('MN', 'Mongolia', '976', 'normal', '976', '0'),
  ('MO', 'Macao', '853', 'normal', '853', ''),
  ('MP', 'Northern Mariana Islands', '1670', 'normal', '1', '1'),
  ('MQ', 'Martinique', '596', 'normal', '596', '0'),
  ('MR', 'Mauritania', '222', 'normal', '222', ''),
  ('MS', 'Montserrat', '1664', 'normal', '1', '1'),
  ('MT', 'Malta', '356', 'normal', '356', ''),
  ('MU', 'Mauritius', '230', 'normal', '230', ''),
  ('MV', 'Maldives', '960', 'high', '960', ''),
  ('MW', 'Malawi', '265', 'normal', '265', '0'),
  ('MX', 'Mexico', '52', 'normal', '52', ''),
  ('MY', 'Malaysia', '60', 'normal', '60', '0'),
  ('MZ', 'Mozambique', '258', 'normal', '258', ''),
  ('NA', 'Namibia', '264', 'normal', '264', '0'),
  ('NC', 'New Caledonia', '687', 'high', '687', ''),
  ('NE', 'Niger', '227', 'normal', '227', ''),
  ('NF', 'Norfolk Island', '672', 'high', '672', ''),
  ('NG', 'Nigeria', '234', 'normal', '234', '0'),
  ('NI', 'Nicaragua', '505', 'normal', '505', ''),
  ('NL', 'Netherlands', '31', 'normal', '31', '0'),
  ('NO', 'Norway', '47', 'normal', '47', ''),
  ('NP', 'Nepal', '977', 'normal', '977', '0'),
  ('NR', 'Nauru', '674', 'high', '674', ''),
  ('NU', 'Niue', '683', 'high', '683', ''),
  ('NZ', 'New Zealand', '64', 'normal', '64', '0'),
  ('OM', 'Oman', '968', 'normal', '968', ''),
  ('PA', 'Panama', '507', 'normal', '507', ''),
  ('PE', 'Peru', '51', 'normal', '51', '0'),
  ('PF', 'French Polynesia', '689', 'high', '689', ''),
  ('PG', 'Papua New Guinea', '675', 'normal', '675', ''),
  ('PH', 'Philippines', '63', 'normal', '63', '0'),
  ('PK', 'Pakistan', '92', 'normal', '92', '0'),
  ('PL', 'Poland', '48', 'normal', '48', ''),
  ('PM', 'Saint Pierre and Miquelon', '508', 'normal', '508', '0'),
  ('PR', 'Puerto Rico', '1787,1939', 'normal', '1', '1'),
  ('PS', 'Palestine', '970', 'normal', '970', '0'),
  ('PT', 'Portugal', '351', 'normal', '351', ''),
  ('PW', 'Palau', '680', 'high', '680', ''),
  ('PY', 'Paraguay', '595', 'normal', '595', '0'),
  ('QA', 'Qatar', '974', 'normal', '974', ''),
  ('RE', 'Reunion', '262', 'normal', '262', '0'),
  ('RO', 'Romania', '40', 'normal', '40', '0'),
  ('RS', 'Serbia', '381', 'normal', '381', '0'),
  ('RU', 'Russia', '7', 'normal', '7', '8'),
  ('RW', 'Rwanda', '250', 'normal', '250', '0'),
  ('SA', 'Saudi Arabia', '966', 'normal', '966', '0'),
  ('SB', 'Solomon Islands', '677', 'normal', '677', ''),
  ('SC', 'Seychelles', '248', 'normal', '248', ''),
  ('SD', 'Sudan', '249', 'normal', '249', '0'),
  ('SE', 'Sweden', '46', 'normal', '46', '0'),
  ('SG', 'Singapore', '65', 'normal', '65', ''),
  ('SH', 'Saint Helena', '290', 'high', '290', ''),
  ('SI', 'Slovenia', '386', 'normal', '386', '0'),
  ('SJ', 'Svalbard and Jan Mayen', '4779', 'normal', '47', ''),
  ('SK', 'Slovakia', '421', 'normal', '421', '0'),
  ('SL', 'Sierra Leone', '232', 'normal', '232', '0'),
  ('SM', 'San Marino', '378', 'normal', '378', ''),
  ('SN', 'Senegal', '221', 'normal', '221', ''),
  ('SO', 'Somalia', '252', 'normal', '252', '0'),
  ('SR', 'Suriname', '597', 'normal', '597', ''),
  ('SS', 'South Sudan', '211', 'normal', '211', '0'),
  ('ST', 'Sao Tome and Principe', '239', 'normal', '239', ''),
  ('SV', 'El Salvador', '503', 'normal', '503', ''),
  ('SX', 'Sint Maarten (Dutch part)', '1721', 'normal', '1', '1'),
  ('SY', 'Syria', '963', 'normal', '963', '0'),
  ('SZ', 'Eswatini', '268', 'normal', '268', ''),
  ('TA', 'Tristan da Cunha', '2908', 'high', '290', ''),
  ('TC', 'Turks and Caicos Islands', '1649', 'normal', '1', '1'),
  ('TD', 'Chad', '235', 'high', '235', ''),
  ('TG', 'Togo', '228', 'normal', '228', ''),
  ('TH', 'Thailand', '66', 'normal', '66', '0'),
  ('TJ', 'Tajikistan', '992', 'normal', '992', ''),
  ('TK', 'Tokelau', '690', 'high', '690', ''),
  ('TL', 'Timor-Leste', '670', 'normal', '670', ''),
  ('TM', 'Turkmenistan', '993', 'normal', '993', '8'),
  ('TN', 'Tunisia', '216', 'high', '216', ''),
  ('TO', 'Tonga', '676', 'high', '676', ''),
  ('TR', 'Turkey', '90', 'normal', '90', '0'),
  ('TT', 'Trinidad and Tobago', '1868', 'normal', '1', '1'),
  ('TV', 'Tuvalu', '688', 'high', '688', ''),
  ('TW', 'Taiwan', '886', 'normal', '886', '0'),
  ('TZ', 'Tanzania', '255', 'normal', '255', '0'),
  ('UA', 'Ukraine', '380', 'normal', '380', '0'),
  ('UG', 'Uganda', '256', 'normal', '256', '0'),
  ('US', 'United States', '1', 'normal', '1', '1'),
  ('UY', 'Uruguay', '598', 'normal', '598', '0'),
  ('UZ', 'Uzbekistan', '998', 'normal', '998', ''),
  ('VA', 'Vatican', '3906698', 'normal', '39', ''),
  ('VC', 'Saint Vincent and The Grenadines', '1784', 'normal', '1', '1'),
  ('VE', 'Venezuela', '58', 'normal', '58', '0'),
  ('VG', 'British Virgin Islands', '1284', 'normal', '1', '1'),
  ('VI', 'U.S. Virgin Islands', '1340', 'normal', '1', '1'),
  ('VN', 'Vietnam', '84', 'normal', '84', '0'),
  ('VU', 'Vanuatu', '678', 'normal', '678', ''),
  ('WF', 'Wallis and Futuna', '681', 'high', '681', ''),
  ('WS', 'Samoa', '685', 'high', '685', ''),
  ('XK', 'Kosovo', '383', 'normal', '383', '0'),
  ('YE', 'Yemen', '967', 'normal', '967', '0'),
  ('YT', 'Mayotte', '2622689,262269,26263,2627093,2629398,2629478,2629769', 'normal', '262', '0'),
  ('ZA', 'South Africa', '27', 'normal', '27', '0'),
  ('ZM', 'Zambia', '260', 'normal', '260', '0'),
  ('ZW', 'Zimbabwe', '263', 'normal', '263', '0');
-- END SEED countries
