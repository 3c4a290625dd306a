"""Training iteration of our model in dygraph and in three static-graph / oneDNN modes (Paddle only).

The question it answers: does running the network (backbone, neck, head convs) as a static graph on
Paddle's oneDNN kernels make CPU training faster? Same model, weights, inputs and iteration as
``bench.bench_train_step`` (b2_512 or b1_800x1333; forward, targets + GHM losses, backward, clip,
SGD momentum), one fresh process per mode (the oneDNN flag is process-wide), each keeping freed
memory in glibc's heap as ``ppdet-ghm train`` does (``ppdet_ghm.engine.cpu_memory``):

* ``dygraph``: Paddle's own CPU convolutions (im2col + GEMM), as ``-o onednn_conv=false`` trains.
* ``onednn-conv``: dygraph with every convolution on oneDNN (``ppdet_ghm.modeling.onednn_conv``);
  ``onednn-conv-3x3``: only the 3x3 / 7x7 ones, the convolutions ``ppdet-ghm train`` puts on
  oneDNN on a CPU (without its fused frozen BN).
* ``static``: the network under ``paddle.jit.to_static(full_graph=True)`` with free N/H/W, plain
  CPU kernels; targets, losses, backward hooks and optimizer stay in dygraph.
* ``static-onednn``: the same with ``FLAGS_use_onednn`` (PIR's kernel pass then picks oneDNN for every
  op that has a oneDNN kernel). Two Paddle 3.3.1 faults need stand-ins, applied by this script only:
  the oneDNN ``batch_norm_grad`` fails on frozen-statistics BatchNorm ("Tensor holds no memory"), so
  those norms run as the equivalent affine ``x * scale + shift``; and a program output made by a
  oneDNN op is not handed back to dygraph ("dst_tensor shall be defined" / a crash), so every
  output goes through ``paddle.assign``.
* ``conv-onednn``: dygraph, but every convolution is its own small static program on oneDNN
  (one program per weight shape and conv attributes; the bias is added in dygraph).

Columns: median wall and CPU time per iteration, peak RSS, and the losses of the first iterations
(equal to dygraph's up to float32 rounding where the mode computes the same thing). With
``--dnnl-profile MODE`` the script instead runs MODE once with ``DNNL_VERBOSE=1`` and sums the
oneDNN primitive times by kind and implementation (``ref:any`` is oneDNN's slow reference code).

    python -m bench.bench_static_modes --case b2_512 --repeats 3 --warmup 1
    python -m bench.bench_static_modes --dnnl-profile static-onednn --repeats 1 --warmup 1
"""

import argparse
import collections
import subprocess
import sys
import types

from bench import driver, inputs, timing

SCRIPT = "bench_static_modes"
MODES = ("dygraph", "onednn-conv", "onednn-conv-3x3", "static", "static-onednn", "conv-onednn")
MIN_KERNEL = {"onednn-conv": 1, "onednn-conv-3x3": 3}  # dygraph + ppdet_ghm.modeling.onednn_conv
ONEDNN_MODES = ("static-onednn", "conv-onednn")


# --- worker: the modes ---------------------------------------------------------------------------


def _affine_frozen_norm(norm):
    """Make a frozen-statistics ``BatchNorm2D`` compute ``x * scale + shift`` (same numbers up to
    float32 rounding; its oneDNN gradient kernel fails on the original)."""
    import paddle

    def forward(self, x):
        scale = self.weight * paddle.rsqrt(self._variance + self._epsilon)
        shift = self.bias - self._mean * scale
        return x * scale.reshape([1, -1, 1, 1]) + shift.reshape([1, -1, 1, 1])

    norm.forward = types.MethodType(forward, norm)


