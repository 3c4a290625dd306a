"""Step 7: evaluation data reading, the same image files through both test pipelines.

Reference: mmdet 3.3.0's ``test_pipeline`` of ``retinanet_r50_fpn_ghm-1x_coco.py`` without
``LoadAnnotations`` (``LoadImageFromFile`` -> ``Resize(scale=(1333, 800), keep_ratio=True)`` ->
``PackDetInputs``), then the model's ``DetDataPreprocessor`` (BGR -> RGB, ``(x - mean) / std`` in
float32, zero padding to a multiple of 32), one image per batch. Ours: the ``EvalReader`` of
``--config`` (``Decode`` -> ``Resize([800, 1333], keep_ratio, interp 1)`` -> ``NormalizeImage`` ->
``Permute`` -> ``PadBatch(32)``, batch size 1) over its ``EvalDataset`` (ppdet's ``COCODataSet``)
pointed at a generated JSON, built through ppdet's reader machinery (``create('EvalReader')``).

    python -m align.step7_eval_data --side torch [--images DIR]
    python -m align.step7_eval_data --side paddle [--images DIR]

The images (:data:`align.data_reading.EVAL_IMAGES`: 640x480 JPEG, 480x640, 1000x300, 20x30,
1500x1200 JPEG, a grayscale PNG, an RGBA PNG) are generated into ``--images`` on each side; the
torch log holds their sha256 and the Paddle side refuses other files.

Decoding: both sides call ``cv2.imdecode(bytes, IMREAD_COLOR)`` (mmcv ``imfrombytes(flag='color')``,
ppdet ``Decode``), so a grayscale file becomes 3 equal channels and an RGBA file loses its alpha
(no compositing: the colour stored under transparent pixels is used); the logs show it.

Logged per image (keys ``<exact|rounded>.<file>.*``, see :func:`align.data_reading.grid_kind` and
:func:`align.data_reading.summarise_input`): padded shape, ``im_shape`` (h, w), ``scale_factor``
(h, w; mmdet's is (w, h), swapped here), channel mean/std (float64), row and column mean profiles,
every 37th row and column of the tensor, the largest |value| in the padding.
"""

import sys

from align import common, report
from align import data_reading as dr

STEP = "step7_eval_data"
USES_WEIGHTS = False
DIFF_LOG_THRESHOLD = 1e-6
SUMMARY_KEYS = ("chmean", "chstd", "rowmean", "colmean", "sub")


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument(
        "--images", default=dr.default_folder(STEP), help="folder for the generated image files"
    )
    parser.add_argument(
        "--pixel-abs",
        type=float,
        default=1e-6,
        help="exact grids: max abs of the normalised values (a few float32 ulps)",
    )
    parser.add_argument(
        "--rounded-mean-abs",
        type=float,
        default=0.03,
        help="rounded grids: mean abs of the normalised subsample and profiles (ppdet's grid)",
    )
    parser.add_argument(
        "--rounded-scale-rel",
        type=float,
        default=2e-3,
        help="rounded grids: scale_factor, relative (0.5 px over the >= 400 px resized side)",
    )
    return parser


