import json
import re

import pytest

from compress.pipeline.compare import compare, format_table, load_report
from compress.pipeline.bench_stage import full_hd_lr
from compress.pipeline.report import build_rows, write_report
from compress.core.errors import InputError
from compress.core.files import write_json_atomic


def _side(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 100)
    write_json_atomic(path.with_name(path.name + ".json"), record)


def _q(psnr):
    return {"embedded": {"psnr_y_db": psnr}, "Set5": {"psnr_y_db": psnr + 3}}


def synthetic_run(tmp_path, slow_ms=400.0):
    run = tmp_path / "run"
    _side(run / "00-model" / "model.safetensors", {"quality": _q(30.0), "bicubic": _q(28.0), "params": 1000,
                                                   "macs_256x256": 2e9, "format": "pytorch-fp32"})
    _side(run / "30-export" / "model_fp32.onnx", {"format": "onnx-fp32", "parity_vs_pytorch": {}})
    _side(run / "20-quantize" / "model" / "model_int8_minmax.onnx", {"format": "onnx-qdq-int8", "quality": _q(29.9)})
    results = []
    for rel, runtime, per_mp in (("00-model/model.safetensors", "pytorch", slow_ms),
                                 ("30-export/model_fp32.onnx", "ort", 200.0),
                                 ("20-quantize/model/model_int8_minmax.onnx", "ort", 50.0)):
        for lr in ((128, 128), (256, 256)):
            mp = lr[0] * lr[1] * 4 / 1e6
            results.append({"artifact": rel, "runtime": runtime, "lr_size": list(lr), "out_mp": mp, "p50_ms": 10 + per_mp * mp,
                            "p95_ms": 12 + per_mp * mp, "min_ms": 9 + per_mp * mp, "peak_rss_mb": 100.0})
    results.append({"artifact": "30-export/model_fp32.onnx", "runtime": "ort-cuda", "lr_size": [128, 128], "error": "no CUDA"})
    ladders = [  # as the bench's ladder measures them: the largest passing rung and the failing one above
        {"artifact": "30-export/model_fp32.onnx", "runtime": "ort", "target_ms": 300.0, "max_output_mp": 1.45,
         "failing_mp": 1.67, "rungs": [{}, {}]},
        {"artifact": "20-quantize/model/model_int8_minmax.onnx", "runtime": "ort", "target_ms": 300.0,
         "max_output_mp": 5.8, "failing_mp": 6.67, "rungs": [{}, {}, {}]},
        {"artifact": "20-quantize/model/model_int8_minmax.onnx", "runtime": "ort", "target_ms": 1000.0,
         "max_output_mp": 19.0, "failing_mp": None, "rungs": [{}] * 6},
    ]
    write_json_atomic(run / "40-bench" / "latency.json", {
        "machine": {"cpu": "test cpu", "cores": 2}, "scale": 2, "targets_ms": [300.0, 1000.0],
        "config": {"threads": 2, "runs": 10, "warmup": 2, "ladder_targets_ms": [300.0, 1000.0]},
        "results": results, "ladders": ladders})
    return run


def test_rows_cover_every_artifact_and_verdicts_follow_thresholds(tmp_path):
    rows, header = build_rows(synthetic_run(tmp_path))
    by = {(r["artifact"], r["runtime"]): r for r in rows}
    assert set(by) == {("00-model/model.safetensors", "pytorch"), ("30-export/model_fp32.onnx", "ort"),
                       ("20-quantize/model/model_int8_minmax.onnx", "ort"), ("30-export/model_fp32.onnx", "ort-cuda")}
    slow = by[("00-model/model.safetensors", "pytorch")]
    # 256x256 LR at x2 = 0.262 MP: 10 + 400 * 0.262 = 114.9 ms -> passes both targets
    assert slow["verdicts"]["256x256"] == {"300ms": True, "1000ms": True}
    assert by[("20-quantize/model/model_int8_minmax.onnx", "ort")]["db_lost"] == {"embedded": 0.1, "Set5": 0.1}
    assert by[("30-export/model_fp32.onnx", "ort")]["psnr_y_db"]["embedded"] == 30.0  # shares the checkpoint's quality
    assert by[("30-export/model_fp32.onnx", "ort-cuda")]["errors"] == {"128x128": "no CUDA"}
    assert header["fp32_psnr_y_db"]["embedded"] == 30.0


def test_verdict_fails_over_threshold(tmp_path):
    rows, _ = build_rows(synthetic_run(tmp_path, slow_ms=2000.0))
    slow = next(r for r in rows if r["runtime"] == "pytorch")
    assert slow["verdicts"]["256x256"] == {"300ms": False, "1000ms": True}  # 10 + 2000 * 0.262 = 534 ms


