"""bench.flops: the conv FLOP count of a training step, by hand, and the CPU peak."""

import paddle

from bench import flops


class _Backbone(paddle.nn.Layer):
    """A frozen 3x3 stem (3 -> 4 channels, stride 2) and a trained 1x1 conv (4 -> 4)."""

    def __init__(self):
        super().__init__()
        self.stem = paddle.nn.Conv2D(3, 4, 3, stride=2, padding=1)
        for param in self.stem.parameters():
            param.stop_gradient = True
        self.body = paddle.nn.Conv2D(4, 4, 1)

    def forward(self, inputs):
        return [self.body(self.stem(inputs["image"]))]


class _Head(paddle.nn.Layer):
    """Towers of one 3x3 conv each (4 -> 4) and 1x1 outputs (4 -> 2 classes, 4 -> 4 deltas)."""

    def __init__(self):
        super().__init__()
        self.cls_tower = paddle.nn.Conv2D(4, 4, 3, padding=1)
        self.reg_tower = paddle.nn.Conv2D(4, 4, 3, padding=1)
        self.retina_cls = paddle.nn.Conv2D(4, 2, 1)
        self.retina_reg = paddle.nn.Conv2D(4, 4, 1)

    def raw_outputs(self, feats):
        cls = [self.retina_cls(self.cls_tower(f)) for f in feats]
        return cls, [self.retina_reg(self.reg_tower(f)) for f in feats]


class _Model(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.backbone, self.neck, self.head = _Backbone(), paddle.nn.Identity(), _Head()


def test_conv_flops_by_hand():
    image = paddle.zeros([2, 3, 8, 8])  # -> [2, 4, 4, 4] after the stem
    counts = flops.train_step_conv_flops(_Model(), {"image": image})
    out = 2 * 4 * 4  # N * H * W of every conv after the stem
    stem = 2 * (2 * 4 * 4 * 4) * 3 * 9  # no backward: frozen, and the image needs no gradient
    body = 2 * out * 4 * 4  # backward: its weight only (its input comes from the frozen stem)
    towers = 2 * (2 * out * 4 * 4 * 9)  # backward: weight and input
    outputs = 2 * out * 2 * 4 + 2 * out * 4 * 4  # backward: weight and input
    assert counts["convs"] == 6
    assert counts["forward"] == stem + body + towers + outputs
    assert counts["backward"] == body + 2 * towers + 2 * outputs
    assert counts["total"] == counts["forward"] + counts["backward"]


def test_peak_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\ncpu MHz : 2300.000\nflags : fpu sse avx2 fma avx512f\n")
    peak, note = flops.cpu_peak_gflops(2, cpuinfo=str(info))
    assert peak == 2 * 2.3 * 64
    assert "64 FLOP/cycle" in note
    info.write_text("processor : 0\ncpu MHz : 3000.000\nflags : fpu sse avx2 fma\n")
    assert flops.cpu_peak_gflops(1, cpuinfo=str(info))[0] == 3.0 * 32
    assert flops.cpu_peak_gflops(1, per_cycle=16, cpuinfo=str(info))[0] == 3.0 * 16
    assert flops.cpu_peak_gflops(1, cpuinfo=str(tmp_path / "missing"))[0] is None
