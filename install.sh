#!/usr/bin/env bash
# install.sh: install TFPS as a service on Debian 11, 12 or 13. Run as root; safe to run again.
#
#   ./install.sh                      install under /, create user tfps, enable tfps.service
#   ./install.sh --prefix DIR         install everything under DIR (DIR/etc/tfps/tfps.conf,
#                                     DIR/var/lib/tfps, DIR/usr/local/bin/tfps, ...), touch
#                                     nothing outside it: no packages, user, chown or systemctl
#   ./install.sh --no-systemd         no system user, no unit, no systemctl (containers, CI)
#   ./install.sh --build-only         only build ./tfps.pyz, ./tfps.1, ./tfps.bash-completion
#   ./install.sh --print-unit         print the systemd unit that would be installed
#
# What it does, each step only when needed:
#   1. apt-get install python3 and python3-pymysql when missing (pip as a fallback for PyMySQL,
#      always the one release pinned below, checked against its hash); not with --prefix
#   2. build ./tfps.pyz with `python3 -m zipapp`: tfps.py, schema.sql, dashboard.html, LICENSE, NOTICE and a
#      vendored copy of PyMySQL, so the binary also runs where PyMySQL is not installed; and
#      the man page ./tfps.1 and ./tfps.bash-completion from tfps.py's argument parser
#      (docs/gen_cli_docs.py)
#   3. net.core.rmem_max raised to 4 MB when lower (never lowered), now and at boot through
#      /etc/sysctl.d/60-tfps.conf: room for bursts in TFPS's UDP receive buffer; not with --prefix
#   4. install them as PREFIX/usr/local/bin/tfps (replaced atomically),
#      PREFIX/usr/local/share/man/man1/tfps.1 and
#      PREFIX/usr/local/share/bash-completion/completions/tfps
#   5. create the system user tfps (unless --no-systemd or --prefix)
#   6. PREFIX/etc/tfps/tfps.conf from ./tfps.conf with [database] url pointing at
#      PREFIX/var/lib/tfps/tfps.db; an existing tfps.conf is always kept, but gets mode 0640
#      (and owner root:tfps unless --no-systemd or --prefix) like a new one
#   7. PREFIX/var/lib/tfps (mode 0700, owner tfps unless --no-systemd or --prefix) and
#      `tfps initdb` (creates or migrates the database)
#   8. PREFIX/etc/systemd/system/tfps.service (unless --no-systemd), enabled and (re)started
#      when systemd runs and there is no --prefix
set -euo pipefail

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

PREFIX=""
SYSTEMD=1
BUILD_ONLY=0
PRINT_UNIT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; usage >&2; exit 2; }
              PREFIX="$2"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --build-only) BUILD_ONLY=1; shift ;;
    --print-unit) PRINT_UNIT=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYZ_OUT="$SRC/tfps.pyz"
MAN_OUT="$SRC/tfps.1"
COMPLETION_OUT="$SRC/tfps.bash-completion"

# An absolute prefix without a trailing slash or symbolic links; "" means /. Its path goes into
# the unit, the configuration and sed, so it is limited to characters that none of them reads
# specially (no whitespace, quotes, backslash, $, %, &, |, ;).
if [ -n "$PREFIX" ]; then
  case "$PREFIX" in
    *[!A-Za-z0-9._/+@,:=~-]*)
      echo "install.sh: --prefix $PREFIX: use a directory whose path has only letters, digits and . _ / + @ , : = ~ -" >&2
      exit 2 ;;
  esac
  # --print-unit only shows the unit: it creates no directory.
  [ "$PRINT_UNIT" = 1 ] || mkdir -p "$PREFIX"
  PREFIX="$(realpath -m "$PREFIX")"
  [ "$PREFIX" = "/" ] && PREFIX=""
fi
BIN="$PREFIX/usr/local/bin/tfps"
MAN_PAGE="$PREFIX/usr/local/share/man/man1/tfps.1"
COMPLETION="$PREFIX/usr/local/share/bash-completion/completions/tfps"
CONF_DIR="$PREFIX/etc/tfps"
CONF="$CONF_DIR/tfps.conf"
STATE_DIR="$PREFIX/var/lib/tfps"
UNIT_DIR="$PREFIX/etc/systemd/system"
UNIT="$UNIT_DIR/tfps.service"
DB_URL="sqlite://$STATE_DIR/tfps.db"

