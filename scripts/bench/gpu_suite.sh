#!/usr/bin/env bash
# One pass of the CUDA checks and GPU timings, each step under its own time limit, results in OUT_DIR:
#   1. tests/models/test_devices.py: DPA-2 energy/forces/virial, frozen-feature MTS MD and the training loops
#      on cuda against the CPU (float64);
#   2. bench_md.py --device cuda: a bench model trained on the GPU, then conservative vs frozen-feature MTS
#      (speed in wall time on the GPU, drift), 192 and 1,536 atoms;
#   3. python -m lam.pretrain +experiment=demo on the GPU (Lightning, accelerator=gpu), a short run;
#   4. bench_model.py --device cuda: model speed and peak GPU memory (small, medium, student; 192 and 1,536 atoms).
# Usage: bash scripts/bench/gpu_suite.sh OUT_DIR   (PYTHON=python3 by default; lam importable from the repo root)
# A dry run of the same steps on the CPU: DEVICE=cpu ACCELERATOR=cpu TRAIN_STEPS=20 DISTILL_STEPS=20 \
#   MD_ARGS='--fs 40 --fs-big 4' MODEL_ARGS='--md-steps 2' PRETRAIN_STEPS=4 bash scripts/bench/gpu_suite.sh /tmp/dry
set -u
OUT_DIR=${1:?usage: gpu_suite.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
step() {  # step NAME SECONDS CMD...: run CMD with a time limit; its output goes to OUT_DIR/suite.log when it ends
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  { echo "== $name: exit $rc after $((SECONDS - t0)) s (limit $limit s)"; cat "$OUT_DIR/$name.log"; } >>"$OUT_DIR/suite.log"
  rm -f "$OUT_DIR/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, lightning, torch_geometric as g; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', lightning.__version__, 'pyg', g.__version__)"
} >"$OUT_DIR/suite.log" 2>&1
step tests "${T_TESTS:-150}" $PY -m pytest -q -p no:cacheprovider tests/models/test_devices.py
step md "${T_MD:-300}" $PY scripts/bench/bench_md.py --device "${DEVICE:-cuda}" --sizes 1 2 --head-kind energy \
  --head-hidden 96 --head-vectors 12 --head-basis 24 --consistency 100 --train-steps "${TRAIN_STEPS:-1500}" \
  --distill-steps "${DISTILL_STEPS:-6000}" --skip-direct --direct-dtype '' --coarse-baseline \
  --frozen-runs 2:0.5,4:0.5,8:0.5 --cache "$OUT_DIR/bench_model" --json "$OUT_DIR/md.json" ${MD_ARGS:-}
step pretrain "${T_PRETRAIN:-120}" $PY -m lam.pretrain +experiment=demo trainer.accelerator="${ACCELERATOR:-gpu}" trainer.devices=1 \
  trainer.max_steps="${PRETRAIN_STEPS:-300}" trainer.val_check_interval=150 logger=csv output_dir=/tmp/gpu_suite_pretrain
step model "${T_MODEL:-120}" $PY scripts/bench/bench_model.py --device "${DEVICE:-cuda}" --sizes 192 1536 \
  --presets small medium student --dtypes float32 --repeats 5 --no-deepmd --json "$OUT_DIR/model.json" ${MODEL_ARGS:-}
grep -h "^== \|PASS\|FAIL\|passed\|failed\|Error" "$OUT_DIR/suite.log"
