"""The stage contract: one declaration per stage, inputs checked before a stage writes anything."""

import pytest

from compress.core.errors import InputError
from compress.pipeline.contract import ARTIFACTS, BENCH_ORDER, STAGES, find, inputs, path_of, stage, stage_dir


def test_every_stage_resolves_and_names_known_artifacts():
    keys = {a.key for a in ARTIFACTS}
    for st in STAGES:
        assert callable(st.load()), st.function
        assert set(st.reads) | set(st.reads_if_present) | set(st.writes) <= keys, st.name
        for key in st.writes:
            pattern = next(a.pattern for a in ARTIFACTS if a.key == key)
            assert pattern.startswith(st.folder + "/"), (st.name, pattern)
    assert [s.folder for s in STAGES] == sorted(s.folder for s in STAGES)
    assert set(BENCH_ORDER) <= keys


def test_every_input_is_written_by_an_earlier_stage():
    written: set[str] = set()
    for st in STAGES:
        assert set(st.reads) <= written, st.name
        written |= set(st.writes)


def test_a_stage_with_missing_inputs_names_the_stage_and_the_file(tmp_path):
    with pytest.raises(InputError, match=r"00-model/model\.safetensors: stage 'quantize' needs this input "
                                         r"\(baseline\); run `make model"):
        inputs(tmp_path, "quantize")
    path_of(tmp_path, "baseline").parent.mkdir(parents=True)
    path_of(tmp_path, "baseline").write_bytes(b"x")
    with pytest.raises(InputError, match=r"40-bench/latency\.json: stage 'report' needs this input"):
        inputs(tmp_path, "report")
    got = inputs(tmp_path, "quantize")
    assert got == {"baseline": [path_of(tmp_path, "baseline")], "pruned": []}


def test_paths_come_from_the_declared_patterns(tmp_path):
    assert path_of(tmp_path, "pruned", "channel") == tmp_path / "10-prune/channel/model.safetensors"
    assert stage_dir(tmp_path, "bench") == tmp_path / "40-bench"
    with pytest.raises(ValueError, match="needs a name"):
        path_of(tmp_path, "pruned")
    (tmp_path / "10-prune/b").mkdir(parents=True)
    (tmp_path / "10-prune/b/model.safetensors").write_bytes(b"")
    assert find(tmp_path, "pruned") == [tmp_path / "10-prune/b/model.safetensors"]
    with pytest.raises(KeyError):
        stage("deploy")
