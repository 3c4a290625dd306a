"""Step 9: training data reading on a generated COCO set, horizontal flip forced off and on.

Reference: mmdet 3.3.0's ``CocoDataset`` with the ``train_dataloader.dataset`` settings of
``retinanet_r50_fpn_ghm-1x_coco.py`` (``filter_empty_gt=True, min_size=32``) and its train pipeline
(``LoadImageFromFile`` -> ``LoadAnnotations`` -> ``Resize(scale=(1333, 800), keep_ratio=True)`` ->
``RandomFlip(prob)`` -> ``PackDetInputs``), then the model's ``DetDataPreprocessor`` in training
mode; consecutive pairs of the dataset make the batches. Ours: the config's ``TrainDataset`` made
the dataset class our trainer uses (``ppdet_ghm.data.validation.checked_dataset``, a checked
``COCODataSet``), read by ``create('TrainReader')`` (``Decode`` -> ``RandomFlip(prob)`` ->
``Resize`` -> ``NormalizeImage`` -> ``Permute`` -> ``PadBatch(32)``, batch size 2, shuffle off).
``prob`` is 0 and then 1 on both sides (the config's 0.5 would make the two sides' draws differ).

    python -m align.step9_train_data --side torch [--images DIR]
    python -m align.step9_train_data --side paddle [--images DIR]

The set (:data:`align.data_reading.TRAIN_IMAGES`, 5 images, 4 categories with ids 1, 3, 7, 12)
has an image without annotations (dropped by both), a crowd box, a zero-width box, a sub-pixel box
(0.8 x 0.6), a box sticking out of the image, a grayscale JPEG and an RGBA PNG; image sizes give
batches padded to 1216x1216 and 800x1088.

Logged, per flip setting ``flip0`` / ``flip1``: ``image_ids`` (the images each side trains on, in
order) and per image the summaries of step 7 (:func:`align.data_reading.summarise_input`) plus
``gt_bboxes`` [K, 4] x1y1x2y2 in input pixels, ``gt_labels`` [K] (0-based), and ``crowd`` [1] (the
number of crowd boxes a side carries: mmdet's ``ignored_instances``; ours counts ``is_crowd`` gts);
``ref.ignore_iof_thr`` (the reference assigner's: <= 0 means ignored instances are never used).
"""

import copy
import sys

import numpy as np

from align import common, report
from align import data_reading as dr
from align.step7_eval_data import image_checks

STEP = "step9_train_data"
USES_WEIGHTS = False
DIFF_LOG_THRESHOLD = 1e-6
FLIPS = (0, 1)
BATCH_SIZE = 2
FLIP_RE = r"flip[01]\."


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument(
        "--images", default=dr.default_folder(STEP), help="folder for the generated COCO set"
    )
    parser.add_argument("--pixel-abs", type=float, default=1e-6, help="see step 7")
    parser.add_argument("--rounded-mean-abs", type=float, default=0.03, help="see step 7")
    parser.add_argument("--rounded-scale-rel", type=float, default=2e-3, help="see step 7")
    parser.add_argument(
        "--box-abs",
        type=float,
        default=2.5e-4,
        help="exact grids: gt boxes, max abs px (2 float32 ulps at 1024-2048 px)",
    )
    parser.add_argument(
        "--rounded-box-abs",
        type=float,
        default=0.5,
        help="rounded grids: gt boxes, max abs px (output size rounded by up to 0.5 px)",
    )
    return parser


def _tensor(boxes):
    return boxes.tensor if hasattr(boxes, "tensor") else boxes


def torch_side(ctx, args):
    from align.torch_ref import install_mmcv_ext_stand_in, reference_config_path

    install_mmcv_ext_stand_in()
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    register_all_modules()
    cfg = Config.fromfile(reference_config_path())
    images, json_path = dr.write_train_set(args.images)
    prefixes = {path: prefix for path, prefix in images.values()}
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    log = dr.files_meta([images[i][0] for i in sorted(images)] + [json_path])
    log["ref.ignore_iof_thr"] = np.array([cfg.model.train_cfg.assigner.ignore_iof_thr], float)
    for flip in FLIPS:
        ds_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
        ds_cfg.update(
            data_root=args.images,
            ann_file=dr.TRAIN_JSON,
            data_prefix=dict(img=""),
            metainfo=dict(classes=tuple(c["name"] for c in dr.TRAIN_CATEGORIES)),
        )
        for transform in ds_cfg.pipeline:
            if transform["type"] == "RandomFlip":
                transform["prob"] = float(flip)
        dataset = DATASETS.build(ds_cfg)
        ids = []
        for start in range(0, len(dataset) - BATCH_SIZE + 1, BATCH_SIZE):  # drop_last
            batch = preprocessor(
                pseudo_collate([dataset[i] for i in range(start, start + BATCH_SIZE)]),
                training=True,
            )
            for image, sample in zip(batch["inputs"], batch["data_samples"], strict=True):
                meta = sample.metainfo
                ids.append(int(meta["img_id"]))
                prefix = f"flip{flip}.{prefixes[meta['img_path']]}"
                w_scale, h_scale = meta["scale_factor"]
                log.update(
                    dr.summarise_input(prefix, image.numpy(), meta["img_shape"], (h_scale, w_scale))
                )
                gt = sample.gt_instances
                log[f"{prefix}.gt_bboxes"] = _tensor(gt.bboxes).numpy().astype(np.float32)
                log[f"{prefix}.gt_labels"] = gt.labels.numpy().astype(np.int64)
                log[f"{prefix}.crowd"] = np.array([len(sample.ignored_instances)], np.int64)
        log[f"flip{flip}.image_ids"] = np.array(ids, dtype=np.int64)
    return log


