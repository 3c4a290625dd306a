"""The optimizer step of R50-FPN training: Paddle's Momentum step against the threaded update.

Two copies of our RetinaNet-GHM R50-FPN (``configs/retinanet_ghm_r50_fpn_1x_coco.yml``, the
seeded weights of ``bench.paddle_side``) get the same seeded gradients, and each copy's optimizer
(``Momentum(0.9)``, L2 decay 1e-4, ``ClipGradByGlobalNorm(35)``, as ``bench_train_step``) steps
alternately: Paddle's own step, and the step with ``ppdet_ghm.engine.threaded_momentum`` (the
clip multiply and momentum update of all parameters as one call on the math threads), so both
see the same load. Prints each side's median wall time, their ratio, and whether the parameters,
velocities and clipped gradients of the two copies are the same bits after every step.

    python -m bench.bench_optimizer_step --threads 2 --repeats 20
"""

import argparse
import sys
import time

import numpy as np

from bench import timing
from bench.driver import load_average, machine_info


def _optimizer(model, threaded: bool):
    import paddle

    from bench.paddle_side import CLIP_MAX_NORM, MOMENTUM, WEIGHT_DECAY

    optimizer = paddle.optimizer.Momentum(
        learning_rate=0.00125,  # bench_train_step's lr at 2 images
        momentum=MOMENTUM,
        parameters=[p for p in model.parameters() if not p.stop_gradient],
        weight_decay=paddle.regularizer.L2Decay(WEIGHT_DECAY),
        grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP_MAX_NORM),
    )
    if threaded:
        from ppdet_ghm.engine.threaded_momentum import use_threaded_momentum

        use_threaded_momentum(optimizer)
    return optimizer


def _state(model, optimizer):
    """Parameters, gradients and velocities as NumPy arrays, in parameter order."""
    velocities = optimizer._accumulators[optimizer._velocity_acc_str]
    arrays = []
    for p in model.parameters():
        if not p.stop_gradient:
            arrays += [p.numpy(), p.grad.numpy(), velocities[p.name].numpy()]
    return arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per side")
    parser.add_argument("--seed", type=int, default=0, help="weight and gradient seed")
    args = parser.parse_args(argv)
    timing.set_framework_threads("paddle", args.threads)
    import paddle
    from paddle.utils import unique_name

    from bench.paddle_side import build

    sides = {}
    for name, threaded in (("paddle", False), ("threaded", True)):
        with unique_name.guard():  # the same parameter names in both copies
            model = build(args.seed)
            sides[name] = (model, _optimizer(model, threaded))
    rng = np.random.default_rng(args.seed)
    params = [p for p in sides["paddle"][0].parameters() if not p.stop_gradient]
    grads = [rng.standard_normal(p.shape).astype("float32") * 0.05 for p in params]
    count = sum(p.size for p in params)
    times = {name: [] for name in sides}
    same = True
    for i in range(args.repeats + 1):  # the first step of each side is a warm-up
        for name in ("paddle", "threaded") if i % 2 == 0 else ("threaded", "paddle"):
            model, optimizer = sides[name]
            trainable = [p for p in model.parameters() if not p.stop_gradient]
            for p, g in zip(trainable, grads, strict=True):
                p.grad = paddle.to_tensor(g)  # fresh: the clip scales gradients in place
            start = time.perf_counter()
            optimizer.step()
            if i:
                times[name].append(time.perf_counter() - start)
        a, b = (_state(*sides[name]) for name in ("paddle", "threaded"))
        same = same and all(
            np.array_equal(x.view(np.int32), y.view(np.int32)) for x, y in zip(a, b, strict=True)
        )
    paddle_ms, threaded_ms = (1e3 * float(np.median(times[k])) for k in ("paddle", "threaded"))
    print(
        f"| parameters | Paddle's step ms | threaded ms | ratio "
        f"| same bits after {args.repeats + 1} steps |"
    )
    print("|---:|---:|---:|---:|---|")
    print(
        f"| {len(params)} ({count / 1e6:.1f} M) | {paddle_ms:.1f} | {threaded_ms:.1f} | "
        f"{threaded_ms / paddle_ms:.2f}x | {'yes' if same else 'NO'} |"
    )
    print(f"\n{machine_info()}; {args.threads} threads; load average {load_average()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
