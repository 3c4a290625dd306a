#!/usr/bin/env bash
# Export a checkpoint as a Paddle inference model (model.json + model.pdiparams + infer_cfg.yml)
# and check it with the Python predictor on one image.
#
#   WEIGHTS=output/retinanet_ghm_r50_fpn_1x_coco/model_final bash scripts/export.sh
#   CONFIG=configs/demo.yml WEIGHTS=demo_output/demo/train/model_final IMAGE=demo_data/val/000000.jpg bash scripts/export.sh
#
# The predictor (ppdet_ghm.engine.predictor) runs on CPU with oneDNN (compat.inference_config);
# the export holds no nearest_interp op, which Paddle 3.3.1's oneDNN predictor cannot run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CONFIG="${CONFIG:-$ROOT/configs/retinanet_ghm_r50_fpn_1x_coco.yml}"
WEIGHTS="${WEIGHTS:?set WEIGHTS to a .pdparams path (suffix optional)}"
OUT="${OUT:-output/export}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m ppdet_ghm export -c "$CONFIG" --weights "$WEIGHTS" --output_dir "$OUT" "$@"
if [[ -n "${IMAGE:-}" ]]; then
  "$PY" -m ppdet_ghm infer --model_dir "$OUT" --infer_img "$IMAGE" --output_dir "$OUT/check"
fi
