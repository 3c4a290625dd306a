#!/usr/bin/env bash
# RetinaNet-GHM R50-FPN 1x on COCO with 8 GPUs x 2 images (the reference setting, lr 0.01),
# through Paddle's own launcher (one process per GPU, NCCL).
#
#   COCO=/data/coco bash scripts/train_coco_8gpu.sh [extra ppdet-ghm train flags]
#   GPUS=0,1,2,3 LR=0.005 bash scripts/train_coco_8gpu.sh   # 4 GPUs: lr 0.01 * 8 / 16
#
# Needs paddlepaddle-gpu (see README, Install) and the converted ImageNet ResNet-50 (see
# scripts/train_coco_1gpu.sh). Each rank keeps its own GHM histogram unless the losses' sync_stats
# is on (-o GHMRetinaHead.loss_cls.sync_stats=true GHMRetinaHead.loss_bbox.sync_stats=true).
# Checkpoints, train.log (rank 0) and the launcher's per-rank logs (log/workerlog.N) go to OUT/log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
COCO="${COCO:-dataset/coco}"
PRETRAIN="${PRETRAIN:-pretrained/resnet50_torchvision.pdparams}"
GPUS="${GPUS:-0,1,2,3,4,5,6,7}"
LR="${LR:-0.01}"
CONFIG="${CONFIG:-$ROOT/configs/retinanet_ghm_r50_fpn_1x_coco.yml}"
OUT="${OUT:-output/retinanet_ghm_r50_fpn_1x_coco}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m paddle.distributed.launch --gpus "$GPUS" --log_dir "$OUT/log" \
  "$ROOT/scripts/main.py" train -c "$CONFIG" --eval --output_dir "$OUT" \
  -o use_gpu=true \
     pretrain_weights="$PRETRAIN" \
     TrainReader.batch_size=2 \
     LearningRate.base_lr="$LR" \
     TrainDataset.dataset_dir="$COCO" \
     EvalDataset.dataset_dir="$COCO" \
     TestDataset.dataset_dir="$COCO" \
  "$@"