def test_report_files_and_markdown_rows(tmp_path):
    run = synthetic_run(tmp_path)
    md = write_report(run).read_text()
    for name in ("model.safetensors", "model_fp32.onnx", "model_int8_minmax.onnx"):
        assert name in md
    out = run / "50-report"
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "report.csv", "report.html"}
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "No crops: " in html  # fake artifacts: tables, no crops
    assert len((out / "report.csv").read_text().splitlines()) == 1 + 3 * 2 * 2  # 3 timed rows x 2 sets x 2 sizes


def test_markdown_gives_median_and_min_and_the_runs_each_size_had(tmp_path):
    run = synthetic_run(tmp_path)
    latency = run / "40-bench" / "latency.json"
    bench = json.loads(latency.read_text())
    bench["config"]["large_runs"] = 3
    write_json_atomic(latency, bench)
    md = write_report(run).read_text()
    assert "p50 / min ms over 10 runs (3 at LR sizes over 0.1 MP) after 2 warm-ups" in md
    assert "| 256x256 p50/min ms |" in md
    int8 = next(line for line in md.splitlines() if line.startswith("| 20-quantize/model/model_int8_minmax.onnx | ort |"))
    assert "| 13.3 / 12.3 |" in int8  # 128x128 LR at x2 (0.0655 MP out): 10 + 50 * 0.0655 ms, min 9 + 50 * 0.0655
    csv_head = (run / "50-report" / "report.csv").read_text().splitlines()[0]
    assert "p50_ms,min_ms,p95_ms" in csv_head


def test_an_openvino_ir_counts_its_weights_file(tmp_path):
    run = synthetic_run(tmp_path)
    xml = run / "30-export" / "model_fp32.xml"
    _side(xml, {"format": "openvino-ir-fp32", "weights_file": "model_fp32.bin"})
    xml.with_suffix(".bin").write_bytes(b"w" * 5000)
    latency = run / "40-bench" / "latency.json"
    bench = json.loads(latency.read_text())
    bench["results"].append({"artifact": "30-export/model_fp32.xml", "runtime": "openvino", "lr_size": [128, 128],
                             "out_mp": 0.0655, "p50_ms": 5.0, "p95_ms": 6.0, "min_ms": 4.0, "peak_rss_mb": 90.0})
    write_json_atomic(latency, bench)
    rows, _ = build_rows(run)
    by = {(r["artifact"], r["runtime"]): r for r in rows}
    assert by[("30-export/model_fp32.xml", "openvino")]["size_bytes"] == 100 + 5000
    assert by[("30-export/model_fp32.onnx", "ort")]["size_bytes"] == 100


def test_the_front_is_drawn_at_the_largest_size_every_artifact_was_timed_at():
    from compress.pipeline.report import front_size

    def row(*sizes):
        return {"latency": {z: {"p50_ms": 1.0} for z in sizes}}

    default = [row("128x128", "256x256", "960x540"), row("128x128", "256x256"), row("128x128", "256x256")]
    assert front_size(default) == "256x256"
    no_256 = [row("128x128", "512x512", "960x540"), row("128x128", "512x512"), row("512x512", "128x128")]
    assert front_size(no_256) == "512x512"  # BENCH_SIZES without 256x256: the plot and crops are not empty
    assert front_size([row("64x64", "960x540"), row("64x64")]) == "64x64"


def test_the_sparsity_column_is_the_whole_files(tmp_path):
    run = synthetic_run(tmp_path)
    int8 = run / "20-quantize" / "model" / "model_int8_minmax.onnx"
    _side(int8, {"format": "onnx-qdq-int8", "quality": _q(29.9), "overall_sparsity": 0.5, "conv_weight_sparsity": 0.4731})
    rows, _ = build_rows(run)
    assert next(r for r in rows if r["artifact"].endswith("model_int8_minmax.onnx"))["sparsity"] == 0.4731


def test_compare_two_reports(tmp_path):
    a = synthetic_run(tmp_path / "a")
    b = synthetic_run(tmp_path / "b", slow_ms=800.0)
    write_report(a)
    write_report(b)
    rows = compare(load_report(a), load_report(b / "50-report" / "report.json"))
    slow = next(r for r in rows if r["runtime"] == "pytorch")
    assert slow["p50_ms@256x256"][2] == pytest.approx(400 * 0.262144, abs=1e-3)
    assert slow["psnr_y_db"] == (30.0, 30.0, 0.0)
    assert "model_int8_minmax.onnx" in format_table(rows)


