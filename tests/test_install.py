"""install.sh into a temporary prefix, and the tfps.pyz it builds: layout, modes, idempotence,
and the pyz itself (list, initdb, serve + probe over UDP and TCP, MariaDB with no PyMySQL
installed); the man page and bash completion generated from the argument parser; the systemd
unit (systemd-analyze verify and security); --prefix touching nothing outside its directory;
the version in CHANGELOG.md."""

import argparse
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

import tfps
from conftest import REPO, free_port, wait_until, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh installs as root")

SOURCES = ("install.sh", "tfps.py", "schema.sql", "dashboard.html", "tfps.conf", "docs/gen_cli_docs.py", "LICENSE", "docs/NOTICE",
           "CHANGELOG.md")
BUILT = ("tfps.pyz", "tfps.1", "tfps.bash-completion")
# Host commands that --prefix must never run: stand-ins first on PATH record every call.
HOST_COMMANDS = ("useradd", "groupadd", "usermod", "chown", "chgrp", "systemctl", "apt-get", "sysctl")


def checkout(dest):
    """A copy of the files install.sh works from, so builds never touch the repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest


def subcommands():
    parser = tfps.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


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
            "conf": prefix / "etc/tfps/tfps.conf", "state": prefix / "var/lib/tfps",
            "man": prefix / "usr/local/share/man/man1/tfps.1",
            "completion": prefix / "usr/local/share/bash-completion/completions/tfps"}


def host_stubs(calls):
    """Stand-ins for the commands that change this machine: each records its call in `calls`."""
    return {name: f'echo "{name} $*" >> {calls}\n' + ("exit 100\n" if name == "apt-get" else "exit 0\n")
            for name in HOST_COMMANDS}


@pytest.fixture(scope="module")
def prefix_install(tmp_path_factory):
    """install.sh --prefix TMP with systemd (the unit is written, not enabled), with stand-ins for every
    host command it must not run, no PyMySQL (the fake pip vendors one) and no apt-get."""
    base = tmp_path_factory.mktemp("prefix")
    src = checkout(base / "src")
    prefix = base / "root"
    calls = base / "calls"
    env = stub_bin(base / "bin", **host_stubs(calls))
    result = run_install(src, "--prefix", str(prefix), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"src": src, "prefix": prefix, "output": result.stdout, "calls": calls, "env": env,
            "bin": prefix / "usr/local/bin/tfps", "conf": prefix / "etc/tfps/tfps.conf",
            "state": prefix / "var/lib/tfps", "unit": prefix / "etc/systemd/system/tfps.service"}


def test_layout_and_modes(installed):
    prefix = installed["prefix"]
    assert installed["bin"].is_file() and mode(installed["bin"]) == 0o755
    assert installed["conf"].is_file() and mode(installed["conf"]) == 0o640
    assert installed["state"].is_dir() and mode(installed["state"]) == 0o700
    assert (installed["state"] / "tfps.db").is_file(), "install.sh runs initdb"
    assert not (prefix / "etc/systemd/system/tfps.service").exists(), "--no-systemd writes no unit"
    assert (installed["src"] / "tfps.pyz").read_bytes() == installed["bin"].read_bytes()
    assert "created: schema version" in installed["output"]
    assert installed["man"].is_file() and mode(installed["man"]) == 0o644
    assert installed["completion"].is_file() and mode(installed["completion"]) == 0o644
    assert (installed["src"] / "tfps.1").read_bytes() == installed["man"].read_bytes()
    assert (installed["src"] / "tfps.bash-completion").read_bytes() == installed["completion"].read_bytes()


def test_installed_config_is_the_example_with_the_state_database(installed):
    example = (REPO / "tfps.conf").read_text().splitlines()
    conf = installed["conf"].read_text().splitlines()
    diff = [(a, b) for a, b in zip(example, conf) if a != b]
    assert len(example) == len(conf)
    assert diff == [("url =", f"url = sqlite://{installed['state']}/tfps.db"),
                    ("spool =", f"spool = {installed['state']}/tfps-spool.jsonl")]
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
    assert zipfile.ZipFile(pyz).read("dashboard.html") == (REPO / "dashboard.html").read_bytes()
    # The licenses travel with the binary: TFPS's own, and that of the PyMySQL inside it.
    for name, source in (("LICENSE", "LICENSE"), ("NOTICE", "docs/NOTICE")):
        assert zipfile.ZipFile(pyz).read(name) == (REPO / source).read_bytes()
    assert "Permission is hereby granted" in zipfile.ZipFile(pyz).read("pymysql/LICENSE").decode()


def test_pyz_list_initdb_and_exit_codes(installed):
    conf = str(installed["conf"])
    # Executed directly: the shebang finds python3 on PATH.
    version = subprocess.run([str(installed["bin"]), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("TFPS ")
    # the installed name everywhere: usage, errors, the undo command of a verdict
    helped = subprocess.run([str(installed["bin"]), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.stdout.startswith("usage: tfps [")
    checked = subprocess.run([str(installed["bin"]), "check", "1001", "pbx.example.com", "+53 5 5512345", "-c", conf],
                             capture_output=True, text=True, timeout=30)
    assert checked.stdout.startswith("R06") and "tfps whitelist add number +5355512345" in checked.stdout, checked
    assert "tfps.py" not in checked.stdout
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
    port, http_port = free_port(), free_port()
    conf = write_config(tmp_path / "serve.conf", {
        "server": {"listen": f"udp:127.0.0.1:{port}, tcp:127.0.0.1:{port}"},
        "database": {"url": f"sqlite://{installed['state']}/tfps.db", "flush_interval": "0.2s"},
        "http": {"listen": f"127.0.0.1:{http_port}"}})
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(installed["bin"]), "serve", "-c", conf], stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        def started():
            assert proc.poll() is None, log_path.read_text()
            return "serving in" in log_path.read_text()
        wait_until(started, 15, message=lambda: f"the zipapp to serve:\n{log_path.read_text()}")
        for transport in ("udp", "tcp"):
            probe = run_pyz(installed["bin"], "probe", "12125551234", "--server", f"127.0.0.1:{port}",
                            "--transport", transport, "--from", f"{transport}@pbx.example.com")
            assert probe.returncode == 0, probe.stdout + probe.stderr
            assert "SIP/2.0 302 Moved Temporarily" in probe.stdout
            assert "Contact: <sip:A0012125551234@pbx.example.com>" in probe.stdout
            assert "code: A00" in probe.stdout
        rejected = run_pyz(installed["bin"], "probe", "5355512345", "--server", f"127.0.0.1:{port}")
        assert rejected.returncode == 0 and "302" in rejected.stdout and "code: R06" in rejected.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/", timeout=10) as page:
            assert page.read() == (REPO / "dashboard.html").read_bytes(), "the dashboard from inside the zipapp"
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
    assert mode(src / "tfps.1") == 0o644 and mode(src / "tfps.bash-completion") == 0o644
    assert sorted(p.name for p in src.iterdir()) == sorted({name.split("/")[0] for name in SOURCES + BUILT})
    assert sorted(p.name for p in (src / "docs").iterdir()) == ["NOTICE", "gen_cli_docs.py"], "no bytecode left behind"
    assert run_pyz(pyz, "--version").stdout.startswith("TFPS ")


def test_bad_option_is_a_usage_error(tmp_path):
    result = run_install(checkout(tmp_path / "src"), "--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr and "--prefix DIR" in result.stderr
    missing = run_install(checkout(tmp_path / "src2"), "--prefix")
    assert missing.returncode == 2 and "--prefix needs a directory" in missing.stderr


HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateDevices=yes", "PrivateMounts=yes",
             "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes",
             "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible",
             "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "RestrictNamespaces=yes", "RestrictRealtime=yes",
             "RestrictSUIDSGID=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "RemoveIPC=yes",
             "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
             "SystemCallFilter=~@privileged @resources", "SystemCallErrorNumber=EPERM",
             "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "UMask=0077")


def test_systemd_unit(installed):
    src = installed["src"]
    unit = run_install(src, "--print-unit").stdout
    for line in ("Restart=on-failure", "ReadWritePaths=/var/lib/tfps", "User=tfps", "Group=tfps",
                 "ExecStart=/usr/local/bin/tfps serve -c /etc/tfps/tfps.conf", "ExecReload=/bin/kill -HUP $MAINPID",
                 "Documentation=man:tfps(1) file:///etc/tfps/tfps.conf", "ProtectHome=yes", "PrivateTmp=yes",
                 "LimitNOFILE=65536", "MemoryMax=1G", "WantedBy=multi-user.target") + HARDENING:
        assert line in unit.splitlines(), line
    prefix = installed["prefix"]
    prefixed = run_install(src, "--print-unit", "--prefix", str(prefix)).stdout.splitlines()
    assert f"ExecStart={prefix}/usr/local/bin/tfps serve -c {prefix}/etc/tfps/tfps.conf" in prefixed
    assert f"ReadWritePaths={prefix}/var/lib/tfps" in prefixed
    assert f"Documentation=file://{prefix}/etc/tfps/tfps.conf" in prefixed, "man finds no page under a prefix"
    assert set(HARDENING) <= set(prefixed)


@pytest.mark.parametrize("prefix, private_tmp, protect_home", [
    ("/opt/tfps-unit-test", "yes", "yes"),
    ("/tmp/tfps-unit-test", "no", "yes"),  # a private /tmp would hide the binary
    ("/var/tmp/tfps-unit-test", "no", "yes"),
    ("/root/tfps-unit-test", "yes", "read-only"),  # ProtectHome=yes would hide it
    ("/home/someone/tfps", "yes", "read-only"),
])
def test_systemd_unit_runs_from_any_prefix(installed, prefix, private_tmp, protect_home):
    """--print-unit shows the unit for a prefix without creating it."""
    result = run_install(installed["src"], "--print-unit", "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"PrivateTmp={private_tmp}" in lines and f"ProtectHome={protect_home}" in lines
    assert f"ReadWritePaths={prefix}/var/lib/tfps" in lines
    assert not os.path.exists(prefix), "--print-unit creates nothing"


def systemd_analyze(*args, env=None):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing: tests/run installs systemd"
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120, env=env)


def exposure(unit_path):
    """The overall exposure level of `systemd-analyze security --offline=true` (0 safest, 10 worst)."""
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(unit_path))
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    return float(found.group(1)), result.stdout


def default_unit_on_prefix_files(installed_unit, tmp_path):
    """The unit of an install under / (--print-unit), with ExecStart pointing at the prefix's binary so
    that systemd-analyze can check it, and MANPATH at the prefix's man page for its man:tfps(1)."""
    text = run_install(installed_unit["src"], "--print-unit").stdout
    text = text.replace("ExecStart=/usr/local/bin/tfps ", f"ExecStart={installed_unit['bin']} ")
    (tmp_path / "default").mkdir()
    path = tmp_path / "default" / "tfps.service"
    path.write_text(text)
    env = {**os.environ, "MANPATH": str(installed_unit["prefix"] / "usr/local/share/man")}
    return path, env


