"""Fixtures of the converter tests: the names and shapes of ppdet's ResNet-50 and of our model."""

import pytest
from ppdet.modeling.backbones.resnet import ResNet

from tests.helpers.torch_specs import mmdet_retinanet_ghm_spec


@pytest.fixture(scope="module")
def resnet_shapes():
    resnet = ResNet(depth=50, variant="b", norm_type="bn", freeze_at=0, return_idx=[1, 2, 3])
    return {k: tuple(v.shape) for k, v in resnet.state_dict().items()}


@pytest.fixture(scope="module")
def model_shapes(resnet_shapes):
    """Our full model's names/shapes: ``backbone.`` + ppdet ResNet, and the neck/head contract."""
    shapes = {f"backbone.{k}": v for k, v in resnet_shapes.items()}
    for name, shape in mmdet_retinanet_ghm_spec():
        if name.startswith("neck.") or name.startswith("bbox_head."):
            if not name.endswith(".edges"):
                shapes[name.replace("bbox_head.", "head.").replace(".conv.", ".")] = shape
    return shapes
