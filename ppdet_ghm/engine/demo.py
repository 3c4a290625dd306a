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
    parser.add_argument("-c", "--config", default=None, help="default: configs/demo.yml")
    parser.add_argument(
        "-o",
        "--opt",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides (ppdet style), e.g. epoch=2",
    )
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


def run_one(args: argparse.Namespace, config: str) -> dict:
    """The demo for one config; returns ``{"stats", "per_class_ap", "timings_s", "paths", ...}``
    (also written to ``<output-dir>/<config name>/results.json``)."""
    from tqdm import tqdm

    from ppdet_ghm.builder import load_config, parse_overrides
    from ppdet_ghm.data.demo_data import DemoDataSpec, generate, validate
    from ppdet_ghm.engine import tasks
    from ppdet_ghm.engine.coco_eval import format_per_class_table
    from ppdet_ghm.engine.trainer import quiet_console
    from ppdet_ghm.engine.visualize import image_grid

    started = time.time()
    data_dir = Path(args.data_dir)
    overrides = {
        "TrainDataset.dataset_dir": str(data_dir),
        "EvalDataset.dataset_dir": str(data_dir),
        "TestDataset.dataset_dir": str(data_dir),
        **parse_overrides(args.opt),
    }
    cfg = load_config(config, overrides)
    name = cfg.filename
    out = Path(args.output_dir) / name
    train_dir, eval_dir, infer_dir = out / "train", out / "eval", out / "infer"
    threads = args.threads
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    steps = 4
    print(
        f"ppdet-ghm demo: {cfg.architecture} with {_loss_names(cfg)} on generated {args.data_kind}, "
        f"CPU x {threads} threads\nconfig {config}; outputs in {out}"
    )
    timings = {}
    cpu = {}

    # 1. data
    spec = DemoDataSpec(
        seed=args.data_seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        max_size=args.max_size,
        kind=args.data_kind,
    )
    tic = time.time()
    if _data_is_current(data_dir, spec):
        _step(1, steps, f"data: {data_dir} is there already (same generator settings)")
    else:
        _step(1, steps, f"data: generating {spec.num_train} train + {spec.num_val} val images")
        with tqdm(total=spec.num_train + spec.num_val, desc="data", unit="img") as bar:
            generate(spec, data_dir, progress=bar.update)
    summary = validate(data_dir, spec)
    for split, counts in summary.items():
        print(
            f"      {split}: {counts['images']} images, {counts['objects']} objects, "
            f"{counts['empty_images']} without objects"
        )
    timings["data"] = time.time() - tic

    # 2. train
    epochs = int(cfg.epoch)
    batch = int(cfg.TrainReader["batch_size"])
    _step(2, steps, f"train: {epochs} epochs, batch {batch}, random init (log: {train_dir})")
    tic, cpu_tic = time.time(), time.process_time()
    with quiet_console():
        tasks.train(
            config,
            overrides=overrides,
            output_dir=str(train_dir),
            progress=True,
            seed=args.seed,
            threads=threads,
        )
    timings["train"] = time.time() - tic
    cpu["train"] = time.process_time() - cpu_tic
    weights = str(train_dir / "model_final")
    print(f"      done in {_fmt_seconds(timings['train'])}: {weights}.pdparams")

    # 3. evaluate
    _step(3, steps, f"evaluate on the {summary['val']['images']} val images (COCO protocol)")
    tic = time.time()
    with quiet_console():
        results = tasks.evaluate(
            config,
            weights=weights,
            overrides=overrides,
            output_dir=str(eval_dir),
            progress=True,
            threads=threads,
        )
    timings["eval"] = time.time() - tic
    print(results.summary)
    print("\n      per-class AP (0.5:0.95):")
    print(
        "\n".join(
            "      " + line for line in format_per_class_table(results.per_class_ap).splitlines()
        )
    )

    # 4. picture
    _step(4, steps, f"draw the detections of {args.num_pictures} val images")
    tic = time.time()
    val_images = tasks.find_images(data_dir / "val")[: args.num_pictures]
    with quiet_console():
        tasks.infer(
            config,
            val_images,
            weights=weights,
            overrides=overrides,
            output_dir=str(infer_dir),
            draw_threshold=0.5,
            threads=threads,
        )
    from PIL import Image

    drawn = [Image.open(infer_dir / os.path.basename(p)) for p in val_images]
    picture = out / "detections.png"
    image_grid(drawn, columns=4).save(picture)
    timings["picture"] = time.time() - tic
    timings["total"] = time.time() - started

    paths = {
        "data": str(data_dir),
        "checkpoint": weights + ".pdparams",
        "train_log": str(train_dir / "train.log"),
        "detections_json": str(eval_dir / "bbox.json"),
        "metrics": str(eval_dir / "metrics.json"),
        "picture": str(picture),
        "infer": str(infer_dir),
    }
    record = {
        "config": config,
        "config_name": name,
        "losses": _loss_names(cfg, " + "),
        "overrides": {k: str(v) for k, v in overrides.items()},
        "stats": results.stats,
        "per_class_ap": results.per_class_ap,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "train_cpu_s": round(cpu["train"], 1),
        "threads": threads,
        "paths": paths,
    }
    (out / "results.json").write_text(json.dumps(record, indent=1) + "\n")

    s = results.stats
    print(
        f"\nbox AP {s['AP']:.3f} | AP50 {s['AP50']:.3f} | AP75 {s['AP75']:.3f} | "
        f"APs {s['APs']:.3f} | APm {s['APm']:.3f} | APl {s['APl']:.3f}"
    )
    print("\nwhere everything went:")
    width = max(len(k) for k in paths)
    for key, value in paths.items():
        print(f"  {key:<{width}}  {value}")
    print(f"  {'results':<{width}}  {out / 'results.json'}")
    print(
        "\ntime: "
        + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in timings.items() if k != "total")
        + f"; total {_fmt_seconds(timings['total'])}"
    )
    return record
