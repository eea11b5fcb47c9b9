#!/usr/bin/env bash
# Cube's one test command: set up the machine, lint, type-check, run the tests.
#
# Usage: bash scripts/test.sh [pytest arguments...]
#   e.g. bash scripts/test.sh tests/unit -q          (the fast tests)
#        bash scripts/test.sh tests/unit/test_state.py -q
#        bash scripts/test.sh -m 'not docker'
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

echo "test: ruff check"
.venv/bin/ruff check src tests bench
echo "test: ruff format --check"
.venv/bin/ruff format --check src tests bench
echo "test: mypy"
.venv/bin/mypy
echo "test: pytest $*"
status=0
.venv/bin/pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "test: pytest collected no tests; that is a failure here" >&2
fi
exit "$status"
