"""JPEG scans counted from the marker segments; too many for the image's size refused before decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from compress.core.data import open_image
from compress.core.errors import InputError
from compress.core.jpeg_scans import MAX_JPEG_SCANS, count_file_scans, count_scans, scan_problem


def _jpeg(progressive: bool = True, extra_scans: int = 0, comment: bytes = b"") -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    img = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    img.save(buf, "JPEG", progressive=progressive, comment=comment)
    data = buf.getvalue()
    last_scan = data[data.rfind(b"\xff\xda"):-2]  # the final scan, up to the end-of-image marker
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def test_scans_are_counted_from_the_segments():
    assert count_scans(_jpeg()) == 10  # libjpeg's progression for colour
    assert count_scans(_jpeg(progressive=False)) == 1
    assert count_scans(_jpeg(extra_scans=5)) == 15
    assert count_scans(b"\x89PNG\r\n\x1a\n") == 0


def test_marker_bytes_in_metadata_or_after_the_image_are_not_scans(tmp_path):
    assert count_scans(_jpeg(comment=b"\xff\xda" * 500)) == 10  # inside a comment segment
    motion_photo = _jpeg() + b"\xff\xda\x00\x08" * 100_000  # a video appended after end-of-image
    assert count_scans(motion_photo) == 10
    (tmp_path / "m.jpg").write_bytes(motion_photo)
    assert count_file_scans(tmp_path / "m.jpg") == 10 and open_image(tmp_path / "m.jpg").size == (64, 48)
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert count_file_scans(tmp_path / "empty.jpg") == 0


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding(tmp_path):
    path = tmp_path / "scans.jpg"
    path.write_bytes(_jpeg(extra_scans=MAX_JPEG_SCANS))
    with pytest.raises(InputError, match=rf"scans\.jpg: JPEG with {MAX_JPEG_SCANS + 10} scans, over the limit"):
        open_image(path)
    with pytest.raises(InputError, match="upload.jpg: JPEG with"):
        open_image(io.BytesIO(path.read_bytes()), label="upload.jpg")
    path.write_bytes(_jpeg(extra_scans=MAX_JPEG_SCANS - 10))  # at the limit: decoded
    assert open_image(path).size == (64, 48)


def test_the_scan_budget_grows_with_fewer_pixels():
    assert scan_problem(20, 100.0) == "" and scan_problem(200, 10.0) == ""
    assert "over the decoding budget of 2000 scan-megapixels" in scan_problem(50, 50.0)
    assert "over the limit of 200" in scan_problem(201, 0.01)
