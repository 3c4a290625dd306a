"""notebooks/train_ghm_retinanet.ipynb runs top to bottom on a few generated images.

The notebook is executed with nbclient after a cell with smaller values is inserted after its
``parameters`` cell (what papermill does, without the dependency): 8 train and 4 val demo images,
one epoch of batch 4 (2 iterations), a score threshold low enough that the untrained model's
detections go through evaluation, drawing and the exported model, every output under a temporary
folder.
"""

from __future__ import annotations

import ast
import json

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.helpers import REPO

NOTEBOOK = REPO / "notebooks" / "train_ghm_retinanet.ipynb"


def parameters_cell_index(nb) -> int:
    """Index of the only code cell tagged ``parameters``."""
    found = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])
    ]
    if len(found) != 1:
        raise ValueError(f"expected one code cell tagged 'parameters', found {len(found)}")
    return found[0]


def assigned_names(source: str) -> set[str]:
    return {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def inject_parameters(nb, values: dict) -> None:
    """Insert ``NAME = value`` lines in a cell tagged ``injected-parameters`` after the
    ``parameters`` cell; every name must be a parameter of the notebook (ValueError otherwise)."""
    index = parameters_cell_index(nb)
    unknown = sorted(set(values) - assigned_names(nb.cells[index].source))
    if unknown:
        raise ValueError(f"not parameters of the notebook: {unknown}")
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)


def text_of(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output:
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    inject_parameters(
        nb,
        {
            "DATA": "demo",
            "DEVICE": "cpu",
            "WORK_DIR": str(work),
            "DEMO_TRAIN_IMAGES": 8,
            "DEMO_VAL_IMAGES": 4,
            "EPOCHS": 1,
            "BATCH_SIZE": 4,
            "NUM_PICTURES": 2,
            # after 2 iterations every score is near the prior 0.01: keep and draw them
            "SCORE_THRESHOLD": 0.001,
            "DRAW_THRESHOLD": 0.005,
            "CHECKPOINT": "",
        },
    )
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return nb, work


def test_parameters_cell_defaults_run_the_demo():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    index = parameters_cell_index(nb)
    namespace: dict = {}
    exec(nb.cells[index].source, namespace)  # plain assignments only
    assert namespace["DATA"] == "demo" and namespace["DEVICE"] == "cpu"
    assert namespace["CHECKPOINT"] == ""
    assert (namespace["DEMO_TRAIN_IMAGES"], namespace["DEMO_VAL_IMAGES"]) == (800, 200)
    # no outputs stored in the committed notebook
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


def test_inject_parameters_rejects_unknown_names():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(ValueError, match="MAX_ITER"):
        inject_parameters(nb, {"MAX_ITER": 3})


@pytest.mark.slow
def test_every_cell_ran(executed):
    nb, _ = executed
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(isinstance(cell.execution_count, int) for cell in code_cells)
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
def test_trained_evaluated_exported(executed):
    _, work = executed
    assert (work / "demo_data" / "train").is_dir()
    assert len(list((work / "demo_data" / "train").glob("*.jpg"))) == 8
    assert (work / "train" / "model_final.pdparams").is_file()
    assert "Epoch: [0] [0/2]" in (work / "train" / "train.log").read_text()
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    assert set(metrics["stats"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert len(json.loads((work / "eval" / "bbox.json").read_text())) > 0
    assert (work / "export" / "infer_cfg.yml").is_file()
    assert (work / "export" / "model.pdiparams").is_file()
    inputs = sorted(p.name for p in (work / "pictures_in").iterdir())
    assert len(inputs) == 2
    assert sorted(p.name for p in (work / "infer").glob("*.jpg")) == inputs
    for name in inputs:  # boxes were drawn
        with Image.open(work / "pictures_in" / name) as a, Image.open(work / "infer" / name) as b:
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() > 100


@pytest.mark.slow
def test_exported_model_gives_the_dygraph_best_scores(executed):
    _, work = executed
    dygraph = json.loads((work / "infer" / "detections.json").read_text())
    exported = json.loads((work / "infer_exported" / "detections.json").read_text())
    names = sorted(p.name for p in (work / "pictures_in").iterdir())
    for name in names:
        best_dygraph = max(d["score"] for d in dygraph if d["file_name"] == name)
        best_exported = max(d["score"] for d in exported if d["file_name"] == name)
        assert abs(best_exported - best_dygraph) <= 1e-4, (name, best_dygraph, best_exported)


@pytest.mark.slow
def test_pictures_are_shown_inline(executed):
    nb, _ = executed
    with_images = [
        cell.source.splitlines()[0]
        for cell in nb.cells
        if cell.cell_type == "code" and any("image/png" in o.get("data", {}) for o in cell.outputs)
    ]
    # the ground truth strip, the loss curve and the detections picture
    assert len(with_images) == 3, with_images
    picture_cell = next(c for c in nb.cells if "image_grid(drawn" in c.source)
    assert any("image/png" in o.get("data", {}) for o in picture_cell.outputs)


@pytest.mark.slow
def test_authors_checkpoint_section_explains_how_to_get_it(executed):
    nb, _ = executed
    cell = next(c for c in nb.cells if c.cell_type == "code" and "if not CHECKPOINT:" in c.source)
    text = text_of(cell)
    assert "CHECKPOINT is empty" in text
    assert "retinanet_ghm_r50_fpn_1x_coco_20200130-a437fda3.pth" in text
