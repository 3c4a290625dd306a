"""The CPU demo (``make demo`` -> ``python -m ppdet_ghm demo``): see a detector learn in minutes.

1. generate the demo data set (:mod:`ppdet_ghm.data.demo_data`) unless the same one is there;
2. train ``configs/demo.yml`` (RetinaNet-GHM, small backbone, random init) with a progress bar;
3. COCO-evaluate it on the val split (AP/AR table and per-class AP);
4. draw the detections of a few val images into one picture;
5. print where everything went, and the time each step took.

Everything is seeded: the same machine gives the same numbers run after run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import time
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["add_arguments", "default_config", "format_comparison", "run", "run_one"]

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_config(name: str = "demo.yml") -> str:
    """``configs/<name>`` of the source tree (or of the working directory)."""
    for root in (_REPO_ROOT, Path.cwd()):
        path = root / "configs" / name
        if path.is_file():
            return str(path)
    return os.path.join("configs", name)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ppdet_ghm.builder import add_config_arguments

    add_config_arguments(parser, required=False, config_help="default: configs/demo.yml")
    parser.add_argument("--data-dir", default="demo_data", help="data set folder (demo_data)")
    parser.add_argument(
        "--output-dir", default="demo_output", help="outputs go to <output-dir>/<config name>"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    from ppdet_ghm.data.demo_data import KIND_DEFAULTS, KINDS, DemoDataSpec

    spec = DemoDataSpec()
    group = parser.add_argument_group("data set (defaults: the demo's)")
    group.add_argument(
        "--data-kind",
        choices=KINDS,
        default=spec.kind,
        help=f"which generated set (default {spec.kind}; marks: other classes, colours and "
        "sizes, to see the config on data unlike the demo's)",
    )
    group.add_argument("--data-seed", type=int, default=spec.seed, help="generator seed")
    group.add_argument("--num-train", type=int, default=spec.num_train)
    group.add_argument("--num-val", type=int, default=spec.num_val)
    group.add_argument("--image-size", type=int, default=spec.image_size)
    max_sizes = ", ".join(f"{k} {v['max_size']}" for k, v in KIND_DEFAULTS.items())
    group.add_argument(
        "--max-size", type=int, default=None, help=f"largest object side (default: {max_sizes})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads of the training process (default 1: at the demo's size Paddle's CPU "
        "kernels gain nothing from a second thread; the config's data-loading process (worker_num "
        "1) takes the second core)",
    )
    parser.add_argument("--num-pictures", type=int, default=8, help="val images drawn (8)")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run configs/demo.yml (GHM) and configs/demo_focal.yml (Focal + Smooth L1) and "
        "write the comparison table to <output-dir>/comparison.md",
    )
    return parser


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _data_is_current(data_dir: Path, spec) -> bool:
    from ppdet_ghm.data.demo_data import spec_record

    for split in ("train", "val"):
        path = data_dir / "annotations" / f"instances_{split}.json"
        if not path.is_file():
            return False
        try:
            info = json.loads(path.read_text()).get("info", {})
        except json.JSONDecodeError:
            return False
        if info.get("spec") != spec_record(spec):
            return False
    return True


def _step(number: int, total: int, text: str):
    print(f"\n[{number}/{total}] {text}", flush=True)


STAT_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def format_comparison(records: list[dict]) -> str:
    """A Markdown table of the demo results of several configs (one row per config)."""
    lines = [
        "| config | loss | " + " | ".join(STAT_COLUMNS) + " | train time |",
        "|---|---|" + "---|" * len(STAT_COLUMNS) + "---|",
    ]
    for record in records:
        stats = " | ".join(f"{100 * record['stats'][k]:.1f}" for k in STAT_COLUMNS)
        minutes = record["timings_s"]["train"] / 60
        lines.append(
            f"| `{record['config_name']}` | {record['losses']} | {stats} | {minutes:.1f} min |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    """Run the demo for ``--config`` (default configs/demo.yml) or, with ``--compare``, for
    configs/demo.yml and configs/demo_focal.yml on the same data, then write and print the
    comparison table (``<output-dir>/comparison.md``). Returns the results records."""
    if not getattr(args, "compare", False):
        return [run_one(args, args.config or default_config())]
    if args.config:
        raise ValueError("demo --compare runs configs/demo.yml and demo_focal.yml: drop -c")
    records = [run_one(args, default_config(name)) for name in ("demo.yml", "demo_focal.yml")]
    table = format_comparison(records)
    path = Path(args.output_dir) / "comparison.md"
    command = "python -m ppdet_ghm " + shlex.join(getattr(args, "argv", ["demo", "--compare"]))
    path.write_text(
        "Box AP (%) on the demo val set, same data, schedule and seed; command:\n\n"
        f"    {command.strip()}\n\n{table}\n"
    )
    print(f"\n{table}\n\n(written to {path})")
    return records


def _loss_names(cfg, sep: str = " / ") -> str:
    """``GHMCLoss / GHMRLoss``: the head's losses, however the config names them."""
    from ppdet_ghm.builder import resolved_config

    head = resolved_config(cfg)["architecture"]["head"]
    return f"{head['loss_cls']['name']}{sep}{head['loss_bbox']['name']}"


