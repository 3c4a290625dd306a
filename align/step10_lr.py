"""Step 10: the learning rate of every iteration of the 12-epoch schedule, for 3 batch sizes.

Reference (torch side): the param schedulers of mmdet 3.3.0's ``retinanet_r50_fpn_ghm-1x_coco``
(``_base_/schedules/schedule_1x.py``: ``LinearLR(start_factor, by_epoch=False, begin=0, end=500)``
and ``MultiStepLR(by_epoch=True, begin=0, end=12, milestones=[8, 11], gamma=0.1)``), built as
mmengine's ``Runner`` builds them (``PARAM_SCHEDULERS.build`` with ``epoch_length``), on an
``OptimWrapper`` whose SGD lr is the config's 0.01 scaled by ``Runner.scale_lr``
(``auto_scale_lr`` enabled, ``base_batch_size`` 16: lr x B/16), stepped as
``EpochBasedTrainLoop`` steps them through ``ParamSchedulerHook`` (the iteration's optimizer step
uses the current lr, ``after_train_iter`` steps the iteration-based schedulers,
``after_train_epoch`` the epoch-based ones). The epoch length is ``len(train_dataloader)`` as
mmdet builds it for W GPUs x 2 images: ``DefaultSampler`` (round up: ceil(N / W) images per
GPU) and ``AspectRatioBatchSampler`` (drop_last False: ceil of that / 2), N = 117,266 (COCO
train2017 after ``filter_empty_gt`` and ``min_size=32``).

Port (Paddle side): ppdet's ``LearningRate`` of our config as it is
(``configs/_base_/optimizer_1x.yml``: ``PiecewiseDecay`` milestones [8, 11] gamma 0.1 and
``LinearWarmup`` 499 steps, i.e. factor ``s + (1 - s) i / 499`` and the full lr from iteration
499 as mmengine's ``LinearLR(begin=0, end=500)``; base_lr 0.01 x B/16 as the config's comment
says), called with the ``steps_per_epoch`` our trainer gets: ppdet's ``Trainer`` takes
``len(self.loader)``, our ``EpochSeededLoader`` around ppdet's ``TrainReader``, whose
``DistributedBatchSampler`` (W ranks, ``TrainReader.batch_size`` 2, ``drop_last`` from the config:
false) has ceil(ceil(N / W) / 2) batches, as mmengine. ppdet's trainer calls ``lr.step()`` after
each iteration's optimizer step, so global iteration i uses the scheduler's value at
``last_epoch = i``. (Our config used to warm up over 500 iterations and drop the last batch; both
now follow mmengine.)

Cases: warmup from 1/3 (the authors' repo; our config) and from 0.001 (mmdet v2/v3), each for
8x2, 4x2 and 1x2 images (base_lr 0.01, 0.005, 0.00125). Every row gates.

Logged per case ``{v}.{B}`` (v in ``third``, ``milli``; B in ``8x2``, ``4x2``, ``1x2``), float64:
``lr.{v}.{B}.starts`` [S] int64 and ``lr.{v}.{B}.values`` [S]: the schedule as run-length
segments (segment k holds from iteration ``starts[k]`` to the next start; every warmup value is a
segment of its own), ``lr.{v}.{B}.total`` [1] (iterations in 12 epochs); per B
``iters_per_epoch.{B}`` [1] and ``base_lr.{B}`` [1]. Judged after expanding both schedules to
every iteration.

Threshold: relative 1e-12 per iteration. mmengine's ``LinearLR`` is recursive (each value is the
previous one times ``1 + (1 - s) / (T s + (i - 1)(1 - s))``) and ``MultiStepLR`` multiplies the
current lr by 0.1; ppdet's values are closed forms (``base_lr * (s (1 - a) + a)``, ``base_lr *
0.1``, ``base_lr * 0.01``). In float64 they differ by rounding only (measured 4.3e-15 relative at
most, a few tens of ulp: the recursion's rounding over the warmup, carried into the lr after it),
so the two schedules are the same to 1e-12 at every iteration; a one-iteration shift of the
warmup is 1e-3 relative and of a decay 9.

    python -m align.step10_lr --side torch
    python -m align.step10_lr --side paddle
"""

