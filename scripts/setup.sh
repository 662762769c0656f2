#!/usr/bin/env bash
# Sets up .venv (Python 3.10) with hrnet-tfx, its pinned dependencies and Horovod built from source.
# Idempotent: a second run with unchanged requirements returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  local c
  for c in "${PYTHON:-}" python3.10; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      command -v "$c"; return
    fi
  done
  # pyenv's shims may be missing from a non-interactive shell's PATH: look for its 3.10 directly.
  local root
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for c in "$root"/versions/3.10.*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10; do
    if [ -x "$c" ] && "$c" -c 'import sys' 2>/dev/null; then echo "$c"; return; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py=$(find_python310) || {
    echo "error: Python 3.10 not found (TFX 1.16 supports 3.9/3.10 only). Install it (e.g. 'pyenv install 3.10'," >&2
    echo "       or apt-get install python3.10 python3.10-venv) or set PYTHON=/path/to/python3.10." >&2
    exit 1
  }
  echo "==> creating .venv with $py"
  "$py" -m venv .venv
fi

stamp=.venv/.hrnet-tfx-setup
want=$(cat requirements/constraints.txt setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "==> .venv is up to date"
  exit 0
fi

pip=(.venv/bin/python -m pip --disable-pip-version-check)
echo "==> installing hrnet-tfx and the pinned dependencies (first run: a few minutes, ~3.5 GB)"
"${pip[@]}" install -q pip==26.3 setuptools==84.2.1 wheel==0.48.0
"${pip[@]}" install -q -c requirements/constraints.txt -e ".[dev,kfp]"

if ! .venv/bin/python -c 'import horovod.tensorflow' 2>/dev/null; then
  echo "==> building Horovod 0.28.1 from source with Gloo (about 6 minutes on 2 cores)"
  command -v cmake >/dev/null 2>&1 || "${pip[@]}" install -q -c requirements/constraints.txt cmake
  # --no-build-isolation: the build must see the installed TensorFlow. The -include flags let gcc >= 13
  # compile 0.28.1, which misses two standard includes; they change nothing for older compilers.
  # GPU machines: export HOROVOD_GPU_OPERATIONS=NCCL before running this script.
  PATH="$PWD/.venv/bin:$PATH" \
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI="${HOROVOD_WITHOUT_MPI:-1}" \
  HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  CXXFLAGS="${CXXFLAGS:-} -include stdexcept -include string" \
    "${pip[@]}" install -q --no-build-isolation --no-cache-dir -c requirements/constraints.txt horovod==0.28.1
fi
# Ask the built library itself. (Piping `horovodrun --check-build` into `grep -q` raced: grep exits at the
# first match, horovodrun's next write hits a closed pipe and exits 1, and pipefail failed the setup.)
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -W ignore -c 'import horovod.tensorflow as hvd, sys; sys.exit(0 if hvd.gloo_built() else 1)' ||
  { echo "error: Horovod was built without Gloo (horovod.tensorflow.gloo_built() is False); rebuild it:" >&2
    echo "       .venv/bin/pip uninstall -y horovod && bash scripts/setup.sh" >&2; exit 1; }

echo "$want" > "$stamp"
echo "==> .venv ready: $(.venv/bin/python --version), $(.venv/bin/pip --disable-pip-version-check list 2>/dev/null | grep -E '^(tfx|tensorflow|horovod) ' | tr -s ' ' | paste -sd, -)"
