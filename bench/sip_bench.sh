#!/usr/bin/env bash
# One-command SIP benchmark of `tfps.py serve` with sipp: see bench/sip_bench.py --help.
#   bash bench/sip_bench.sh                       # full run (about 5 minutes)
#   bash bench/sip_bench.sh --duration 5 --rates 1000,2000
#   bash bench/sip_bench.sh --compare OLD/tfps.py      # two versions side by side, interleaved
set -euo pipefail
command -v sipp >/dev/null || { echo "sipp not found: apt install sip-tester" >&2; exit 1; }
exec python3 "$(dirname "$0")/sip_bench.py" "$@"
