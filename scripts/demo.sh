#!/usr/bin/env bash
# The embedded default: pretrain (3 heads, real DFT labels) → finetune (PBE head on liquid water) → distill
# (PBE head into a fast se_e2_a student). Everything is written under outputs/demo/. Rerunning resumes.
# Usage: bash scripts/demo.sh [OUTPUT_DIR [DISTILL_OVERRIDES...]], e.g. `bash scripts/demo.sh outputs/demo
# executor.max_workers=1` to run the distillation's tasks one at a time.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" WANDB_MODE="${WANDB_MODE:-offline}"
out="${1:-outputs/demo}"
echo "== 1/3 pretrain: python -m lam.pretrain +experiment=demo"
python -m lam.pretrain +experiment=demo output_dir="$out/pretrain" trainer.enable_progress_bar=false
echo "== 2/3 finetune: python -m lam.finetune +experiment=demo_finetune"
python -m lam.finetune +experiment=demo_finetune model.source="$out/pretrain/export" output_dir="$out/finetune" \
  trainer.enable_progress_bar=false
echo "== 3/3 distill: python -m lam.distill +experiment=demo"
python -m lam.distill +experiment=demo teacher.source="$out/pretrain/export" output_dir="$out/distill" "${@:2}"
echo "== done: pretrained $out/pretrain/export, finetuned $out/finetune/export, student $out/distill/student"