def _static_network(model):
    """The network of ``model`` (backbone, neck, head convs) as one static function of the image,
    returning ``(cls_logits, bbox_deltas)`` per level."""
    import paddle
    from paddle.static import InputSpec

    class Network(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.backbone, self.neck, self.head = model.backbone, model.neck, model.head

        def forward(self, image):
            cls, reg = self.head.raw_outputs(self.neck(self.backbone({"image": image})))
            return [paddle.assign(t) for t in cls], [paddle.assign(t) for t in reg]

    spec = [InputSpec([None, 3, None, None], "float32", "image")]
    return paddle.jit.to_static(Network(), input_spec=spec, full_graph=True)


def _static_convs(model):
    """Route every ``nn.Conv2D`` of ``model`` through a static program on oneDNN (one program per
    weight shape and conv attributes); returns the number of convs rerouted."""
    import paddle
    import paddle.nn.functional as F
    from paddle.static import InputSpec

    programs = {}

    def program(conv):
        attrs = (conv._stride, conv._padding, conv._dilation, conv._groups)
        key = repr((*attrs, list(conv.weight.shape)))
        if key not in programs:
            stride, padding, dilation, groups = attrs

            def run(x, weight):
                out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
                return paddle.assign(out)

            spec = [
                InputSpec([None, None, None, None], "float32"),
                InputSpec(list(conv.weight.shape), "float32"),
            ]
            programs[key] = paddle.jit.to_static(run, input_spec=spec, full_graph=True)
        return programs[key]

    def forward(self, x):
        out = program(self)(x, self.weight)
        return out if self.bias is None else out + self.bias.reshape([-1, 1, 1])

    count = 0
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Conv2D):
            layer.forward = types.MethodType(forward, layer)
            count += 1
    return count


def _train_step(model, batch, mode: str):
    """One training iteration of ``mode`` as a closure returning the loss (see the module doc)."""
    import paddle

    from bench import paddle_side

    lr = _learning_rate(batch)
    if mode == "dygraph":
        return paddle_side.train_step(model, batch, lr)
    if mode in MIN_KERNEL:
        from ppdet_ghm.modeling.onednn_conv import use_onednn_convs

        use_onednn_convs(model, min_kernel=MIN_KERNEL[mode])
        return paddle_side.train_step(model, batch, lr)
    if mode in ONEDNN_MODES:
        paddle.set_flags({"FLAGS_use_onednn": True})
    model.train()
    if mode == "conv-onednn":
        _static_convs(model)
        network = None
    else:
        if mode == "static-onednn":
            for layer in model.backbone.sublayers():
                if isinstance(layer, paddle.nn.BatchNorm2D) and layer._use_global_stats:
                    _affine_frozen_norm(layer)
        network = _static_network(model)
    params = [p for p in model.parameters() if not p.stop_gradient]
    optimizer = paddle.optimizer.Momentum(
        learning_rate=lr,
        momentum=paddle_side.MOMENTUM,
        parameters=params,
        weight_decay=paddle.regularizer.L2Decay(paddle_side.WEIGHT_DECAY),
        grad_clip=paddle.nn.ClipGradByGlobalNorm(paddle_side.CLIP_MAX_NORM),
    )
    feed = paddle_side.input_dict(batch, with_gt=True)

    def step():
        if network is None:
            loss = model(dict(feed))["loss"]
        else:
            loss = model.head.get_loss(network(feed["image"]), dict(feed))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)

    return step


def _learning_rate(batch):
    """The benchmark's learning rate: 0.01 x images / 16 (``bench.bench_train_step``)."""
    from bench.bench_train_step import BASE_BATCH, BASE_LR

    return BASE_LR * len(batch["images"]) / BASE_BATCH


def worker(args):
    from align.weights import DEFAULT_SEED
    from bench import paddle_side
    from ppdet_ghm.engine.cpu_memory import keep_freed_memory

    timing.set_framework_threads("paddle", args.threads)
    keep_freed_memory()  # as ppdet-ghm train on a CPU, in every mode
    batch = inputs.make_batch(args.case)
    model = paddle_side.build(DEFAULT_SEED if args.seed is None else args.seed)
    step = _train_step(model, batch, args.mode)
    losses = []
    res = timing.measure(lambda: losses.append(step()), args.warmup, args.repeats)
    res["losses"] = losses
    return res


