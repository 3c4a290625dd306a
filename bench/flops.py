"""Convolution FLOPs of one training iteration, and this CPU's float32 peak: how close a side gets.

Count (:func:`train_step_conv_flops`): one forward of our model in training mode with hooks on every
``nn.Conv2D``; a conv of output ``[N, C_out, H, W]``, ``C_in / groups`` input channels and a
``k_h x k_w`` kernel costs ``F = 2 * N * C_out * H * W * (C_in / groups) * k_h * k_w`` FLOPs
(multiply + add) forward; backward costs ``F`` for the weight gradient when the weight is trained
and ``F`` for the input gradient when the input needs one (frozen stem and stage 1: neither). The
reference's convolutions are the same (same architecture, same frozen stages), so one count serves
both sides. Convolutions are >95 % of the arithmetic; the rest (BN, ReLU, adds, losses) is
memory-bound and not counted.

Peak (:func:`cpu_peak_gflops`): ``threads x clock x FLOP per cycle``, the clock from
``/proc/cpuinfo`` (the current clock, "cpu MHz", of the first core: on a VM usually the nominal
clock) and the FLOP per cycle of float32 fused multiply-adds: 64 with AVX-512 (two 512-bit FMA
units: 2 x 16 lanes x 2), 32 with AVX2 (two 256-bit units). A CPU with one AVX-512 FMA unit, or
Zen 4 (AVX-512 on 256-bit units), peaks at half of that; ``--flops-per-cycle`` overrides it.
"""

import math


def train_step_conv_flops(model, inputs: dict) -> dict:
    """FLOPs of every convolution of one training iteration of our RetinaNet ``model`` on
    ``inputs`` (the ppdet input dict).

    Runs the network once (backbone, neck, head convs; training mode, gradients recorded, no loss,
    so nothing is updated, the GHM histograms included) with hooks.

    Returns:
        dict: ``forward``, ``backward`` and ``total`` FLOPs, and ``convs`` (the number counted).
    """
    import paddle

    counts = {"forward": 0, "backward": 0, "convs": 0}

    def hook(layer, layer_inputs, output):
        x = layer_inputs[0]
        n, c_out, h, w = output.shape
        k_h, k_w = layer.weight.shape[2:]
        flops = 2 * n * c_out * h * w * (x.shape[1] // layer._groups) * k_h * k_w
        counts["forward"] += flops
        counts["backward"] += flops * (
            int(not layer.weight.stop_gradient) + int(not x.stop_gradient)
        )
        counts["convs"] += 1

    handles = [
        layer.register_forward_post_hook(hook)
        for layer in model.sublayers()
        if isinstance(layer, paddle.nn.Conv2D)
    ]
    model.train()
    try:
        model.head.raw_outputs(model.neck(model.backbone({"image": inputs["image"]})))
    finally:
        for handle in handles:
            handle.remove()
    counts["total"] = counts["forward"] + counts["backward"]
    return counts


def cpu_flags_and_mhz(cpuinfo: str = "/proc/cpuinfo"):
    """(set of CPU flags, clock in MHz) of the first core listed, or (empty set, None)."""
    flags, mhz = set(), None
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(value)
                if flags and mhz is not None:
                    break
    except OSError:
        pass
    return flags, mhz


def flops_per_cycle(flags) -> int:
    """float32 FLOP per cycle and core: 64 with AVX-512, 32 with AVX2 + FMA, 16 otherwise (SSE)."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    return 16


def cpu_peak_gflops(threads: int, per_cycle: int | None = None, cpuinfo: str = "/proc/cpuinfo"):
    """float32 peak of ``threads`` cores in GFLOP/s and how it was derived (a short string);
    ``(None, reason)`` where the clock is unknown."""
    flags, mhz = cpu_flags_and_mhz(cpuinfo)
    if mhz is None or not math.isfinite(mhz) or mhz <= 0:
        return None, "clock unknown"
    per_cycle = per_cycle or flops_per_cycle(flags)
    peak = threads * mhz / 1000.0 * per_cycle
    return peak, f"{threads} x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle = {peak:.0f} GFLOP/s"
