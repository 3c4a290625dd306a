"""Alignment steps 11 (optimizer) and 12 (initialisation): the Paddle side against the committed
torch logs, and ports broken on purpose (a config change or a monkeypatch) that each step must FAIL.

About 45 s on 2 cores (step 12 builds the R50 model 5 times; the breaks build it once or twice).
"""

import subprocess
import sys
import textwrap

import paddle
import pytest

import ppdet_ghm.modeling.fpn as fpn_module
import ppdet_ghm.modeling.head as head_module
from align import common, report
from align import step11_optimizer as step11
from align import step12_init as step12


def run_paddle(step, out, *extra):
    """Table rows of ``step``'s Paddle side against the committed torch log."""
    args = step.build_parser().parse_args(["--side", "paddle", "--out", str(out), *extra])
    return common.run_side(step, args)


def config_with(tmp_path, yaml_text):
    """A config: ours with ``yaml_text`` merged on top (ppdet ``_BASE_``)."""
    path = tmp_path / "changed.yml"
    path.write_text(f"_BASE_: ['{common.DEFAULT_CONFIG}']\n" + textwrap.dedent(yaml_text))
    return str(path)


def failing(rows):
    return {r.quantity for r in rows if r.status != report.STATUS_PASS}


@pytest.fixture(scope="module")
def rows11(tmp_path_factory):
    return run_paddle(step11, tmp_path_factory.mktemp("step11"))


@pytest.fixture(scope="module")
def rows12(tmp_path_factory):
    return run_paddle(step12, tmp_path_factory.mktemp("step12"))


def test_step11_every_row_passes(rows11):
    assert not failing(rows11), report.format_table(rows11)
    quantities = {r.quantity for r in rows11}
    assert "update order (1 = clip, then weight decay)" in quantities
    assert {f"param {name}" for name in step11.PARAMS} <= quantities
    log = common.load_log(common.log_path(common.DEFAULT_LOGS, step11.STEP, "torch"))
    assert log["update_order"].size >= 5  # enough strongly clipped steps to tell the order
    above = log["grad_norm"] > 35.0
    assert 5 <= above.sum() <= len(above) - 5  # clipped and unclipped steps both


def test_step12_every_row_passes(rows12):
    assert not failing(rows12), report.format_table(rows12)


@pytest.mark.parametrize(
    "change, expected",
    [
        (  # ppdet's default: BN gamma/beta get L2Decay(0) instead of the optimizer's decay
            "NormEvalResNet:\n  norm_decay: 0.0\n",
            {"weight decay of each parameter", "param backbone.layer2.0.bn1.weight"},
        ),
        (
            "OptimizerBuilder:\n  optimizer:\n    type: Momentum\n    momentum: 0.99\n",
            {"param bbox_head.cls_convs.0.conv.weight", "velocity bbox_head.retina_cls.bias"},
        ),
        (
            "OptimizerBuilder:\n  clip_grad_by_norm: 40.0\n",
            {"param neck.lateral_convs.0.conv.weight"},
        ),
    ],
    ids=["bn-without-weight-decay", "momentum-0.99", "clip-at-40"],
)
def test_step11_fails_on_a_changed_optimizer(tmp_path, change, expected):
    rows = run_paddle(step11, tmp_path, "--config", config_with(tmp_path, change))
    assert expected <= failing(rows), report.format_table(rows)


class DecayThenClip(paddle.nn.ClipGradByGlobalNorm):
    """Clips ``g + wd * p`` (weight decay before the clip); Momentum still adds ``wd * p`` after,
    so the update direction becomes ``c' (g + wd p)`` with ``c' = clip / ||g + wd p||``."""

    def _dygraph_clip(self, params_grads):
        decayed = [(p, None if g is None else g + 1e-4 * p) for p, g in params_grads]
        clipped = super()._dygraph_clip(decayed)
        return [(p, None if g is None else g - 1e-4 * p) for p, g in clipped]


def test_step11_fails_when_weight_decay_comes_before_the_clip(tmp_path, monkeypatch):
    monkeypatch.setattr(paddle.nn, "ClipGradByGlobalNorm", DecayThenClip)
    rows = run_paddle(step11, tmp_path)
    assert "update order (1 = clip, then weight decay)" in failing(rows), report.format_table(rows)
    assert any(q.startswith("param ") for q in failing(rows)), report.format_table(rows)
    paddle_log = common.load_log(common.log_path(str(tmp_path), step11.STEP, "paddle"))
    assert set(paddle_log["update_order"].tolist()) == {2}


def _normal_twice_the_std(mean=0.0, std=1.0, **kwargs):
    return paddle.nn.initializer.Normal(mean=mean, std=2 * std, **kwargs)


@pytest.mark.parametrize(
    "patch, change, expected",
    [
        (
            (head_module, "Normal", _normal_twice_the_std),
            None,
            {
                "head towers + retina_reg, Normal(0, 0.01): std (variance z)",
                "head towers + retina_reg, Normal(0, 0.01): KS two-sample (D)",
                "retina_cls, Normal(0, 0.01): std (variance z)",
            },
        ),
        (
            None,
            "GHMRetinaHead:\n  prior_prob: 0.02\n",
            {"retina_cls bias = -log((1 - 0.01) / 0.01)"},
        ),
        (
            (fpn_module, "XavierUniform", paddle.nn.initializer.XavierNormal),
            None,
            {"FPN max |w| / Xavier bound (largest over the seeds)"},
        ),
        (None, "NormEvalResNet:\n  freeze_at: 1\n", {"trainable parameters (mmdet order)"}),
    ],
    ids=["head-std-0.02", "prior-prob-0.02", "fpn-xavier-normal", "stage-2-frozen"],
)
def test_step12_fails_on_a_changed_init(tmp_path, monkeypatch, patch, change, expected):
    if patch is not None:
        monkeypatch.setattr(*patch)
    extra = ["--seeds", "2", "--ks-per-seed", "640"]  # as many KS values as the torch log
    if change is not None:
        extra += ["--config", config_with(tmp_path, change)]
    rows = run_paddle(step12, tmp_path, *extra)
    assert expected <= failing(rows), report.format_table(rows)


def test_paddle_sides_import_neither_torch_nor_mmdet(tmp_path):
    code = (
        "import sys\n"
        "from align import common, step11_optimizer, step12_init\n"
        f"out = {str(tmp_path)!r}\n"
        "for step, extra in ((step11_optimizer, []), (step12_init, ['--seeds', '1'])):\n"
        "    args = step.build_parser().parse_args(['--side', 'paddle', '--out', out, *extra])\n"
        "    common.run_side(step, args)\n"
        "bad = sorted(m for m in ('torch', 'mmdet', 'mmengine') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=common.REPO_DIR)


@pytest.mark.torch
@pytest.mark.slow
def test_regenerated_torch_logs_equal_the_committed_ones(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("mmdet")
    code = (
        "import sys\n"
        "from align import common, step11_optimizer, step12_init\n"
        "for step in (step11_optimizer, step12_init):\n"
        f"    argv = ['--side', 'torch', '--logs', {str(tmp_path)!r}]\n"
        "    args = step.build_parser().parse_args(argv)\n"
        "    common.run_side(step, args)\n"
        "assert 'paddle' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=common.REPO_DIR)
    for step in (step11, step12):
        new = common.load_log(common.log_path(str(tmp_path), step.STEP, "torch"))
        old = common.load_log(common.log_path(common.DEFAULT_LOGS, step.STEP, "torch"))
        assert sorted(new) == sorted(old)
        for key in old:
            assert new[key].dtype == old[key].dtype and (new[key] == old[key]).all(), key
