#!/usr/bin/env bash
# Lint, type-check and test p2pshare. Extra arguments go to pytest.
# Sets the project up first if .venv is missing, so it works on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/pytest "$@"
