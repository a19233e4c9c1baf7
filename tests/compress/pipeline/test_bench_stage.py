import json
from pathlib import Path

import pytest

from compress.pipeline.bench_stage import BenchConfig, discover, run_bench
from compress.pipeline.export_stage import stage_export
from compress.pipeline.model_stage import stage_model
from export.runtimes import available, runtime
from tests.conftest import as_layout, tiny_edsr


def test_harness_on_tiny_model(tmp_path):
    import torch

    src = tmp_path / "e.pt"
    torch.save(as_layout(tiny_edsr(2), "edsr-basicsr"), src)
    run = tmp_path / "run"
    stage_model(str(src), None, run)
    (run / "30-export").mkdir()
    (run / "30-export" / "model_int8.tflite").write_bytes(b"an earlier export's")  # a rerun without TFLite drops it
    stage_export(run, tflite=False)
    assert not (run / "30-export" / "model_int8.tflite").exists()
    ir = [("model_fp32.xml", "openvino")] if runtime("openvino").present() else []
    assert [(a.name, r) for a, r in discover(run)] == [
        ("model.safetensors", "pytorch"), ("model_fp32.onnx", "ort"), ("model_fp32_plain.onnx", "ort"), *ir]
    if ir:
        side = json.loads((run / "30-export/model_fp32.xml.json").read_text())
        assert (run / "30-export/model_fp32.bin").is_file() and side["parity_vs_onnx"]["max_abs_diff"] < 1e-4
    out = run_bench(run, 2, BenchConfig(sizes=((32, 32), (48, 40)), runs=2, gpu=False, ladder_targets_ms=(15.0,)))
    data = json.loads(out.read_text())
    extra = [rt.name for rt in available() if rt.bench_extra and rt.device == "cpu"]  # OpenVINO (f32, bf16), PyTorch bf16
    files = sum(1 if runtime(name).library == "torch" else 2 for name in extra)  # the checkpoint; the two float ONNX
    assert len(data["results"]) == 2 * (3 + len(ir) + files) and all("error" not in r for r in data["results"])
    assert {r["runtime"] for r in data["results"]} == {"pytorch", "ort", *extra}
    assert all(0 < r["rss_opened_mb"] <= r["peak_rss_mb"] for r in data["results"])  # library + model, then inference
    assert data["machine"]["cpu_description"].startswith(data["machine"]["cpu"])
    own = {f"{a}|{r}" for a, r in [(x["artifact"], x["runtime"]) for x in data["results"]]
           if runtime(r).own_numerics}
    assert set(data["quality"]) == own  # bf16 inference is scored on its own, not given the FP32 figure
    for q in data["quality"].values():
        assert 0 < q["embedded"]["psnr_y_db"] < 100
    assert data["ladders"] and {lad["target_ms"] for lad in data["ladders"]} == {15.0}
    for lad in data["ladders"]:  # the reference and the Pareto front, each bracketed by measured rungs
        assert lad["rungs"] and all(r["p50_ms"] > 0 for r in lad["rungs"])
        assert lad["max_output_mp"] is not None or lad["failing_mp"] is not None
    from compress.pipeline.report import write_report

    write_report(run)  # on real artifacts: the Pareto plot and the zoomed crops of the front
    html = (run / "50-report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "No crops" not in html
    row = data["results"][-1]
    assert row["lr_size"] == [48, 40] and row["out_size"] == [96, 80] and row["p50_ms"] > 0 and row["peak_rss_mb"] > 0


def test_a_configuration_past_its_timeout_is_killed_and_recorded(tmp_path):
    from compress.pipeline.bench_stage import run_one

    row = run_one(tmp_path / "m.onnx", "ort", (8, 8), 2, BenchConfig(timeout_s=0.01))
    assert row["error"] == "timed out after 0.01 s (killed)" and row["lr_size"] == [8, 8]
    with pytest.raises(ValueError, match="timeout_s must be > 0, got 0"):
        BenchConfig(timeout_s=0)


def test_rows_of_own_numerics_are_scored_on_the_extra_sets_too(tmp_path, image_dir, monkeypatch):
    import dataclasses

    import compress.core.cpu as cpu
    from compress.core.checkpoint import save_checkpoint
    from compress.pipeline.bench_stage import own_quality

    host = cpu.host_cpu()
    monkeypatch.setattr(cpu, "host_cpu", lambda: dataclasses.replace(host, flags=host.flags | {"avx512_bf16"}))
    model = tiny_edsr(2)
    ckpt = save_checkpoint(model, model.cfg, tmp_path / "model.safetensors")
    got = own_quality(tmp_path, [(ckpt, "pytorch"), (ckpt, "pytorch-bf16")], 2, 1, [str(image_dir)])
    assert list(got) == ["model.safetensors|pytorch-bf16"]  # FP32 PyTorch holds its sidecar's figures
    assert set(got["model.safetensors|pytorch-bf16"]) == {"embedded", "imgs"}


def test_a_quantized_graph_on_another_runtime_gets_a_score_of_its_own(int8_models, tmp_path, monkeypatch):
    import export.runtimes.ort as ort_rt
    from compress.core.cpu import CpuInfo
    from compress.pipeline.bench_stage import own_quality

    monkeypatch.setattr(ort_rt, "host_cpu", lambda: CpuInfo("VNNI CPU", frozenset({"avx2", "avx512_vnni"})))

    if not runtime("openvino").present():
        pytest.skip("OpenVINO is not installed")
    q = int8_models["edsr"]
    fp32 = tmp_path / "edsr.onnx"  # the float graph the INT8 one was made from
    pairs = [(q, "ort"), (fp32, "ort"), (q, "openvino"), (fp32, "openvino")]
    got = own_quality(tmp_path, pairs, 2, 1, extras=pairs[2:])
    assert list(got) == ["edsr_int8.onnx|openvino"]  # ORT scored the sidecar; a float graph computes alike anywhere
    assert 0 < got["edsr_int8.onnx|openvino"]["embedded"]["psnr_y_db"] < 100


def test_full_range_int8_weights_are_scored_again_on_a_cpu_without_vnni(int8_models, tmp_path, monkeypatch):
    """A run quantized on a VNNI host (full 8-bit weights) and benched on an AVX2-only one: its sidecar's
    PSNR was measured on kernels that do not saturate, so the bench measures it here."""
    import export.runtimes.ort as ort_rt
    from compress.core.cpu import CpuInfo
    from compress.pipeline.bench_stage import own_quality

    q, fp32 = int8_models["edsr"], tmp_path / "edsr.onnx"
    pairs = [(q, "ort"), (fp32, "ort")]
    monkeypatch.setattr(ort_rt, "host_cpu", lambda: CpuInfo("VNNI CPU", frozenset({"avx2", "avx512_vnni"})))
    assert own_quality(tmp_path, pairs, 2, 1) == {}
    monkeypatch.setattr(ort_rt, "host_cpu", lambda: CpuInfo("AVX2 CPU", frozenset({"avx2"})))
    got = own_quality(tmp_path, pairs, 2, 1)
    assert list(got) == ["edsr_int8.onnx|ort"] and 0 < got["edsr_int8.onnx|ort"]["embedded"]["psnr_y_db"] < 100


def test_an_nncf_ir_kept_at_8_bits_is_a_risk_only_on_a_cpu_without_vnni(tmp_path):
    from compress.core.cpu import CpuInfo
    from compress.core.files import write_json_atomic
    from export.runtimes.openvino import int8_saturation_risk

    avx2, vnni = CpuInfo("AVX2 CPU", frozenset({"avx2"})), CpuInfo("VNNI CPU", frozenset({"avx2", "avx512_vnni"}))
    xml = tmp_path / "model_int8_nncf.xml"
    xml.write_text("<net/>")
    assert int8_saturation_risk(xml, avx2) == ""  # no sidecar: nothing says how it was made
    for fix, risky in (("disable", True), ("first_layer_only", False), ("enable", False)):
        write_json_atomic(tmp_path / "model_int8_nncf.xml.json", {"nncf": {"overflow_fix": fix}})
        assert bool(int8_saturation_risk(xml, avx2)) is risky and int8_saturation_risk(xml, vnni) == ""
    write_json_atomic(tmp_path / "model_int8_nncf.xml.json", {"nncf": {"overflow_fix": "disable"}})
    assert "overflow_fix \"disable\"" in int8_saturation_risk(xml, avx2) and "(AVX2 CPU) has no VNNI" in \
        int8_saturation_risk(xml, avx2)
    (tmp_path / "model_int8_nncf.xml.json").write_text("{not json")
    assert int8_saturation_risk(xml, avx2) == ""  # a damaged sidecar says nothing either


def test_an_ort_int8_graph_on_openvino_is_a_risk_only_with_full_range_weights_and_no_vnni(int8_models, tmp_path):
    from compress.core.cpu import CpuInfo
    from export.runtimes.openvino import int8_saturation_risk
    from tests.conftest import seven_bit_weights

    avx2, vnni = CpuInfo("AVX2 CPU", frozenset({"avx2"})), CpuInfo("VNNI CPU", frozenset({"avx2", "avx512_vnni"}))
    q = int8_models["edsr"]
    assert int8_saturation_risk(q, avx2).startswith(f"{q}: its INT8 weights use the full 8-bit range and this CPU "
                                                    "(AVX2 CPU) has no VNNI")
    assert int8_saturation_risk(q, vnni) == ""
    assert int8_saturation_risk(seven_bit_weights(q, tmp_path / "seven.onnx"), avx2) == ""
    assert int8_saturation_risk(tmp_path / "edsr.onnx", avx2) == ""  # the float graph


def test_run_one_times_every_scale_an_artifact_can_have_x1_included(tmp_path):
    from compress.pipeline.bench_stage import run_one
    from export.onnx_export import export_onnx
    from tests.conftest import tiny_rrdb

    onnx_path = export_onnx(tiny_rrdb(1), tmp_path / "rrdb_x1.onnx")  # RRDB x1: pixel unshuffle by 4
    row = run_one(onnx_path, "ort", (16, 16), 1, BenchConfig(runs=1, threads=1))
    assert "error" not in row and row["out_size"] == [16, 16] and row["p50_ms"] > 0


def test_a_run_named_relative_to_another_folder_is_timed_there(tmp_path, monkeypatch):
    """The timing processes start in the repository; a relative artifact path must not be read from there."""
    from compress.pipeline.bench_stage import run_one
    from export.onnx_export import export_onnx
    from tests.conftest import tiny_edsr

    export_onnx(tiny_edsr(2), tmp_path / "run" / "m.onnx")
    monkeypatch.chdir(tmp_path)
    row = run_one(Path("run") / "m.onnx", "ort", (8, 8), 2, BenchConfig(runs=1, threads=1))
    assert "error" not in row, row
    assert row["artifact"] == str(tmp_path / "run" / "m.onnx") and row["p50_ms"] > 0