def test_systemd_analyze_verify(prefix_install, tmp_path):
    """The unit that install.sh --prefix wrote, and the one it writes under /, verify with no message."""
    verify = systemd_analyze("verify", str(prefix_install["unit"]))
    assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), verify.stderr
    default, env = default_unit_on_prefix_files(prefix_install, tmp_path)
    verify = systemd_analyze("verify", str(default), env=env)
    assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), verify.stderr


def test_systemd_analyze_security_exposure_at_most_3(prefix_install, tmp_path):
    level, report = exposure(prefix_install["unit"])
    assert level <= 3.0, report
    default, _ = default_unit_on_prefix_files(prefix_install, tmp_path)
    default_level, report = exposure(default)
    assert default_level <= level, report  # under / the unit also has a private /tmp
    # What is left exposed is what TFPS needs: the network, its port capability, its own /tmp view.
    for needed in ("PrivateNetwork=", "RestrictAddressFamilies=~AF_(INET|INET6)", "AmbientCapabilities="):
        assert re.search(rf"^\S+ {re.escape(needed)}\s", report, re.M), needed
    for closed in ("User=/DynamicUser=", "NoNewPrivileges=", "ProtectSystem=", "SystemCallFilter=~@privileged",
                   "MemoryDenyWriteExecute=", "CapabilityBoundingSet=~CAP_SYS_ADMIN", "PrivateDevices=",
                   "ProtectHome=", "RestrictNamespaces=~user", "UMask="):
        assert re.search(rf"^✓ {re.escape(closed)}", report, re.M), closed


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


