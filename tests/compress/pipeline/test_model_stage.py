import pytest
import torch

from compress.core.errors import InputError
from compress.core.files import read_sidecar
from compress.pipeline.contract import path_of
from compress.pipeline.model_stage import stage_model
from tests.conftest import as_layout, tiny_edsr


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    torch.save(as_layout(tiny_edsr(2), "edsr-official"), path)
    return str(path)


def test_a_run_with_later_stages_refuses_another_baseline_and_keeps_its_own(tmp_path):
    first, second = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    run = tmp_path / "run"
    stage_model(first, None, run)
    (run / "10-prune").mkdir()
    baseline = path_of(run, "baseline")
    before = baseline.read_bytes()
    with pytest.raises(InputError, match="10-prune made from another baseline"):
        stage_model(second, None, run)
    assert baseline.read_bytes() == before
    stage_model(first, None, run)  # the same input again (e.g. more evaluation sets) is allowed
    assert read_sidecar(baseline)["source"]["path"] == first


def test_a_run_without_later_stages_takes_another_baseline(tmp_path):
    first, second = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    run = tmp_path / "run"
    stage_model(first, None, run)
    stage_model(second, None, run)
    assert read_sidecar(path_of(run, "baseline"))["source"]["path"] == second


def test_a_sidecar_that_cannot_be_written_leaves_no_baseline(tmp_path):
    run = tmp_path / "run"
    baseline = path_of(run, "baseline")
    baseline.with_name(baseline.name + ".json").mkdir(parents=True)  # the sidecar's place is taken
    with pytest.raises(InputError, match="model.safetensors.json: cannot write"):
        stage_model(_checkpoint(tmp_path / "a.pt", 0), None, run)
    assert not baseline.exists()


def test_make_s_default_scale_is_checked_not_imposed(tmp_path):
    """``make model MODEL=...`` without SCALE passes --expect-scale: the file's own scale must match the run,
    and SRCNN weights (which do not record a scale) are refused instead of being read as x2."""
    from tests.conftest import tiny_srcnn

    x4 = tmp_path / "edsr_x4.pt"
    torch.save(as_layout(tiny_edsr(4), "edsr-official"), x4)
    with pytest.raises(InputError, match=rf"^{x4}: checkpoint is a x4 edsr model, but the run is for the default "
                                         r"scale x2; give SCALE=4 \(--scale 4\)$"):
        stage_model(str(x4), None, tmp_path / "run-x2", expect_scale=2)
    assert not (tmp_path / "run-x2").exists()
    assert stage_model(str(x4), None, tmp_path / "run-x4", expect_scale=4)["artifact"].endswith("model.safetensors")
    srcnn = tmp_path / "srcnn_x3.pth"
    torch.save(as_layout(tiny_srcnn(3, 1), "srcnn"), srcnn)
    with pytest.raises(InputError, match=r"--scale"):
        stage_model(str(srcnn), None, tmp_path / "run-srcnn", expect_scale=2)
    assert stage_model(str(srcnn), 3, tmp_path / "run-srcnn")["artifact"]  # SCALE=3 given: read at x3
    assert read_sidecar(tmp_path / "run-srcnn" / "00-model" / "model.safetensors")["scale"] == 3
