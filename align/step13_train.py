"""Step 13: training alignment: both frameworks train the same RetinaNet from the same start.

Same model (ResNet-18, 64-channel FPN with P6 from C5, 2-conv GN(8) head towers, the paper's
anchors / assigner / coder; align/configs/train_r18_{ghm,focal}.yml and
``align.train_torch.model_config``), same initial weights (mmdet's seeded ``init_weights()``,
saved as NumPy arrays by the torch side and converted for Paddle by ``ppdet_ghm.convert``), same
data (the demo's generated shapes set as fixed normalised arrays, ``align/train_data.py``), same
batches (seeded order, batch 8, no flip), same optimizer and learning rate of every iteration.
Losses: ``ghm`` (GHM-C + GHM-R) or ``focal`` (Focal + Smooth L1 / #pos). Optimizers: ``adamw``
(the demo's) or ``sgd`` (the reference's). Details in ``align/train_data.py``.

    python -m align.step13_train --prepare --data-root /tmp/step13       # once (imports paddle)
    python -m align.step13_train --side torch  --loss ghm --optim adamw --seed 0 --iters 600 --out DIR
    python -m align.step13_train --side paddle --loss ghm --optim adamw --seed 0 --iters 600 --out DIR
    python -m align.step13_train --compare     --loss ghm --optim adamw --seed 0 --iters 600 --out DIR \
        --results align/results
    python -m align.step13_train --summary     # the 2 x 2 over every run in align/results

Variants, each named by ``--tag``: ``--opt`` (our config), ``--warmup-iters``, label noise
(``--wrong-class`` / ``--missing-boxes``), a pretrained backbone (``--backbone-from`` a weights
file of ``--save-weights``), the paper's head (``--head-norm none``) and a perturbed start
(``--perturb-init``, compared within one framework by ``--noise-floor``).

Each side writes ``DIR/<run>_<side>.npy`` (reprod_log's format: ``np.save`` of a dict) with per
iteration ``loss``, ``loss_cls``, ``loss_bbox`` (sums over the 5 levels), ``lr``, ``grad_norm``
(before clipping), ``ghmc.acc_sum`` [iters, 30] and ``ghmr.acc_sum`` [iters, 10] (GHM), the
per-level losses of the first 10 iterations ``it{k}.loss_{cls,bbox}.P{3-7}``, two BN running
statistics after training, and ``DIR/<run>_<side>_dets.json`` (detections on the val split, COCO
results). The Paddle side reads the torch side's initial weights from DIR (``--init mmdet``).
``--compare`` (no paddle, no torch: pycocotools and matplotlib) scores both detection files with
the same COCOeval, prints the table, writes ``DIR/<run>_compare.json`` and ``DIR/<run>.png`` and,
with ``--results``, copies both to that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from align import train_data
from align.common import replaced_atomically

DEFAULT_DATA_ROOT = os.path.join(tempfile.gettempdir(), "ppdet_ghm_step13_data")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PREFIX_ITERS = 10
SMOOTH_WINDOW = 50
LOSSES = ("ghm", "focal")


def add_data_arguments(parser):
    """The generated set's options (:func:`data_args`), shared with ``align.step13_probe``."""
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    parser.add_argument("--num-train", type=int, default=800)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--data-seed", type=int, default=0, help="DemoDataSpec seed")
    parser.add_argument(
        "--data-kind",
        choices=("shapes", "marks"),
        default="shapes",
        help="the generated set (DemoDataSpec.kind): the demo's shapes, or marks (other classes "
        "and colours, mostly small objects)",
    )
    parser.add_argument(
        "--image-format", choices=("jpg", "png"), default="jpg", help="png: no libjpeg in the data"
    )


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--side", choices=("torch", "paddle"), help="train one side")
    mode.add_argument("--prepare", action="store_true", help="generate the data arrays")
    mode.add_argument("--compare", action="store_true", help="compare both sides' logs")
    mode.add_argument(
        "--scores",
        action="store_true",
        help="histograms of true and false detection scores of both losses and sides (PNG)",
    )
    mode.add_argument(
        "--ap",
        choices=("torch", "paddle"),
        help="COCO AP of one side's detections of the run (ablation runs have one side only)",
    )
    mode.add_argument(
        "--summary",
        action="store_true",
        help="the 2 x 2 over every run compared into --results: AP by loss, side and seed",
    )
    parser.add_argument("--loss", choices=LOSSES, default="ghm")
    parser.add_argument("--optim", choices=tuple(train_data.OPTIMS), default="adamw")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order seed")
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--out", default="output/step13", help="folder of logs and detections")
    parser.add_argument(
        "--ref", default=None, help="folder of the torch log to compare with (default --out)"
    )
    parser.add_argument(
        "--init",
        choices=("mmdet", "numpy"),
        default="mmdet",
        help="mmdet: torch's seeded init_weights() (the Paddle side reads the arrays the torch "
        "side saved in --out); numpy: align.train_data.numpy_init (same distributions, no torch)",
    )
    add_data_arguments(parser)
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip detections")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the side")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="float64: both models in double precision (the CI prefix: no float32 rounding to "
        "push a GHM sample across a bin edge)",
    )
    parser.add_argument(
        "--opt",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="our side only: overrides of align/configs/train_r18_<loss>.yml, for ablations (e.g. "
        "GHMRetinaHead.loss_bbox=BetaSmoothL1Loss GHMCLoss.momentum=0); name the run with --tag",
    )
    parser.add_argument(
        "--warmup-iters",
        type=int,
        default=None,
        help="both sides: linear warmup length in iterations (default: the optimizer's, 50); "
        "name the run with --tag",
    )
    parser.add_argument(
        "--backbone-from",
        default=None,
        metavar="NPZ",
        help="both sides: start the backbone (BN statistics included) from this weights file "
        "(mmdet names; a run's --save-weights), neck and head from the seeded init; needs --tag",
    )
    parser.add_argument(
        "--perturb-init",
        type=float,
        default=0.0,
        metavar="SCALE",
        help="both sides: multiply every initial weight by 1 + SCALE * N(0, 1) (seeded): a "
        "second run of one framework for --noise-floor; needs --tag",
    )
    parser.add_argument(
        "--wrong-class",
        type=float,
        default=0.0,
        metavar="P",
        help="both sides: give each training box another class with probability P (label "
        "noise, seeded by the data seed); needs --tag",
    )
    parser.add_argument(
        "--missing-boxes",
        type=float,
        default=0.0,
        metavar="P",
        help="both sides: drop each training box with probability P (unannotated objects); "
        "needs --tag",
    )
    parser.add_argument(
        "--head-norm",
        choices=("gn", "none"),
        default="gn",
        help="our side: the head towers with GroupNorm(8) (the demo's) or without (the paper's: "
        "conv with bias), from the same conv weights; none needs --tag",
    )
    parser.add_argument(
        "--save-weights",
        action="store_true",
        help="our side: also write the final weights, mmdet names (<run>_paddle_weights.npz), "
        "for --backbone-from",
    )
    mode.add_argument(
        "--noise-floor",
        action="store_true",
        help="compare two runs of one side (--floor-side): the untagged one in --ref (default "
        "--out) and the one named by --tag (e.g. --perturb-init 1e-7): how far one framework "
        "drifts from itself",
    )
    parser.add_argument("--floor-side", choices=("torch", "paddle"), default="torch")
    parser.add_argument("--tag", default="", help="appended to the run name (ablation runs)")
    parser.add_argument("--print-every", type=int, default=50)
    parser.add_argument("--results", default=None, help="--compare: also copy JSON + PNG here")
    return parser