# --- driver --------------------------------------------------------------------------------------


def dnnl_profile(args):
    """Run ``args.dnnl_profile`` once under ``DNNL_VERBOSE=1``; rows of (ms, calls, kind, impl)."""
    cmd = [sys.executable, "-m", f"bench.{SCRIPT}", "--worker", "--mode", args.dnnl_profile]
    cmd += ["--case", args.case, "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads)]
    env = driver.thread_env(args.threads)
    env["DNNL_VERBOSE"] = "1"
    proc = subprocess.run(
        cmd, cwd=driver.REPO_DIR, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SystemExit(f"{SCRIPT}: worker failed:\n{proc.stderr[-3000:]}")
    totals = collections.defaultdict(lambda: [0.0, 0])
    for line in proc.stdout.splitlines():
        fields = line.split(",")
        # onednn_verbose,v1,primitive,exec,cpu,<kind>,<impl>,<prop>,...,<time ms>
        if len(fields) > 8 and fields[0] == "onednn_verbose" and fields[3] == "exec":
            entry = totals[(fields[5], fields[6])]
            entry[0] += float(fields[-1])
            entry[1] += 1
    calls = args.warmup + args.repeats
    rows = [
        [kind, impl, f"{ms / calls:.0f}", f"{n / calls:.0f}"]
        for (kind, impl), (ms, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])
    ]
    return rows, calls


def main(argv=None):
    parser = driver.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(inputs.CASES), default="b2_512")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # worker only
    parser.add_argument(
        "--dnnl-profile",
        choices=[*MIN_KERNEL, *ONEDNN_MODES],
        help="oneDNN primitive times of one mode instead",
    )
    args = parser.parse_args(argv)
    if args.worker:
        timing.emit_result(worker(args))
        return 0
    if args.dnnl_profile:
        rows, calls = dnnl_profile(args)
        print(
            f"\n{SCRIPT}: oneDNN primitives of {args.dnnl_profile}, {args.case}, "
            f"{args.threads} threads, ms and calls per iteration (mean of {calls})"
        )
        print(driver.machine_info())
        print(driver.markdown_table(["primitive", "implementation", "ms", "calls"], rows))
        return 0
    results = {}
    for mode in args.modes:
        worker_args = ["--mode", mode, "--case", args.case, "--warmup", args.warmup]
        worker_args += ["--repeats", args.repeats]
        if args.seed is not None:
            worker_args += ["--seed", args.seed]
        tag = f"[{SCRIPT}] {args.case} / {mode}"
        results[mode] = driver.run_worker_logged(SCRIPT, tag, worker_args, args.threads)
    base = results.get("dygraph", {}).get("median_s")
    rows = []
    for mode, res in results.items():
        if "error" in res:
            rows.append([mode, "failed", "", "", "", ""])
            continue
        ratio = driver.fmt_ratio(res["median_s"], base) if base else "-"
        losses = " / ".join(f"{x:.6f}" for x in res["losses"][:3])
        rows.append(
            [
                mode,
                driver.fmt_ms(res["median_s"]),
                driver.fmt_ms(res["median_cpu_s"]),
                ratio,
                driver.fmt_mib(res["peak_rss_mib"]),
                losses,
            ]
        )
    print(
        f"\n{SCRIPT}: {args.case}, {args.threads} threads, {args.warmup} warm-up + "
        f"{args.repeats} timed iterations per mode, median; load at the end "
        f"{driver.load_average()}"
    )
    print(driver.machine_info())
    header = ["mode", "ms", "CPU ms", "vs dygraph", "peak RSS MiB", "losses (first calls)"]
    print(driver.markdown_table(header, rows))
    for mode, res in results.items():
        if "error" in res:
            print(f"{mode}: {res['error']}")
    return int(any("error" in res for res in results.values()))


if __name__ == "__main__":
    sys.exit(main())
