#!/usr/bin/env bash
# One step-13 run pair per seed: mmdet, then ours from mmdet's initial weights, then the
# comparison (JSON + PNG into align/results). Usage:
#
#   bash align/step13_chain.sh LOSS OUT "SEEDS" [step13_train options...]
#   bash align/step13_chain.sh ghm output/step13 "0 1"
#   bash align/step13_chain.sh focal output/step13_marks "0 1" --data-kind marks --image-size 192
#
# Each side trains on one thread; two chains (one per loss) fill two cores. Needs make setup-torch.
set -euo pipefail
loss=$1
out=$2
seeds=$3
shift 3
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for seed in $seeds; do
    for side in torch paddle; do
        "$python" -m align.step13_train --side "$side" --loss "$loss" --seed "$seed" --out "$out" "$@" \
            >"$out/${loss}_s${seed}_${side}.log" 2>&1
    done
    "$python" -m align.step13_train --compare --loss "$loss" --seed "$seed" --out "$out" \
        --results align/results "$@" >"$out/${loss}_s${seed}_compare.log" 2>&1
done
