"""test_tipc/: the TIPC lite chain (prepare.sh, then train -> eval -> export -> inference on CPU).

The chain runs once per session (module fixture) on the lite shapes set (a few 256 px images, one
epoch of the CPU-sized config); the other tests check the txt parser and that a failing step is
reported as failed and makes the script exit non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

TIPC_TXT = "test_tipc/configs/retinanet_ghm/train_infer_python.txt"
MODE = "lite_train_lite_infer"
SUCCESS = "Run successfully with command - "
FAILURE = "Run failed with command - "


def _env(output_dir: Path) -> dict[str, str]:
    """The config's ``python`` resolves to this interpreter; outputs go to ``output_dir``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(os.environ, PATH=path, TIPC_OUTPUT_DIR=str(output_dir))


def _bash(*args: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _results(output_dir: Path) -> list[str]:
    return (output_dir / "results_python.log").read_text().splitlines()


@pytest.fixture(scope="module")
def lite_chain(tmp_path_factory):
    """Runs prepare.sh and the chain once; returns (output dir, prepare result, chain result)."""
    out = tmp_path_factory.mktemp("tipc_out")
    env = _env(out)
    prepare = _bash("test_tipc/prepare.sh", TIPC_TXT, MODE, env=env)
    assert prepare.returncode == 0, prepare.stdout + prepare.stderr
    chain = _bash("test_tipc/test_train_inference_python.sh", TIPC_TXT, MODE, env=env)
    return out, prepare, chain


@pytest.mark.slow
def test_lite_chain_every_step_succeeds(lite_chain):
    out, _, chain = lite_chain
    assert chain.returncode == 0, chain.stdout[-6000:] + chain.stderr[-3000:]
    lines = _results(out)
    assert not [line for line in lines if line.startswith(FAILURE)]
    steps = [line.split(" - ")[2] for line in lines if line.startswith(SUCCESS)]
    # train, eval, export, then two inferences (cpu, oneDNN on and off, 2 threads, batch 1)
    assert len(steps) == 5, lines
    assert (
        " train " in steps[0] and "epoch=1" in steps[0] and "TrainReader.batch_size=2" in steps[0]
    )
    assert " eval " in steps[1] and "model_final" in steps[1]
    assert " export " in steps[2]
    assert "--device=cpu" in steps[3] and "--enable_mkldnn=True" in steps[3]
    assert "--device=cpu" in steps[4] and "--enable_mkldnn=False" in steps[4]


@pytest.mark.slow
def test_lite_chain_writes_weights_export_and_detections(lite_chain):
    out, _, chain = lite_chain
    assert chain.returncode == 0
    model_dir = out / "norm_train_gpus_-1" / "retinanet_ghm"  # checkpoints and export, as Paddle's
    assert (model_dir / "model_final.pdparams").is_file()
    assert (model_dir / "infer_cfg.yml").is_file()
    assert (model_dir / "model.pdiparams").is_file()
    assert (model_dir / "model.json").is_file() or (model_dir / "model.pdmodel").is_file()
    assert "Average Precision" in (out / "norm_train_gpus_-1_eval.log").read_text()

    # the exported model's detections (inference step) against the dygraph model's (eval step):
    # same images, and the same best score per image (the lite config keeps scores >= 0.001)
    gt = json.loads((REPO / "test_tipc/data/lite/annotations/instances_val.json").read_text())
    names = {image["id"]: image["file_name"] for image in gt["images"]}
    dygraph = json.loads((out / "norm_train_gpus_-1" / "eval" / "bbox.json").read_text())
    exported = json.loads((model_dir / "infer" / "detections.json").read_text())
    assert {d["file_name"] for d in exported} == set(names.values())
    for name in names.values():
        best_dygraph = max(d["score"] for d in dygraph if names[d["image_id"]] == name)
        best_exported = max(d["score"] for d in exported if d["file_name"] == name)
        assert abs(best_exported - best_dygraph) <= 1e-4, (name, best_exported, best_dygraph)
    for onednn in ("True", "False"):
        log = out / f"python_infer_cpu_usemkldnn_{onednn}_threads_2_batchsize_1.log"
        assert f"{len(names)} image(s)" in log.read_text()


def _write_txt(path: Path, replace: dict[str, str]) -> Path:
    text = (REPO / TIPC_TXT).read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def test_failing_step_is_logged_and_exits_nonzero(tmp_path):
    """A train command that fails: logged as failed, nothing after it runs, exit status 1."""
    txt = _write_txt(
        tmp_path / "broken.txt",
        {
            "norm_train:-m ppdet_ghm train -c test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml": (
                "norm_train:-c 'import sys; sys.exit(3)'"
            )
        },
    )
    out = tmp_path / "out"
    chain = _bash("test_tipc/test_train_inference_python.sh", str(txt), MODE, env=_env(out))
    assert chain.returncode == 1, chain.stdout + chain.stderr
    lines = _results(out)
    assert len(lines) == 1 and lines[0].startswith(FAILURE), lines
    assert "sys.exit(3)" in lines[0]


def test_failing_inference_after_successful_steps_exits_nonzero(tmp_path):
    """Every step but inference (oneDNN on and off) succeeds (stand-ins): the script exits 1."""
    ok = "-c 'import sys; sys.exit(0)'"
    txt = _write_txt(
        tmp_path / "infer_fails.txt",
        {
            "norm_train:-m ppdet_ghm train -c test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml -o": (
                f"norm_train:{ok}"
            ),
            "eval:-m ppdet_ghm eval -c test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml -o": (
                f"eval:{ok}"
            ),
            "norm_export:-m ppdet_ghm export -c test_tipc/configs/retinanet_ghm/retinanet_ghm_lite.yml -o": (
                f"norm_export:{ok}"
            ),
        },
    )
    inference = next(line for line in txt.read_text().splitlines() if line.startswith("inference:"))
    txt.write_text(txt.read_text().replace(inference, "inference:-c 'import sys; sys.exit(4)'"))
    out = tmp_path / "out"
    chain = _bash("test_tipc/test_train_inference_python.sh", str(txt), MODE, env=_env(out))
    assert chain.returncode == 1, chain.stdout + chain.stderr
    lines = _results(out)
    assert [line.startswith(SUCCESS) for line in lines] == [True, True, True, False, False], lines


def test_shifted_config_is_refused(tmp_path):
    text = (REPO / TIPC_TXT).read_text().replace("filename:null\n", "")
    txt = tmp_path / "shifted.txt"
    txt.write_text(text)
    chain = _bash(
        "test_tipc/test_train_inference_python.sh", str(txt), MODE, env=_env(tmp_path / "out")
    )
    assert chain.returncode == 2
    assert "eval_params header" in chain.stderr


def test_unknown_mode_is_refused(tmp_path):
    chain = _bash(
        "test_tipc/test_train_inference_python.sh", TIPC_TXT, "lite_train_whole_infer",
        env=_env(tmp_path / "out"),
    )  # fmt: skip
    assert chain.returncode == 2
    assert "needs COCO" in chain.stderr


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('func_parser_key "use_gpu:False"', "use_gpu"),
        ('func_parser_value "norm_train:-m ppdet_ghm train -c a.yml -o"', "-m ppdet_ghm train -c a.yml -o"),
        ('func_parser_value "--image_dir:C:/x"', "C:/x"),
        ('MODE=lite_train_lite_infer func_parser_params "epoch:lite_train_lite_infer=1|whole_train_whole_infer=12"', "1"),
        ('MODE=whole_train_whole_infer func_parser_params "epoch:lite_train_lite_infer=1|whole_train_whole_infer=12"', "12"),
        ('MODE=other func_parser_params "epoch:lite_train_lite_infer=1"', ""),
        ('func_set_params epoch 1', "epoch=1"),
        ('func_set_params null 1', ""),
        ('func_set_params epoch null', ""),
        ('func_set_params epoch " "', ""),
    ],
)  # fmt: skip
def test_common_func_parsers(snippet, expected):
    result = subprocess.run(
        ["bash", "-c", f"source test_tipc/common_func.sh && {snippet}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.rstrip("\n") == expected


# ------------------------------------------------------------------ paddle2onnx chain

P2O_TXT = (
    "test_tipc/configs/retinanet_ghm/model_linux_gpu_normal_normal_paddle2onnx_python_linux_cpu.txt"
)


@pytest.fixture(scope="module")
def paddle2onnx_chain(lite_chain):
    """The paddle2onnx chain on the weights the lite chain trained (same output folder)."""
    out, _, chain = lite_chain
    assert chain.returncode == 0, chain.stdout[-3000:] + chain.stderr[-3000:]
    done = _bash("test_tipc/test_paddle2onnx.sh", P2O_TXT, env=_env(out))
    return out, done


@pytest.mark.slow
def test_paddle2onnx_chain_exports_converts_and_runs_onnx_runtime(paddle2onnx_chain):
    out, done = paddle2onnx_chain
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    lines = (out / "results_paddle2onnx.log").read_text().splitlines()
    assert [line.startswith(SUCCESS) for line in lines] == [True, True, True], lines
    export, convert, infer = (line.split(" - ")[2] for line in lines)
    assert " export " in export and "norm_train_gpus_-1/retinanet_ghm/model_final" in export
    assert "test_tipc.onnx_convert" in convert and "--opset_version=17" in convert
    assert "test_tipc.onnx_infer" in infer and "--onnx_file=" in infer
    model_dir = out / "paddle2onnx" / "retinanet_ghm"
    assert (model_dir / "model.onnx").is_file() and (model_dir / "model.json").is_file()

    # ONNX Runtime against the Paddle predictor of the train chain (same weights): the same
    # images, the same best score per image (the lite model's scores sit near the prior)
    onnx_dets = json.loads((model_dir / "infer_onnx" / "detections.json").read_text())
    paddle_dets = json.loads(
        (out / "norm_train_gpus_-1" / "retinanet_ghm" / "infer" / "detections.json").read_text()
    )
    names = {d["file_name"] for d in paddle_dets}
    assert {d["file_name"] for d in onnx_dets} == names and len(names) == 2
    for name in names:
        best_onnx = max(d["score"] for d in onnx_dets if d["file_name"] == name)
        best_paddle = max(d["score"] for d in paddle_dets if d["file_name"] == name)
        assert abs(best_onnx - best_paddle) <= 1e-4, (name, best_onnx, best_paddle)
    log = (out / "paddle2onnx_infer_cpu.log").read_text()
    assert "2 image(s)" in log


def test_paddle2onnx_chain_stops_after_a_failed_conversion(tmp_path):
    """Export succeeds (stand-in), the conversion fails: logged, no inference, exit status 1."""
    txt = tmp_path / "p2o.txt"
    text = (REPO / P2O_TXT).read_text()
    export = next(line for line in text.splitlines() if line.startswith("norm_export:"))
    text = text.replace(export, "norm_export:-c 'import sys; sys.exit(0)'")
    text = text.replace(
        "cmd:python -m test_tipc.onnx_convert", "cmd:python -c 'import sys; sys.exit(5)'"
    )
    txt.write_text(text)
    out = tmp_path / "out"
    done = _bash("test_tipc/test_paddle2onnx.sh", str(txt), env=_env(out))
    assert done.returncode == 1, done.stdout + done.stderr
    lines = (out / "results_paddle2onnx.log").read_text().splitlines()
    assert [line.startswith(SUCCESS) for line in lines] == [True, False], lines
    assert "sys.exit(5)" in lines[1]


def test_paddle2onnx_chain_refuses_a_shifted_txt(tmp_path):
    txt = tmp_path / "shifted.txt"
    text = (REPO / P2O_TXT).read_text()
    txt.write_text(text.replace("infer_quant:False\n", ""))
    done = _bash("test_tipc/test_paddle2onnx.sh", str(txt), env=_env(tmp_path / "out"))
    assert done.returncode == 2
    assert "line 17" in done.stderr and "cmd:" in done.stderr


def test_onnx_convert_refuses_another_opset(capsys):
    from test_tipc import onnx_convert

    status = onnx_convert.main(["--model_dir", "/nonexistent", "--opset_version", "11"])
    assert status == 2
    assert "--opset_version=11 is not supported" in capsys.readouterr().err