def test_compare_names_each_reports_conditions_and_warns_when_they_differ(tmp_path, capsys):
    from compress.pipeline.compare import main

    a, b = synthetic_run(tmp_path / "a"), synthetic_run(tmp_path / "b")
    latency = b / "40-bench" / "latency.json"
    bench = json.loads(latency.read_text())
    bench["config"]["threads"] = 1
    bench["machine"]["cpu_description"] = "other cpu (avx2)"
    write_json_atomic(latency, bench)
    write_report(a)
    write_report(b)
    assert main([str(a), str(a)]) == 0
    same = capsys.readouterr().out.splitlines()
    assert same[:3] == [f"- A: {a}: x2, 2 threads, test cpu", f"- B: {a}: x2, 2 threads, test cpu", ""]
    assert main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"- B: {b}: x2, 1 threads, other cpu (avx2)"
    assert lines[2] == "- warning: A and B differ in CPU, threads; their deltas mix that difference with the models'"
    report = json.loads((a / "50-report" / "report.json").read_text())
    del report["header"]
    (tmp_path / "bare.json").write_text(json.dumps(report))
    assert main([str(tmp_path / "bare.json"), str(a)]) == 0  # a report without a header: '?' and the warning
    assert capsys.readouterr().out.splitlines()[0] == f"- A: {tmp_path / 'bare.json'}: x?, ? threads, ?"


