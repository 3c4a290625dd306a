#!/usr/bin/env bash
# Detect objects in every image of a folder: images with boxes, class names and scores drawn, and
# detections.json, in OUT.
#
#   IMAGES=my_photos/ WEIGHTS=output/retinanet_ghm_r50_fpn_1x_coco/model_final bash scripts/infer_folder.sh
#   # with the demo model:
#   CONFIG=configs/demo.yml IMAGES=demo_data/val WEIGHTS=demo_output/demo/train/model_final bash scripts/infer_folder.sh
#   # with an exported model (Python predictor, no config needed):
#   MODEL_DIR=output/export IMAGES=my_photos/ bash scripts/infer_folder.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
IMAGES="${IMAGES:?set IMAGES to an image folder}"
OUT="${OUT:-output/infer}"
THRESHOLD="${THRESHOLD:-0.5}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${MODEL_DIR:-}" ]]; then
  "$PY" -m ppdet_ghm infer --model_dir "$MODEL_DIR" --infer_dir "$IMAGES" \
    --output_dir "$OUT" --draw_threshold "$THRESHOLD" "$@"
else
  CONFIG="${CONFIG:-$ROOT/configs/retinanet_ghm_r50_fpn_1x_coco.yml}"
  WEIGHTS="${WEIGHTS:?set WEIGHTS (or MODEL_DIR for an exported model)}"
  "$PY" -m ppdet_ghm infer -c "$CONFIG" --weights "$WEIGHTS" --infer_dir "$IMAGES" \
    --output_dir "$OUT" --draw_threshold "$THRESHOLD" "$@"
fi
