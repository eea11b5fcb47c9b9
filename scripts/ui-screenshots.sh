#!/usr/bin/env bash
# Refresh the dashboard's screenshots in docs/img/ui/ (shown in README.md): the browser
# test that opens every page against a real `cube dev` saves one PNG per page.
#
# Usage: bash scripts/ui-screenshots.sh [pytest arguments...]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CUBE_UI_SCREENSHOTS="$PWD/docs/img/ui"
exec .venv/bin/pytest tests/e2e/test_ui.py -q -k test_every_page_renders "$@"