# The PyMySQL release that pip installs or vendors when the system has none: one exact version,
# accepted only as the wheel with this SHA-256 (PyPI's published digest), so that every tfps.pyz
# built from this checkout carries the same code. 1.1.3 is the newest 1.1 release: it has the
# fixes for SQL injection through dict keys (CVE-2024-36039, 1.1.1) and procedure names (1.1.3),
# runs on Python 3.9 and later (Debian 11 has 3.9), and keeps 1.1's TLS and ping() defaults,
# which 1.2 changed. Debian's python3-pymysql, when installed, is used instead.
PYMYSQL_VERSION=1.1.3
PYMYSQL_SHA256=8164ba62c552f6105f3b11753352d0f16b90d1703ba67d81923d5a8a5d1c5289

# The unit runs from wherever the files are. A prefix under /tmp or /var/tmp would be hidden by
# PrivateTmp (a private /tmp), one under a home directory by ProtectHome=yes: those get
# PrivateTmp=no and ProtectHome=read-only (the state directory stays writable).
unit_text() {
  local private_tmp=yes protect_home=yes documentation="file://$CONF"
  case "$PREFIX/" in
    /tmp/*|/var/tmp/*) private_tmp=no ;;
    /home/*|/root/*|/run/user/*) protect_home=read-only ;;
  esac
  # man:tfps(1) where man finds it, i.e. not under a prefix.
  [ -n "$PREFIX" ] || documentation="man:tfps(1) $documentation"
  cat <<EOF
# Installed by TFPS install.sh. Reload the configuration with: systemctl reload tfps
[Unit]
Description=TFPS, the Telephony Fraud Prevention System (SIP redirect server)
Documentation=$documentation
After=network-online.target mariadb.service mysql.service
Wants=network-online.target

[Service]
Type=simple
User=tfps
Group=tfps
ExecStart=$BIN serve -c $CONF
ExecReload=/bin/kill -HUP \$MAINPID
Restart=on-failure
RestartSec=2s
TimeoutStopSec=10s
# [server] tcp_max_connections = auto is this limit less 64 (database, logs, lookups): 65472.
LimitNOFILE=65536
# A hard ceiling for a small appliance that also runs the PBX or the database. TFPS needs about
# 40 MB idle and 70 MB at 1,000 calls/s; its own bounds (max_transactions, max_unflushed_rows
# while the database is down, about 1 kB per TCP connection) keep even a flood within a few
# hundred MB. Past 1G the kernel kills TFPS alone and systemd restarts it, instead of the OOM
# killer choosing the PBX or MariaDB. Raise it (systemctl edit tfps) with those bounds.
MemoryMax=1G
# The sandbox: systemd-analyze security tfps rates its exposure 1.4 of 10 (1.6 without
# PrivateTmp). TFPS needs UDP and TCP sockets, on ports below 1024 too (CAP_NET_BIND_SERVICE,
# its only capability); its state directory, the only writable path (SQLite); MariaDB over TCP
# or its unix socket; SMTP and HTTPS out (alerts, reputation). Python needs no writable and
# executable memory. A system call outside the filter fails with EPERM instead of killing TFPS.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$STATE_DIR
ProtectHome=$protect_home
PrivateTmp=$private_tmp
PrivateDevices=yes
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
UMask=0077

[Install]
WantedBy=multi-user.target
EOF
}

if [ "$PRINT_UNIT" = 1 ]; then
  unit_text
  exit 0
fi

for f in tfps.py schema.sql dashboard.html tfps.conf docs/gen_cli_docs.py; do
  [ -f "$SRC/$f" ] || die "$SRC/$f is missing: run install.sh from a TFPS checkout"
done

if [ "$BUILD_ONLY" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or use --build-only to just build tfps.pyz)"
fi

APT_UPDATED=0
apt_install() {
  [ -z "$PREFIX" ] || return 1  # --prefix installs no packages on the host
  command -v apt-get >/dev/null || return 1
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pymysql_dir() {
  python3 -c 'import os, pymysql; print(os.path.dirname(pymysql.__file__))' 2>/dev/null
}

# pip install of the pinned PyMySQL (extra pip options as arguments); pip's output goes to
# $BUILD/pip.log. The hash makes pip refuse anything but that exact wheel.
pip_pymysql() {
  echo "PyMySQL==$PYMYSQL_VERSION --hash=sha256:$PYMYSQL_SHA256" > "$BUILD/pymysql-requirements.txt"
  python3 -m pip install --no-deps --only-binary :all: --require-hashes \
          -r "$BUILD/pymysql-requirements.txt" "$@" >> "$BUILD/pip.log" 2>&1
}

BUILD="$(mktemp -d "${TMPDIR:-/tmp}/tfps-build.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT

# -- 1. python3 and PyMySQL ---------------------------------------------------------------------
if ! command -v python3 >/dev/null; then
  [ "$BUILD_ONLY" = 0 ] && [ -z "$PREFIX" ] || die "python3 is missing (apt-get install python3)"
  say "installing python3"
  apt_install python3 || die "could not install python3 with apt-get"
fi
python3 "$SRC/tfps.py" --version >/dev/null 2>&1 ||
  die "tfps.py does not run on $(python3 -V 2>&1): $(python3 "$SRC/tfps.py" --version 2>&1 | tail -n 1)"

# Into the system only for an install under /: the built tfps.pyz brings its own PyMySQL anyway.
if [ -z "$(pymysql_dir)" ] && [ "$BUILD_ONLY" = 0 ] && [ -z "$PREFIX" ]; then
  say "installing PyMySQL (python3-pymysql)"
  apt_install python3-pymysql || true
  if [ -z "$(pymysql_dir)" ]; then
    say "python3-pymysql is not visible to $(command -v python3); trying pip (PyMySQL==$PYMYSQL_VERSION)"
    pip_pymysql -q || pip_pymysql -q --break-system-packages || true
  fi
fi

# -- 2. build tfps.pyz ----------------------------------------------------------------------------
mkdir "$BUILD/app"
cp "$SRC/tfps.py" "$SRC/schema.sql" "$SRC/dashboard.html" "$BUILD/app/"
for f in LICENSE docs/NOTICE; do
  [ ! -f "$SRC/$f" ] || cp "$SRC/$f" "$BUILD/app/"
done
PYMYSQL_SRC="$(pymysql_dir || true)"
if [ -n "$PYMYSQL_SRC" ]; then
  cp -R "$PYMYSQL_SRC" "$BUILD/app/pymysql"
  PYMYSQL_META="$(dirname "$PYMYSQL_SRC")"
else
  # No PyMySQL on this python3 (e.g. --build-only on a bare box): vendor it straight from PyPI.
  if ! pip_pymysql -q --no-compile --target "$BUILD/vendor"; then
    PIP_SAID="$(grep -v '^[[:space:]]*$' "$BUILD/pip.log" | tail -n 1 || true)"
    die "PyMySQL is needed to build tfps.pyz: apt-get install python3-pymysql (pip could not install PyMySQL==$PYMYSQL_VERSION${PIP_SAID:+: $PIP_SAID})"
  fi
  cp -R "$BUILD/vendor/pymysql" "$BUILD/app/pymysql"
  PYMYSQL_META="$BUILD/vendor"
fi
# PyMySQL's license (MIT) travels with its copy, as pymysql/LICENSE: from its package metadata
# (pip) or Debian's copyright file.
python3 -S - "$PYMYSQL_META" "$BUILD/app/pymysql/LICENSE" <<'EOF' || say "PyMySQL's license file not found; tfps.pyz is built without it"
import glob, os, shutil, sys
meta, dest = sys.argv[1:]
found = [path for info in sorted(glob.glob(os.path.join(meta, "*.*-info")))
         if os.path.basename(info).lower().startswith("pymysql-")
         for path in sorted(glob.glob(os.path.join(info, "**", "LICEN[CS]E*"), recursive=True))]
debian = "/usr/share/doc/python3-pymysql/copyright"
if not found and meta.startswith("/usr/lib/python3/") and os.path.isfile(debian):
    found = [debian]
if not found:
    sys.exit(1)
shutil.copyfile(found[0], dest)
EOF
find "$BUILD/app" -name __pycache__ -type d -prune -exec rm -rf {} +
# Our own __main__ instead of `zipapp -m tfps:main`, whose generated one drops main()'s return
# value: the exit status (0 ok, 1 failure, 2 usage) must survive.
cat > "$BUILD/app/__main__.py" <<'EOF'
import sys

import tfps

sys.exit(tfps.main())
EOF
python3 -m zipapp "$BUILD/app" -o "$BUILD/tfps.pyz" -p '/usr/bin/env python3' -c
# The vendored PyMySQL must load from the archive alone, with no site-packages at all.
python3 -S -c 'import sys; sys.path[:0] = [sys.argv[1]]; import pymysql, tfps' "$BUILD/tfps.pyz" ||
  die "the built tfps.pyz does not import tfps and PyMySQL without site-packages"
python3 "$BUILD/tfps.pyz" --version >/dev/null || die "the built tfps.pyz does not run"
# VERSION_STRING is PyMySQL's own version; __version__ is the mysqlclient version it imitates.
BUILT="$(python3 "$BUILD/tfps.pyz" --version), PyMySQL $(python3 -S -c 'import sys; sys.path[:0] = [sys.argv[1]]; import pymysql; print(getattr(pymysql, "VERSION_STRING", pymysql.__version__))' "$BUILD/tfps.pyz") vendored"
# The man page and the bash completion, from the argument parser of this very tfps.py.
python3 "$SRC/docs/gen_cli_docs.py" --tfps "$SRC/tfps.py" --man "$BUILD/tfps.1" \
        --bash-completion "$BUILD/tfps.bash-completion" ||
  die "could not generate the man page and the bash completion from $SRC/tfps.py"
if [ -w "$SRC" ]; then
  publish() {  # FILE in the build directory, DEST, MODE: replaced atomically
    cp "$BUILD/$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
  }
  publish tfps.pyz "$PYZ_OUT" 0755
  publish tfps.1 "$MAN_OUT" 0644
  publish tfps.bash-completion "$COMPLETION_OUT" 0644
  say "built $PYZ_OUT ($BUILT), $MAN_OUT and $COMPLETION_OUT"
elif [ "$BUILD_ONLY" = 1 ]; then
  die "cannot write $PYZ_OUT: $SRC is not writable"
else
  say "built tfps.pyz ($BUILT), tfps.1 and tfps.bash-completion; $SRC is not writable, so no copy is left there"
fi
if [ "$BUILD_ONLY" = 1 ]; then
  exit 0
fi

# -- 3. the kernel's ceiling on socket buffers -------------------------------------------------------
# TFPS asks for a 4 MB UDP receive buffer, room for bursts of requests (it shrinks the buffer by
# itself while requests wait in it too long). The kernel caps it at net.core.rmem_max, 208 kB on
# Debian unless raised. Raised here, never lowered: a larger value the operator set stays.
RMEM_WANTED=4194304
SYSCTL_CONF=/etc/sysctl.d/60-tfps.conf
if [ -n "$PREFIX" ]; then
  say "the kernel is not touched under --prefix: the host that runs TFPS wants net.core.rmem_max >= $RMEM_WANTED"
  say "  (sysctl -w net.core.rmem_max=$RMEM_WANTED, and the same line in /etc/sysctl.d/ for the next boot)"
else
  RMEM_NOW="$(sysctl -n net.core.rmem_max 2>/dev/null || true)"
  case "$RMEM_NOW" in
    ''|*[!0-9]*)
      say "net.core.rmem_max cannot be read here (no sysctl?): TFPS wants it at $RMEM_WANTED or more" ;;
    *)
      if [ "$RMEM_NOW" -lt "$RMEM_WANTED" ]; then
        printf '# Written by TFPS install.sh: room for bursts of SIP requests in its UDP receive buffer.\nnet.core.rmem_max = %s\n' \
               "$RMEM_WANTED" > "$BUILD/60-tfps.conf"
        mkdir -p "$(dirname "$SYSCTL_CONF")"
        install -m 0644 "$BUILD/60-tfps.conf" "$SYSCTL_CONF"
        if sysctl -q -w "net.core.rmem_max=$RMEM_WANTED" >/dev/null 2>&1; then
          say "net.core.rmem_max $RMEM_NOW -> $RMEM_WANTED (kept at boot by $SYSCTL_CONF)"
        else
          say "wrote $SYSCTL_CONF, but this kernel refused net.core.rmem_max = $RMEM_WANTED (a container?): set it on the host"
        fi
      fi ;;
  esac
fi

# -- 4. the binary, the man page, the bash completion --------------------------------------------
install -d -m 0755 "$PREFIX/usr/local/bin"
install -m 0755 "$BUILD/tfps.pyz" "$BIN.new"
mv -f "$BIN.new" "$BIN"
say "installed $BIN"
# mkdir, not install -d: an existing share directory keeps its mode (Debian's is 2775 root:staff).
mkdir -p "$(dirname "$MAN_PAGE")" "$(dirname "$COMPLETION")"
install -m 0644 "$BUILD/tfps.1" "$MAN_PAGE.new"
mv -f "$MAN_PAGE.new" "$MAN_PAGE"
install -m 0644 "$BUILD/tfps.bash-completion" "$COMPLETION.new"
mv -f "$COMPLETION.new" "$COMPLETION"
say "installed $MAN_PAGE and $COMPLETION"

# The account tfps and the ownership of its files: only for an install under / with systemd.
# --prefix touches nothing outside DIR (the unit it writes says what to do to run it).
SYSTEM_USER=0
if [ "$SYSTEMD" = 1 ] && [ -z "$PREFIX" ]; then
  SYSTEM_USER=1
fi

# -- 5. the system user -----------------------------------------------------------------------------
if [ "$SYSTEM_USER" = 1 ]; then
  if ! id -u tfps >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir "$STATE_DIR" \
            --shell /usr/sbin/nologin --comment "TFPS fraud prevention" tfps
    say "created system user tfps"
  fi
fi

# -- 6. the configuration ---------------------------------------------------------------------------
install -d -m 0755 "$CONF_DIR"
if [ -e "$CONF" ]; then
  say "keeping existing $CONF"
  # It may hold the database password and API keys: never readable by other users, whatever
  # mode an editor or an older install left it with.
  OLD_MODE="$(stat -L -c %a "$CONF")"
  if [ "$OLD_MODE" != 640 ]; then
    chmod 0640 "$CONF"
    say "$CONF: mode $OLD_MODE -> 0640"
  fi
else
  # The documented example, with the database and the call log spool under the state directory
  # (the one place the unit may write, whichever database the url names later).
  sed -e '/^\[database\]/,/^\[/ s|^url *=.*$|url = '"$DB_URL"'|' \
      -e '/^\[database\]/,/^\[/ s|^spool *=.*$|spool = '"$STATE_DIR/tfps-spool.jsonl"'|' "$SRC/tfps.conf" > "$CONF.new"
  grep -qx "url = $DB_URL" "$CONF.new" || die "could not set [database] url in $CONF"
  grep -qx "spool = $STATE_DIR/tfps-spool.jsonl" "$CONF.new" || die "could not set [database] spool in $CONF"
  chmod 0640 "$CONF.new"
  mv -f "$CONF.new" "$CONF"
  say "wrote $CONF"
fi
if [ "$SYSTEM_USER" = 1 ]; then
  chown root:tfps "$CONF"
fi

# -- 7. the state directory and the database --------------------------------------------------------
install -d -m 0700 "$STATE_DIR"
chmod 0700 "$STATE_DIR"
"$BIN" initdb -c "$CONF" || die "initdb failed: check [database] url in $CONF, then run install.sh again"
if [ "$SYSTEM_USER" = 1 ]; then
  chown -R tfps:tfps "$STATE_DIR"
fi

# -- 8. systemd ---------------------------------------------------------------------------------------
if [ "$SYSTEMD" = 1 ]; then
  install -d -m 0755 "$UNIT_DIR"
  unit_text > "$UNIT.new"
  chmod 0644 "$UNIT.new"
  mv -f "$UNIT.new" "$UNIT"
  say "wrote $UNIT"
  if [ -n "$PREFIX" ]; then
    say "not enabling a unit under --prefix. It runs TFPS as the user tfps, which --prefix does not"
    say "create; to use it:"
    say "  id -u tfps || useradd --system --user-group --no-create-home --home-dir $STATE_DIR --shell /usr/sbin/nologin tfps"
    say "  chown root:tfps $CONF && chown -R tfps:tfps $STATE_DIR"
    say "  systemctl enable --now $UNIT"
  elif ! command -v systemctl >/dev/null; then
    say "systemctl not found: start TFPS with: $BIN serve -c $CONF"
  elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet tfps.service
    systemctl restart tfps.service
    say "tfps.service enabled and (re)started; logs: journalctl -u tfps"
  else
    systemctl enable --quiet tfps.service || true
    say "systemd is not running here; tfps.service is enabled for the next boot"
  fi
fi

say "done. Check the configuration with: $BIN config check -c $CONF"
