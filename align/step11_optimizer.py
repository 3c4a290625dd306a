"""Step 11: the optimizer: SGD momentum 0.9, weight decay 1e-4 on every parameter, grad clip 35.

Both sides step the optimizer their training builds, in float64, over ``--steps`` (30) steps of a
fixed, seeded sequence of gradients on a few small parameters named and frozen like the model's:

- reference: mmengine's ``build_optim_wrapper`` on the reference config's ``optim_wrapper``
  (``OptimWrapper``, ``SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)``,
  ``clip_grad=dict(max_norm=35, norm_type=2)``, no ``paramwise_cfg``: every parameter decays,
  BN affine and biases included); which parameters are trainable is read from mmdet's model
  (``requires_grad`` after ``train()``: stem + stage 1 frozen);
- ours: ppdet's ``OptimizerBuilder`` created from our config (``configs/_base_/optimizer_1x.yml``:
  ``Momentum`` 0.9, ``L2Decay(1e-4)``, ``ClipGradByGlobalNorm(35)``), as ppdet's ``Trainer`` calls
  it (``OptimizerBuilder(lr, model)``, trainable parameters only). Each small parameter copies the
  attributes of the parameter of our built model it stands for (by the converter's rename table):
  ``stop_gradient``, learning-rate multiplier, its own regulariser (ppdet attaches
  ``L2Decay(norm_decay)`` to BN affine parameters unless ``norm_decay`` is null, which overrides the
  optimizer's decay) and ``need_clip``.

The gradient of step t is imposed exactly: ``loss_t = sum_p sum(p * G_t[p])``. ``G_t`` is drawn
from ``--grad-seed`` and scaled to a global L2 norm (over the trainable parameters) that is above
35 on about half of the steps (clipped; 35.5 and up to 300) and below on the others (34.5 and
down to 5). The learning rate is constant, the base lr of both configs (0.01, checked equal):
the schedules' warmups differ by design (ours from 1/3 as the authors' code, mmdet v3 from 0.001;
``configs/_base_/optimizer_1x.yml``).

    python -m align.step11_optimizer --side torch
    python -m align.step11_optimizer --side paddle

Logged: ``param.<mmdet name>`` [steps + 1, *shape] (initial value, then after every step);
``velocity.<name>`` [steps, *shape] for the trainable parameters (torch ``momentum_buffer``,
Paddle ``velocity`` accumulator); ``frozen_change.<name>`` (max |p_t - p_0| over the steps, frozen
parameters); ``grad_norm`` [steps] (global L2 norm before clipping: mmengine's ``clip_grad_norm_``
result / ours from the gradients); ``lr`` [steps]; ``weight_decay`` (the decay each trainable
parameter gets, in ``PARAMS`` order); ``trainable`` [n]; ``update_order`` [k] (for the k steps
clipped to at most 0.5x, which rule the side's own velocities fit: 1 clip then decay, 2 decay
then clip, 3 both, 0 neither; see :func:`update_order`).
"""

import sys

import numpy as np

from align import common, report

STEP = "step11_optimizer"
DIFF_LOG_THRESHOLD = 1e-6
USES_WEIGHTS = False

# mmdet parameter name -> (small shape of the stand-in, initial value: (mean, std)).
PARAMS = {
    "backbone.conv1.weight": ((2, 3, 3, 3), (0.0, 0.5)),  # stem: frozen
    "backbone.bn1.weight": ((4,), (1.0, 0.1)),  # stem BN: frozen
    "backbone.layer2.0.conv1.weight": ((8, 4, 1, 1), (0.0, 0.5)),
    "backbone.layer2.0.bn1.weight": ((8,), (1.0, 0.1)),
    "backbone.layer2.0.bn1.bias": ((8,), (0.0, 0.1)),
    "neck.lateral_convs.0.conv.weight": ((4, 8, 1, 1), (0.0, 0.5)),
    "neck.lateral_convs.0.conv.bias": ((4,), (0.0, 0.1)),
    "bbox_head.cls_convs.0.conv.weight": ((4, 4, 3, 3), (0.0, 0.5)),
    "bbox_head.cls_convs.0.conv.bias": ((4,), (0.0, 0.1)),
    "bbox_head.retina_cls.bias": ((18,), (-float(np.log(99.0)), 0.1)),
}
# a step is "strongly clipped" (used to tell the update order) when clip / norm <= this
STRONG_CLIP = 0.5


