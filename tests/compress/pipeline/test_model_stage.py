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
