"""Counting a JPEG's scans from its marker segments, before any decoding (ITU-T T.81, Annex B).

Every scan of a progressive JPEG re-walks the coefficients of the whole image, so a small file of
thousands of scans holds a decoder for seconds (libjpeg-turbo's ``djpeg -maxscans`` guards against the
same file). The count walks the segments: a segment's length is skipped, so a ``FF DA`` inside
metadata or an embedded thumbnail is not counted, and it stops at the end-of-image marker, so data
appended after the image (the video of a phone's "motion photo") is not read.
"""

from __future__ import annotations

import mmap
from pathlib import Path

#: Start-of-scan markers a JPEG may hold (libjpeg's progressive JPEG has 10, 6 in grayscale).
MAX_JPEG_SCANS = 200
#: Scans times megapixels (the decoding work): 20 scans of a 100 MP image, or 200 of a 10 MP one.
MAX_JPEG_SCAN_MP = 2000.0

_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RST0-7: no length; RSTn sit inside entropy-coded data


def count_scans(data: bytes | mmap.mmap) -> int:
    """Start-of-scan segments of the JPEG in ``data`` (0 if it does not start with SOI)."""
    if data[:2] != b"\xff\xd8":
        return 0
    n, pos, scans = len(data), 2, 0
    while pos + 1 < n:
        if data[pos] != 0xFF:  # entropy-coded data: jump to the next FF
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0x00 or marker in _STANDALONE:  # a stuffed FF data byte, or a restart marker
            pos += 2
        elif marker == 0xD9:  # end of image: anything after it is not this image
            break
        else:
            if pos + 4 > n:
                break
            scans += marker == 0xDA
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])  # the segment's length counts its own 2 bytes
    return scans


def count_file_scans(path: str | Path) -> int:
    """:func:`count_scans` of a file, mapped rather than read (a large file costs no memory)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return 0
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return count_scans(data)


def scan_problem(scans: int, megapixels: float) -> str:
    """Why a JPEG of ``scans`` scans and ``megapixels`` is refused ("" if it is not)."""
    if scans > MAX_JPEG_SCANS:
        return f"JPEG with {scans} scans, over the limit of {MAX_JPEG_SCANS} (a progressive JPEG has about 10)"
    if scans * megapixels > MAX_JPEG_SCAN_MP:
        return (f"JPEG with {scans} scans of {megapixels:.1f} MP, over the decoding budget of {MAX_JPEG_SCAN_MP:g} "
                "scan-megapixels")
    return ""
