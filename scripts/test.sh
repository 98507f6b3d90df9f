#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite (no Slicer application, no GPU needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest Testing "$@"
