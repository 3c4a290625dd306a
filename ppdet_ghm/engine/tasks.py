"""The pipeline's tasks as functions: train, evaluate, infer, export, run an exported model.

The command line (:mod:`ppdet_ghm.cli`) and the demo call these; each loads the config with
:func:`ppdet_ghm.builder.load_config` (fresh global config, unknown keys rejected), picks the
device, and drives :class:`~ppdet_ghm.engine.trainer.GHMTrainer`.

Detections JSON written by :func:`infer`, :func:`predict_exported` and :func:`predict_onnx`
(``detections.json``): a list of ``{"file_name", "image_id", "category_id", "category_name", "class_index", "bbox": [x,
y, w, h], "score"}``, every detection the model returns (score >= the config's ``score_thr``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import paddle
import yaml

from ppdet_ghm.builder import load_config
from ppdet_ghm.data.validation import DataChecks, decode_problem
from ppdet_ghm.engine.checkpoint_io import atomic_file, find_latest_checkpoint
from ppdet_ghm.engine.coco_eval import CocoBoxResults, evaluate_detections
from ppdet_ghm.engine.cpu_memory import keep_freed_memory
from ppdet_ghm.engine.parent_death import die_with_parent
from ppdet_ghm.engine.safe_load import ensure_safe
from ppdet_ghm.engine.trainer import GHMTrainer, load_model_weights, log_to_file
from ppdet_ghm.engine.visualize import draw_detections

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "default_output_dir",
    "evaluate",
    "export",
    "find_images",
    "infer",
    "evaluate_exported",
    "predict_exported",
    "predict_onnx",
    "setup_runtime",
    "train",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def setup_runtime(cfg, threads: int | None = None, seed: int | None = None) -> str:
    """Pick the device (GPU when the config asks for it and Paddle has one, else CPU), set the
    CPU math threads (default: the CPUs this process may use) and, unless the config says
    ``keep_freed_memory: false``, keep freed CPU memory for reuse
    (:mod:`ppdet_ghm.engine.cpu_memory`), seed Paddle/NumPy/Python when ``seed`` is given, and
    join the distributed group under ``paddle.distributed.launch``. Returns the device name."""
    use_gpu = bool(cfg.get("use_gpu", False))
    if use_gpu and not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
        logger.info("use_gpu is set but Paddle has no GPU here: running on CPU")
        use_gpu = False
    cfg["use_gpu"] = use_gpu
    device = "gpu" if use_gpu else "cpu"
    paddle.set_device(device)
    if not use_gpu:
        count = threads or len(os.sched_getaffinity(0))
        paddle.base.core.set_num_threads(count)
        if _config_flag(cfg, "keep_freed_memory", default=True):
            keep_freed_memory()
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        from ppdet.engine.env import init_parallel_env

        # a rank of paddle.distributed.launch: a killed launcher stops it like a SIGTERM would
        die_with_parent(signal.SIGTERM)
        init_parallel_env()
    if seed is not None:
        from ppdet.engine.env import set_random_seed

        set_random_seed(seed)
    return device


def _config_flag(cfg, key: str, default: bool) -> bool:
    """A true/false config key (YAML bool, or the strings true/false of ``-o key=value``)."""
    value = cfg.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"config key {key}: expected true or false, got {value!r}")
    return value


def default_output_dir(cfg, kind: str) -> str:
    """``<save_dir>/<config name>`` for training, ``.../<kind>`` for the other tasks."""
    base = os.path.join(cfg.get("save_dir", "output"), cfg.get("filename", "model"))
    return base if kind == "train" else os.path.join(base, kind)


def train(
    config: str,
    *,
    overrides: dict | None = None,
    output_dir: str | None = None,
    validate: bool = False,
    resume: str | None = None,
    use_vdl: bool = False,
    progress: bool = False,
    seed: int | None = None,
    threads: int | None = None,
) -> GHMTrainer:
    """Train the model of ``config``; checkpoints, ``train.log`` and ``vdl/`` in ``output_dir``.

    Args:
        resume: a checkpoint path without suffix (``output/x/3``) to continue from, or
            ``"auto"`` for the latest complete checkpoint in ``output_dir`` (none: start anew).
        validate: evaluate on EvalDataset after every snapshot epoch (keeps ``best_model``).
        seed: seeds Paddle (weight init), NumPy and Python before the model is built, and the
            data order and augmentation of every epoch (default 0 for the data; a resumed run
            takes the data seed from the checkpoint's ``.meta.json``).
    """
    cfg = load_config(config, overrides)
    cfg["use_vdl"] = bool(use_vdl)
    output_dir = output_dir or default_output_dir(cfg, "train")
    setup_runtime(cfg, threads, seed)
    rank = paddle.distributed.get_rank()
    log_name = "train.log" if rank == 0 else f"train.rank{rank}.log"
    with log_to_file(os.path.join(output_dir, log_name)):
        logger.info("train %s (overrides %s) -> %s", config, overrides or {}, output_dir)
        if validate:  # the evaluation images, with the training set's bad_image policy
            policy = DataChecks.from_config(cfg.get("data_checks")).bad_image
            readable_eval_set(cfg, policy, output_dir, skip_hint="-o data_checks.bad_image=skip")
        if resume == "auto":
            resume = find_latest_checkpoint(output_dir)
            logger.info("resume auto: %s", resume or f"no complete checkpoint in {output_dir}")
        trainer = GHMTrainer(
            cfg,
            "train",
            output_dir=output_dir,
            progress=progress,
            data_seed=0 if seed is None else seed,
        )
        if resume:
            trainer.resume_weights(resume)
        elif cfg.get("pretrain_weights"):
            if "://" not in str(cfg.pretrain_weights):  # ppdet loads it with paddle.load
                ensure_safe(cfg.pretrain_weights)
            trainer.load_weights(cfg.pretrain_weights)
        trainer.train(validate=validate)
    return trainer


def _weights_of(cfg, weights: str | None) -> str:
    weights = weights or cfg.get("weights")
    if not weights:
        raise ValueError("no weights: pass --weights PATH or -o weights=PATH")
    return weights


def evaluate(
    config: str,
    *,
    weights: str | None = None,
    overrides: dict | None = None,
    output_dir: str | None = None,
    progress: bool = False,
    threads: int | None = None,
    bad_image: str = "error",
) -> CocoBoxResults:
    """COCO-evaluate ``weights`` on the config's EvalDataset.

    Writes ``bbox.json`` (the detections, COCO results format) and ``metrics.json`` (the 12
    COCO numbers and per-class AP) to ``output_dir``; returns the results. Every image is decoded
    first (:func:`readable_eval_set`): an unreadable one stops the run naming it
    (``bad_image="error"``, the default: a score over fewer images is not the set's score), or is
    left out of loader and metric (``"skip"``).
    """
    cfg = load_config(config, overrides)
    weights = _weights_of(cfg, weights)
    output_dir = output_dir or default_output_dir(cfg, "eval")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    cfg["save_prediction_only"] = True  # ppdet writes bbox.json; we evaluate it below
    cfg["output_eval"] = output_dir
    setup_runtime(cfg, threads)
    with log_to_file(os.path.join(output_dir, "eval.log")):
        skipped = readable_eval_set(cfg, bad_image, output_dir, progress=progress)
        trainer = GHMTrainer(cfg, "eval", output_dir=output_dir, progress=progress)
        load_model_weights(trainer.model, weights)
        trainer.evaluate()
        dets_path = os.path.join(output_dir, "bbox.json")
        if not os.path.isfile(dets_path):  # ppdet writes nothing without detections
            with open(dets_path, "w") as f:
                json.dump([], f)
        results = evaluate_detections(dets_path, trainer.dataset.get_anno())
        with open(os.path.join(output_dir, "metrics.json"), "w") as f:
            json.dump(
                {
                    "weights": weights,
                    "ground_truth": trainer.dataset.get_anno(),
                    "skipped_images": skipped,
                    **results.to_dict(),
                },
                f,
                indent=1,
            )
        logger.info("bbox AP %.4f (detections %s)", results.stats["AP"], dets_path)
    return results


def find_images(path: str | os.PathLike) -> list[str]:
    """``path`` itself if it is a file, else the images directly in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise FileNotFoundError(f"no image or folder at {path}")
    images = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {path}")
    return images


BAD_IMAGE_POLICIES = ("skip", "error")


def readable_images(
    images: list[str],
    bad_image: str = "skip",
    *,
    skip_hint: str = "--bad_image skip",
    progress: bool = False,
) -> tuple[list[str], list[str]]:
    """Split ``images`` into those that decode and those that do not, as ppdet's ``Decode``
    reads them (``cv2.imdecode`` of the file's bytes, colour; on a thread per core).

    An undecodable file (empty, truncated header, not an image) makes ppdet's reader raise inside
    a loader worker or thread, which can leave the run waiting forever: it is found here first.

    Args:
        bad_image: ``"skip"`` logs every unreadable file with the reason and leaves it out;
            ``"error"`` raises ``ValueError`` naming the first one.
        skip_hint: the option that picks ``skip``, named in the error.
        progress: a progress bar (long sets).

    Returns:
        (readable paths, unreadable paths), each in the order given.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    if bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_image must be one of {BAD_IMAGE_POLICIES}, got {bad_image!r}")
    good, bad = [], []
    pool = ThreadPoolExecutor(max(1, min(8, len(os.sched_getaffinity(0)))))
    try:  # cv2 decodes without the GIL
        problems = tqdm(
            pool.map(decode_problem, images),
            total=len(images),
            desc="check images",
            disable=not progress,
        )
        for path, reason in zip(images, problems, strict=True):
            if reason is None:
                good.append(path)
                continue
            if bad_image == "error":
                raise ValueError(f"{path}: unreadable image ({reason}); {skip_hint} leaves it out")
            logger.warning("%s: unreadable image (%s), skipped", path, reason)
            bad.append(path)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an error stops the pending decodes
    if not good:
        raise ValueError(f"none of the {len(images)} image(s) can be read")
    return good, bad


def readable_eval_set(
    cfg,
    bad_image: str,
    output_dir: str,
    *,
    skip_hint: str = "--bad_image skip",
    progress: bool = False,
) -> list[str]:
    """Decode every image of the config's COCO ``EvalDataset`` before evaluating
    (:func:`readable_images`); returns the unreadable paths.

    ``bad_image="error"``: the first unreadable image is a ``ValueError`` naming it. ``"skip"``:
    the EvalDataset is pointed at ``<output_dir>/<annotation name>.readable.json``, its annotation
    file without the unreadable images and their boxes, so that neither the loader nor the COCO
    metric sees them (the numbers are then over fewer images: the log and ``metrics.json`` say
    which were left out).
    """
    from ppdet.data.source.coco import COCODataSet

    dataset = cfg["EvalDataset"]
    if not isinstance(dataset, COCODataSet):
        return []
    anno_path = dataset.get_anno()
    with open(anno_path) as f:
        coco = json.load(f)
    image_dir = os.path.join(dataset.dataset_dir or "", dataset.image_dir or "")
    paths = {img["id"]: os.path.join(image_dir, img["file_name"]) for img in coco["images"]}
    _, bad = readable_images(
        list(paths.values()), bad_image, skip_hint=skip_hint, progress=progress
    )
    if not bad:
        return []
    bad_ids = {i for i, path in paths.items() if path in set(bad)}
    coco["images"] = [img for img in coco["images"] if img["id"] not in bad_ids]
    coco["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] not in bad_ids]
    name = os.path.splitext(os.path.basename(anno_path))[0] + ".readable.json"
    readable = os.path.abspath(os.path.join(output_dir, name))
    with atomic_file(readable) as tmp, open(tmp, "w") as f:
        json.dump(coco, f)
    dataset.anno_path = readable  # os.path.join(dataset_dir, an absolute path) is that path
    logger.warning(
        "%d of %d evaluation image(s) unreadable, left out of the evaluation: %s; ground truth "
        "without them: %s",
        len(bad),
        len(paths),
        ", ".join(bad),
        readable,
    )
    return bad


def _write_detections(
    per_image, class_names, category_ids, output_dir, draw_threshold, draw
) -> list[dict]:
    """per_image: [(path, dets [M, 6])] -> detections list; draws and saves images if ``draw``.
    ``category_ids[i]`` is the dataset category id of class index i."""
    from PIL import Image

    records = []
    for image_id, (path, dets) in enumerate(per_image):
        image_records = []
        for cls, score, x1, y1, x2, y2 in np.asarray(dets, dtype=np.float64).reshape(-1, 6):
            index = int(cls)
            image_records.append(
                {
                    "file_name": os.path.basename(path),
                    "image_id": image_id,
                    "category_id": int(category_ids[index]),
                    "category_name": str(class_names[index]),
                    "class_index": index,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
        records += image_records
        if draw:
            with Image.open(path) as im:
                drawn = draw_detections(im, image_records, draw_threshold)
            drawn.save(os.path.join(output_dir, os.path.basename(path)))
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(records, f, indent=1)
    return records


def infer(
    config: str,
    images: list[str],
    *,
    weights: str | None = None,
    overrides: dict | None = None,
    output_dir: str | None = None,
    draw_threshold: float = 0.5,
    draw: bool = True,
    threads: int | None = None,
) -> list[dict]:
    """Detect objects in ``images`` with the dygraph model; writes the images with boxes, class
    names and scores drawn (score >= ``draw_threshold``) and ``detections.json`` to
    ``output_dir``. Returns the detections (see the module docstring)."""
    cfg = load_config(config, overrides)
    weights = _weights_of(cfg, weights)
    output_dir = output_dir or default_output_dir(cfg, "infer")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    setup_runtime(cfg, threads)
    trainer = GHMTrainer(cfg, "test", output_dir=output_dir)
    load_model_weights(trainer.model, weights)
    from ppdet.data.source.category import get_categories

    clsid2catid, catid2name = get_categories(cfg.metric, anno_file=trainer.dataset.get_anno())
    category_ids = [clsid2catid[i] for i in range(len(clsid2catid))]
    class_names = [str(catid2name[c]) for c in category_ids]
    results = trainer.predict(images, output_dir=output_dir, save_results=False, visualize=False)
    imid2path = trainer.dataset.get_imid2path()
    per_image = []
    for outs in results:
        start = 0
        for i, im_id in enumerate(np.asarray(outs["im_id"]).reshape(-1)):
            count = int(np.asarray(outs["bbox_num"]).reshape(-1)[i])
            dets = np.asarray(outs["bbox"])[start : start + count].reshape(-1, 6)
            per_image.append((imid2path[int(im_id)], dets[dets[:, 0] >= 0]))
            start += count
    return _write_detections(per_image, class_names, category_ids, output_dir, draw_threshold, draw)


def export(
    config: str,
    *,
    weights: str | None = None,
    overrides: dict | None = None,
    output_dir: str | None = None,
    onnx: bool = False,
) -> str:
    """Export the model as a Paddle inference model into ``output_dir`` (``model.json`` or
    ``.pdmodel``, ``model.pdiparams``, ``infer_cfg.yml``); returns ``output_dir``.

    ``infer_cfg.yml`` is ppdet's, plus ``category_ids`` (the dataset category id of each entry
    of ``label_list``), which the predictor puts in its detections JSON. With ``onnx``, also
    ``model.onnx`` converted from that model (:func:`ppdet_ghm.engine.onnx_export.convert_export`;
    needs the ``onnx`` extra, checked before anything is written)."""
    if onnx:
        from ppdet_ghm.engine import onnx_export

        for module in ("paddle2onnx", "onnx"):
            onnx_export.require(module)
    cfg = load_config(config, overrides)
    weights = _weights_of(cfg, weights)
    output_dir = os.path.normpath(output_dir or default_output_dir(cfg, "export"))
    setup_runtime(cfg)
    trainer = GHMTrainer(cfg, "test", output_dir=output_dir)
    load_model_weights(trainer.model, weights)
    # ppdet writes into <dir>/<cfg.filename>: point both at output_dir
    trainer.cfg["filename"] = os.path.basename(output_dir)
    trainer.export(os.path.dirname(output_dir) or ".")
    from ppdet.data.source.category import get_categories

    clsid2catid, _ = get_categories(cfg.metric, anno_file=trainer.dataset.get_anno())
    cfg_path = os.path.join(output_dir, "infer_cfg.yml")
    with open(cfg_path) as f:
        infer_cfg = yaml.safe_load(f)
    infer_cfg["category_ids"] = [int(clsid2catid[i]) for i in range(len(clsid2catid))]
    with atomic_file(cfg_path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(infer_cfg, f, sort_keys=False)
    logger.info("exported %s (weights %s) to %s", config, weights, output_dir)
    stale = os.path.join(output_dir, "model.onnx")
    if onnx:
        from ppdet_ghm.engine.onnx_export import convert_export

        convert_export(output_dir)
    elif os.path.exists(stale):  # converted from the weights this export replaced
        os.remove(stale)
        logger.info("removed %s, converted from the previous export (re-export with --onnx)", stale)
    return output_dir


def _predict_with(detector, images, output_dir, draw_threshold, draw) -> list[dict]:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    per_image = [(path, detector.predict(path)) for path in images]
    return _write_detections(
        per_image, detector.label_list, detector.category_ids, output_dir, draw_threshold, draw
    )


def predict_exported(
    model_dir: str,
    images: list[str],
    *,
    output_dir: str,
    draw_threshold: float = 0.5,
    draw: bool = True,
    threads: int | None = None,
    use_gpu: bool = False,
    use_onednn: bool = True,
) -> list[dict]:
    """:func:`infer` with an exported model and the Python predictor
    (:class:`~ppdet_ghm.engine.predictor.ExportedDetector`; oneDNN on CPU unless ``use_onednn``
    is False)."""
    from ppdet_ghm.engine.predictor import ExportedDetector

    detector = ExportedDetector(model_dir, threads=threads, use_gpu=use_gpu, use_onednn=use_onednn)
    return _predict_with(detector, images, output_dir, draw_threshold, draw)


def onnx_infer_dir(onnx_path: str) -> str:
    """Where ``infer --onnx`` writes by default: ``infer_onnx/`` beside the ``.onnx`` file."""
    return os.path.join(os.path.dirname(os.path.abspath(onnx_path)), "infer_onnx")


def predict_onnx(
    onnx_path: str,
    images: list[str],
    *,
    output_dir: str,
    draw_threshold: float = 0.5,
    draw: bool = True,
    threads: int | None = None,
) -> list[dict]:
    """:func:`infer` with a ``model.onnx`` of ``export --onnx`` on ONNX Runtime's CPU provider
    (:class:`~ppdet_ghm.engine.onnx_predictor.OnnxDetector`): the same drawn images and
    ``detections.json`` as :func:`predict_exported`."""
    from ppdet_ghm.engine.onnx_predictor import OnnxDetector

    detector = OnnxDetector(onnx_path, threads=threads)
    return _predict_with(detector, images, output_dir, draw_threshold, draw)


def coco_eval_set(
    config: str | None = None,
    *,
    ground_truth: str | None = None,
    image_dir: str | None = None,
    overrides: dict | None = None,
) -> tuple[str, str]:
    """``(ground-truth COCO JSON, image folder)`` of a COCO-format set: the config's
    ``EvalDataset``, or ``ground_truth`` with ``image_dir``.

    Raises:
        ValueError: neither or both given, or an EvalDataset that is not COCO.
        FileNotFoundError: the ground truth or the image folder does not exist.
    """
    if (config is None) == (ground_truth is None):
        raise ValueError("give the set either as a config (its EvalDataset) or as --gt/--image_dir")
    if config is not None:
        from ppdet.data.source.coco import COCODataSet

        cfg = load_config(config, overrides)
        dataset = cfg["EvalDataset"]
        if not isinstance(dataset, COCODataSet):
            raise ValueError(f"{config}: EvalDataset is {type(dataset).__name__}, not COCODataSet")
        ground_truth = dataset.get_anno()
        image_dir = os.path.join(dataset.dataset_dir or "", dataset.image_dir or "")
    elif image_dir is None:
        raise ValueError("--gt needs --image_dir (the folder of the images it names)")
    if not os.path.isfile(ground_truth):
        raise FileNotFoundError(f"ground truth {ground_truth} not found")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {image_dir} not found")
    return ground_truth, image_dir


def evaluate_exported(
    detector,
    ground_truth: str,
    image_dir: str,
    *,
    output_dir: str,
    bad_image: str = "error",
    progress: bool = False,
) -> CocoBoxResults:
    """COCO-evaluate an exported model on a COCO-format set, image by image.

    Args:
        detector: an :class:`~ppdet_ghm.engine.predictor.ExportedDetector` or
            :class:`~ppdet_ghm.engine.onnx_predictor.OnnxDetector` (``predict``,
            ``category_ids``).
        ground_truth: COCO instances JSON; ``file_name`` of each image is under ``image_dir``.
        bad_image: an unreadable image stops the run naming it (``"error"``) or is left out of
            the detections and the ground truth (``"skip"``, listed in ``metrics.json``).

    Writes ``bbox.json`` (COCO results, the ground truth's image ids) and ``metrics.json`` to
    ``output_dir``; returns the results.
    """
    from tqdm import tqdm

    with open(ground_truth) as f:
        coco = json.load(f)
    paths = {img["id"]: os.path.join(image_dir, img["file_name"]) for img in coco["images"]}
    good, bad = readable_images(list(paths.values()), bad_image, progress=progress)
    good = set(good)
    gt_path = ground_truth
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if bad:
        coco["images"] = [img for img in coco["images"] if paths[img["id"]] in good]
        kept = {img["id"] for img in coco["images"]}
        coco["annotations"] = [a for a in coco.get("annotations", []) if a["image_id"] in kept]
        gt_path = os.path.join(output_dir, "ground_truth.readable.json")
        with atomic_file(gt_path) as tmp, open(tmp, "w") as f:
            json.dump(coco, f)
    records = []
    items = [(i, p) for i, p in paths.items() if p in good]
    for image_id, path in tqdm(items, desc="eval", disable=not progress):
        for cls, score, x1, y1, x2, y2 in detector.predict(path).astype(np.float64):
            records.append(
                {
                    "image_id": image_id,
                    "category_id": int(detector.category_ids[int(cls)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    dets_path = os.path.join(output_dir, "bbox.json")
    with atomic_file(dets_path) as tmp, open(tmp, "w") as f:
        json.dump(records, f)
    results = evaluate_detections(records, gt_path)
    with atomic_file(os.path.join(output_dir, "metrics.json")) as tmp, open(tmp, "w") as f:
        json.dump(
            {
                "model": getattr(detector, "path", None) or type(detector).__name__,
                "ground_truth": ground_truth,
                "skipped_images": bad,
                **results.to_dict(),
            },
            f,
            indent=1,
        )
    logger.info("bbox AP %.4f (detections %s)", results.stats["AP"], dets_path)
    return results
