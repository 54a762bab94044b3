"""install.sh into a temporary prefix, and the tfps.pyz it builds: layout, modes, idempotence,
and the pyz itself (list, initdb, serve + probe over UDP and TCP, MariaDB with no PyMySQL
installed)."""

import json
import os
import re
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


def run_install(src, *args, timeout=120, env=None):
    return subprocess.run(["bash", str(src / "install.sh"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def run_pyz(pyz, *args, python=None, cwd=None, timeout=60):
    return subprocess.run([python or sys.executable, str(pyz), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def pinned_pymysql():
    """PYMYSQL_VERSION and PYMYSQL_SHA256 as install.sh sets them."""
    text = (REPO / "install.sh").read_text()
    version = re.search(r"^PYMYSQL_VERSION=(\S+)$", text, re.M).group(1)
    sha256 = re.search(r"^PYMYSQL_SHA256=(\S+)$", text, re.M).group(1)
    return version, sha256


FAKE_PIP = """\
import json, os, re, sys
args = sys.argv[1:]
requirements = open(args[args.index("-r") + 1]).read()
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(json.dumps({"args": args, "requirements": requirements}) + "\\n")
if "--target" not in args:
    sys.exit(1)  # no install into the system Python: install.sh goes on and vendors PyMySQL
version = re.match(r"PyMySQL==(\\S+) ", requirements).group(1)
package = os.path.join(args[args.index("--target") + 1], "pymysql")
os.makedirs(package)
with open(os.path.join(package, "__init__.py"), "w") as init:
    init.write(f"VERSION_STRING = {version!r}\\n__version__ = '2.2.8'\\n")
"""


def stub_bin(directory, pip=None, **commands):
    """A directory to put first on PATH, and the environment that does: python3 runs this interpreter
    without site-packages (so no installed PyMySQL is visible), `python3 -m pip ARGS` runs
    `pip ARGS` (default: FAKE_PIP, logging to DIRECTORY/pip.log), apt-get fails (nothing is
    installed on this machine), and each of `commands` is a shell script body for that command."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fake_pip.py").write_text(FAKE_PIP)
    pip = pip or f"{sys.executable} -S {directory / 'fake_pip.py'}"
    scripts = {"python3": f'if [ "$1" = -m ] && [ "$2" = pip ]; then\n  shift 2\n  exec {pip} "$@"\nfi\n'
                          f'exec {sys.executable} -S "$@"\n',
               "apt-get": "exit 100\n", **commands}
    for name, body in scripts.items():
        (directory / name).write_text("#!/bin/sh\n" + body)
        (directory / name).chmod(0o755)
    return {**os.environ, "PATH": f"{directory}:{os.environ['PATH']}", "FAKE_PIP_LOG": str(directory / "pip.log")}


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
                 "LimitNOFILE=65536", "MemoryMax=1G", "WantedBy=multi-user.target"):
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


def test_systemd_unit_limits_are_explained(installed):
    """The open-file limit sizes tcp_max_connections = auto; the memory ceiling says why it is what it is."""
    lines = run_install(installed["src"], "--print-unit").stdout.splitlines()
    nofile = lines.index("LimitNOFILE=65536")
    assert "tcp_max_connections = auto" in lines[nofile - 1] and "65472" in lines[nofile - 1]
    memory = lines.index("MemoryMax=1G")
    comment = []
    for line in reversed(lines[:memory]):
        if not line.startswith("#"):
            break
        comment.insert(0, line)
    assert "max_transactions" in " ".join(comment) and "max_unflushed_rows" in " ".join(comment)
    assert [line for line in lines if line.startswith(("LimitNOFILE=", "MemoryMax="))] == \
        ["LimitNOFILE=65536", "MemoryMax=1G"]


def test_existing_config_gets_mode_0640(tmp_path):
    """A kept tfps.conf is not rewritten, but no longer readable by other users (or by none at all)."""
    src = checkout(tmp_path / "src")
    prefix = tmp_path / "root"
    conf = prefix / "etc/tfps/tfps.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[database]\nurl = sqlite:///nowhere/else.db\n# edited by the operator\n")
    conf.chmod(0o644)
    env = stub_bin(tmp_path / "bin")  # no apt-get, PyMySQL from the fake pip
    first = run_install(src, "--prefix", str(prefix), "--no-systemd", "--build-only", env=env)
    assert first.returncode == 0 and mode(conf) == 0o644, "--build-only touches no configuration"
    conf.write_text(f"[database]\nurl = sqlite://{prefix}/var/lib/tfps/tfps.db\n# edited by the operator\n")
    for before in (0o644, 0o600, 0o666):
        conf.chmod(before)
        result = run_install(src, "--prefix", str(prefix), "--no-systemd", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert mode(conf) == 0o640, oct(before)
        assert f"keeping existing {conf}" in result.stdout
        assert f"{conf}: mode {before:o} -> 0640" in result.stdout
        assert conf.read_text().endswith("# edited by the operator\n")
    again = run_install(src, "--prefix", str(prefix), "--no-systemd", env=env)
    assert again.returncode == 0 and mode(conf) == 0o640
    assert "-> 0640" not in again.stdout, "an already private file is not reported"


def test_existing_config_is_owned_by_root_and_group_tfps_with_systemd(tmp_path):
    """With systemd (under --prefix: the unit is written, not enabled) a kept tfps.conf gets the owner
    of a new one. The system user is stubbed out: the test creates no account on this machine."""
    src = checkout(tmp_path / "src")
    prefix = tmp_path / "root"
    conf = prefix / "etc/tfps/tfps.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[database]\nurl = sqlite://{prefix}/var/lib/tfps/tfps.db\n")
    conf.chmod(0o644)
    calls = tmp_path / "calls"
    env = stub_bin(tmp_path / "bin",
                   id='[ "$*" = "-u tfps" ] && { echo 999; exit 0; }\nexec /usr/bin/id "$@"\n',
                   useradd=f'echo "useradd $*" >> {calls}\n',
                   chown=f'echo "chown $*" >> {calls}\n')
    result = run_install(src, "--prefix", str(prefix), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(conf) == 0o640
    assert f"chown root:tfps {conf}" in calls.read_text().splitlines()
    assert "useradd" not in calls.read_text(), "the (stubbed) user tfps exists already"
    assert (prefix / "etc/systemd/system/tfps.service").is_file()


def test_pip_fallbacks_install_only_the_pinned_pymysql(tmp_path):
    """No PyMySQL and no apt-get: every pip run asks for one exact version, as one wheel with one
    hash, and nothing else; the vendored copy is that version (pip itself is faked: no network)."""
    version, sha256 = pinned_pymysql()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and re.fullmatch(r"[0-9a-f]{64}", sha256)
    env = stub_bin(tmp_path / "bin")
    src = checkout(tmp_path / "src")
    result = run_install(src, "--prefix", str(tmp_path / "root"), "--no-systemd", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [json.loads(line) for line in Path(env["FAKE_PIP_LOG"]).read_text().splitlines()]
    # Into the system Python (without, then with --break-system-packages), then vendored for the pyz.
    assert [("--break-system-packages" in run["args"], "--target" in run["args"]) for run in runs] == \
        [(False, False), (True, False), (False, True)]
    for run in runs:
        assert run["requirements"] == f"PyMySQL=={version} --hash=sha256:{sha256}\n"
        assert run["args"][:6] == ["install", "--no-deps", "--only-binary", ":all:", "--require-hashes", "-r"]
        assert not [arg for arg in run["args"] if "pymysql" in arg.lower() and not arg.endswith(".txt")]
    assert f"trying pip (PyMySQL=={version})" in result.stdout
    assert f"PyMySQL {version} vendored" in result.stdout


def test_pip_failure_names_the_pinned_version_and_pips_reason(tmp_path):
    env = stub_bin(tmp_path / "bin", pip="sh -c 'echo ERROR: no network here >&2; exit 1' pip")
    src = checkout(tmp_path / "src")
    result = run_install(src, "--build-only", env=env)
    version, _ = pinned_pymysql()
    assert result.returncode == 1
    assert f"pip could not install PyMySQL=={version}: ERROR: no network here" in result.stderr
    assert not (src / "tfps.pyz").exists()


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
