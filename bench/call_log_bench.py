#!/usr/bin/env python3
"""Call log insert benchmark: what the row_key of schema version 4 costs a flush, side by side.

Writes --rows call log rows (300,000) in flushes of --batch (1,500: 0.25 s at 3,000 calls/s), each
in a transaction of its own as Engine.flush does, into a fresh call_log, three ways taking turns
for --rounds rounds (3):
  no key        the INSERT of schema version 3 (row_key left NULL)
  random key    insert_call_log() with 128 random bits as the key
  row_key()     insert_call_log() with tfps.row_key(): the time, then 64 random bits
on SQLite (a file in a temporary directory) and, with --mysql, on MariaDB at 127.0.0.1:3306
(root, no password; a database of its own, dropped afterwards). Prints µs per row, the median
over the rounds, and each round's figure.

    python3 bench/call_log_bench.py
    python3 bench/call_log_bench.py --mysql --rows 100000
"""

import argparse
import os
import secrets
import shutil
import tempfile
import time

from benchlib import load_tfps, median, turns, TFPS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mysql", action="store_true", help="MariaDB at 127.0.0.1:3306 too")
    args = parser.parse_args()
    tfps = load_tfps(TFPS)
    columns = tfps.CALL_LOG_COLUMNS[:-1]
    without_key = f"INSERT INTO call_log ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    keys = {"no key": None, "random key": lambda: os.urandom(16).hex(), "row_key()": tfps.row_key}

    def row(i, key):
        values = (1.7e9 + i, f"{i}@bench", 1, "1001", "pbx.example.com", "sip:1001@pbx.example.com", "442079460000",
                  "442079460000", "10.0.0.1", "Yealink SIP-T46S", "US", "GB", 0, 1, "A00", "", "", "302", None,
                  "bench", 0.3, "", None)
        return values + (key(),) if key else values

    def run(url, key):
        db = tfps.open_database(url)
        try:
            db.execute("DELETE FROM call_log")
            spent = 0.0
            for start in range(0, args.rows, args.batch):
                rows = [row(i, key) for i in range(start, min(start + args.batch, args.rows))]
                begin = time.perf_counter()
                with db.transaction():
                    if key:
                        tfps.insert_call_log(db, rows)
                    else:
                        db.executemany(without_key, rows)
                spent += time.perf_counter() - begin
            return spent / args.rows * 1e6
        finally:
            db.close()

    work = tempfile.mkdtemp(prefix="tfps-call-log-")
    backends = {"sqlite": f"sqlite://{work}/tfps.db"}
    admin = None
    if args.mysql:
        import pymysql
        database = f"tfps_call_log_{secrets.token_hex(4)}"
        admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
        admin.cursor().execute(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        backends["mysql"] = f"mysql://root:@127.0.0.1:3306/{database}"
    try:
        print(f"{args.rows:,} rows in flushes of {args.batch:,}; µs per row (insert and commit), median over "
              f"{args.rounds} rounds, then each round's")
        for backend, url in backends.items():
            figures = {name: [] for name in keys}
            for round_index in range(args.rounds):
                for name in turns(list(keys), round_index):
                    figures[name].append(run(url, keys[name]))
            for name, values in figures.items():
                print(f"{backend:<7} {name:<11} {median(values):8.2f}   {' '.join(f'{v:.2f}' for v in values)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if admin:
            admin.cursor().execute(f"DROP DATABASE IF EXISTS {database}")
            admin.close()


if __name__ == "__main__":
    main()