import contextlib
import os
import sys

import numpy as np

from align import common, report

STEP = "step10_lr"
DIFF_LOG_THRESHOLD = 1e-12
USES_WEIGHTS = False

NUM_TRAIN_IMAGES = 117_266  # COCO train2017 after mmdet's filter_empty_gt and min_size=32
IMAGES_PER_GPU = 2
EPOCHS = 12
BASE_LR_16 = 0.01  # for 16 images (the reference's retinanet_r50_fpn_1x_coco optim_wrapper)
BASE_BATCH = 16  # mmdet's auto_scale_lr base_batch_size
GPUS = {"8x2": 8, "4x2": 4, "1x2": 1}
WARMUP_START = {"third": 1.0 / 3.0, "milli": 0.001}
WARMUP_NAME = {"third": "warmup from 1/3", "milli": "warmup from 0.001"}
WARMUP_WINDOW = 1000  # iterations reported apart in the notes (the warmup and what follows)


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--lr-rel", type=float, default=1e-12, help="lr, relative, every iter")
    parser.add_argument(
        "--num-images", type=int, default=NUM_TRAIN_IMAGES, help="training images (N)"
    )
    return parser


# ----------------------------------------------------------------------------- segments


def to_segments(lrs):
    """Run-length form of a schedule: ``(starts [S] int64, values [S] float64)``.

    ``lrs`` is the lr of every iteration (a sequence of floats); a new segment starts wherever the
    value changes (exact float comparison).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    change = np.ones(lrs.shape[0], dtype=bool)
    change[1:] = lrs[1:] != lrs[:-1]
    starts = np.flatnonzero(change).astype(np.int64)
    return starts, lrs[starts].copy()


def expand(starts, values, total):
    """The lr of every iteration ``[total]`` float64 from run-length segments."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(np.append(starts, total))
    if starts.size == 0 or starts[0] != 0 or np.any(lengths <= 0):
        raise ValueError("segments must start at 0 and increase within total")
    return np.repeat(np.asarray(values, dtype=np.float64), lengths)


# ----------------------------------------------------------------------------- torch side


