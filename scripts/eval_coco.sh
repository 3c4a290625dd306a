#!/usr/bin/env bash
# COCO val2017 box evaluation of a trained or converted checkpoint: prints pycocotools' AP/AR
# table and per-class AP, writes OUT/bbox.json (detections) and OUT/metrics.json.
#
#   COCO=/data/coco WEIGHTS=output/retinanet_ghm_r50_fpn_1x_coco/model_final bash scripts/eval_coco.sh
#   # the authors' mmdet checkpoint, converted (see weights/README):
#   python -m ppdet_ghm convert weights/retinanet_ghm_r50_fpn_1x_coco_20200130-a437fda3.pth weights/retinanet_ghm_r50_fpn_1x_coco.pdparams
#   COCO=/data/coco WEIGHTS=weights/retinanet_ghm_r50_fpn_1x_coco bash scripts/eval_coco.sh
#
# A detections JSON alone (no model) is evaluated with:
#   python -m ppdet_ghm eval --json OUT/bbox.json --gt $COCO/annotations/instances_val2017.json
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
COCO="${COCO:-dataset/coco}"
WEIGHTS="${WEIGHTS:?set WEIGHTS to a .pdparams path (suffix optional)}"
CONFIG="${CONFIG:-$ROOT/configs/retinanet_ghm_r50_fpn_1x_coco.yml}"
OUT="${OUT:-output/eval_$(basename "${WEIGHTS%.pdparams}")}"
USE_GPU="${USE_GPU:-true}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m ppdet_ghm eval -c "$CONFIG" --weights "$WEIGHTS" --output_dir "$OUT" --progress \
  -o use_gpu="$USE_GPU" EvalDataset.dataset_dir="$COCO" "$@"