def torch_side(ctx, args):
    from align.torch_ref import install_mmcv_ext_stand_in, reference_config_path

    install_mmcv_ext_stand_in()
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.dataset import Compose

    register_all_modules()
    cfg = Config.fromfile(reference_config_path())
    steps = [t for t in cfg.test_pipeline if t["type"] != "LoadAnnotations"]
    pipeline = Compose(steps)
    preprocessor = MODELS.build(cfg.model.data_preprocessor)
    files = dr.write_eval_images(args.images)
    log = dr.files_meta([p for p, _ in files])
    for image_id, (path, prefix) in enumerate(files, start=1):
        packed = pipeline({"img_path": path, "img_id": image_id})
        batch = preprocessor(
            {"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]},
            training=False,
        )
        meta = batch["data_samples"][0].metainfo
        w_scale, h_scale = meta["scale_factor"]
        log.update(
            dr.summarise_input(
                prefix, batch["inputs"][0].numpy(), meta["img_shape"], (h_scale, w_scale)
            )
        )
    return log


def read_eval_batches(config: str, folder: str):
    """``[(image, im_shape, scale_factor)]`` of our EvalReader over ``folder``'s eval.json.

    The config's ``EvalDataset`` (a ``COCODataSet``) is pointed at ``folder``; the reader is built
    by ppdet's ``create('EvalReader')`` and iterated in the main process (worker_num 0).
    """
    import paddle
    from ppdet.core.workspace import create

    from ppdet_ghm.builder import load_config

    paddle.set_device("cpu")
    cfg = load_config(config)
    dataset = cfg["EvalDataset"]
    dataset.dataset_dir, dataset.image_dir, dataset.anno_path = folder, ".", dr.EVAL_JSON
    dataset.allow_empty = True
    reader = create("EvalReader")(dataset, 0)
    out = []
    for batch in reader:
        for i in range(batch["image"].shape[0]):
            out.append(
                (
                    batch["image"][i].numpy(),
                    batch["im_shape"][i].numpy(),
                    batch["scale_factor"][i].numpy(),
                )
            )
    return out


def paddle_side(ctx, args):
    files = dr.write_eval_images(args.images)
    torch_log = common.load_log(common.log_path(args.logs, STEP, "torch"))
    dr.check_same_files(torch_log, [p for p, _ in files], common.log_path(args.logs, STEP, "torch"))
    batches = read_eval_batches(args.config, args.images)
    if len(batches) != len(files):
        raise ValueError(f"EvalReader gave {len(batches)} images for {len(files)} files")
    log = dr.files_meta([p for p, _ in files])
    for (_, prefix), (image, im_shape, scale_factor) in zip(files, batches, strict=True):
        log.update(dr.summarise_input(prefix, image, im_shape, scale_factor))
    return log


def pixel_checks(args, kind: str, gating: bool, tolerant: bool, label: str = "", prefix: str = ""):
    """Checks of the normalised pixels of the ``kind`` ('exact' / 'rounded') grid images.

    Exact grids: max abs ``--pixel-abs``; rounded grids (``tolerant``): mean abs
    ``--rounded-mean-abs``. ``prefix`` is a regex put before the keys' ``<kind>.`` (step 9's flip).
    """
    checks = []
    names = {"sub": "every 37th pixel", "chmean": "channel means", "chstd": "channel stds"}
    names.update({"rowmean": "row profiles", "colmean": "column profiles"})
    for key in SUMMARY_KEYS:
        quantity = f"{kind} grid: {names[key]}{label}"
        pattern = rf"{prefix}{kind}\..*\.{key}"
        if tolerant:
            check = report.Check(
                quantity, pattern, "mean_abs", mean_abs=args.rounded_mean_abs, gating=gating
            )
        else:
            check = report.Check(
                quantity, pattern, "max_abs", max_abs=args.pixel_abs, gating=gating
            )
        checks.append(check)
    return checks


def image_checks(args, prefix: str = ""):
    """Checks of the network inputs of every image: padded shape, ``im_shape``, ``scale_factor``,
    pixels and padding, on exact and rounded grids (steps 7 and 9; ``prefix``: step 9's flip).

    On rounded grids ppdet's Resize samples at 1 / s where mmcv samples at input / output size,
    and keeps h * s unrounded in im_shape: they gate at the tolerant thresholds, and the same
    quantities are reported (INFO, not gating) at the exact ones.
    """
    exact, rounded = prefix + r"exact\..*", prefix + r"rounded\..*"
    return [
        report.Check("padded shape [3, Hp, Wp]", r".*\.shape", "exact"),
        report.Check("exact grid: im_shape (h, w)", exact + r"\.im_shape", "exact"),
        report.Check(
            "exact grid: scale_factor (h, w)", exact + r"\.scale_factor", "relative", rel=1e-7
        ),
        *pixel_checks(args, "exact", gating=True, tolerant=False, prefix=prefix),
        report.Check("padding is zero", r".*\.pad_max_abs", "exact"),
        report.Check(
            "rounded grid: im_shape (h, w)", rounded + r"\.im_shape", "max_abs", max_abs=0.5
        ),
        report.Check(
            "rounded grid: scale_factor (h, w)",
            rounded + r"\.scale_factor",
            "relative",
            rel=args.rounded_scale_rel,
        ),
        *pixel_checks(args, "rounded", gating=True, tolerant=True, prefix=prefix),
        report.Check(
            "rounded grid: im_shape, exact", rounded + r"\.im_shape", "exact", gating=False
        ),
        report.Check(
            "rounded grid: scale_factor, exact",
            rounded + r"\.scale_factor",
            "relative",
            rel=1e-7,
            gating=False,
        ),
        *pixel_checks(
            args, "rounded", gating=False, tolerant=False, label=", exact", prefix=prefix
        ),
    ]


def judge(args, torch_log, paddle_log):
    checks = image_checks(args)
    return report.compare(STEP, torch_log, paddle_log, checks)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