class _Images:
    """A stand-in train set of ``n`` images (only its length is used)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        return idx


def mmengine_epoch_length(num_images, gpus, batch_size):
    """``len(train_dataloader)`` of mmdet's COCO config on rank 0 of ``gpus`` GPUs.

    ``DefaultSampler(shuffle=True)`` (round up: ceil(N / W) indices per GPU) in mmdet's
    ``AspectRatioBatchSampler`` (drop_last False) in a torch ``DataLoader``; the world size is
    given to the sampler by patching ``get_dist_info`` (nothing distributed is started).
    """
    from unittest import mock

    from mmdet.datasets.samplers import AspectRatioBatchSampler
    from mmengine.dataset import sampler as mm_sampler
    from torch.utils.data import DataLoader

    dataset = _Images(num_images)
    with mock.patch.object(mm_sampler, "get_dist_info", return_value=(0, gpus)):
        sampler = mm_sampler.DefaultSampler(dataset, shuffle=True, seed=0)
    batch_sampler = AspectRatioBatchSampler(sampler, batch_size=batch_size)
    return len(DataLoader(dataset, batch_sampler=batch_sampler))


def mmengine_schedule(cfg, start_factor, gpus, epoch_length):
    """The lr of every iteration of ``cfg``'s schedule as mmengine's runner drives it.

    Returns:
        (base lr after ``Runner.scale_lr``, lrs [max_epochs * epoch_length] as a list of floats)
    """
    import copy
    import types
    import warnings

    import torch
    from mmengine.hooks import ParamSchedulerHook
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    from mmengine.runner import Runner

    model = torch.nn.Linear(1, 1)
    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    auto_scale_lr = dict(cfg.auto_scale_lr, enable=True)
    runner = types.SimpleNamespace(
        world_size=gpus,
        _train_dataloader=dict(cfg.train_dataloader),
        logger=types.SimpleNamespace(info=lambda *a, **k: None),
        param_schedulers=None,
    )
    Runner.scale_lr(runner, optim_wrapper, auto_scale_lr)
    base_lr = optim_wrapper.param_groups[0]["lr"]
    max_epochs = cfg.train_cfg.max_epochs
    schedulers = []
    for sched_cfg in copy.deepcopy(cfg.param_scheduler):  # Runner._build_param_scheduler
        if sched_cfg["type"] == "LinearLR":
            sched_cfg["start_factor"] = start_factor
        if sched_cfg.get("by_epoch", True):
            sched_cfg.setdefault("end", max_epochs)
        schedulers.append(
            PARAM_SCHEDULERS.build(
                sched_cfg, default_args=dict(optimizer=optim_wrapper, epoch_length=epoch_length)
            )
        )
    runner.param_schedulers = schedulers
    hook = ParamSchedulerHook()
    group = optim_wrapper.param_groups[0]
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimizer.step() ... overridden": no real step here
        for _ in range(max_epochs):  # EpochBasedTrainLoop.run_epoch
            for idx in range(epoch_length):
                lrs.append(group["lr"])  # what this iteration's optimizer step uses
                hook.after_train_iter(runner, idx)
            hook.after_train_epoch(runner)
    return base_lr, lrs


def torch_side(ctx, args):
    from mmengine.config import Config

    from align.torch_ref import install_mmcv_ext_stand_in, reference_config_path

    install_mmcv_ext_stand_in()
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(reference_config_path())
    batch = cfg.train_dataloader.batch_size
    log = {}
    for name, gpus in GPUS.items():
        epoch_length = mmengine_epoch_length(args.num_images, gpus, batch)
        log[f"iters_per_epoch.{name}"] = np.array([epoch_length], dtype=np.int64)
        for variant, start in WARMUP_START.items():
            base_lr, lrs = mmengine_schedule(cfg, start, gpus, epoch_length)
            starts, values = to_segments(lrs)
            log[f"lr.{variant}.{name}.starts"] = starts
            log[f"lr.{variant}.{name}.values"] = values
            log[f"lr.{variant}.{name}.total"] = np.array([len(lrs)], dtype=np.int64)
            log[f"base_lr.{name}"] = np.array([base_lr], dtype=np.float64)
    return log


# ----------------------------------------------------------------------------- Paddle side


class _StubDataset:
    """What ppdet's reader needs of a dataset to build its batch sampler: ``n`` images."""

    def __init__(self, n):
        self.n = n

    def check_or_download_dataset(self):
        pass

    def parse_dataset(self):
        pass

    def set_transform(self, transform):
        pass

    def set_kwargs(self, **kwargs):
        pass

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        raise RuntimeError("the stand-in train set has no images")


class _NoLoader:
    """Stands for ``paddle.io.DataLoader`` in ppdet's reader: takes its arguments, loads nothing
    (no prefetching thread over the stand-in images); ``len(reader)`` is its batch sampler's."""

    def __init__(self, **kwargs):
        self.batch_sampler = kwargs.get("batch_sampler")

    def __iter__(self):
        return iter(())


