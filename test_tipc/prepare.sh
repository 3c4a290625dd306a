#!/usr/bin/env bash
# TIPC data for ppdet-ghm: generated, not downloaded (PaddleDetection's prepare.sh downloads a
# COCO subset; the lite chain here uses the deterministic shapes set of ppdet_ghm.data).
#
#   bash test_tipc/prepare.sh test_tipc/configs/retinanet_ghm/train_infer_python.txt lite_train_lite_infer
#
# Writes test_tipc/data/lite/{train,val}/*.jpg and annotations/instances_{train,val}.json (4 train
# and 2 val images of 256 px: the dataset that test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml
# reads). The interpreter is the config's `python:` value as found on PATH (activate .venv first).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: bash $0 CONFIG_TXT MODE   (MODE: lite_train_lite_infer)" >&2
    exit 2
fi
FILENAME=$(realpath "$1")
MODE=$2
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source test_tipc/common_func.sh

python=""
while IFS= read -r line; do
    line=${line%$'\r'}
    if [ "$(func_parser_key "${line}")" = "python" ]; then
        python=$(func_parser_value "${line}")
        break
    fi
done <"${FILENAME}"
if [ -z "${python}" ]; then
    echo "${FILENAME}: no 'python:' line" >&2
    exit 2
fi

case ${MODE} in
    lite_train_lite_infer)
        rm -rf test_tipc/data/lite
        ${python} -m ppdet_ghm make-demo-data --out test_tipc/data/lite --num-train 4 --num-val 2 --seed 0
        ;;
    lite_train_whole_infer | whole_train_whole_infer | whole_infer)
        echo "MODE ${MODE} needs COCO 2017 under dataset/coco (train2017/, val2017/, annotations/):" \
            "download it from https://cocodataset.org; this chain provides lite_train_lite_infer only" >&2
        exit 2
        ;;
    *)
        echo "unknown MODE '${MODE}' (expected lite_train_lite_infer)" >&2
        exit 2
        ;;
esac