@pytest.mark.parametrize("report, problem", [
    ({}, "rows is not a list"),
    ({"rows": [5]}, r"rows\[0\] is not an object"),
    ({"rows": [{"artifact": "a.onnx", "runtime": "ort", "psnr_y_db": {"embedded": "x"}}]},
     "psnr_y_db is not an object of numbers"),
    ({"rows": [{"artifact": "a.onnx", "runtime": "ort", "latency": {"256x256": 5}}]}, "needs a positive out_mp"),
    ({"rows": [{"artifact": "a.onnx", "runtime": "ort", "size_bytes": "big"}]}, "size_bytes is not a number"),
    ({"rows": [{"artifact": 7, "runtime": "ort"}]}, r"rows\[0\] artifact '7' is not text$"),  # not "run folder"
])
def test_compare_names_a_malformed_report_in_one_line(tmp_path, capsys, report, problem):
    from compress.pipeline.compare import main

    good = synthetic_run(tmp_path / "a")
    write_report(good)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    assert main([str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and err.count("\n") == 1 and re.search(problem, err), err


def test_compare_escapes_a_reports_text_in_its_table_and_usage_errors_are_one_line(tmp_path, capsys):
    from compress.pipeline.compare import main

    good = synthetic_run(tmp_path / "a")
    write_report(good)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"rows": [{"artifact": "a\nb\x1b[31m|c", "runtime": "ort\n| evil | row"}]}))
    assert main([str(good), str(odd)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "evil" in line or "a\\n" in line]
    assert len(rows) == 1 and "a\\nb\\x1b[31m\\|c" in rows[0] and "ort\\n\\| evil \\| row" in rows[0], rows
    with pytest.raises(SystemExit) as info:
        main([str(good)])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_missing_inputs(tmp_path):
    with pytest.raises(InputError, match="run make bench first"):
        build_rows(tmp_path)
    with pytest.raises(InputError, match="no report.json"):
        load_report(tmp_path)


def test_full_hd_lr_sizes():
    assert [full_hd_lr(s) for s in (2, 3, 4)] == [(540, 960), (360, 640), (270, 480)]


def test_pareto_front_drops_dominated_points():
    from compress.pipeline.report import pareto_front

    pts = {"fp32": (100.0, 0.0), "slow_fp32": (300.0, 0.0), "int8": (40.0, 0.1), "bad_int8": (45.0, 0.3),
           "tie": (40.0, 0.12), "fp16": (90.0, 0.01), "pruned": (20.0, 0.4)}
    assert pareto_front(pts) == {"pruned", "int8", "fp16", "fp32"}
    assert pareto_front(pts, loss_tol_db=0.02) == {"pruned", "int8", "fp16"}  # fp32 gains under 0.02 dB on fp16
    assert pareto_front({}) == set()


def test_large_sizes_time_reference_and_pareto_front_only(tmp_path):
    from pathlib import Path

    from compress.pipeline.bench_stage import BenchConfig, large_subset

    run = synthetic_run(tmp_path)
    results = json.loads((run / "40-bench" / "latency.json").read_text())["results"]
    pairs = [(run / r, rt) for r, rt in (("00-model/model.safetensors", "pytorch"), ("30-export/model_fp32.onnx", "ort"),
                                         ("20-quantize/model/model_int8_minmax.onnx", "ort"))]
    chosen = [(str(Path(a).relative_to(run)), rt) for a, rt in large_subset(run, pairs, results)]
    # PyTorch eager has the FP32 quality but is slower than ORT FP32: dominated, so not timed at 1080p.
    assert chosen == [("30-export/model_fp32.onnx", "ort"), ("20-quantize/model/model_int8_minmax.onnx", "ort")]
    # a runtime with numerics of its own is placed at the PSNR it measured, not its artifact's sidecar's
    fp32_db = json.loads((run / "00-model/model.safetensors.json").read_text())["quality"]["embedded"]["psnr_y_db"]
    own = {"00-model/model.safetensors|pytorch": {"embedded": {"psnr_y_db": fp32_db + 0.5}}}
    chosen = [(str(Path(a).relative_to(run)), rt) for a, rt in large_subset(run, pairs, results, own)]
    assert ("00-model/model.safetensors", "pytorch") in chosen
    with pytest.raises(ValueError, match="large must be"):
        BenchConfig(large="some")
    with pytest.raises(ValueError, match="warmup >= 2"):
        BenchConfig(warmup=1)


def test_target_summary_picks_reference_and_best_within_budget(tmp_path):
    from compress.pipeline.report import target_summary

    rows, _ = build_rows(synthetic_run(tmp_path))
    got = {(t["target"], t["pick"]): t for t in target_summary(rows)}
    ref = got[("300ms", "fp32 ONNX")]
    assert ref["artifact"] == "30-export/model_fp32.onnx" and ref["max_output_mp"] == 1.45
    best = got[("300ms", "best")]  # only measured ladders count: the INT8 graph's 5.8 MP
    assert best["artifact"].endswith("model_int8_minmax.onnx") and best["max_output_mp"] == 5.8
    assert best["failing_mp"] == 6.67 and best["db_lost"] == pytest.approx(0.1)
    assert got[("1000ms", "best within 0.1 dB")]["artifact"].endswith("model_int8_minmax.onnx")
    assert ("1000ms", "fp32 ONNX") not in got  # no ladder measured for it at 1000 ms: no figure at all
    unknown = [{**r, "db_lost": {}} if r["artifact"].endswith("int8_minmax.onnx") else r for r in rows]
    got = {(t["target"], t["pick"]): t for t in target_summary(unknown)}
    assert got[("1000ms", "best")]["db_lost"] is None  # still the fastest, with its loss unknown
    within = got.get(("1000ms", "best within 0.1 dB"))
    assert within is None or not within["artifact"].endswith("int8_minmax.onnx")  # an unknown loss is no 0 dB
    md = write_report(synthetic_run(tmp_path / "b")).read_text()
    assert "| 300ms | fp32 ONNX | 30-export/model_fp32.onnx | ort | 1.45 (1.67) | 0.000 |" in md
    assert "| 1000ms | best | 20-quantize/model/model_int8_minmax.onnx | ort | 19.00 | 0.100 |" in md
    assert "*" not in md.split("## All artifacts")[0]  # nothing extrapolated


def markdown_tables(text: str) -> list[list[str]]:
    """Every Markdown table in ``text`` as its lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def cells(line: str) -> int:
    return len(line.strip().strip("|").split("|"))


def test_every_table_the_project_writes_renders(tmp_path):
    a, b = synthetic_run(tmp_path / "a"), synthetic_run(tmp_path / "b", slow_ms=800.0)
    write_report(a)
    write_report(b)
    texts = [(a / "50-report" / "report.md").read_text(), format_table(compare(load_report(a), load_report(b)))]
    tables = [t for text in texts for t in markdown_tables(text)]
    assert len(tables) >= 3
    for table in tables:
        assert set(table[1].replace("|", "").replace(":", "")) == {"-"}, table[1]  # a separator row
        assert len({cells(line) for line in table}) == 1, "\n".join(table)


def test_plot_markers_follow_the_artifact_kind_not_names():
    from compress.pipeline.report import technique

    cases = {("10-prune/int8x/model.onnx", "ort"): "pruned",  # a recipe named int8x is still a pruned FP32 model
             ("20-quantize/prune-channel/model_int8_percentile.onnx", "ort"): "pruned + INT8",
             ("20-quantize/model/model_int8_nncf.xml", "openvino"): "INT8",
             ("30-export/model_int8.tflite", "tflite"): "INT8", ("30-export/model_fp16.tflite", "tflite"): "FP16",
             ("00-model/model.safetensors", "pytorch-cuda-fp16"): "FP16",
             ("30-export/model_fp32.onnx", "openvino-bf16"): "bf16", ("30-export/model_fp32.onnx", "ort"): "FP32"}
    assert {k: technique({"artifact": k[0], "runtime": k[1]}) for k in cases} == cases
