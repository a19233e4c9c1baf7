"""OpenVINO IR (``.xml`` + ``.bin``) from an ONNX file or an in-memory model, written atomically as a pair."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def save_ir(model: object, xml_path: str | Path) -> Path:
    """Save an ``openvino.Model`` as IR at ``xml_path`` (weights uncompressed).

    Both files are written in a temporary folder beside the target and renamed, the ``.bin`` first, so
    a present ``.xml`` always has its weights.
    """
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=".ir.") as tmp:
        tmp_xml = Path(tmp) / xml_path.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp_xml, xml_path)
    return xml_path


def to_ir(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert ``onnx_path`` with ``openvino.convert_model`` and save FP32 IR at ``xml_path``."""
    import openvino as ov

    return save_ir(ov.convert_model(str(onnx_path)), xml_path)
