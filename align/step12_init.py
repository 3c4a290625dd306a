"""Step 12: initialisation of a freshly built model, layer by layer, against mmdet's init_weights.

Reference: mmdet's RetinaNet-GHM built from the config in the mmdet wheel with the backbone's
``init_cfg`` (``Pretrained torchvision://resnet50``) set to None, so that nothing is downloaded,
then ``init_weights()``; ours: ``ppdet_ghm.builder.build_model(config)`` (no weights loaded).
Each side builds ``--seeds`` models (torch ``manual_seed(s)`` / ``paddle.seed(s)``, s = 0, 1, ...).

Compared where the reference defines an init independent of the pretrained weights:

- distributions, pooled over the seeds, of the head convs (mmdet ``RetinaHead`` ``init_cfg``:
  ``Normal(std=0.01)`` on every Conv2d, bias 0; ``retina_cls`` bias ``bias_init_with_prob(0.01)`` =
  -log(99)) and of the FPN's lateral and output convs (mmdet ``FPN`` ``init_cfg``: ``Xavier``,
  ``distribution='uniform'``, gain 1: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), bias 0):
  mean and variance of the weights as z-scores of the difference (the standard errors from each
  side's own variance and fourth moment), a two-sample Kolmogorov-Smirnov test on a fixed strided
  subsample of each layer (``--ks-per-seed`` values per seed), and for the uniform inits
  max |w| / a (both near 1: a wrong bound or gain shows);
- constants exactly: every bias of those layers (seed 0);
- exactly: which parameters are trainable (mmdet ``requires_grad`` after ``train()`` vs Paddle
  ``not stop_gradient``, by the converter's rename table; stem + stage 1 frozen), whether each
  BatchNorm uses its running statistics in training mode (mmdet ``norm_eval``), BN epsilon,
  layer shapes, and that no Paddle parameter lies outside the rename table (BN running statistics
  aside, which Paddle keeps as parameters).

The backbone's weights are not compared: training starts from ImageNet weights (our converter).

    python -m align.step12_init --side torch
    python -m align.step12_init --side paddle

Logged per compared layer L (mmdet module name), pooled over the seeds: ``stats.L`` [5] (mean,
variance, kurtosis m4 / var^2, max |w|, number of values; float64), ``sample.L`` [seeds * k] (each
seed's ``w.ravel()[::n // k][:k]``),
``bound_ratio.L`` (uniform inits: max |w| / a, the largest over the seeds), ``shape.L`` [4],
``bias.L`` [C] (seed 0);
``trainable`` [P] (uint8, mmdet ``named_parameters`` order), ``bn.running_stats`` [B] (uint8) and
``bn.eps`` [B] (mmdet BatchNorm modules in ``named_modules`` order), ``unmapped_parameters`` [1].
"""

import math
import sys

import numpy as np

from align import common, report

STEP = "step12_init"
DIFF_LOG_THRESHOLD = 1e-6
USES_WEIGHTS = False

TOWERS = tuple(f"bbox_head.{t}_convs.{i}.conv" for t in ("cls", "reg") for i in range(4))
HEAD_NORMAL = (*TOWERS, "bbox_head.retina_reg")
RETINA_CLS = ("bbox_head.retina_cls",)
FPN = tuple(f"neck.lateral_convs.{i}.conv" for i in range(3)) + tuple(
    f"neck.fpn_convs.{i}.conv" for i in range(5)
)
LAYERS = HEAD_NORMAL + RETINA_CLS + FPN
# (row label, layers, theoretical std from the weight shape)
GROUPS = (
    ("head towers + retina_reg, Normal(0, 0.01)", HEAD_NORMAL, lambda shape: 0.01),
    ("retina_cls, Normal(0, 0.01)", RETINA_CLS, lambda shape: 0.01),
    ("FPN lateral + output convs, Xavier uniform", FPN, lambda shape: xavier_bound(shape) / 3**0.5),
)


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--seeds", type=int, default=5, help="models built per side")
    parser.add_argument("--ks-per-seed", type=int, default=256, help="KS subsample per seed")
    parser.add_argument("--alpha", type=float, default=1e-3, help="KS level, per layer")
    parser.add_argument("--z-max", type=float, default=5.0, help="moments: max |z| per layer")
    parser.add_argument(
        "--bound-abs", type=float, default=1e-3, help="max |w| / Xavier bound, max abs diff"
    )
    return parser


