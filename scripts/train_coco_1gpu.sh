#!/usr/bin/env bash
# RetinaNet-GHM R50-FPN 1x on COCO with one GPU (2 images per iteration).
#
#   COCO=/data/coco bash scripts/train_coco_1gpu.sh [extra ppdet-ghm train flags]
#
# COCO holds train2017/, val2017/, annotations/instances_{train,val}2017.json. The ImageNet
# ResNet-50 comes from torchvision's checkpoint, converted once (see weights/README):
#   python -m ppdet_ghm convert pretrained/resnet50-19c8e357.pth pretrained/resnet50_torchvision.pdparams --backbone-only
# Linear scaling rule: the reference lr 0.01 is for 16 images per iteration, so 1 GPU x 2 images
# uses 0.00125 (and 8x more iterations: the schedule is in epochs, so that is automatic).
# Expect about 37.0 box AP after 12 epochs (the paper / mmdet), several days on one V100-class GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
COCO="${COCO:-dataset/coco}"
PRETRAIN="${PRETRAIN:-pretrained/resnet50_torchvision.pdparams}"
CONFIG="${CONFIG:-$ROOT/configs/retinanet_ghm_r50_fpn_1x_coco.yml}"
OUT="${OUT:-output/retinanet_ghm_r50_fpn_1x_coco_1gpu}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m ppdet_ghm train -c "$CONFIG" --eval --output_dir "$OUT" \
  -o use_gpu=true \
     pretrain_weights="$PRETRAIN" \
     TrainReader.batch_size=2 \
     LearningRate.base_lr=0.00125 \
     TrainDataset.dataset_dir="$COCO" \
     EvalDataset.dataset_dir="$COCO" \
     TestDataset.dataset_dir="$COCO" \
  "$@"
# resume after an interruption: add  -r "$OUT/<last epoch>"  (e.g. -r "$OUT/5")
