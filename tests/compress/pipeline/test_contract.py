"""The stage contract: one declaration per stage, inputs checked before a stage writes anything."""

from pathlib import Path

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


def test_kind_of_reads_a_run_relative_path_by_the_declared_patterns():
    from compress.pipeline.contract import from_pruned, kind_of, quantize_dir, quantized_from

    assert kind_of("00-model/model.safetensors") == "baseline"
    assert kind_of("10-prune/channel/model.onnx") == "pruned_onnx"
    assert kind_of("20-quantize/prune-channel/model_int8_percentile.onnx") == "int8_onnx"
    assert kind_of("20-quantize/model/model_int8_nncf_qat.xml") == "int8_nncf_ir"
    assert kind_of("30-export/model_int8.tflite") == "tflite"
    assert kind_of("20-quantize/a/b/model_int8_x.onnx") == "" and kind_of("notes.txt") == ""  # no * across folders
    assert quantized_from("20-quantize/prune-channel/model_int8_nncf.xml") == "prune-channel"
    assert quantized_from("30-export/model_fp32.onnx") == ""
    assert from_pruned("10-prune/unstructured/model.safetensors")
    assert from_pruned("20-quantize/prune-channel/model_int8_tfmot_qat.tflite")
    assert not from_pruned("20-quantize/model/model_int8_minmax.onnx") and not from_pruned("30-export/model_fp16.tflite")
    assert str(quantize_dir(Path("r"), "prune/channel")) == "r/20-quantize/prune-channel"
