import pytest
import torch

import compress.pipeline.export_stage as stage
from compress.core.errors import InputError
from compress.pipeline.model_stage import stage_model
from tests.conftest import tiny_edsr


class _Absent:
    def absence(self) -> str:
        return "tensorflow is not installed"


def test_a_tflite_export_without_tensorflow_is_refused_before_the_earlier_output_goes(tmp_path, monkeypatch):
    src = tmp_path / "edsr.pth"
    torch.save(tiny_edsr(2).state_dict(), src)
    run = tmp_path / "run"
    stage_model(str(src), None, run)
    earlier = run / "30-export" / "model_fp32.onnx"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier run's")
    monkeypatch.setattr(stage, "runtime", lambda name: _Absent())
    with pytest.raises(InputError, match=r"TFLite export needs TensorFlow \(tensorflow is not installed\).*--no-tflite"):
        stage.stage_export(run, tflite=True)
    assert earlier.read_bytes() == b"an earlier run's"