@contextlib.contextmanager
def _ranks(world_size):
    """Paddle's ``ParallelEnv`` as on rank 0 of ``world_size`` (the launch's environment)."""
    names = ("PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ID")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(PADDLE_TRAINERS_NUM=str(world_size), PADDLE_TRAINER_ID="0")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ppdet_steps_per_epoch(num_images, gpus):
    """``steps_per_epoch`` of our trainer on rank 0 of ``gpus`` GPUs: ``len(self.loader)``.

    The loader is our ``EpochSeededLoader`` around ppdet's ``TrainReader`` of the loaded config
    (``batch_size`` per GPU and ``drop_last`` from the config), built on a stand-in dataset of
    ``num_images`` images with 0 workers, as ``ppdet.engine.Trainer`` builds it; the reader's
    ``DataLoader`` is replaced by one that loads nothing (the length is the batch sampler's).
    """
    from unittest import mock

    from ppdet.core.workspace import create
    from ppdet.data import reader as ppdet_reader

    from ppdet_ghm.engine.trainer import EpochSeededLoader

    with _ranks(gpus), mock.patch.object(ppdet_reader, "DataLoader", _NoLoader):
        reader = create("TrainReader")(_StubDataset(num_images), 0)
    return len(EpochSeededLoader(reader))


def ppdet_schedule(base_lr, start_factor, steps_per_epoch):
    """ppdet's scheduler of the loaded config's ``LearningRate`` (``base_lr``, warmup start).

    Returns:
        (paddle.optimizer.lr.PiecewiseDecay, its segments (starts [S], values [S]))
    """
    import copy

    from ppdet.core.workspace import create

    lr_builder = copy.deepcopy(create("LearningRate"))
    lr_builder.base_lr = base_lr
    decay, warmup = lr_builder.schedulers
    warmup.start_factor = start_factor
    scheduler = lr_builder(steps_per_epoch)
    starts = np.array([0, *scheduler.boundaries], dtype=np.int64)
    values = np.array(scheduler.values, dtype=np.float64)
    return scheduler, starts, values


def check_scheduler_against_segments(scheduler, starts, values, total):
    """Step the real scheduler and compare ``get_lr()`` with the segments; raise if any differs.

    Checked: iterations 0..1199 by ``step()`` (as the trainer steps it), and 3 iterations around
    every segment start and the last iteration (``last_epoch`` set, ``get_lr()`` read).
    """
    import copy

    lrs = expand(starts, values, total)
    sched = copy.deepcopy(scheduler)
    bad = []
    for i in range(min(1200, total)):
        if sched.last_epoch != i or sched.get_lr() != lrs[i]:
            bad.append(i)
        sched.step()
    probe = sorted({j for s in starts for j in (s - 1, s, s + 1) if 0 <= j < total} | {total - 1})
    for i in probe:
        sched.last_epoch = int(i)
        if sched.get_lr() != lrs[i]:
            bad.append(int(i))
    if bad:
        raise AssertionError(f"ppdet's scheduler differs from its boundaries at iterations {bad}")


def paddle_side(ctx, args):
    from ppdet.core.workspace import global_config

    from ppdet_ghm.builder import load_config

    load_config(args.config)
    epochs = int(global_config["epoch"])
    config_lr = float(global_config["LearningRate"]["base_lr"])
    per_gpu = int(global_config["TrainReader"]["batch_size"])
    log = {}
    for name, gpus in GPUS.items():
        base_lr = config_lr * (gpus * per_gpu) / BASE_BATCH  # the config's linear scaling rule
        log[f"base_lr.{name}"] = np.array([base_lr], dtype=np.float64)
        steps = ppdet_steps_per_epoch(args.num_images, gpus)
        log[f"iters_per_epoch.{name}"] = np.array([steps], dtype=np.int64)
        total = epochs * steps
        for variant, start in WARMUP_START.items():
            scheduler, starts, values = ppdet_schedule(base_lr, start, steps)
            check_scheduler_against_segments(scheduler, starts, values, total)
            key = f"lr.{variant}.{name}"
            log[f"{key}.starts"] = starts
            log[f"{key}.values"] = values
            log[f"{key}.total"] = np.array([total], dtype=np.int64)
    return log


# ----------------------------------------------------------------------------- judge


