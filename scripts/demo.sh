#!/usr/bin/env bash
# The two-command demo: sets up .venv if needed, makes a small synthetic dataset, runs the whole TFX
# pipeline (ImageExampleGen -> HorovodTrainer -> Evaluator -> Pusher) through the real tfx CLI with the
# local engine on the tiny network, serves the pushed model and sends one prediction.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 PYTHONWARNINGS=ignore::FutureWarning
bin=.venv/bin
out="$PWD/outputs"
export HRNET_TFX_PRESET=demo
export HRNET_TFX_OVERRIDES="input_base=$out/sample root=$out/pipeline serving_base=$out/serving"

echo "==> [1/4] sample dataset in $out/sample"
[ -d "$out/sample" ] || "$bin/hrnet-tfx" data make-sample "$out/sample" --classes 4

echo "==> [2/4] pipeline through the tfx CLI (local engine); progress below"
# Read the whole list before matching: `tfx ... | grep -q` races under pipefail (grep exits at the first match).
pipelines=$("$bin/tfx" pipeline list --engine local 2>/dev/null || true)
if grep -qx hrnet-tfx-demo <<<"$pipelines"; then action=update; else action=create; fi
"$bin/tfx" pipeline "$action" --engine local --pipeline_path hrnet_tfx/pipeline/local_runner.py
"$bin/tfx" run create --engine local --pipeline_name hrnet-tfx-demo

echo "==> [3/4] serving $out/serving and asking for one prediction"
"$bin/hrnet-tfx" serve "$out/serving" --model-name hrnet --host 127.0.0.1 --grpc-port 8500 --rest-port 8501 \
  > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
image=$(find "$out/sample/val" -name '*.JPEG' | sort | sed -n 1p)
for _ in $(seq 120); do
  "$bin/hrnet-tfx" predict --server 127.0.0.1:8500 "$image" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$out/serve.log"; exit 1; }
  sleep 1
done

echo "==> [4/4] where everything is"
"$bin/python" -m hrnet_tfx.pipeline.summary "$out/pipeline" "$out/serving" "$out/pipeline/metadata.sqlite"
