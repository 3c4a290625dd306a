"""Step 13, chance or cause: every run of one setting that differs only by rounding, both sides.

Two runs of step 13 that start one float32 rounding apart end up a few per cent apart (training
amplifies rounding), so one pair of runs cannot say whether ours sits systematically above or
below mmdet. This gathers, for one setting (loss, optimizer, seed, data), every run of both sides
that differs from the plain run by its start's rounding only:

* the plain float32 run (no tag),
* its float64 twin (``--dtype float64``: roundings of ~1e-16, except where a framework casts to
  float32 itself: mmdet's ``bbox2delta``),
* perturbed starts (``--perturb-init``, runs tagged ``perturb...``), in either dtype,

and reports for each run the mean loss over the second half and the final AP, per side their mean
and spread, the difference of the side means with an exact permutation test (is the split into
ours and mmdet special among all splits of these runs into two groups of the same sizes?), the
largest difference of the smoothed loss curves (step 13's 5 % criterion) over every pair of runs,
grouped as mmdet / mmdet, ours / ours and ours / mmdet, and for each ours / mmdet pair of the same
start the first iteration at which their losses differ by more than 1e-6, 1e-3 and 1e-2 relative
(a float64 pair should part later than a float32 one, if rounding is all that parts them). One
PNG shows the smoothed curves.

    python -m align.step13_spread --loss focal --seed 0 \
        --runs output/step13 output/step13_floor output/step13_f64 --out output/step13_spread

Reads logs and detection files only (numpy, pycocotools, matplotlib; no paddle, no torch).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import sys

import numpy as np

from align import step13_train, train_data
from align.common import replaced_atomically

SIDES, SIDE_NAMES = step13_train.SIDES, step13_train.SIDE_NAMES
LOSS_KEYS = ("loss", "loss_cls", "loss_bbox")
PART_THRESHOLDS = (1e-6, 1e-3, 1e-2)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loss", choices=("ghm", "focal"), default="focal")
    parser.add_argument("--optim", choices=tuple(train_data.OPTIMS), default="adamw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--runs", nargs="+", required=True, help="folders holding the runs' logs")
    parser.add_argument("--out", default="output/step13_spread")
    parser.add_argument("--results", default=None, help="also copy the JSON and PNG here")
    step13_train.add_data_arguments(parser)
    return parser


def run_pattern(base: str) -> re.Pattern:
    """File names of the runs of ``base`` (a :func:`train_data.run_name`) that differ from it by
    the start's rounding only: ``<base>[_float64][_perturb...]_<side>.npy``."""
    return re.compile(
        rf"^{re.escape(base)}(?P<f64>_float64)?(?:_(?P<tag>perturb[^_]*))?_(?P<side>torch|paddle)"
        r"\.npy$"
    )