def test_prefix_touches_nothing_outside_it(prefix_install):
    """No account, no chown, no systemctl, no package on the host: everything is under DIR."""
    assert not prefix_install["calls"].exists(), prefix_install["calls"].read_text()
    runs = [json.loads(line) for line in Path(prefix_install["env"]["FAKE_PIP_LOG"]).read_text().splitlines()]
    assert len(runs) == 1 and "--target" in runs[0]["args"], "pip only vendors PyMySQL into the build"
    prefix = prefix_install["prefix"]
    files = sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*") if not p.is_dir())
    assert files == ["etc/systemd/system/tfps.service", "etc/tfps/tfps.conf", "usr/local/bin/tfps",
                     "usr/local/share/bash-completion/completions/tfps", "usr/local/share/man/man1/tfps.1",
                     "var/lib/tfps/tfps.db"]
    for path in (prefix_install["conf"], prefix_install["state"], prefix_install["state"] / "tfps.db"):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (0, 0), path
    assert mode(prefix_install["conf"]) == 0o640 and mode(prefix_install["state"]) == 0o700
    # The unit names only files inside the prefix (and /bin/kill).
    unit = prefix_install["unit"].read_text()
    settings = "\n".join(line for line in unit.splitlines() if not line.startswith("#")).replace("file://", " ")
    paths = re.findall(r"(?<![\w.])/[\w./-]+", settings)
    assert len(paths) == 5 and all(p.startswith(f"{prefix}/") or p == "/bin/kill" for p in paths), paths
    assert "PrivateTmp=no" in unit.splitlines(), "the prefix is under /tmp"
    # What to do to run it, since the account was not created.
    output = prefix_install["output"]
    assert "not enabling a unit under --prefix" in output
    assert f"chown root:tfps {prefix_install['conf']} && chown -R tfps:tfps {prefix_install['state']}" in output
    assert f"systemctl enable --now {prefix_install['unit']}" in output


