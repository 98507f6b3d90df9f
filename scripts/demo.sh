#!/usr/bin/env bash
# Set up .venv (if needed) and run the HRMM demo on a generated synthetic cohort:
# generate -> extract radiomics -> train -> predict one held-out lesion.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# --overwrite: a second run replaces the previous demo output (never any user data: the demo
# folder holds only what the demo itself generated)
exec .venv/bin/hrmm demo --out "${DEMO_OUT:-demo_output}" --overwrite "$@"