def read_train_batches(config: str, folder: str, flip: int):
    """The batches of our TrainReader over ``folder``'s train.json, flip probability ``flip``.

    The config's ``TrainDataset`` is pointed at ``folder`` and wrapped as our trainer does
    (``checked_dataset`` with the config's ``data_checks``); ``TrainReader``'s ``RandomFlip`` gets
    ``prob=flip``, shuffling is off, the reader runs in the main process (worker_num 0).
    """
    import paddle
    from ppdet.core.workspace import create

    from ppdet_ghm.builder import load_config
    from ppdet_ghm.data.validation import DataChecks, checked_dataset

    paddle.set_device("cpu")
    cfg = load_config(config)
    dataset = cfg["TrainDataset"]
    dataset.dataset_dir, dataset.image_dir, dataset.anno_path = folder, ".", dr.TRAIN_JSON
    dataset = checked_dataset(dataset, DataChecks.from_config(cfg.get("data_checks")))
    reader_cfg = cfg["TrainReader"]
    for transform in reader_cfg["sample_transforms"]:
        if "RandomFlip" in transform:
            transform["RandomFlip"]["prob"] = float(flip)
    reader_cfg["shuffle"] = False
    reader_cfg["batch_size"] = BATCH_SIZE
    return list(create("TrainReader")(dataset, 0))


def paddle_side(ctx, args):
    images, json_path = dr.write_train_set(args.images)
    torch_path = common.log_path(args.logs, STEP, "torch")
    paths = [images[i][0] for i in sorted(images)] + [json_path]
    dr.check_same_files(common.load_log(torch_path), paths, torch_path)
    log = dr.files_meta(paths)
    for flip in FLIPS:
        ids = []
        for batch in read_train_batches(args.config, args.images, flip):
            for i in range(batch["image"].shape[0]):
                image_id = int(batch["im_id"][i].numpy().reshape(-1)[0])
                ids.append(image_id)
                prefix = f"flip{flip}.{images[image_id][1]}"
                log.update(
                    dr.summarise_input(
                        prefix,
                        batch["image"][i].numpy(),
                        batch["im_shape"][i].numpy(),
                        batch["scale_factor"][i].numpy(),
                    )
                )
                log[f"{prefix}.gt_bboxes"] = batch["gt_bbox"][i].numpy().astype(np.float32)
                log[f"{prefix}.gt_labels"] = (
                    batch["gt_class"][i].numpy().reshape(-1).astype(np.int64)
                )
                log[f"{prefix}.crowd"] = np.array(
                    [int(batch["is_crowd"][i].numpy().sum())], np.int64
                )
        log[f"flip{flip}.image_ids"] = np.array(ids, dtype=np.int64)
    return log


def crowd_row(torch_log, paddle_log):
    """Crowd boxes: mmdet moves them to ``ignored_instances``, which RetinaNet's assigner uses only
    when ``ignore_iof_thr > 0`` (the reference's is -1); ours does not load them
    (``load_crowd: false``). Equivalent for training when ours carries none among its gts and the
    reference never uses its ignored instances."""
    keys = sorted(k for k in torch_log if k.endswith(".crowd"))
    ref = sum(int(torch_log[k][0]) for k in keys)
    ours = sum(int(paddle_log[k][0]) for k in keys if k in paddle_log)
    missing = [k for k in keys if k not in paddle_log]
    thr = float(torch_log["ref.ignore_iof_thr"][0])
    ok = not missing and ours == 0 and thr <= 0
    note = (
        f"reference: {ref} crowd box(es) as ignored instances, assigner ignore_iof_thr {thr:g} "
        f"(never used); ours: {ours} crowd box(es) among the gts"
        + (f"; missing {missing}" if missing else "")
    )
    return report.Row(
        STEP,
        "crowd boxes (reference: ignored, unused; ours: not loaded)",
        float(ours),
        float(ours),
        "ours 0, ref thr<=0",
        report.STATUS_PASS if ok else report.STATUS_FAIL,
        note,
    )


def judge(args, torch_log, paddle_log):
    exact, rounded = FLIP_RE + r"exact\..*", FLIP_RE + r"rounded\..*"
    checks = [
        report.Check("images trained on, in order", r"flip[01]\.image_ids", "exact"),
        *image_checks(args, FLIP_RE),
        report.Check("gt labels", r".*\.gt_labels", "exact"),
        report.Check(
            "exact grid: gt boxes", exact + r"\.gt_bboxes", "max_abs", max_abs=args.box_abs
        ),
        report.Check(
            "rounded grid: gt boxes",
            rounded + r"\.gt_bboxes",
            "max_abs",
            max_abs=args.rounded_box_abs,
        ),
        report.Check(
            "rounded grid: gt boxes, exact",
            rounded + r"\.gt_bboxes",
            "max_abs",
            max_abs=args.box_abs,
            gating=False,
        ),
    ]
    crowd = {k for k in torch_log if k.endswith(".crowd") or k == "ref.ignore_iof_thr"}
    rows = report.compare(
        STEP,
        {k: v for k, v in torch_log.items() if k not in crowd},
        {k: v for k, v in paddle_log.items() if k not in crowd},
        checks,
    )
    return [*rows, crowd_row(torch_log, paddle_log)]


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
