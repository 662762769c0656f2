#!/usr/bin/env bash
# Sets up .venv if needed, then runs the built-in demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
.venv/bin/hrnet-tfx models list
.venv/bin/hrnet-tfx models summary hrnet_w18
