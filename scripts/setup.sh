#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv at the project root.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] .venv is up to date"
  exit 0
fi
# pip -q still prints a warning for each configured local index that lacks a package: hide those
pipq() {
  local log rc=0
  log=$(mktemp)
  pip install -q "$@" >"$log" 2>&1 || rc=$?
  grep -v "is neither a file nor a directory" "$log" || true
  rm -f "$log"
  return "$rc"
}
echo "[setup] installing PyTorch (pinned CPU build first, so nothing pulls CUDA packages)"
pipq "torch==2.13.0"
echo "[setup] installing numpy, then pyradiomics 3.0.1 from source (PyPI's 3.1.0 sdist is broken)"
pipq numpy
pipq "pyradiomics==3.0.1" --no-build-isolation --no-binary pyradiomics
echo "[setup] installing the extension's libraries and test tools"
pipq -e ".[test]"
echo "$want" > "$stamp"
echo "[setup] done"