def find_runs(folders: list[str], base: str) -> list[dict]:
    """Every matching log in ``folders``: dicts with ``side``, ``start`` (``float32`` /
    ``float64``, then ``+tag``), ``path`` and ``dets`` (the detections file, or None). A start
    found twice for one side (two folders) is an error: which one to use is the caller's choice."""
    pattern = run_pattern(base)
    runs, seen = [], {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--runs {folder!r}: no such folder")
        for name in sorted(os.listdir(folder)):
            m = pattern.match(name)
            if not m:
                continue
            start = "float64" if m["f64"] else "float32"
            if m["tag"]:
                start += f"+{m['tag']}"
            key = (m["side"], start)
            path = os.path.join(folder, name)
            if key in seen:
                raise ValueError(f"{m['side']} run {start!r} found twice: {seen[key]} and {path}")
            seen[key] = path
            dets = path[: -len(".npy")] + "_dets.json"
            runs.append(
                {
                    "side": m["side"],
                    "start": start,
                    "path": path,
                    "dets": dets if os.path.isfile(dets) else None,
                }
            )
    return runs


def second_half_means(log: dict) -> dict[str, float]:
    """Mean of each loss over the second half of the run (iterations ``n // 2`` to ``n - 1``)."""
    n = len(log["loss"])
    return {k: float(np.mean(np.asarray(log[k][n // 2 :], np.float64))) for k in LOSS_KEYS}


def first_parting(a, b, thresholds=PART_THRESHOLDS) -> dict[str, int | None]:
    """First iteration at which ``|a - b| / |b|`` exceeds each threshold (None: never)."""
    rel = step13_train.rel_diff(a[: len(b)], b[: len(a)])
    out = {}
    for t in thresholds:
        above = np.flatnonzero(rel > t)
        out[f"{t:g}"] = int(above[0]) if above.size else None
    return out


def permutation_test(ours: list[float], mmdet: list[float]) -> dict:
    """Exact two-sided permutation test of ``mean(ours) - mean(mmdet)``: the share of all splits
    of the pooled values into groups of the same sizes whose difference of means is at least as
    large in magnitude (the observed split included, so never below ``1 / #splits``)."""
    pooled = np.asarray(list(ours) + list(mmdet), np.float64)
    n, k = len(pooled), len(ours)
    observed = float(np.mean(ours) - np.mean(mmdet))
    total, extreme = 0, 0
    for idx in itertools.combinations(range(n), k):
        mask = np.zeros(n, bool)
        mask[list(idx)] = True
        diff = pooled[mask].mean() - pooled[~mask].mean()
        total += 1
        extreme += abs(diff) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    return {"difference": observed, "p_value": extreme / total, "splits": total}


def smoothed_pairs(logs: dict) -> dict[str, dict]:
    """Largest relative difference of the smoothed losses (:func:`step13_train.smooth`) over
    every pair of runs, grouped by the pair's sides (``mmdet/mmdet``, ``ours/ours``,
    ``ours/mmdet``, where mmdet's run is the reference): each group's pairs and their maximum."""
    groups: dict[str, dict] = {}
    for (sa, a), (sb, b) in itertools.combinations(
        sorted(logs, key=lambda k: (k[0] == "torch", k)), 2
    ):
        diff = step13_train.rel_diff(
            step13_train.smooth(logs[sa, a]["loss"]), step13_train.smooth(logs[sb, b]["loss"])
        ).max()
        group = groups.setdefault(f"{SIDE_NAMES[sa]}/{SIDE_NAMES[sb]}", {"pairs": {}, "max": 0.0})
        group["pairs"][f"{a} / {b}"] = float(diff)
        group["max"] = max(group["max"], float(diff))
    return groups


def spread(args) -> dict:
    """Every run of the setting, per side and together; writes JSON and PNG to ``--out``."""
    base = train_data.run_name(args.loss, args.optim, args.seed, args.iters, args.data_kind)
    runs = find_runs(args.runs, base)
    if not runs:
        raise FileNotFoundError(f"no run of {base} in {', '.join(args.runs)}")
    ann = step13_train.val_annotations(args)
    logs, digest = {}, None
    for run in runs:
        log = np.load(run["path"], allow_pickle=True).item()
        if digest is None:
            digest = log["meta.data_sha256"]
        elif not np.array_equal(log["meta.data_sha256"], digest):
            raise ValueError(f"{run['path']} was trained on other data than {runs[0]['path']}")
        if len(log["loss"]) != args.iters:
            raise ValueError(f"{run['path']}: {len(log['loss'])} iterations, not {args.iters}")
        logs[run["side"], run["start"]] = log
        run["second_half"] = second_half_means(log)
        run["AP"] = step13_train.coco_scores(ann, run["dets"])["AP"] if run["dets"] else None

    out = {"setting": base, "runs": runs, "sides": {}, "pairs": {}}
    losses = {side: [r["second_half"]["loss"] for r in runs if r["side"] == side] for side in SIDES}
    aps = {
        side: [r["AP"] for r in runs if r["side"] == side and r["AP"] is not None] for side in SIDES
    }
    for side in SIDES:
        out["sides"][side] = {
            "runs": len(losses[side]),
            "loss_mean": float(np.mean(losses[side])) if losses[side] else None,
            "loss_sd": float(np.std(losses[side], ddof=1)) if len(losses[side]) > 1 else None,
            "AP_mean": float(np.mean(aps[side])) if aps[side] else None,
            "AP_sd": float(np.std(aps[side], ddof=1)) if len(aps[side]) > 1 else None,
        }
    if losses["paddle"] and losses["torch"]:
        test = permutation_test(losses["paddle"], losses["torch"])
        test["relative"] = test["difference"] / float(np.mean(losses["torch"]))
        out["loss_test"] = test
        if aps["paddle"] and aps["torch"]:
            out["AP_test"] = permutation_test(aps["paddle"], aps["torch"])
    out["smoothed_pairs"] = smoothed_pairs(logs)
    for side, start in sorted(logs):
        if side == "paddle" and ("torch", start) in logs:
            paddle_log, torch_log = logs["paddle", start], logs["torch", start]
            out["pairs"][start] = {
                "first_parting": first_parting(paddle_log["loss"], torch_log["loss"]),
                "second_half_shift": step13_train.second_half_shift(
                    paddle_log["loss"], torch_log["loss"]
                ),
            }
    print(format_spread(out))
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{base}_spread.json")
    with replaced_atomically(json_path) as tmp, open(tmp, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    png = os.path.join(args.out, f"{base}_spread.png")
    plot(logs, png, base)
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        for path in (json_path, png):
            shutil.copy(path, args.results)
    return out


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def format_spread(out: dict) -> str:
    lines = [f"## {out['setting']}: runs that differ by rounding only", ""]
    lines += [
        "| side | start | second-half mean loss | cls | bbox | AP |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in sorted(out["runs"], key=lambda r: (r["side"], r["start"])):
        h = r["second_half"]
        lines.append(
            f"| {SIDE_NAMES[r['side']]} | {r['start']} | {h['loss']:.4f} | {h['loss_cls']:.4f} "
            f"| {h['loss_bbox']:.4f} | {_fmt(r['AP'], '.1f', 100)} |"
        )
    lines.append("")
    for side in SIDES:
        s = out["sides"][side]
        lines.append(
            f"{SIDE_NAMES[side]}: {s['runs']} runs, second-half loss {_fmt(s['loss_mean'], '.4f')} "
            f"(sd {_fmt(s['loss_sd'], '.4f')}), AP {_fmt(s['AP_mean'], '.1f', 100)} "
            f"(sd {_fmt(s['AP_sd'], '.1f', 100)})"
        )
    if "loss_test" in out:
        t = out["loss_test"]
        lines.append(
            f"ours - mmdet, second-half loss: {100 * t['relative']:+.1f} % of mmdet's mean, "
            f"permutation p = {t['p_value']:.2f} ({t['splits']} splits)"
        )
    if "AP_test" in out:
        t = out["AP_test"]
        lines.append(
            f"ours - mmdet, AP: {100 * t['difference']:+.1f}, permutation p = {t['p_value']:.2f} "
            f"({t['splits']} splits)"
        )
    for group, g in sorted(out["smoothed_pairs"].items()):
        values = ", ".join(f"{100 * v:.1f}" for v in g["pairs"].values())
        lines.append(
            f"smoothed loss, max rel diff, {group} pairs (%): {values}; max {100 * g['max']:.1f}"
        )
    for start, p in out["pairs"].items():
        parts = ", ".join(
            f"> {k}: {'never' if v is None else f'it. {v}'}" for k, v in p["first_parting"].items()
        )
        lines.append(
            f"pair {start}: ours vs mmdet parts {parts}; second half "
            f"{100 * p['second_half_shift']:+.1f} %"
        )
    return "\n".join(lines)


def plot(logs: dict, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smoothed = {key: step13_train.smooth(log["loss"]) for key, log in logs.items()}
    mean = np.mean(list(smoothed.values()), axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colours = {"torch": plt.get_cmap("Blues"), "paddle": plt.get_cmap("Oranges")}
    for side in SIDES:
        starts = sorted(s for (sd, s) in logs if sd == side)
        for i, start in enumerate(starts):
            y = smoothed[side, start]
            colour = colours[side](0.45 + 0.5 * (i + 1) / (len(starts) + 1))
            label = f"{SIDE_NAMES[side]}, {start}"
            axes[0].plot(100 * (y / mean - 1), color=colour, label=label)
            n = len(y)
            axes[1].plot(np.arange(n // 2, n), y[n // 2 :], color=colour, label=label)
    axes[0].set_title(
        f"{step13_train.SMOOTH_WINDOW}-iteration mean loss / mean of all runs - 1 (%)"
    )
    axes[1].set_title(f"{step13_train.SMOOTH_WINDOW}-iteration mean loss, second half")
    for ax in axes:
        ax.set_xlabel("iteration")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    spread(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