def data_args(args) -> train_data.DataArgs:
    return train_data.DataArgs(
        args.num_train,
        args.num_val,
        args.image_size,
        args.data_seed,
        args.image_format,
        args.data_kind,
    )


def val_annotations(args) -> str:
    """COCO annotation file of the val split of the run's generated set."""
    folder = train_data.data_dir_for(args.data_root, data_args(args))
    return os.path.join(folder, "coco", "annotations", "instances_val.json")


def load_data(args) -> dict:
    """Both splits; the training annotations corrupted by ``--wrong-class`` / ``--missing-boxes``."""
    folder = train_data.data_dir_for(args.data_root, data_args(args))
    train = train_data.load(folder, "train")
    if args.wrong_class or args.missing_boxes:
        train = train_data.corrupt_annotations(
            train, args.wrong_class, args.missing_boxes, args.data_seed
        )
        n = train["noise"]
        print(
            f"label noise: {n['wrong_class']} of {n['of']} training boxes relabelled, "
            f"{n['dropped']} dropped",
            flush=True,
        )
    return {"train": train, "val": train_data.load(folder, "val")}


def check_tagged(args):
    """Runs that change the start or the data must carry a --tag: their files would otherwise
    overwrite the plain run's."""
    changed = [
        flag
        for flag, on in (
            ("--backbone-from", args.backbone_from),
            ("--perturb-init", args.perturb_init),
            ("--wrong-class", args.wrong_class),
            ("--missing-boxes", args.missing_boxes),
            ("--opt", args.opt),
            ("--warmup-iters", args.warmup_iters is not None),
            ("--head-norm none", args.head_norm == "none"),
        )
        if on
    ]
    if changed and not args.tag:
        raise SystemExit(f"{', '.join(changed)} change the run: name it with --tag")