def schedule_difference(torch_log, paddle_log, key):
    """Compare two logged schedules at every iteration.

    Returns:
        dict with ``mean_abs``, ``max_abs``, ``max_rel`` (over the common iterations), ``worst``
        (iteration of max_rel), ``warmup_rel`` / ``warmup_worst`` (the same over the first
        ``WARMUP_WINDOW`` iterations), ``totals`` (torch, paddle), ``decays`` (first iteration at 0.1x
        and 0.01x of the base lr, torch and paddle).
    """
    sched = {}
    for side, log in (("torch", torch_log), ("paddle", paddle_log)):
        total = int(log[f"{key}.total"][0])
        sched[side] = expand(log[f"{key}.starts"], log[f"{key}.values"], total)
    t, p = sched["torch"], sched["paddle"]
    n = min(t.size, p.size)
    diff = np.abs(t[:n] - p[:n])
    rel = diff / np.abs(t[:n])
    worst = int(np.argmax(rel))

    def decays(lrs):
        peak_at = int(np.argmax(lrs))  # the end of the warmup
        after = lrs[peak_at:]
        return [peak_at + int(np.argmax(after < lrs[peak_at] * f)) for f in (0.5, 0.05)]

    warm = min(n, WARMUP_WINDOW)
    warm_worst = int(np.argmax(rel[:warm]))
    return {
        "mean_abs": float(diff.mean()),
        "max_abs": float(diff.max()),
        "max_rel": float(rel[worst]),
        "worst": worst,
        "warmup_rel": float(rel[warm_worst]),
        "warmup_worst": warm_worst,
        "totals": (t.size, p.size),
        "decays": (decays(t), decays(p)),
    }


def judge(args, torch_log, paddle_log):
    rows, used = [], set()
    for name in GPUS:
        used.add(f"base_lr.{name}")
        tb, pb = float(torch_log[f"base_lr.{name}"][0]), float(paddle_log[f"base_lr.{name}"][0])
        rows.append(
            report.Row(
                STEP,
                f"base lr {name}",
                abs(tb - pb),
                abs(tb - pb),
                "exact",
                report.STATUS_PASS if tb == pb else report.STATUS_FAIL,
                f"torch {tb!r}, paddle {pb!r}",
            )
        )
    for name in GPUS:
        key = f"iters_per_epoch.{name}"
        used.add(key)
        t_len, p_len = int(torch_log[key][0]), int(paddle_log[key][0])
        rows.append(
            report.Row(
                STEP,
                f"iterations per epoch {name}",
                float(abs(t_len - p_len)),
                float(abs(t_len - p_len)),
                "exact",
                report.STATUS_PASS if t_len == p_len else report.STATUS_FAIL,
                f"mmengine {t_len}, ppdet {p_len}",
            )
        )
        for variant in WARMUP_START:
            key = f"lr.{variant}.{name}"
            used.update(f"{key}.{part}" for part in ("starts", "values", "total"))
            d = schedule_difference(torch_log, paddle_log, key)
            same_len = d["totals"][0] == d["totals"][1]
            ok = same_len and d["max_rel"] <= args.lr_rel
            note = (
                f"rel {d['max_rel']:.2e} at iteration {d['worst']}; first "
                f"{WARMUP_WINDOW}: rel {d['warmup_rel']:.2e} at {d['warmup_worst']}"
            )
            if not same_len or d["decays"][0] != d["decays"][1]:
                note += (
                    f"; iterations torch {d['totals'][0]}, paddle {d['totals'][1]}; "
                    f"x0.1 / x0.01 from torch {d['decays'][0]}, paddle {d['decays'][1]}"
                )
            rows.append(
                report.Row(
                    STEP,
                    f"lr every iteration, {WARMUP_NAME[variant]}, {name}",
                    d["mean_abs"],
                    d["max_abs"],
                    f"rel<={args.lr_rel:g}",
                    report.STATUS_PASS if ok else report.STATUS_FAIL,
                    note,
                    d["max_rel"],
                )
            )
    return rows + report.unjudged_rows(STEP, (k for k in torch_log if k not in used))


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
