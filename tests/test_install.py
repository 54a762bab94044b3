"""install.sh into a temporary prefix, and the tfps.pyz it builds: layout, modes, idempotence,
and the pyz itself (list, initdb, serve + probe over UDP and TCP, MariaDB with no PyMySQL
installed)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, free_port, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh installs as root")

SOURCES = ("install.sh", "tfps.py", "schema.sql", "tfps.conf")


def checkout(dest):
    """A copy of the files install.sh works from, so builds never touch the repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shutil.copy2(REPO / name, dest / name)
    return dest


def run_install(src, *args, timeout=120):
    return subprocess.run(["bash", str(src / "install.sh"), *args], capture_output=True, text=True, timeout=timeout)


def run_pyz(pyz, *args, python=None, cwd=None, timeout=60):
    return subprocess.run([python or sys.executable, str(pyz), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """install.sh --prefix TMP --no-systemd, once for the read-only tests of this module."""
    base = tmp_path_factory.mktemp("install")
    src = checkout(base / "src")
    prefix = base / "root"
    result = run_install(src, "--prefix", str(prefix), "--no-systemd")
    assert result.returncode == 0, result.stdout + result.stderr
    return {"src": src, "prefix": prefix, "output": result.stdout, "bin": prefix / "usr/local/bin/tfps",
            "conf": prefix / "etc/tfps/tfps.conf", "state": prefix / "var/lib/tfps"}


def test_layout_and_modes(installed):
    prefix = installed["prefix"]
    assert installed["bin"].is_file() and mode(installed["bin"]) == 0o755
    assert installed["conf"].is_file() and mode(installed["conf"]) == 0o640
    assert installed["state"].is_dir() and mode(installed["state"]) == 0o700
    assert (installed["state"] / "tfps.db").is_file(), "install.sh runs initdb"
    assert not (prefix / "etc/systemd/system/tfps.service").exists(), "--no-systemd writes no unit"
    assert (installed["src"] / "tfps.pyz").read_bytes() == installed["bin"].read_bytes()
    assert "created: schema version" in installed["output"]


def test_installed_config_is_the_example_with_the_state_database(installed):
    example = (REPO / "tfps.conf").read_text().splitlines()
    conf = installed["conf"].read_text().splitlines()
    diff = [(a, b) for a, b in zip(example, conf) if a != b]
    assert len(example) == len(conf)
    assert diff == [("url =", f"url = sqlite://{installed['state']}/tfps.db")]
    check = run_pyz(installed["bin"], "config", "check", "-c", str(installed["conf"]))
    assert check.returncode == 0, check.stderr
    assert f"url = sqlite://{installed['state']}/tfps.db" in check.stdout


def test_pyz_contents(installed):
    pyz = installed["bin"]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    names = set(zipfile.ZipFile(pyz).namelist())
    assert {"__main__.py", "tfps.py", "schema.sql", "pymysql/__init__.py", "pymysql/connections.py"} <= names
    assert not [n for n in names if "__pycache__" in n]
    assert zipfile.ZipFile(pyz).read("tfps.py") == (REPO / "tfps.py").read_bytes()


def test_pyz_list_initdb_and_exit_codes(installed):
    conf = str(installed["conf"])
    # Executed directly: the shebang finds python3 on PATH.
    version = subprocess.run([str(installed["bin"]), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("TFPS ")
    listed = run_pyz(installed["bin"], "list", "-c", conf)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[:3] == ["user", "domain", "created"]
    again = run_pyz(installed["bin"], "initdb", "-c", conf)
    assert again.returncode == 0 and "checked: schema version" in again.stdout
    added = run_pyz(installed["bin"], "add", "pyz", "pbx.example.com", "-c", conf)
    assert added.returncode == 0, added.stderr
    assert "pyz" in run_pyz(installed["bin"], "list", "-c", conf).stdout
    # The exit status survives the zipapp entry point: 1 for failures, 2 for usage errors.
    unknown = run_pyz(installed["bin"], "show", "nobody", "pbx.example.com", "-c", conf)
    assert unknown.returncode == 1 and "unknown account" in unknown.stderr
    usage = run_pyz(installed["bin"], "show", "-c", conf)
    assert usage.returncode == 2 and "usage:" in usage.stderr
    silent = run_pyz(installed["bin"], "probe", "12125551234", "--server", f"127.0.0.1:{free_port()}", "--timeout", "0.5")
    assert silent.returncode == 1 and "no answer" in silent.stdout


def test_pyz_serve_and_probe_round_trip(installed, tmp_path):
    port = free_port()
    conf = write_config(tmp_path / "serve.conf", {
        "server": {"listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}"},
        "database": {"url": f"sqlite://{installed['state']}/tfps.db", "flush_interval": "0.2s"}})
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(installed["bin"]), "serve", "-c", conf], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 15
        while "serving in" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        for transport in ("udp", "tcp"):
            probe = run_pyz(installed["bin"], "probe", "12125551234", "--server", f"127.0.0.1:{port}",
                            "--transport", transport, "--from", f"{transport}@pbx.example.com")
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert "SIP/2.0 302 Moved Temporarily" in probe.stdout
            assert "Contact: <sip:A0012125551234@pbx.example.com>" in probe.stdout
            assert "code: A00" in probe.stdout
        rejected = run_pyz(installed["bin"], "probe", "5355512345", "--server", f"127.0.0.1:{port}")
        assert rejected.returncode == 0 and "302" in rejected.stdout and "code: R06" in rejected.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, log_path.read_text()
    calls = run_pyz(installed["bin"], "calls", "--json", "--db", f"sqlite://{installed['state']}/tfps.db")
    assert calls.returncode == 0
    assert {"udp@pbx.example.com", "tcp@pbx.example.com"} <= {row["account"] for row in json.loads(calls.stdout)}


def test_pyz_runs_without_pymysql_installed(installed, tmp_path, mysql_url):
    """A venv without site packages has no PyMySQL: the vendored copy inside the pyz is used."""
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, timeout=60)
    if made.returncode != 0:  # no venv module (Debian without python3-venv): no site-packages at all instead
        python = str(tmp_path / "python-no-site")
        Path(python).write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
        Path(python).chmod(0o755)
    else:
        python = str(venv / "bin" / "python")
    bare = subprocess.run([python, "-c", "import pymysql"], capture_output=True, text=True)
    assert bare.returncode != 0 and "No module named 'pymysql'" in bare.stderr
    # The plain tfps.py in the same interpreter cannot reach MariaDB, and says why.
    plain = subprocess.run([python, str(REPO / "tfps.py"), "initdb", "--db", mysql_url], capture_output=True, text=True)
    assert plain.returncode == 1 and "needs PyMySQL" in plain.stderr
    created = run_pyz(installed["bin"], "initdb", "--db", mysql_url, python=python)
    assert created.returncode == 0, created.stderr
    assert "created: schema version" in created.stdout and "mysql://root:" in created.stdout
    added = run_pyz(installed["bin"], "add", "1001", "pbx.example.com", "--db", mysql_url, python=python)
    assert added.returncode == 0, added.stderr
    listed = run_pyz(installed["bin"], "list", "--json", "--db", mysql_url, python=python)
    assert listed.returncode == 0 and '"user": "1001"' in listed.stdout


def test_install_twice_is_idempotent_and_keeps_the_config(tmp_path):
    src = checkout(tmp_path / "src")
    prefix = tmp_path / "root"
    first = run_install(src, "--prefix", str(prefix), "--no-systemd")
    assert first.returncode == 0, first.stdout + first.stderr
    conf = prefix / "etc/tfps/tfps.conf"
    tfps_bin = prefix / "usr/local/bin/tfps"
    edited = conf.read_text().replace("mode = redirect", "mode = failover") + "\n# edited by the operator\n"
    conf.write_text(edited)
    conf.chmod(0o600)
    assert run_pyz(tfps_bin, "add", "keep", "pbx.example.com", "-c", str(conf)).returncode == 0
    (prefix / "var/lib/tfps").chmod(0o755)
    second = run_install(src, "--prefix", str(prefix), "--no-systemd")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"keeping existing {conf}" in second.stdout
    assert conf.read_text() == edited
    assert mode(prefix / "var/lib/tfps") == 0o700
    assert "checked: schema version" in second.stdout
    listed = run_pyz(tfps_bin, "list", "-c", str(conf))
    assert "keep" in listed.stdout, "the database survives a second install"
    assert "mode = failover" in run_pyz(tfps_bin, "config", "check", "-c", str(conf)).stdout


def test_build_only_builds_just_the_pyz(tmp_path):
    src = checkout(tmp_path / "src")
    result = run_install(src, "--build-only")
    assert result.returncode == 0, result.stdout + result.stderr
    pyz = src / "tfps.pyz"
    assert pyz.is_file() and mode(pyz) == 0o755
    assert sorted(p.name for p in src.iterdir()) == sorted(SOURCES + ("tfps.pyz",))
    assert run_pyz(pyz, "--version").stdout.startswith("TFPS ")


def test_bad_option_is_a_usage_error(tmp_path):
    result = run_install(checkout(tmp_path / "src"), "--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr and "--prefix DIR" in result.stderr
    missing = run_install(checkout(tmp_path / "src2"), "--prefix")
    assert missing.returncode == 2 and "--prefix needs a directory" in missing.stderr


def test_systemd_unit(installed, tmp_path):
    src = installed["src"]
    unit = run_install(src, "--print-unit").stdout
    for line in ("Restart=on-failure", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/tfps", "User=tfps",
                 "ExecStart=/usr/local/bin/tfps serve -c /etc/tfps/tfps.conf", "ExecReload=/bin/kill -HUP $MAINPID",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines(), line
    prefix = installed["prefix"]
    prefixed = run_install(src, "--print-unit", "--prefix", str(prefix)).stdout
    assert f"ExecStart={prefix}/usr/local/bin/tfps serve -c {prefix}/etc/tfps/tfps.conf" in prefixed.splitlines()
    assert f"ReadWritePaths={prefix}/var/lib/tfps" in prefixed.splitlines()
    if shutil.which("systemd-analyze"):
        path = tmp_path / "tfps.service"
        path.write_text(prefixed)
        verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr


def test_pyz_started_through_a_relative_path(installed):
    """`python3 ../bin/tfps.pyz` (a path with '..') must still find schema.sql inside the archive."""
    cwd = installed["prefix"] / "var"
    result = run_pyz("../usr/local/bin/tfps", "initdb", "-c", str(installed["conf"]), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "schema version" in result.stdout


@pytest.mark.skipif(os.path.exists("/etc/tfps/tfps.conf"), reason="/etc/tfps/tfps.conf would be used")
def test_pyz_without_any_configuration_uses_tfps_db_in_the_working_directory(installed, tmp_path):
    """No -c, no --db, no /etc/tfps/tfps.conf: the installed binary falls back to ./tfps.db."""
    result = run_pyz(installed["bin"], "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tfps.db").is_file()