STEPS = 4  # data, train, evaluate, picture


def run_one(args: argparse.Namespace, config: str) -> dict:
    """The demo for one config; returns ``{"stats", "per_class_ap", "timings_s", "paths", ...}``
    (also written to ``<output-dir>/<config name>/results.json``)."""
    from ppdet_ghm.builder import load_config, parse_overrides

    started = time.time()
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    data_dir = Path(args.data_dir)
    overrides = {
        "TrainDataset.dataset_dir": str(data_dir),
        "EvalDataset.dataset_dir": str(data_dir),
        "TestDataset.dataset_dir": str(data_dir),
        **parse_overrides(args.opt),
    }
    cfg = load_config(config, overrides)
    out = Path(args.output_dir) / cfg.filename
    print(
        f"ppdet-ghm demo: {cfg.architecture} with {_loss_names(cfg)} on generated {args.data_kind}, "
        f"CPU x {args.threads} threads\nconfig {config}; outputs in {out}"
    )
    run = _Run(args, config, overrides, data_dir, out)
    counts = run.timed("data", _make_data, run)
    weights = run.timed("train", _train, run, cfg)
    results = run.timed("eval", _evaluate, run, weights, counts["val"]["images"])
    picture = run.timed("picture", _draw, run, weights)
    run.timings["total"] = time.time() - started
    return _report(run, cfg, results, weights, picture)


class _Run:
    """What the stages of one demo share: arguments, paths, and their timings."""

    def __init__(self, args, config: str, overrides: dict, data_dir: Path, out: Path):
        self.args, self.config, self.overrides = args, config, overrides
        self.data_dir, self.out = data_dir, out
        self.train_dir, self.eval_dir, self.infer_dir = out / "train", out / "eval", out / "infer"
        self.timings: dict[str, float] = {}
        self.train_cpu_s = 0.0

    def timed(self, name: str, stage, *args):
        tic = time.time()
        result = stage(*args)
        self.timings[name] = time.time() - tic
        return result


def _make_data(run: _Run) -> dict:
    """Stage 1: generate the data set unless the same one is there; returns its counts."""
    from tqdm import tqdm

    from ppdet_ghm.data.demo_data import DemoDataSpec, generate, validate

    args = run.args
    spec = DemoDataSpec(
        seed=args.data_seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        max_size=args.max_size,
        kind=args.data_kind,
    )
    if _data_is_current(run.data_dir, spec):
        _step(1, STEPS, f"data: {run.data_dir} is there already (same generator settings)")
    else:
        _step(1, STEPS, f"data: generating {spec.num_train} train + {spec.num_val} val images")
        with tqdm(total=spec.num_train + spec.num_val, desc="data", unit="img") as bar:
            generate(spec, run.data_dir, progress=bar.update)
    counts = validate(run.data_dir, spec)
    for split, split_counts in counts.items():
        print(
            f"      {split}: {split_counts['images']} images, {split_counts['objects']} objects, "
            f"{split_counts['empty_images']} without objects"
        )
    return counts


