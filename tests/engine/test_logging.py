"""train.log gets every ppdet / ppdet_ghm record exactly once (engine.trainer.log_to_file)."""

import logging

import ppdet_ghm  # noqa: F401  (imports ppdet quietly, creating its loggers)
from ppdet_ghm.engine.trainer import log_to_file


def test_log_to_file_writes_each_record_once(tmp_path):
    path = tmp_path / "train.log"
    nested = logging.getLogger("ppdet_ghm.engine.some.nested.module")
    ppdet_logger = logging.getLogger("ppdet.engine")  # ppdet's: own handler, no propagation
    names = ("ppdet_ghm", "ppdet_ghm.engine.some.nested.module", "ppdet.engine")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    with log_to_file(path):
        nested.info("nested record")
        logging.getLogger("ppdet_ghm").info("top record")
        ppdet_logger.info("ppdet record")
    nested.info("after the block")
    text = path.read_text()
    assert text.count("nested record") == 1
    assert text.count("top record") == 1
    assert text.count("ppdet record") == 1
    assert "after the block" not in text
    # the handler is gone from every logger again
    assert {name: list(logging.getLogger(name).handlers) for name in names} == before
