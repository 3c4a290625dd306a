"""Configs say only what differs from their bases, and mean what they meant before.

``tests/snapshots/resolved_configs.json`` holds ``builder.resolved_config`` of every shipped config as
it was when each leaf config still wrote its head block whole (anchor generator, assigner, box
coder, losses and post-processor inline, five copies). The configs now name those components and
set them in one base (``configs/_base_/retinanet_head.yml``); every config must still resolve to
the same model, schedule and readers, value for value.
"""

import json

import pytest

from ppdet_ghm.builder import build_model, load_config, resolved_config
from tests.helpers import REPO

SNAPSHOT = json.loads((REPO / "tests" / "snapshots" / "resolved_configs.json").read_text())


def _json(value):
    return json.loads(json.dumps(value, sort_keys=True))


@pytest.mark.parametrize("config", sorted(SNAPSHOT))
def test_every_config_resolves_to_its_values_before_the_leaf_configs(config):
    assert _json(resolved_config(load_config(str(REPO / config)))) == SNAPSHOT[config]


def test_the_snapshot_covers_every_shipped_config():
    shipped = {str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yml")}
    shipped |= {
        str(p.relative_to(REPO))
        for p in (REPO / "align" / "configs").glob("*.yml")
        if not p.name.startswith("_")
    }
    shipped.add("test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml")
    assert shipped == set(SNAPSHOT)


def test_the_leaf_configs_are_short():
    """The paper's configs and the demo's are their bases plus what differs (a handful of lines)."""
    for name in (
        "retinanet_ghm_r50_fpn_1x_coco",
        "retinanet_r50_fpn_1x_coco",
        "demo",
        "demo_focal",
    ):
        lines = (REPO / "configs" / f"{name}.yml").read_text().splitlines()
        code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        assert len(code) <= 12, name


def test_an_override_of_a_named_component_goes_to_its_block():
    config = str(REPO / "configs" / "demo.yml")
    cfg = load_config(
        config, {"GHMRetinaHead.loss_cls.bins": 20, "GHMRetinaHead.assigner.pos_iou_thr": 0.6}
    )
    head = resolved_config(cfg)["architecture"]["head"]
    assert head["loss_cls"]["name"] == "GHMCLoss" and head["loss_cls"]["bins"] == 20
    assert head["assigner"]["pos_iou_thr"] == 0.6 and head["assigner"]["neg_iou_thr"] == 0.4
    model = build_model(config, {"GHMRetinaHead.loss_cls.bins": 20})
    assert model.head.loss_cls.bins == 20 and model.head.loss_bbox.bins == 10
    # the same key in YAML-style nested form, and another component by name
    cfg = load_config(config, {"GHMCLoss": {"momentum": 0.0}})
    assert resolved_config(cfg)["architecture"]["head"]["loss_cls"]["momentum"] == 0.0
    cfg = load_config(config, {"GHMRetinaHead.loss_cls": "SigmoidFocalLoss"})
    assert resolved_config(cfg)["architecture"]["head"]["loss_cls"]["gamma"] == 2.0


def test_the_focal_configs_differ_from_the_ghm_ones_in_the_losses_only():
    for ghm, focal in (
        ("configs/demo.yml", "configs/demo_focal.yml"),
        ("configs/retinanet_ghm_r50_fpn_1x_coco.yml", "configs/retinanet_r50_fpn_1x_coco.yml"),
    ):
        a, b = SNAPSHOT[ghm], SNAPSHOT[focal]
        head_a = dict(a["architecture"]["head"])
        head_b = dict(b["architecture"]["head"])
        assert (head_a.pop("loss_cls")["name"], head_b.pop("loss_cls")["name"]) == (
            "GHMCLoss",
            "SigmoidFocalLoss",
        )
        assert (head_a.pop("loss_bbox")["name"], head_b.pop("loss_bbox")["name"]) == (
            "GHMRLoss",
            "BetaSmoothL1Loss",
        )
        assert head_a == head_b
        rest_a = {k: v for k, v in a.items() if k not in ("architecture", "weights", "filename")}
        rest_b = {k: v for k, v in b.items() if k not in ("architecture", "weights", "filename")}
        assert rest_a == rest_b