def test_prefix_keeps_an_existing_config_private_without_chown(tmp_path):
    """A kept tfps.conf gets mode 0640 under --prefix too, but no owner: that would need the account."""
    src = checkout(tmp_path / "src")
    prefix = tmp_path / "root"
    conf = prefix / "etc/tfps/tfps.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"[database]\nurl = sqlite://{prefix}/var/lib/tfps/tfps.db\n")
    conf.chmod(0o644)
    calls = tmp_path / "calls"
    env = stub_bin(tmp_path / "bin", **host_stubs(calls))
    result = run_install(src, "--prefix", str(prefix), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mode(conf) == 0o640 and f"keeping existing {conf}" in result.stdout
    assert not calls.exists(), calls.read_text()
    assert (prefix / "etc/systemd/system/tfps.service").is_file()


def test_prefix_with_characters_the_unit_would_misread_is_a_usage_error(tmp_path):
    src = checkout(tmp_path / "src")
    for name in ("with space", "per%cent", "dollar$x", "quote'd", "semi;colon"):
        result = run_install(src, "--prefix", str(tmp_path / name))
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert "--prefix" in result.stderr and "only letters, digits" in result.stderr
        assert not (tmp_path / name).exists()


def check_pip_runs(runs):
    version, sha256 = pinned_pymysql()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and re.fullmatch(r"[0-9a-f]{64}", sha256)
    for run in runs:
        assert run["requirements"] == f"PyMySQL=={version} --hash=sha256:{sha256}\n"
        assert run["args"][:6] == ["install", "--no-deps", "--only-binary", ":all:", "--require-hashes", "-r"]
        assert not [arg for arg in run["args"] if "pymysql" in arg.lower() and not arg.endswith(".txt")]


def test_pip_fallbacks_install_only_the_pinned_pymysql(tmp_path):
    """No PyMySQL and no apt-get, an install under /: pip installs PyMySQL into the system Python
    (without, then with --break-system-packages), then vendors it for the pyz. Every pip run asks for
    one exact version, as one wheel with one hash, and nothing else (pip itself is faked: no network).
    The install is stopped at its first step outside the build (a failing `install`), so it changes
    nothing on this machine."""
    version, _ = pinned_pymysql()
    calls = tmp_path / "calls"
    env = stub_bin(tmp_path / "bin", install=f'echo "install $*" >> {calls}\nexit 1\n',
                   **{name: body for name, body in host_stubs(calls).items() if name != "apt-get"})
    src = checkout(tmp_path / "src")
    result = run_install(src, "--no-systemd", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert calls.read_text().splitlines() == ["sysctl -n net.core.rmem_max", "install -d -m 0755 /usr/local/bin"]
    runs = [json.loads(line) for line in Path(env["FAKE_PIP_LOG"]).read_text().splitlines()]
    assert [("--break-system-packages" in run["args"], "--target" in run["args"]) for run in runs] == \
        [(False, False), (True, False), (False, True)]
    check_pip_runs(runs)
    assert f"trying pip (PyMySQL=={version})" in result.stdout
    assert f"PyMySQL {version} vendored" in result.stdout
    assert (src / "tfps.pyz").is_file()


@pytest.mark.parametrize("now, applied, expected", [
    ("212992", True, "net.core.rmem_max 212992 -> 4194304 (kept at boot by /etc/sysctl.d/60-tfps.conf)"),
    ("212992", False, "this kernel refused net.core.rmem_max = 4194304 (a container?): set it on the host"),
    ("16777216", True, None),
    ("", True, "net.core.rmem_max cannot be read here (no sysctl?): TFPS wants it at 4194304 or more"),
])
def test_an_install_under_root_raises_the_socket_buffer_ceiling_and_never_lowers_it(tmp_path, now, applied, expected):
    """net.core.rmem_max below 4 MB is raised, now (sysctl -w) and at boot (/etc/sysctl.d); a larger
    value stays. sysctl and install are stand-ins: the sysctl.d file goes to a copy, and the install
    stops at the binary's `mv` (nothing is ever copied to /usr/local/bin/tfps.new)."""
    calls, written = tmp_path / "calls", tmp_path / "60-tfps.conf"
    sysctl = (f'echo "sysctl $*" >> {calls}\n'
              f'if [ "$1" = -n ]; then echo "{now}"; exit 0; fi\n' + ("exit 0\n" if applied else "exit 255\n"))
    install = (f'echo "install $*" >> {calls}\n'
               f'case "$4" in /etc/sysctl.d/*) cp "$3" {written} ;; esac\nexit 0\n')
    env = stub_bin(tmp_path / "bin", sysctl=sysctl, install=install,
                   **{name: body for name, body in host_stubs(calls).items() if name not in ("apt-get", "sysctl")})
    result = run_install(checkout(tmp_path / "src"), "--no-systemd", env=env)
    assert result.returncode != 0 and "/usr/local/bin/tfps.new" in result.stderr, result.stdout + result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "sysctl -n net.core.rmem_max"
    raised = now.isdigit() and int(now) < 4194304
    if raised:
        assert lines[1].startswith("install -m 0644 ") and lines[1].endswith(" /etc/sysctl.d/60-tfps.conf")
        assert lines[2] == "sysctl -q -w net.core.rmem_max=4194304"
        assert written.read_text().splitlines()[1:] == ["net.core.rmem_max = 4194304"]
    assert lines[1 + 2 * raised] == "install -d -m 0755 /usr/local/bin"
    assert not written.exists() or raised
    assert ("rmem_max" in result.stdout) == (expected is not None)
    assert expected is None or expected in result.stdout


def test_prefix_leaves_the_kernel_alone_and_says_what_the_host_wants(prefix_install):
    assert "the host that runs TFPS wants net.core.rmem_max >= 4194304" in prefix_install["output"]


def test_pip_under_prefix_only_vendors_the_pinned_pymysql(tmp_path):
    version, _ = pinned_pymysql()
    env = stub_bin(tmp_path / "bin")
    src = checkout(tmp_path / "src")
    result = run_install(src, "--prefix", str(tmp_path / "root"), "--no-systemd", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [json.loads(line) for line in Path(env["FAKE_PIP_LOG"]).read_text().splitlines()]
    assert [("--target" in run["args"]) for run in runs] == [True]
    check_pip_runs(runs)
    assert "trying pip" not in result.stdout
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


# -- the man page and the bash completion, generated from build_parser() ---------------------------

def render_man(path):
    """`man -l` as a person reads it, 80 columns, with groff's warnings on stderr."""
    assert shutil.which("man"), "man is missing: tests/run installs man-db"
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    env.pop("MAN_KEEP_FORMATTING", None)
    result = subprocess.run(["man", "--warnings=all", "-l", str(path)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    return result.stdout


def test_man_page_renders_without_warnings_and_lists_every_command(installed):
    text = render_man(installed["man"])
    assert text.splitlines()[0].split() == ["TFPS(1)", "User", "Commands", "TFPS(1)"]
    assert f"TFPS {tfps.__version__}" in text.splitlines()[-1]
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "FILES", "EXIT STATUS", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.M), section
    assert re.search(r"^       tfps - ", text, re.M)
    for name, parser in subcommands().items():
        assert re.search(rf"^   {name}$", text, re.M), f"no heading for {name}"
        assert re.search(rf"^       tfps {name}\b", text, re.M), f"no synopsis for {name}"
        for action in parser._actions:
            for option in action.option_strings:
                assert re.search(rf"(^|[\s\[(|]){re.escape(option)}\b", text, re.M), f"{name} {option}"
            for choice in action.choices or ():
                assert choice in text, f"{name} {choice}"
    # Lines fit the 80 columns, and the exit statuses of main() are the ones described.
    assert max(len(line) for line in text.splitlines()) <= 80
    exit_status = text.split("EXIT STATUS", 1)[1].split("SEE ALSO", 1)[0]
    assert [line.split()[0] for line in exit_status.splitlines() if re.match(r"^       \d ", line)] == ["0", "1", "2"]
    for path in ("/etc/tfps/tfps.conf", "/var/lib/tfps/tfps.db", "/etc/systemd/system/tfps.service"):
        assert path in text.split("FILES", 1)[1]


def test_man_page_is_clean_for_groff_and_found_by_name(installed):
    if shutil.which("groff"):
        groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(installed["man"])], capture_output=True,
                               text=True, timeout=60)
        assert groff.returncode == 0 and not groff.stderr.strip(), groff.stderr
    # Installed where man looks: MANPATH=PREFIX/usr/local/share/man finds `man tfps`.
    found = subprocess.run(["man", "-w", "tfps"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "MANPATH": str(installed["prefix"] / "usr/local/share/man")})
    assert found.stdout.strip() == str(installed["man"]), found.stderr
    source = installed["man"].read_text()
    assert source.startswith('.\\" tfps(1): generated by docs/gen_cli_docs.py from tfps.build_parser()')
    assert re.search(r'^\.TH TFPS 1 "\d{4}-\d{2}-\d{2}" "TFPS ' + re.escape(tfps.__version__) + '" ', source, re.M)


def complete(script, *words):
    """COMPREPLY of the completion function for the command line `words` (the last one is completed)."""
    body = f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n" \
           "_tfps\necho \"${COMPREPLY[@]}\"\n"
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", body], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout.split()


def test_bash_completion_lists_every_command_and_its_options(installed, tmp_path):
    script = installed["completion"]
    assert "complete -F _tfps tfps" in script.read_text().splitlines()
    commands = subcommands()
    assert complete(script, "tfps", "") == list(commands)
    assert complete(script, "tfps", "bl") == ["block", "blacklist"]
    assert complete(script, "tfps", "--v") == ["--version"]
    for name, parser in commands.items():
        options = {o for a in parser._actions for o in a.option_strings}
        assert set(complete(script, "tfps", name, "-")) == options, name
    # Values with a fixed set, after the option or as a positional argument; files where a file goes.
    assert complete(script, "tfps", "serve", "--mode", "") == ["redirect", "failover", "monitor"]
    assert complete(script, "tfps", "probe", "12125551234", "--transport", "t") == ["tcp"]
    assert complete(script, "tfps", "config", "") == ["check"]
    assert complete(script, "tfps", "blacklist", "--note", "x", "") == ["add", "remove", "list", "import"]
    assert complete(script, "tfps", "blacklist", "add", "") == ["number", "ip", "ua"]
    assert complete(script, "tfps", "whitelist", "--json", "add", "") == ["number", "ip"]
    (tmp_path / "calls.csv").write_text("")
    assert complete(script, "tfps", "replay", "--jobs", "2", f"{tmp_path}/ca") == [f"{tmp_path}/calls.csv"]
    assert complete(script, "tfps", "list", "-c", f"{tmp_path}/ca") == [f"{tmp_path}/calls.csv"]
    assert complete(script, "tfps", "show", "--db", "") == []


def test_cli_docs_generator_needs_only_the_standard_library(installed, tmp_path):
    """docs/gen_cli_docs.py with no site-packages (so no PyMySQL) gives what install.sh installed."""
    man, completion = tmp_path / "tfps.1", tmp_path / "tfps.bash"
    result = subprocess.run([sys.executable, "-S", "-I", str(REPO / "docs/gen_cli_docs.py"), "--tfps",
                             str(REPO / "tfps.py"), "--man", str(man), "--bash-completion", str(completion)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    assert man.read_text() == installed["man"].read_text()
    assert completion.read_text() == installed["completion"].read_text()


# -- the version ---------------------------------------------------------------------------------------

def test_changelog_newest_version_is_the_version_of_tfps():
    changelog = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", changelog, re.M)
    assert releases[0][0] == tfps.__version__, "CHANGELOG.md's newest entry is __version__ in tfps.py"
    assert ("1.0.0", "2026-11-26") in releases
    assert [r[1] for r in releases] == sorted((r[1] for r in releases), reverse=True), "newest first"
    headings = re.findall(r"^## .*$", changelog, re.M)
    assert len(headings) == len(releases), [h for h in headings if not re.match(r"## \[\d", h)]
    for section in re.findall(r"^### (.*)$", changelog, re.M):
        assert section in ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"), section
    version = subprocess.run([sys.executable, str(REPO / "tfps.py"), "--version"], capture_output=True, text=True,
                             timeout=30)
    assert version.returncode == 0 and version.stdout == f"TFPS {tfps.__version__}\n"


def test_man_page_carries_the_version_and_its_release_date(installed):
    date = re.search(rf"^## \[{re.escape(tfps.__version__)}\] - (\S+)$", (REPO / "CHANGELOG.md").read_text(),
                     re.M).group(1)
    assert f'.TH TFPS 1 "{date}" "TFPS {tfps.__version__}" "User Commands"' in installed["man"].read_text()
    assert run_pyz(installed["bin"], "--version").stdout == f"TFPS {tfps.__version__}\n"


def test_license_is_apache_2_with_the_copyright_in_notice():
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text.splitlines()) == 202
    assert "Copyright 2026 The TFPS authors" in (REPO / "docs" / "NOTICE").read_text().splitlines()
