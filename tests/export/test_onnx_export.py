import numpy as np
import onnx
import pytest
import torch

from export.runtimes import ort_upscaler
from export.onnx_export import MIN_PARITY_DB, ParityError, export_checked, export_onnx, onnx_op_counts, parity
from tests.conftest import tiny_edsr, tiny_rrdb, tiny_srcnn

CASES = [
    ("edsr_x3", lambda: tiny_edsr(3)),
    ("edsr_x4", lambda: tiny_edsr(4)),
    ("rrdb_x4", lambda: tiny_rrdb(4)),
    ("rrdb_x2", lambda: tiny_rrdb(2)),
    ("srcnn_y_x2", lambda: tiny_srcnn(2, 1)),
]


@pytest.mark.parametrize(("name", "make"), CASES)
def test_export_has_dynamic_size_and_matches_pytorch(tmp_path, name, make):
    model = make()
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    onnx.checker.check_model(str(path))
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param and dims[3].dim_param
    run = ort_upscaler(path)
    for h, w in ((24, 20), (37, 50)):  # sizes unlike the 64x64 export sample, one odd
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        got = run(x.numpy())
        assert got.shape == ref.shape
        assert parity(ref, got).max_abs_diff < 1e-4


def test_no_partial_file_on_failure(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    target = tmp_path / "m.onnx"
    with pytest.raises(Exception, match="boom"):
        export_onnx(Broken(), target)
    assert list(tmp_path.iterdir()) == []


def test_parity_figures():
    a = np.zeros((1, 3, 4, 4))
    b = a + 0.01
    p = parity(a, b)
    assert p.max_abs_diff == pytest.approx(0.01)
    assert p.psnr_db == pytest.approx(40.0)


def test_non_finite_outputs_never_match():
    a = np.zeros((1, 3, 4, 4), dtype=np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = np.nan
    assert parity(a, b).psnr_db == -np.inf and parity(a, b).max_abs_diff == np.inf
    assert parity(a, a).psnr_db == np.inf


def test_an_export_that_disagrees_with_pytorch_is_refused_and_removed(tmp_path, monkeypatch):
    import export.runtimes

    model = tiny_edsr(2)
    out, par = export_checked(model, tmp_path / "ok.onnx", torch.rand(1, 3, 16, 16))
    assert out.is_file() and par.psnr_db >= MIN_PARITY_DB
    real = export.runtimes.ort_upscaler
    off = 10 ** (-(MIN_PARITY_DB - 3) / 20)  # an error 3 dB under the parity bar
    monkeypatch.setattr(export.runtimes, "ort_upscaler", lambda path: lambda x: real(path)(x) + off)
    with pytest.raises(ParityError, match=r"bad\.onnx: ONNX output disagrees with PyTorch \(PSNR \d+\.\d dB"):
        export_checked(model, tmp_path / "bad.onnx", torch.rand(1, 3, 16, 16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.onnx"]


def test_op_counts(tmp_path):
    path = export_onnx(tiny_edsr(2), tmp_path / "e.onnx")
    ops = onnx_op_counts(path)
    assert ops["Conv"] == 1 + 2 * 2 + 1 + 1 + 1 and ops["DepthToSpace"] == 1


def test_export_keeps_the_exporters_notes_off_stderr(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("from tests.conftest import tiny_edsr; from export.onnx_export import export_onnx; "
            f"export_onnx(tiny_edsr(2), {str(tmp_path / 'm.onnx')!r})")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # torchvision skips, pytree deprecations