def _train(run: _Run, cfg) -> str:
    """Stage 2: train from random init; returns the final weights (path without suffix)."""
    from ppdet_ghm.engine import tasks
    from ppdet_ghm.engine.trainer import quiet_console

    epochs, batch = int(cfg.epoch), int(cfg.TrainReader["batch_size"])
    _step(2, STEPS, f"train: {epochs} epochs, batch {batch}, random init (log: {run.train_dir})")
    tic, cpu_tic = time.time(), time.process_time()
    with quiet_console():
        tasks.train(
            run.config,
            overrides=run.overrides,
            output_dir=str(run.train_dir),
            progress=True,
            seed=run.args.seed,
            threads=run.args.threads,
        )
    run.train_cpu_s = time.process_time() - cpu_tic
    weights = str(run.train_dir / "model_final")
    print(f"      done in {_fmt_seconds(time.time() - tic)}: {weights}.pdparams")
    return weights


def _evaluate(run: _Run, weights: str, num_val: int):
    """Stage 3: COCO evaluation on the val split; prints the summary and per-class AP."""
    from ppdet_ghm.engine import tasks
    from ppdet_ghm.engine.coco_eval import format_per_class_table
    from ppdet_ghm.engine.trainer import quiet_console

    _step(3, STEPS, f"evaluate on the {num_val} val images (COCO protocol)")
    with quiet_console():
        results = tasks.evaluate(
            run.config,
            weights=weights,
            overrides=run.overrides,
            output_dir=str(run.eval_dir),
            progress=True,
            threads=run.args.threads,
        )
    print(results.summary)
    print("\n      per-class AP (0.5:0.95):")
    table = format_per_class_table(results.per_class_ap)
    print("\n".join("      " + line for line in table.splitlines()))
    return results


def _draw(run: _Run, weights: str) -> Path:
    """Stage 4: detections drawn on the first val images, as one picture; returns its path."""
    from PIL import Image

    from ppdet_ghm.engine import tasks
    from ppdet_ghm.engine.trainer import quiet_console
    from ppdet_ghm.engine.visualize import image_grid

    _step(4, STEPS, f"draw the detections of {run.args.num_pictures} val images")
    val_images = tasks.find_images(run.data_dir / "val")[: run.args.num_pictures]
    with quiet_console():
        tasks.infer(
            run.config,
            val_images,
            weights=weights,
            overrides=run.overrides,
            output_dir=str(run.infer_dir),
            draw_threshold=0.5,
            threads=run.args.threads,
        )
    drawn = [Image.open(run.infer_dir / os.path.basename(p)) for p in val_images]
    picture = run.out / "detections.png"
    image_grid(drawn, columns=4).save(picture)
    return picture


def _report(run: _Run, cfg, results, weights: str, picture: Path) -> dict:
    """``results.json`` and the closing lines: AP, where everything went, the time of each stage."""
    paths = {
        "data": str(run.data_dir),
        "checkpoint": weights + ".pdparams",
        "train_log": str(run.train_dir / "train.log"),
        "detections_json": str(run.eval_dir / "bbox.json"),
        "metrics": str(run.eval_dir / "metrics.json"),
        "picture": str(picture),
        "infer": str(run.infer_dir),
    }
    record = {
        "config": run.config,
        "config_name": cfg.filename,
        "losses": _loss_names(cfg, " + "),
        "overrides": {k: str(v) for k, v in run.overrides.items()},
        "stats": results.stats,
        "per_class_ap": results.per_class_ap,
        "timings_s": {k: round(v, 1) for k, v in run.timings.items()},
        "train_cpu_s": round(run.train_cpu_s, 1),
        "threads": run.args.threads,
        "paths": paths,
    }
    (run.out / "results.json").write_text(json.dumps(record, indent=1) + "\n")

    s = results.stats
    print(
        f"\nbox AP {s['AP']:.3f} | AP50 {s['AP50']:.3f} | AP75 {s['AP75']:.3f} | "
        f"APs {s['APs']:.3f} | APm {s['APm']:.3f} | APl {s['APl']:.3f}"
    )
    print("\nwhere everything went:")
    width = max(len(k) for k in paths)
    for key, value in paths.items():
        print(f"  {key:<{width}}  {value}")
    print(f"  {'results':<{width}}  {run.out / 'results.json'}")
    timings = run.timings
    print(
        "\ntime: "
        + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in timings.items() if k != "total")
        + f"; total {_fmt_seconds(timings['total'])}"
    )
    return record