def run_name(args) -> str:
    return train_data.run_name_of(args)


def log_file(folder: str, args, side: str) -> str:
    return os.path.join(folder, f"{run_name(args)}_{side}.npy")


def run_side(args, mutate=None) -> dict:
    """Train one side; returns and writes its log (``--out``)."""
    os.makedirs(args.out, exist_ok=True)
    data = load_data(args)
    start = time.time()
    if args.side == "torch":
        from align import train_torch

        log = train_torch.train(args, data, args.out)
    else:
        from align import train_paddle

        if args.init == "mmdet":
            path = os.path.join(args.ref or args.out, f"step13_init_mmdet_s{args.seed}.npz")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: run the torch side first")
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
        else:
            arrays = train_data.numpy_init(args.seed)
        arrays = train_data.start_arrays(arrays, args)
        log = train_paddle.train(args, data, args.out, arrays, mutate=mutate)
    log["meta.wall_s"] = np.array([time.time() - start])
    log["meta.iters"] = np.array([args.iters])
    log["meta.seed"] = np.array([args.seed])
    np.save(log_file(args.out, args, args.side), log)
    return log


# ----------------------------------------------------------------------------- comparison


def rel_diff(a, b, floor: float = 1e-12):
    """Element-wise ``|a - b| / max(|b|, floor)`` (``b`` the reference)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), floor)


def smooth(x, window: int = SMOOTH_WINDOW):
    """Trailing moving average over ``window`` iterations (shorter at the start)."""
    x = np.asarray(x, np.float64)
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def second_half_shift(a, b) -> float:
    """``mean(a) / mean(b) - 1`` over the second half of the run (signed; ``b`` the reference):
    a lasting offset between two loss curves, which the smoothed maximum does not tell from a
    passing swing."""
    n = min(len(a), len(b))
    return float(np.mean(np.asarray(a[n // 2 : n])) / np.mean(np.asarray(b[n // 2 : n])) - 1.0)


def prefix_diffs(torch_log: dict, paddle_log: dict, iters: int = PREFIX_ITERS) -> dict:
    """Max relative difference over the first ``iters`` iterations of each logged series."""
    out = {}
    n = min(iters, len(torch_log["loss"]), len(paddle_log["loss"]))
    for key in ("loss", "loss_cls", "loss_bbox", "lr", "grad_norm"):
        out[key] = float(rel_diff(paddle_log[key][:n], torch_log[key][:n]).max())
    for key in ("ghmc.acc_sum", "ghmr.acc_sum"):
        if key in torch_log and key in paddle_log:
            t, p = torch_log[key][:n], paddle_log[key][:n]
            out[key] = float((np.abs(p - t).max(axis=1) / np.abs(t).max(axis=1)).max())
    return out


def check_same_start(torch_log: dict, paddle_log: dict):
    for key in ("meta.weights_sha256", "meta.data_sha256"):
        if not np.array_equal(torch_log[key], paddle_log[key]):
            raise ValueError(f"the two logs were made from different {key.split('.')[1]}")


def coco_scores(annotation_file: str, dets_file: str) -> dict:
    """COCOeval bbox stats (AP .. ARl) of a detections file; all -1 if it is empty."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    with open(dets_file) as f:
        dets = json.load(f)
    if not dets:
        return dict.fromkeys(names, -1.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: float(v) for n, v in zip(names, ev.stats, strict=True)}