def build_parser():
    parser = common.base_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--grad-seed", type=int, default=11, help="seed of inits and gradients")
    parser.add_argument(
        "--param-rel",
        type=float,
        default=1e-6,
        help="parameters and velocities at every step: max abs diff / max |torch value|",
    )
    parser.add_argument(
        "--norm-rel", type=float, default=1e-12, help="global grad norm before clipping"
    )
    parser.add_argument(
        "--order-tol",
        type=float,
        default=3e-6,
        help="update_order: relative residual under which an update rule fits",
    )
    return parser


def problem(args, trainable):
    """The fixed problem: initial values and the gradient sequence, from ``args.grad_seed``.

    Args:
        trainable: {mmdet name: bool}; the global norm targets count trainable parameters only.

    Returns:
        (init {name: float64 array}, grads [steps] of {name: float64 array}, target norms [steps])
    """
    rng = np.random.default_rng(args.grad_seed)
    init = {
        name: mean + std * rng.standard_normal(shape)
        for name, (shape, (mean, std)) in PARAMS.items()
    }
    targets = rng.uniform(5.0, 30.0, args.steps)
    above = rng.permutation(args.steps)[: args.steps // 2]
    targets[above] = rng.uniform(40.0, 300.0, above.size)
    targets[above[:2]] = (35.5, 300.0)  # just above the clip norm, and far above it
    below = np.setdiff1d(np.arange(args.steps), above)
    targets[below[:1]] = 34.5  # just below
    grads = []
    for target in targets:
        g = {name: rng.standard_normal(shape) for name, (shape, _) in PARAMS.items()}
        norm = np.sqrt(sum(float((v**2).sum()) for n, v in g.items() if trainable[n]))
        grads.append({n: v * (target / norm) for n, v in g.items()})
    return init, grads, targets


def update_order(log, grads, targets, names, lr_momentum_wd_clip, tol):
    """Which update rule the side's own velocities follow, on the strongly clipped steps.

    With v_t = mu v_(t-1) + d_t (``velocity`` logged by the side), the direction d_t of step t is
    ``c G + wd p_(t-1)`` with ``c = min(1, clip / ||G||)`` (clip, then weight decay: torch
    ``OptimWrapper`` clips in ``step`` before ``SGD.step`` adds ``wd * p``) or
    ``c' (G + wd p_(t-1))`` with ``c' = min(1, clip / ||G + wd p||)`` (weight decay, then clip).
    On a step clipped to at most ``STRONG_CLIP`` the two differ by ~(1 - c) wd |p| (3e-5 of |d|
    here), far above float64 rounding and Paddle's float32 ``mu`` / decay attributes (~3e-7).

    Returns:
        int array over the strongly clipped steps: 1 only clip-then-decay fits (relative residual
        <= ``tol``), 2 only decay-then-clip, 3 both, 0 neither.
    """
    _, mu, wd, clip = lr_momentum_wd_clip
    codes = []
    for t, target in enumerate(targets):
        if clip / target > STRONG_CLIP:
            continue
        d = np.concatenate(
            [
                (log[f"velocity.{n}"][t] - (mu * log[f"velocity.{n}"][t - 1] if t else 0.0)).ravel()
                for n in names
            ]
        )
        g = np.concatenate([grads[t][n].ravel() for n in names])
        p = np.concatenate([log[f"param.{n}"][t].ravel() for n in names])
        c = min(1.0, clip / np.linalg.norm(g))
        clip_then_decay = c * g + wd * p
        c2 = min(1.0, clip / np.linalg.norm(g + wd * p))
        decay_then_clip = c2 * (g + wd * p)
        scale = np.linalg.norm(d)
        fits = [
            np.linalg.norm(d - rule) / scale <= tol for rule in (clip_then_decay, decay_then_clip)
        ]
        codes.append(int(fits[0]) + 2 * int(fits[1]))
    return np.array(codes, dtype=np.int64)


def _finish(log, args, init, grads, targets, names_trainable, hyper):
    """Add ``frozen_change`` and ``update_order`` (computed alike on both sides) to ``log``."""
    for name in PARAMS:
        if name not in names_trainable:
            change = np.abs(log[f"param.{name}"] - init[name][None]).max()
            log[f"frozen_change.{name}"] = np.array(change, dtype=np.float64)
    log["update_order"] = update_order(log, grads, targets, names_trainable, hyper, args.order_tol)
    return log


def torch_side(ctx, args):
    import torch
    from mmengine.config import Config
    from mmengine.logging import MessageHub
    from mmengine.optim import build_optim_wrapper

    from align import torch_ref

    torch_ref.set_deterministic()
    model = torch_ref.build_reference_model()
    model.train()  # mmdet ResNet._freeze_stages: stem + layer1 requires_grad False
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    trainable = {name: flags[name] for name in PARAMS}
    cfg = Config.fromfile(torch_ref.reference_config_path())
    init, grads, targets = problem(args, trainable)

    holder = torch.nn.Module()  # named and frozen like the model's parameters
    params = {}
    for name in PARAMS:
        param = torch.nn.Parameter(torch.from_numpy(init[name].copy()), trainable[name])
        holder.register_parameter(name.replace(".", "__"), param)
        params[name] = param
    optim_wrapper = build_optim_wrapper(holder, cfg.optim_wrapper)
    optimizer = optim_wrapper.optimizer
    group = optimizer.param_groups[0]
    hub = MessageHub.get_current_instance()
    log = {f"param.{n}": [init[n]] for n in PARAMS}
    names_trainable = [n for n in PARAMS if trainable[n]]
    log.update({f"velocity.{n}": [] for n in names_trainable})
    log["grad_norm"], log["lr"] = [], []
    for step_grads in grads:
        loss = sum((params[n] * torch.from_numpy(step_grads[n])).sum() for n in PARAMS)
        log["lr"].append(optim_wrapper.get_lr()["lr"][0])
        optim_wrapper.update_params(loss)  # backward, clip, SGD step, zero_grad
        log["grad_norm"].append(hub.get_scalar("train/grad_norm").current())
        for n in PARAMS:
            log[f"param.{n}"].append(params[n].detach().numpy().copy())
        for n in names_trainable:
            log[f"velocity.{n}"].append(
                optimizer.state[params[n]]["momentum_buffer"].numpy().copy()
            )
    log = {k: np.asarray(v, dtype=np.float64) for k, v in log.items()}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    log["weight_decay"] = np.array(
        [decay[id(params[n])] for n in names_trainable], dtype=np.float64
    )
    log["trainable"] = np.array([trainable[n] for n in PARAMS], dtype=np.uint8)
    hyper = (
        group["lr"],
        group["momentum"],
        group["weight_decay"],
        cfg.optim_wrapper.clip_grad.max_norm,
    )
    return _finish(log, args, init, grads, targets, names_trainable, hyper)


def build_our_optimizer(holder):
    """ppdet's ``OptimizerBuilder`` of the loaded config, called as ppdet's ``Trainer`` does
    (``create('OptimizerBuilder')(lr, model)``), with the constant base lr of ``LearningRate``.

    Returns:
        (the Paddle optimizer, the ``OptimizerBuilder``, the base lr)
    """
    from ppdet.core.workspace import create

    base_lr = float(create("LearningRate").base_lr)
    builder = create("OptimizerBuilder")
    return builder(base_lr, holder), builder, base_lr


def paddle_side(ctx, args):
    import paddle

    from ppdet_ghm.builder import build_model
    from ppdet_ghm.convert import mmdet_retinanet_table

    paddle.set_device("cpu")
    model = build_model(args.config)  # loads the config into ppdet's global config
    rename = dict(mmdet_retinanet_table().renames)
    real = dict(model.named_parameters())
    trainable = {name: not real[rename[name]].stop_gradient for name in PARAMS}
    init, grads, targets = problem(args, trainable)

    holder = paddle.nn.Layer()
    params = {}
    with paddle.utils.unique_name.guard("step11_"):
        for name in PARAMS:
            like = real[rename[name]]
            attr = paddle.ParamAttr(
                initializer=paddle.nn.initializer.Assign(init[name]),
                learning_rate=like.optimize_attr["learning_rate"],
                regularizer=like.regularizer,
                trainable=not like.stop_gradient,
                need_clip=like.need_clip,
            )
            param = paddle.create_parameter(list(PARAMS[name][0]), "float64", attr=attr)
            holder.add_parameter(name.replace(".", "__"), param)
            params[name] = param
    optimizer, builder, base_lr = build_our_optimizer(holder)
    names_trainable = [n for n in PARAMS if trainable[n]]
    log = {f"param.{n}": [init[n]] for n in PARAMS}
    log.update({f"velocity.{n}": [] for n in names_trainable})
    log["grad_norm"], log["lr"] = [], []
    for step_grads in grads:
        loss = sum((params[n] * paddle.to_tensor(step_grads[n])).sum() for n in PARAMS)
        loss.backward()
        squares = [float((params[n].grad.numpy() ** 2).sum()) for n in names_trainable]
        log["grad_norm"].append(np.sqrt(sum(squares)))
        log["lr"].append(optimizer.get_lr())
        optimizer.step()
        optimizer.clear_grad()
        for n in PARAMS:
            log[f"param.{n}"].append(params[n].numpy().copy())
        velocity = optimizer._accumulators[optimizer._velocity_acc_str]
        for n in names_trainable:
            log[f"velocity.{n}"].append(velocity[params[n].name].numpy().copy())
    log = {k: np.asarray(v, dtype=np.float64) for k, v in log.items()}
    log["weight_decay"] = np.array(
        [effective_decay(optimizer, params[n]) for n in names_trainable], dtype=np.float64
    )
    log["trainable"] = np.array([trainable[n] for n in PARAMS], dtype=np.uint8)
    hyper = (
        base_lr,
        builder.optimizer["momentum"],
        builder.regularizer["factor"],
        builder.clip_grad_by_norm,
    )
    return _finish(log, args, init, grads, targets, names_trainable, hyper)


def effective_decay(optimizer, param):
    """The L2 decay coefficient Paddle applies to ``param``: its own regulariser's, else the
    optimizer's (``Momentum`` fuses an optimizer-level ``L2Decay`` into its kernel)."""
    if param.regularizer is not None:
        return float(param.regularizer._coeff)
    if optimizer._regularization_method == "l2_decay":
        return float(optimizer._regularization_coeff)
    reg = optimizer.regularization
    return 0.0 if reg is None else float(reg._coeff)


def _per_step_rows(args, torch_log, paddle_log, prefix, quantity):
    """One row per parameter: the worst step of max |diff| / max |torch value|."""
    rows = []
    for name in PARAMS:
        key = f"{prefix}.{name}"
        if key not in torch_log and key not in paddle_log:
            continue
        problem = None
        if key not in torch_log or key not in paddle_log:
            problem = f"missing on the {'paddle' if key not in paddle_log else 'torch'} side"
        elif torch_log[key].shape != paddle_log[key].shape:
            problem = f"shape torch {torch_log[key].shape} vs paddle {paddle_log[key].shape}"
        if problem is not None:
            rows.append(
                report.Row(
                    STEP, f"{quantity} {name}", np.nan, np.nan, "-", report.STATUS_FAIL, problem
                )
            )
            continue
        t, p = torch_log[key], paddle_log[key]
        diff = np.abs(p - t).reshape(len(t), -1)
        scale = np.abs(t).reshape(len(t), -1).max(axis=1)
        rel = diff.max(axis=1) / np.where(scale > 0, scale, 1.0)
        worst = int(np.argmax(rel))
        ok = bool(np.all(np.isfinite(p))) and float(rel.max()) <= args.param_rel
        rows.append(
            report.Row(
                STEP,
                f"{quantity} {name}",
                float(diff.mean()),
                float(diff.max()),
                f"maxrel<={args.param_rel:g} every step",
                report.STATUS_PASS if ok else report.STATUS_FAIL,
                f"worst step {worst}: maxrel {rel[worst]:.2e}",
                float(rel.max()),
            )
        )
    return rows


def judge(args, torch_log, paddle_log):
    checks = [
        report.Check("trainable parameters", r"trainable", "exact"),
        report.Check("weight decay of each parameter", r"weight_decay", "exact"),
        report.Check("learning rate, every step", r"lr", "exact"),
        report.Check(
            "global grad norm before clipping", r"grad_norm", "relative", rel=args.norm_rel
        ),
        report.Check("update order (1 = clip, then weight decay)", r"update_order", "exact"),
        report.Check("frozen parameters never move", r"frozen_change\..*", "exact"),
    ]
    per_step = {k for k in torch_log if k.startswith(("param.", "velocity."))}
    rows = report.compare(
        STEP,
        {k: v for k, v in torch_log.items() if k not in per_step},
        {k: v for k, v in paddle_log.items() if k not in per_step},
        checks,
    )
    if "update_order" in torch_log and not np.all(torch_log["update_order"] == 1):
        rows.append(
            report.Row(
                STEP,
                "reference update order",
                np.nan,
                np.nan,
                "all 1",
                report.STATUS_FAIL,
                f"torch's velocities fit {torch_log['update_order'].tolist()}",
            )
        )
    rows += _per_step_rows(args, torch_log, paddle_log, "param", "param")
    rows += _per_step_rows(args, torch_log, paddle_log, "velocity", "velocity")
    extra = (
        k
        for k in set(torch_log) | set(paddle_log)
        if k.startswith(("param.", "velocity.")) and k.split(".", 1)[1] not in PARAMS
    )
    return rows + report.unjudged_rows(STEP, extra)


if __name__ == "__main__":
    sys.exit(common.main(sys.modules[__name__]))
