"""NormEvalResNet: ppdet names, mmdet norm_eval semantics, frozen stages, BN weight decay."""

import numpy as np
import paddle
import pytest
from ppdet.modeling.backbones.resnet import ResNet
from ppdet.optimizer import OptimizerBuilder

from ppdet_ghm.modeling.backbone import NormEvalResNet


def _norms(model):
    return {
        name: layer
        for name, layer in model.named_sublayers()
        if isinstance(layer, paddle.nn.BatchNorm2D)
    }


def _randomise_bn(model, seed=0):
    """Non-trivial BN statistics and affine (default ones make frozen BN an identity)."""
    rng = np.random.default_rng(seed)
    for norm in _norms(model).values():
        n = norm.weight.shape[0]
        norm.weight.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
        norm.bias.set_value(rng.normal(0, 0.1, n).astype(np.float32))
        norm._mean.set_value(rng.normal(0, 0.1, n).astype(np.float32))
        norm._variance.set_value(rng.uniform(0.5, 2.0, n).astype(np.float32))


def _snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _train_step(model, lr=0.1, weight_decay=1e-4):
    """One ppdet-built Momentum step (clip 35, L2 weight decay) on a fixed input."""
    optimizer = OptimizerBuilder(
        clip_grad_by_norm=35.0,
        regularizer={"type": "L2", "factor": weight_decay},
        optimizer={"type": "Momentum", "momentum": 0.9},
    )(lr, model)
    paddle.seed(1)
    image = paddle.randn([2, 3, 32, 32])
    model.train()
    loss = sum((x * x).mean() for x in model({"image": image}))
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()


def test_state_dict_names_and_shapes_are_ppdet_resnet_ones():
    ours = NormEvalResNet(depth=50)
    ppdet = ResNet(depth=50, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ppdet_shapes = {k: tuple(v.shape) for k, v in ppdet.state_dict().items()}
    assert ours_shapes == ppdet_shapes
    assert len(ours_shapes) == 265  # 53 convs + 53 BN x (weight, bias, _mean, _variance)
    assert [s.channels for s in ours.out_shape] == [512, 1024, 2048]
    assert [s.stride for s in ours.out_shape] == [8, 16, 32]


def test_norm_eval_train_step_keeps_statistics_and_trains_affine():
    model = NormEvalResNet(depth=18)  # defaults: freeze_at 0, norm_eval, trainable affine
    _randomise_bn(model)
    before = _snapshot(model)
    _train_step(model)
    after = _snapshot(model)
    for name in before:
        frozen_stage = name.startswith(("conv1.", "res2."))
        changed = not np.array_equal(before[name], after[name])
        if name.endswith(("_mean", "_variance")) or frozen_stage:
            assert not changed, f"{name} must not change"
        else:
            assert changed, f"{name} must be trained"


def test_train_mode_output_equals_eval_mode_output():
    model = NormEvalResNet(depth=18)
    _randomise_bn(model)
    image = paddle.randn([2, 3, 64, 64])
    model.train()
    train_out = model({"image": image})
    model.eval()
    eval_out = model({"image": image})
    for a, b in zip(train_out, eval_out, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_freeze_norm_is_ppdet_behaviour():
    model = NormEvalResNet(depth=18, freeze_norm=True)
    _randomise_bn(model)
    before = _snapshot(model)
    _train_step(model)
    after = _snapshot(model)
    for name, norm in _norms(model).items():
        for suffix in ("weight", "bias", "_mean", "_variance"):
            key = f"{name}.{suffix}"
            np.testing.assert_array_equal(before[key], after[key], err_msg=key)
        assert norm.weight.stop_gradient and norm.weight.optimize_attr["learning_rate"] == 0.0
    assert not np.array_equal(
        before["res3.res3a.branch2a.conv.weight"], after["res3.res3a.branch2a.conv.weight"]
    )


def test_norm_eval_false_updates_statistics_outside_frozen_stages():
    model = NormEvalResNet(depth=18, norm_eval=False)
    _randomise_bn(model)
    before = _snapshot(model)
    _train_step(model)
    after = _snapshot(model)
    assert not np.array_equal(
        before["res3.res3a.branch2a.norm._mean"], after["res3.res3a.branch2a.norm._mean"]
    )
    # the frozen stem and res2 keep their statistics, as mmdet puts frozen stages in eval mode
    np.testing.assert_array_equal(before["conv1.conv1.norm._mean"], after["conv1.conv1.norm._mean"])
    np.testing.assert_array_equal(
        before["res2.res2a.branch2a.norm._variance"], after["res2.res2a.branch2a.norm._variance"]
    )


def test_freeze_at_minus_one_trains_the_stem():
    model = NormEvalResNet(depth=18, freeze_at=-1)
    before = _snapshot(model)
    _train_step(model)
    after = _snapshot(model)
    assert not np.array_equal(before["conv1.conv1.conv.weight"], after["conv1.conv1.conv.weight"])
    assert not np.array_equal(before["conv1.conv1.norm.weight"], after["conv1.conv1.norm.weight"])


@pytest.mark.parametrize("norm_decay, expected_decay", [(None, 1e-2), (0.0, 0.0)])
def test_bn_weight_decay(norm_decay, expected_decay):
    """norm_decay None: the optimizer's decay applies to BN gamma (mmdet); 0.0: none (ppdet)."""
    model = NormEvalResNet(depth=18, norm_decay=norm_decay)
    _randomise_bn(model)
    gamma = model.res4.res4a.branch2a.norm.weight
    old = gamma.numpy().copy()
    optimizer = paddle.optimizer.Momentum(
        learning_rate=0.5,
        momentum=0.9,
        parameters=model.parameters(),
        weight_decay=paddle.regularizer.L2Decay(1e-2),
    )
    model.train()
    loss = sum((x * x).mean() for x in model({"image": paddle.randn([1, 3, 64, 64])}))
    loss.backward()
    grad = gamma.grad.numpy().copy()
    optimizer.step()
    # first Momentum step: p - lr * (g + decay * p)
    np.testing.assert_allclose(
        gamma.numpy(), old - 0.5 * (grad + expected_decay * old), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs",
    [{"norm_type": "gn"}, {"depth": 20}, {"freeze_at": 4}, {"freeze_at": -2}],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        NormEvalResNet(**kwargs)
