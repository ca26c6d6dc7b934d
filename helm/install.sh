#!/bin/sh
# Install uprobe-exporter on a host (no Kubernetes), as root, from a clone of the repository:
#
#   helm/install.sh [PREFIX]        # PREFIX: the virtual environment, default /opt/uprobe-exporter
#
# 1. On Debian/Ubuntu, installs what the install needs with apt-get: the distribution's Python (>= 3.11:
#    Ubuntu 22.04's python3 is 3.10, so its python3.11 packages), python3-venv (stock Debian's python3
#    has neither pip nor ensurepip without it) and a C compiler with the Python headers (gcc,
#    python3-dev), which build the native hot path. Elsewhere it checks that they are there and says
#    which packages to install (README: Quick start).
# 2. Creates a virtual environment at PREFIX with the distribution's Python (PEP 668: a stock Debian
#    python3 refuses `pip install` outside one) and installs the package into it, native parts compiled.
# 3. Links PREFIX/bin/uprobe-exporter into /usr/local/bin, which is on root's PATH.
#
# Running it again upgrades the installation in place. To remove everything it installed:
#   rm -rf /opt/uprobe-exporter /usr/local/bin/uprobe-exporter
set -eu

PREFIX=${1:-/opt/uprobe-exporter}
BIN_LINK=/usr/local/bin/uprobe-exporter
SRC=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "install.sh: $*" >&2; }
die() { say "error: $*"; exit 2; }

[ -f "$SRC/pyproject.toml" ] || die "run me from a clone of uprobe_exporter ($SRC has no pyproject.toml)"
[ "$(id -u)" = 0 ] || die "run me as root (apt-get, $PREFIX and $BIN_LINK)"

# A Python >= 3.11 of the distribution: python3, or (Ubuntu 22.04) python3.11; PYTHON= overrides.
python_ok() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
pick_python() {
    for p in ${PYTHON:-} /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
        if python_ok "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # A fresh Ubuntu runs unattended-upgrades at boot, holding the dpkg lock for minutes: wait for it.
    apt() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
    apt update -qq
    install_pkgs() { say "apt-get install $*"; apt install -y -qq --no-install-recommends "$@" >/dev/null; }
    pick_python >/dev/null || install_pkgs python3
    pick_python >/dev/null || install_pkgs python3.11  # Ubuntu 22.04: python3 is 3.10; 3.11 is in universe
    if PY=$(pick_python); then
        v=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        install_pkgs "python$v-venv" "python$v-dev" gcc libc6-dev
    fi
fi

PY=$(pick_python) || die "no Python >= 3.11 found; install one (README: Quick start) or set PYTHON=/path/to/python3.x"
"$PY" -c 'import ensurepip, venv' 2>/dev/null || die "$PY has no venv/ensurepip module: install python3-venv (or your distribution's equivalent)"
INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
CC=$("$PY" -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')
if [ ! -f "$INCLUDE/Python.h" ]; then
    say "warning: $INCLUDE/Python.h is missing (python3-dev): installing without the native hot path"
elif ! command -v "$CC" >/dev/null 2>&1; then
    say "warning: no C compiler ($CC; gcc): installing without the native hot path"
fi

say "virtual environment $PREFIX ($PY $("$PY" -c 'import platform; print(platform.python_version())'))"
"$PY" -m venv "$PREFIX"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PREFIX/bin/python" -m pip install --quiet --upgrade "$SRC"
ln -sfn "$PREFIX/bin/uprobe-exporter" "$BIN_LINK"
say "installed $BIN_LINK -> $PREFIX/bin/uprobe-exporter"
"$BIN_LINK" --version >&2