def compare(args) -> dict:
    """Table of both sides' runs, one PNG; returns the summary written as JSON."""
    ref = args.ref or args.out
    torch_log = np.load(log_file(ref, args, "torch"), allow_pickle=True).item()
    paddle_log = np.load(log_file(args.out, args, "paddle"), allow_pickle=True).item()
    check_same_start(torch_log, paddle_log)
    n = min(len(torch_log["loss"]), len(paddle_log["loss"]))
    summary = {
        "run": run_name(args),
        "iters": n,
        "first_iters_max_rel_diff": prefix_diffs(torch_log, paddle_log),
        "smoothed_max_rel_diff": {},
        "second_half_shift": {},
        "final_smoothed": {},
        "wall_s": {},
        "coco": {},
    }
    for key in ("loss", "loss_cls", "loss_bbox"):
        st, sp = smooth(torch_log[key][:n]), smooth(paddle_log[key][:n])
        summary["smoothed_max_rel_diff"][key] = float(rel_diff(sp, st).max())
        summary["second_half_shift"][key] = second_half_shift(paddle_log[key], torch_log[key])
        summary["final_smoothed"][key] = {"torch": float(st[-1]), "paddle": float(sp[-1])}
    for side, log, folder in (("torch", torch_log, ref), ("paddle", paddle_log, args.out)):
        summary["wall_s"][side] = {
            k.split(".")[1]: float(log[k][0])
            for k in ("meta.train_wall_s", "meta.eval_wall_s", "meta.wall_s")
            if k in log
        }
        dets = os.path.join(folder, f"{summary['run']}_{side}_dets.json")
        if os.path.isfile(dets):
            summary["coco"][side] = coco_scores(val_annotations(args), dets)
    print(format_summary(summary))
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, f"{summary['run']}_compare.json")
    with open(json_path, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    png = os.path.join(args.out, f"{summary['run']}.png")
    plot(torch_log, paddle_log, png, summary["run"])
    if args.results:
        os.makedirs(args.results, exist_ok=True)
        for path in (json_path, png):
            shutil.copy(path, args.results)
    return summary


def noise_floor(args) -> dict:
    """Two runs of one side (``--floor-side``) and setting, the plain one against the ``--tag``
    one (a perturbed start): the same first-10-iteration, smoothed and second-half differences as
    :func:`compare`, and both APs. This is how far one framework drifts from itself, the
    yardstick for ours against mmdet."""
    ref = args.ref or args.out
    side = args.floor_side
    tagged = np.load(log_file(args.out, args, side), allow_pickle=True).item()
    plain_args = argparse.Namespace(**{**vars(args), "tag": ""})
    plain = np.load(log_file(ref, plain_args, side), allow_pickle=True).item()
    n = min(len(plain["loss"]), len(tagged["loss"]))
    out = {
        "run": run_name(args),
        "side": side,
        "iters": n,
        "first_iters_max_rel_diff": prefix_diffs(plain, tagged),
        "smoothed_max_rel_diff": {},
        "second_half_shift": {},
        "coco": {},
    }
    for key in ("loss", "loss_cls", "loss_bbox"):
        out["smoothed_max_rel_diff"][key] = float(
            rel_diff(smooth(tagged[key][:n]), smooth(plain[key][:n])).max()
        )
        out["second_half_shift"][key] = second_half_shift(tagged[key], plain[key])
    ann = val_annotations(args)
    for name, folder, a in (("plain", ref, plain_args), ("tagged", args.out, args)):
        dets = os.path.join(folder, f"{run_name(a)}_{side}_dets.json")
        if os.path.isfile(dets):
            out["coco"][name] = coco_scores(ann, dets)
    lines = [f"## noise floor: {run_name(plain_args)} vs {out['run']} ({side}, {n} iterations)"]
    for key, value in out["first_iters_max_rel_diff"].items():
        sm = out["smoothed_max_rel_diff"].get(key)
        extra = "" if sm is None else f", smoothed {sm:.2e}"
        if key in out["second_half_shift"]:
            extra += f", second half {100 * out['second_half_shift'][key]:+.1f} %"
        lines.append(f"{key}: first 10 it. {value:.2e}{extra}")
    for name, c in out["coco"].items():
        lines.append(f"{name}: " + ", ".join(f"{k} {100 * c[k]:.1f}" for k in AP_KEYS))
    print("\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{out['run']}_{side}_noise_floor.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return out


def format_summary(s: dict) -> str:
    lines = [f"## {s['run']} ({s['iters']} iterations)", ""]
    lines += ["| quantity | max rel diff, first 10 it. | smoothed (50 it.) max rel diff |"]
    lines[-1] += " second half, mean ours / mmdet - 1 |"
    lines += ["|---|---|---|---|"]
    first, smoothed = s["first_iters_max_rel_diff"], s["smoothed_max_rel_diff"]
    shift = s.get("second_half_shift", {})
    for key in first:
        sm = smoothed.get(key)
        sh = f"{100 * shift[key]:+.1f} %" if key in shift else ""
        lines.append(f"| {key} | {first[key]:.2e} | {'' if sm is None else f'{sm:.2e}'} | {sh} |")
    lines += ["", "| side | AP | AP50 | AP75 | APs | APm | APl | final loss (50 it.) | train s |"]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for side in ("torch", "paddle"):
        c = s["coco"].get(side)
        keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        ap = " | ".join(f"{100 * c[k]:.1f}" if c else "-" for k in keys)
        wall = s["wall_s"][side].get("train_wall_s", float("nan"))
        loss = s["final_smoothed"]["loss"][side]
        lines.append(f"| {side} | {ap} | {loss:.4f} | {wall:.0f} |")
    return "\n".join(lines)


def detection_scores(annotation_file: str, dets_file: str) -> dict:
    """Scores of the true and false detections: ``{"true": [...], "false": [...]}``.

    True: matched to a gt box of its class at IoU >= 0.5 by COCOeval's own greedy matching (all
    areas, 100 detections per image); false: every other kept detection.
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(dets_file) as f:
        dets = json.load(f)
    out = {"true": [], "false": []}
    if not dets:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
    all_areas = ev.params.areaRng[0]
    for record in ev.evalImgs:
        if record is None or record["aRng"] != all_areas:
            continue
        for score, matched in zip(record["dtScores"], record["dtMatches"][0], strict=True):
            out["true" if matched > 0 else "false"].append(float(score))
    return out


def score_histograms(args) -> dict:
    """One PNG of the true / false detection scores for {ghm, focal} x {mmdet, ours}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {loss: run_name(argparse.Namespace(**{**vars(args), "loss": loss})) for loss in LOSSES}
    panels = {  # (loss, side) -> the detections of that run
        (loss, side): os.path.join(args.out, f"{runs[loss]}_{side}_dets.json")
        for loss in LOSSES
        for side in SIDE_NAMES
    }
    if not any(os.path.isfile(path) for path in panels.values()):
        raise SystemExit(
            f"--scores: no detections in {args.out} (looked for "
            f"{', '.join(os.path.basename(p) for p in panels.values())}): train first, or pass "
            "the --out, --seed, --optim, --data-kind and --tag of the runs"
        )
    ann = val_annotations(args)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    medians = {}
    bins = np.linspace(0.0, 1.0, 21)
    for row, loss in enumerate(LOSSES):
        for col, (side, label) in enumerate(SIDE_NAMES.items()):
            ax = axes[row, col]
            dets = panels[loss, side]
            if not os.path.isfile(dets):  # ablation runs may have one side only
                ax.set_title(f"{loss.upper()} loss, {label}: no run")
                ax.set_axis_off()
                continue
            scores = detection_scores(ann, dets)
            for kind, colour in (("true", "C2"), ("false", "C3")):
                ax.hist(
                    scores[kind], bins=bins, color=colour, alpha=0.6, label=f"{kind} detections"
                )
                medians[f"{loss}.{side}.{kind}"] = (
                    float(np.median(scores[kind])) if scores[kind] else float("nan")
                )
            ax.set_yscale("log")  # ~100 true against ~20,000 false detections
            ax.set_ylabel("detections")
            ax.set_title(f"{loss.upper()} loss, {label}")
            ax.set_xlabel("score")
            ax.legend()
    data = "" if args.data_kind == "shapes" else f", {args.data_kind} set"
    tag = f", {args.tag}" if args.tag else ""
    fig.suptitle(f"detection scores on the val split (seed {args.seed}, {args.optim}{data}{tag})")
    fig.tight_layout()
    os.makedirs(args.results or RESULTS_DIR, exist_ok=True)
    kind = "" if args.data_kind == "shapes" else f"_{args.data_kind}"
    name = f"step13_scores_{args.optim}_s{args.seed}{kind}{'_' + args.tag if args.tag else ''}.png"
    path = os.path.join(args.results or RESULTS_DIR, name)
    with replaced_atomically(path) as tmp:  # no half-written figure over the last one
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    print(f"wrote {path}; median scores: " + json.dumps(medians))
    return medians


AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SIDES = ("torch", "paddle")
SIDE_NAMES = {"torch": "mmdet", "paddle": "ours"}


def summary(results: str) -> dict:
    """The 2 x 2 {loss} x {mmdet, ours} over the ``*_compare.json`` files in ``results``.

    Per loss and optimizer: each side's COCO numbers per seed and their mean, the seed-to-seed
    spread of AP (max - min over seeds, per side), ours - mmdet per seed, and per side the
    GHM - Focal gap of the mean AP. Written to ``results/step13_summary.json``.
    """
    runs = {}
    for name in sorted(os.listdir(results)):
        if not (name.startswith("step13_") and name.endswith("_compare.json")):
            continue
        with open(os.path.join(results, name)) as f:
            s = json.load(f)
        _, loss, optim, seed, rest = s["run"].split("_", 4)
        kind = rest.split("_")[1] if "_" in rest else "shapes"
        if set(s["coco"]) != set(SIDES):
            continue
        key = f"{loss}_{optim}" + ("" if kind == "shapes" else f"_{kind}")
        group = runs.setdefault(key, {"loss": loss, "optim": optim, "kind": kind, "seeds": {}})
        group["seeds"][seed] = {
            "coco": {side: {k: 100 * s["coco"][side][k] for k in AP_KEYS} for side in SIDES},
            "first_iters_max_rel_diff": s["first_iters_max_rel_diff"]["loss"],
            "smoothed_max_rel_diff": s["smoothed_max_rel_diff"]["loss"],
            "train_wall_s": {side: s["wall_s"][side].get("train_wall_s") for side in SIDES},
        }
    for group in runs.values():
        seeds = group["seeds"].values()
        group["mean"] = {
            side: {k: float(np.mean([r["coco"][side][k] for r in seeds])) for k in AP_KEYS}
            for side in SIDES
        }
        group["seed_spread_AP"] = {
            side: float(np.ptp([r["coco"][side]["AP"] for r in seeds])) for side in SIDES
        }
        group["ours_minus_mmdet_AP"] = {
            seed: r["coco"]["paddle"]["AP"] - r["coco"]["torch"]["AP"]
            for seed, r in group["seeds"].items()
        }
    out = {"runs": runs}
    for optim, kind in {(g["optim"], g["kind"]) for g in runs.values()}:
        suffix = "" if kind == "shapes" else f"_{kind}"
        ghm, focal = runs.get(f"ghm_{optim}{suffix}"), runs.get(f"focal_{optim}{suffix}")
        if ghm and focal:
            out[f"ghm_minus_focal_AP_{optim}{suffix}"] = {
                side: ghm["mean"][side]["AP"] - focal["mean"][side]["AP"] for side in SIDES
            }
    with open(os.path.join(results, "step13_summary.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return out


def _ap_cell(value: float, bold: bool = False) -> str:
    """One AP in percent; COCOeval's -1 (no ground truth in that size range) as '-'."""
    if value < 0:
        return "-"
    return f"**{value:.1f}**" if bold else f"{value:.1f}"


def format_table_2x2(out: dict) -> str:
    """Markdown: one row per data, loss, side and seed, then the means, spreads and gaps."""
    lines = ["| data | loss | optimizer | side | seed | " + " | ".join(AP_KEYS) + " |"]
    lines.append("|---|---|---|---|---|" + "---:|" * len(AP_KEYS))
    for group in out["runs"].values():
        run = f"| {group['kind']} | {group['loss']} | {group['optim']}"
        for side in SIDES:
            for seed, r in sorted(group["seeds"].items()):
                ap = " | ".join(_ap_cell(r["coco"][side][k]) for k in AP_KEYS)
                lines.append(f"{run} | {SIDE_NAMES[side]} | {seed} | {ap} |")
            mean = " | ".join(_ap_cell(group["mean"][side][k], bold=True) for k in AP_KEYS)
            lines.append(f"{run} | {SIDE_NAMES[side]} | mean | {mean} |")
    lines.append("")
    for group in out["runs"].values():
        diffs = ", ".join(
            f"{seed} {d:+.1f}" for seed, d in sorted(group["ours_minus_mmdet_AP"].items())
        )
        spread = group["seed_spread_AP"]
        lines.append(
            f"- {group['kind']}, {group['loss']} ({group['optim']}): ours - mmdet AP by seed "
            f"{diffs}; seed-to-seed spread of AP: mmdet {spread['torch']:.1f}, ours "
            f"{spread['paddle']:.1f}"
        )
    prefix = "ghm_minus_focal_AP_"
    for key, gap in out.items():
        if key.startswith(prefix):
            lines.append(
                f"- GHM - Focal, mean AP ({key[len(prefix) :]}): mmdet {gap['torch']:+.1f}, "
                f"ours {gap['paddle']:+.1f}"
            )
    return "\n".join(lines)


def plot(torch_log: dict, paddle_log: dict, path: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("loss", "loss_cls", "loss_bbox")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key in zip(axes, keys, strict=True):
        for log, name, colour in (
            (torch_log, "mmdet (torch)", "C0"),
            (paddle_log, "ours (Paddle)", "C1"),
        ):
            y = np.asarray(log[key])
            ax.plot(y, color=colour, alpha=0.25, linewidth=0.7)
            ax.plot(smooth(y), color=colour, label=f"{name}, {SMOOTH_WINDOW}-it. mean")
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.prepare:
        folder = train_data.data_dir_for(args.data_root, data_args(args))
        meta = train_data.prepare(folder, data_args(args))
        print(f"wrote {folder} ({json.dumps(meta['spec'])})")
        return 0
    if args.compare:
        compare(args)
        return 0
    if args.scores:
        score_histograms(args)
        return 0
    if args.noise_floor:
        if not args.tag:
            raise SystemExit("--noise-floor compares the untagged run with the --tag one")
        noise_floor(args)
        return 0
    if args.summary:
        print(format_table_2x2(summary(args.results or RESULTS_DIR)))
        return 0
    if args.ap:
        ann = val_annotations(args)
        dets = os.path.join(args.out, f"{run_name(args)}_{args.ap}_dets.json")
        stats = coco_scores(ann, dets)
        scores = detection_scores(ann, dets)
        medians = "/".join(
            f"{np.median(scores[k]):.3f}" if scores[k] else "-" for k in ("true", "false")
        )
        print(f"{run_name(args)} ({args.ap}): " + ", ".join(
            f"{k} {100 * stats[k]:.1f}" for k in AP_KEYS
        ) + f"; median score of true/false detections {medians}")  # fmt: skip
        return 0
    if args.opt and args.side == "torch":
        raise SystemExit("--opt changes our side only (ablations); the torch side takes none")
    if args.side == "torch" and (args.save_weights or args.head_norm != "gn"):
        raise SystemExit("--save-weights and --head-norm are our side's; the torch side takes none")
    check_tagged(args)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    log = run_side(args)
    print(
        f"wrote {log_file(args.out, args, args.side)}: final loss {log['loss'][-1]:.5f}, "
        f"{log['meta.wall_s'][0]:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
