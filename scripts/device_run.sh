#!/usr/bin/env bash
# Runs on the GPU machine from the repository root, with .qdev carried (see
# scripts/train_scratch_device.py). MODE=smoke for a ~1 minute check of install, GPU, data and outputs.
#   OUT=... MODE=full TRAIN_BUDGET=280 BENCH_BUDGET=90 bash .qdev/code/scripts/device_run.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .qdev/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:.qdev/code KERAS_BACKEND=jax KERAS_HOME=/tmp/keras PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
SCRIPT=.qdev/code/scripts/train_scratch_device.py
MODE=${MODE:-smoke}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
if [ "$MODE" = smoke ]; then
  python3 $SCRIPT bench-inception --out "$OUT" --policies mixed_bfloat16 --batch 16 --steps 3 --size 75 \
    ${SMOKE_BENCH_ARGS:-} > "$OUT/bench.log" 2>&1 &
  bench=$!
  python3 $SCRIPT train --pack .qdev/data/trainval.npz --out "$OUT" --variant robust --budget 25 --epochs 3 \
    --workers 8 --verbose 2 ${SMOKE_ARGS:-}
  wait $bench; cat "$OUT/bench.log"
  (cd "$OUT" && tar czf logs.tar.gz --remove-files *.json *.md *.log) ; ls -la "$OUT"; exit 0
fi
timeout 200 python3 $SCRIPT bench-inception --out "$OUT" --budget "${BENCH_BUDGET:-90}" --batch "${BENCH_BATCH:-256}" --steps 15 2>&1 | tee "$OUT/bench.log"
pids=()
for v in ${VARIANTS:-robust nodegrade nomix}; do
  python3 $SCRIPT train --pack .qdev/data/trainval.npz --out "$OUT" --variant "$v" \
    --budget "${TRAIN_BUDGET:-280}" --workers 5 > "$OUT/$v.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
tail -n 3 "$OUT"/*.log
# At most 8 files come back: the weights, and everything else in one archive.
(cd "$OUT" && tar czf logs.tar.gz --remove-files *.json *.md *.log); ls -la "$OUT"