def xavier_bound(shape):
    """U(-a, a) bound of Xavier-uniform, gain 1, for a conv weight [out, in, kh, kw]."""
    receptive = int(np.prod(shape[2:]))
    return math.sqrt(6.0 / (shape[1] * receptive + shape[0] * receptive))


def layer_entries(name, weight, bias, seed_index, k):
    """One seed's log entries of a layer (``weight`` [out, in, kh, kw], ``bias`` [out])."""
    w = weight.astype(np.float64).ravel()
    mean, var = w.mean(), w.var()
    kurt = ((w - mean) ** 4).mean() / var**2
    entries = {
        "stats": np.array([mean, math.sqrt(var), kurt, np.abs(w).max()]),
        "sample": weight.ravel()[:: w.size // k][:k].astype(np.float32),
        "bound_ratio": np.array(np.abs(w).max() / xavier_bound(weight.shape)),
    }
    if seed_index == 0:
        entries["shape"] = np.array(weight.shape, dtype=np.int64)
        entries["bias"] = bias.astype(np.float32).copy()
    return entries


def collect(per_seed):
    """``[{layer: entries}]`` over seeds -> the log: moments and subsamples pooled over the seeds.

    ``stats.L`` = [mean, variance, kurtosis (mean over seeds), max |w|, number of values], pooled
    (the seeds' values are equally many); ``sample.L`` the seeds' subsamples one after the other.
    """
    log = {}
    for name in LAYERS:
        stats = np.stack([s[name]["stats"] for s in per_seed])
        means, stds, kurts, max_abs = stats.T
        mean = means.mean()
        var = (stds**2 + means**2).mean() - mean**2
        count = len(per_seed) * int(np.prod(per_seed[0][name]["shape"]))
        log[f"stats.{name}"] = np.array([mean, var, kurts.mean(), max_abs.max(), count])
        log[f"sample.{name}"] = np.concatenate([s[name]["sample"] for s in per_seed])
        if name in FPN:
            log[f"bound_ratio.{name}"] = np.array(max(s[name]["bound_ratio"] for s in per_seed))
        log[f"shape.{name}"] = per_seed[0][name]["shape"]
        log[f"bias.{name}"] = per_seed[0][name]["bias"]
    return log


def torch_side(ctx, args):
    import torch
    from mmengine.logging import MMLogger

    from align import torch_ref
    from align.step5_backward import parameter_names

    torch_ref.set_deterministic()
    MMLogger.get_current_instance().setLevel("WARNING")  # init_weights logs every parameter
    per_seed = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = torch_ref.build_reference_model()  # backbone init_cfg None: no download
        model.init_weights()
        modules = dict(model.named_modules())
        per_seed.append(
            {
                name: layer_entries(
                    name,
                    modules[name].weight.detach().numpy(),
                    modules[name].bias.detach().numpy(),
                    seed,
                    args.ks_per_seed,
                )
                for name in LAYERS
            }
        )
    log = collect(per_seed)
    model.train()  # mmdet ResNet.train: frozen stages and norm_eval applied
    named = dict(model.named_parameters())
    if list(named) != parameter_names():
        raise ValueError("mmdet's named_parameters differ from align.weights' spec")
    log["trainable"] = np.array([p.requires_grad for p in named.values()], dtype=np.uint8)
    norms = [
        m for _, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    log["bn.running_stats"] = np.array([not m.training for m in norms], dtype=np.uint8)
    log["bn.eps"] = np.array([m.eps for m in norms], dtype=np.float64)
    # every mmdet parameter is in align.weights' spec, which the converter's table covers
    # (tests/align/test_steps.py); the Paddle side counts its parameters outside the table
    log["unmapped_parameters"] = np.array([0], dtype=np.int64)
    return log


def paddle_side(ctx, args):
    import paddle

    from align.step5_backward import parameter_names
    from ppdet_ghm.builder import build_model
    from ppdet_ghm.convert import mmdet_retinanet_table

    paddle.set_device("cpu")
    rename = dict(mmdet_retinanet_table().renames)
    per_seed = []
    for seed in range(args.seeds):
        paddle.seed(seed)
        model = build_model(args.config)
        params = dict(model.named_parameters())
        per_seed.append(
            {
                name: layer_entries(
                    name,
                    params[rename[f"{name}.weight"]].numpy(),
                    params[rename[f"{name}.bias"]].numpy(),
                    seed,
                    args.ks_per_seed,
                )
                for name in LAYERS
            }
        )
        if seed < args.seeds - 1:
            del model, params
    log = collect(per_seed)
    model.train()
    names = parameter_names()
    log["trainable"] = np.array(
        [not params[rename[n]].stop_gradient for n in names], dtype=np.uint8
    )
    sublayers = dict(model.named_sublayers())
    norm_names = [n[: -len(".weight")] for n in names if is_bn_weight(n)]
    norms = [sublayers[rename[f"{n}.weight"][: -len(".weight")]] for n in norm_names]
    log["bn.running_stats"] = np.array(
        [bool(m._use_global_stats) or not m.training for m in norms], dtype=np.uint8
    )
    log["bn.eps"] = np.array([m._epsilon for m in norms], dtype=np.float64)
    mapped = {rename[n] for n in names}
    unmapped = [n for n in params if n not in mapped and not n.endswith(("._mean", "._variance"))]
    log["unmapped_parameters"] = np.array([len(unmapped)], dtype=np.int64)
    return log


def is_bn_weight(mmdet_name):
    """Whether an mmdet parameter name is a BatchNorm weight (ResNet ``bn*`` / ``downsample.1``)."""
    parts = mmdet_name.split(".")
    return parts[-1] == "weight" and (
        parts[-2].startswith("bn") or parts[-3:-1] == ["downsample", "1"]
    )


def _pooled(stats):
    """(mean, variance, se of the mean, se of the variance) of a ``stats.L`` entry."""
    mean, var, kurt, _, count = stats
    return mean, var, math.sqrt(var / count), var * math.sqrt((kurt - 1.0) / count)


def ks_2samp(a, b):
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic p-value (scipy ``method='asymp'``)."""
    from scipy import stats

    res = stats.ks_2samp(a, b, method="asymp")
    return float(res.statistic), float(res.pvalue)


def _distribution_rows(args, torch_log, paddle_log):
    rows = []
    for label, layers, theory in GROUPS:
        keys = [f"{kind}.{name}" for name in layers for kind in ("stats", "sample")]
        missing = [k for k in keys if k not in torch_log or k not in paddle_log]
        if missing:
            rows.append(
                report.Row(
                    STEP,
                    label,
                    math.nan,
                    math.nan,
                    "-",
                    report.STATUS_FAIL,
                    f"missing {missing[:3]}",
                )
            )
            continue
        z_mean, z_var, ks, ratios = [], [], [], []
        for name in layers:
            shape = tuple(int(s) for s in torch_log[f"shape.{name}"])
            mt, vt, se_mt, se_vt = _pooled(torch_log[f"stats.{name}"])
            mp, vp, se_mp, se_vp = _pooled(paddle_log[f"stats.{name}"])
            z_mean.append((name, (mp - mt) / math.hypot(se_mt, se_mp), abs(mp - mt)))
            z_var.append((name, (vp - vt) / math.hypot(se_vt, se_vp), abs(vp**0.5 - vt**0.5)))
            ratios.append((vt**0.5 / theory(shape), vp**0.5 / theory(shape)))
            d, p = ks_2samp(
                torch_log[f"sample.{name}"].ravel(), paddle_log[f"sample.{name}"].ravel()
            )
            ks.append((name, p, d))
        for quantity, zs in (("mean", z_mean), ("std", z_var)):
            worst = max(zs, key=lambda item: abs(item[1]))
            ok = all(abs(z) <= args.z_max for _, z, _ in zs)
            note = f"worst {worst[0]}: z {worst[1]:+.2f}"
            if quantity == "std":
                lo = min(min(r) for r in ratios)
                hi = max(max(r) for r in ratios)
                note += f"; std / theory {lo:.4f}..{hi:.4f} (both sides)"
            rows.append(
                report.Row(
                    STEP,
                    f"{label}: {quantity} ({'variance ' if quantity == 'std' else ''}z)",
                    float(np.mean([item[2] for item in zs])),
                    float(max(item[2] for item in zs)),
                    f"|z|<={args.z_max:g} per layer",
                    report.STATUS_PASS if ok else report.STATUS_FAIL,
                    note,
                )
            )
        worst = min(ks, key=lambda item: item[1])
        ok = all(p >= args.alpha for _, p, _ in ks)
        rows.append(
            report.Row(
                STEP,
                f"{label}: KS two-sample (D)",
                float(np.mean([item[2] for item in ks])),
                float(max(item[2] for item in ks)),
                f"p>={args.alpha:g} per layer",
                report.STATUS_PASS if ok else report.STATUS_FAIL,
                f"min p {worst[1]:.3g} ({worst[0]}, n = {torch_log[f'sample.{worst[0]}'].size} "
                "per side)",
            )
        )
    return rows


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check("layer shapes", r"shape\..*", "exact"),
        report.Check(
            "head tower conv biases = 0", r"bias\.bbox_head\.(cls|reg)_convs\.\d\.conv", "exact"
        ),
        report.Check("retina_reg bias = 0", r"bias\.bbox_head\.retina_reg", "exact"),
        report.Check(
            "retina_cls bias = -log((1 - 0.01) / 0.01)", r"bias\.bbox_head\.retina_cls", "exact"
        ),
        report.Check("FPN biases = 0", r"bias\.neck\..*", "exact"),
        report.Check(
            "FPN max |w| / Xavier bound (largest over the seeds)",
            r"bound_ratio\.neck\..*",
            "max_abs",
            max_abs=args.bound_abs,
        ),
        report.Check("trainable parameters (mmdet order)", r"trainable", "exact"),
        report.Check("BN uses running statistics in train mode", r"bn\.running_stats", "exact"),
        report.Check("BN epsilon", r"bn\.eps", "exact"),
        report.Check("parameters outside the rename table", r"unmapped_parameters", "exact"),
    ]
    per_layer = ("stats.", "sample.")
    rows = report.compare(
        STEP,
        {k: v for k, v in torch_log.items() if not k.startswith(per_layer)},
        {k: v for k, v in paddle_log.items() if not k.startswith(per_layer)},
        checks,
    )
    if "bias.bbox_head.retina_cls" in torch_log:  # the reference value itself, not only equality
        prior = np.float32(-math.log((1 - 0.01) / 0.01))
        if not np.all(torch_log["bias.bbox_head.retina_cls"] == prior):
            rows.append(
                report.Row(
                    STEP,
                    "reference retina_cls bias",
                    math.nan,
                    math.nan,
                    f"{prior}",
                    report.STATUS_FAIL,
                    "the reference's prior bias is not -log(99)",
                )
            )
    rows += _distribution_rows(args, torch_log, paddle_log)
    extra = (k for k in torch_log if k.startswith(per_layer) and k.split(".", 1)[1] not in LAYERS)
    return rows + report.unjudged_rows(STEP, extra)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
