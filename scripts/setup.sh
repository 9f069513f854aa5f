#!/usr/bin/env bash
# Install everything p2pshare needs, from this repository's own files:
# the system packages py-libp2p's build needs (gcc, GMP headers for fastecdsa,
# Python headers), iproute2 for the tests, then a virtualenv in .venv with
# p2pshare and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "p2pshare needs Python 3.11 or newer; found $("$PY" --version)" >&2
    exit 1
}

missing=()
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
dpkg -s libgmp-dev >/dev/null 2>&1 || missing+=(libgmp-dev)
# `ip netns` for the mDNS test, which runs two daemons in network namespaces.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# iptables for bench/natlab.py, which puts two home networks behind NAT routers.
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
"$PY" - <<'PYEOF' || missing+=(python3-dev python3-venv)
import os, sys, sysconfig
ok = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
try:
    import ensurepip  # noqa: F401
except ImportError:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
if ((${#missing[@]})); then
    echo "installing system packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# libp2p 0.8.1 pulls in trio-typing, whose trio-stubs describe a trio from 2022 and,
# being a stub package, hide the inline types of the trio we run (mypy would reject
# trio.TaskStatus and more). The runtime module trio_typing stays; only the stale
# stubs go.
rm -rf .venv/lib/python3*/site-packages/trio-stubs
echo "p2pshare installed in .venv: run .venv/bin/p2pshare --help"
