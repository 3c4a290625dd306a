"""ppdet_ghm.engine.tasks.readable_images: unreadable images are found before ppdet's reader."""

import numpy as np
import pytest
from PIL import Image

from ppdet_ghm.engine import tasks


@pytest.fixture
def folder(tmp_path):
    Image.fromarray(np.full((8, 6), 128, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "one.jpg")
    Image.fromarray(np.zeros((5, 7, 4), np.uint8), "RGBA").save(tmp_path / "alpha.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")  # 10-byte header only
    return tmp_path


def test_skip_reports_and_leaves_out_the_unreadable(folder, caplog):
    images = tasks.find_images(folder)
    with caplog.at_level("WARNING", logger="ppdet_ghm.engine.tasks"):
        good, bad = tasks.readable_images(images, "skip")
    assert [p.rsplit("/", 1)[1] for p in good] == ["alpha.png", "gray.png", "one.jpg"]
    assert [p.rsplit("/", 1)[1] for p in bad] == ["broken.jpg", "empty.png"]
    assert "empty.png: unreadable image (empty file), skipped" in caplog.text
    assert "broken.jpg: unreadable image (not a decodable image), skipped" in caplog.text


def test_error_names_the_first_unreadable_file(folder):
    with pytest.raises(ValueError, match=r"broken\.jpg: unreadable image"):
        tasks.readable_images(tasks.find_images(folder), "error")


def test_nothing_readable_and_unknown_policy(folder):
    with pytest.raises(ValueError, match="none of the 2 image"):
        tasks.readable_images([str(folder / "empty.png"), str(folder / "broken.jpg")])
    with pytest.raises(ValueError, match="bad_image must be one of"):
        tasks.readable_images([str(folder / "gray.png")], "ignore")
