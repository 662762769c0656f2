#!/usr/bin/env bash
# Re-freezes requirements/constraints.txt from the current .venv (after changing setup.py's
# requirements and installing them). Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The full resolved set for Python 3.10 (TFX 1.16.0, TF 2.16.2, tf_keras, Horovod 0.28.1), frozen from a"
  echo "# working venv. scripts/setup.sh installs from it; regenerate with scripts/lock.sh after changing setup.py."
  .venv/bin/pip freeze --exclude-editable | grep -v '^hrnet-tfx'
} > requirements/constraints.txt
echo "wrote requirements/constraints.txt ($(grep -vc '^#' requirements/constraints.txt) pins)"
