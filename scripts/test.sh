#!/usr/bin/env bash
# Sets up .venv if needed, then runs the test suite: the fast tier and the end-to-end tier.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not e2e and not large"` (fast tier only; a
# command-line -m replaces pytest.ini's `-m "not large"`) or `-m large`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest --timeout=1800 "$@"
