"""Anchors: hand-computed mmdet v2+ anchors, their (y, x, anchor) order and the valid flags."""

import numpy as np
import pytest

from ppdet_ghm.modeling.anchors import OctaveAnchorGenerator

# stride 8, sizes 32 * 2**(i/3) = 32, 40.3175, 50.7968; w = size / sqrt(r), h = size * sqrt(r);
# centred on (0, 0) (offset 0); ratio-major order
BASE_ANCHORS_STRIDE_8 = np.array(
    [
        [-22.62742, -11.31371, 22.62742, 11.31371],  # ratio 0.5, size 32
        [-28.50876, -14.25438, 28.50876, 14.25438],  # ratio 0.5, size 40.32
        [-35.91879, -17.95939, 35.91879, 17.95939],  # ratio 0.5, size 50.80
        [-16.0, -16.0, 16.0, 16.0],  # ratio 1
        [-20.15874, -20.15874, 20.15874, 20.15874],
        [-25.39842, -25.39842, 25.39842, 25.39842],
        [-11.31371, -22.62742, 11.31371, 22.62742],  # ratio 2
        [-14.25438, -28.50876, 14.25438, 28.50876],
        [-17.95939, -35.91879, 17.95939, 35.91879],
    ]
)


def test_base_anchors_hand_computed():
    generator = OctaveAnchorGenerator()
    assert generator.num_anchors == 9
    np.testing.assert_allclose(generator.base_anchors[0], BASE_ANCHORS_STRIDE_8, atol=1e-4)
    # stride 128: everything 16 times larger
    np.testing.assert_allclose(generator.base_anchors[4], BASE_ANCHORS_STRIDE_8 * 16, atol=2e-3)


def test_grid_order_is_y_then_x_then_anchor():
    generator = OctaveAnchorGenerator()
    anchors = generator.level_anchors(0, 2, 3).numpy()  # H=2, W=3 at stride 8
    assert anchors.shape == (2 * 3 * 9, 4)
    cells = anchors.reshape(2, 3, 9, 4)
    for y in range(2):
        for x in range(3):
            shift = np.array([8 * x, 8 * y, 8 * x, 8 * y])
            np.testing.assert_allclose(cells[y, x], BASE_ANCHORS_STRIDE_8 + shift, atol=1e-4)
    # row 6 (cell y=0, x=0, anchor 6) and row 9 (cell y=0, x=1, anchor 0)
    np.testing.assert_allclose(anchors[6], [-11.31371, -22.62742, 11.31371, 22.62742], atol=1e-4)
    np.testing.assert_allclose(anchors[9], [-14.62742, -11.31371, 30.62742, 11.31371], atol=1e-4)


def test_call_gives_one_tensor_per_level():
    import paddle

    generator = OctaveAnchorGenerator()
    feats = [paddle.zeros([1, 1, h, w]) for h, w in [(4, 5), (2, 3), (1, 2), (1, 1), (1, 1)]]
    anchors = generator(feats)
    assert [a.shape[0] for a in anchors] == [4 * 5 * 9, 2 * 3 * 9, 2 * 9, 9, 9]
    with pytest.raises(ValueError, match="5 feature levels"):
        generator(feats[:4])


def test_valid_flags_from_own_padded_shape():
    generator = OctaveAnchorGenerator(strides=[8, 16])
    # batch padded to 48x64 -> maps 6x8 and 3x4; this image's own padded shape is 32x40
    flags = generator.valid_flags([(6, 8), (3, 4)], (32, 40))
    level0 = flags[: 6 * 8 * 9].reshape(6, 8, 9)
    level1 = flags[6 * 8 * 9 :].reshape(3, 4, 9)
    expected0 = np.zeros((6, 8), bool)
    expected0[:4, :5] = True  # ceil(32/8)=4 rows, ceil(40/8)=5 columns
    expected1 = np.zeros((3, 4), bool)
    expected1[:2, :3] = True  # ceil(32/16)=2, ceil(40/16)=3
    np.testing.assert_array_equal(level0, np.repeat(expected0[..., None], 9, axis=2))
    np.testing.assert_array_equal(level1, np.repeat(expected1[..., None], 9, axis=2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"octave_base_scale": 0},
        {"scales_per_octave": 0},
        {"ratios": [0.5, -1.0]},
        {"strides": []},
        {"center_offset": 1.5},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        OctaveAnchorGenerator(**kwargs)
