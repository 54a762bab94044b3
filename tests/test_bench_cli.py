"""The benchmarks' command lines: a bad argument is one line on stderr and exit status 2, before
anything starts (no server, no sipp, no traceback)."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def bench(script, *argv):
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *argv], capture_output=True, text=True,
                          timeout=60)


def refused_in_one_line(result, message):
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith(("peer_bench", "sip_bench",
                                                                               "overload_bench"))]) == 1, result.stderr


def test_the_peer_benchmark_refuses_a_target_given_twice():
    refused_in_one_line(bench("peer_bench.py", "--targets", "kamailio-n,tfps-sqlite,tfps-sqlite"),
                        "--targets: tfps-sqlite given twice")


@pytest.mark.parametrize("script", ["peer_bench.py", "sip_bench.py", "overload_bench.py"])
def test_the_benchmarks_refuse_a_python_that_is_not_one(script):
    refused_in_one_line(bench(script, "--python", "/bin/true"), "/bin/true: not a Python interpreter")


@pytest.mark.parametrize("script", ["sip_bench.py", "overload_bench.py"])
@pytest.mark.parametrize("cpus", ["every", "999", "0,x", ""])
def test_the_sip_benchmarks_refuse_sipp_cpus_that_leave_the_server_none_or_do_not_exist(script, cpus):
    if cpus == "every":
        cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    refused_in_one_line(bench(script, "--sipp-cpus", cpus), "leaving at least one to the server")


@pytest.mark.parametrize("workers", ["0", "many", "257"])
def test_the_overload_benchmark_refuses_workers_that_are_neither_auto_nor_a_number(workers):
    refused_in_one_line(bench("overload_bench.py", "--workers", workers), "auto or a number from 1 to 256")
