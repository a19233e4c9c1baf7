"""The compression report: one row per (artifact, runtime) with size, quality, latency and verdicts.

Reads the sidecars every stage wrote and ``40-bench/latency.json``; writes ``report.md``,
``report.json``, ``report.csv`` and ``report.html`` (with a Pareto plot of PSNR loss against latency)
into ``<run>/50-report/``.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import io
import subprocess
from importlib import metadata
from pathlib import Path

from compress.core.errors import InputError
from compress.core.files import (fresh_stage_folder, is_number, read_sidecar, read_stage_seconds, sidecar_path,
                                 sidecar_quality, write_json_atomic, write_text_atomic)
from compress.pipeline.contract import QUANTIZED_KINDS, artifact_kind, from_pruned, kind_of, path_of, stage_dir
from compress.pipeline.ladder import target_label
from compress.pipeline.latency_file import LARGE_LR_PIXELS, read_latency

LIBS = ("torch", "torch-pruning", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorflow", "tf-keras",
        "tensorflow-model-optimization", "openvino", "numpy")


def size_label(lr: list[int]) -> str:
    return f"{lr[0]}x{lr[1]}"


def measured_max_output(bench: dict, found: dict, rel: str, runtime: str) -> dict[str, dict]:
    """Per ladder target (label such as ``300ms``): the largest output MP the ladder measured passing
    (``mp``, None when none passed or no ladder ran for this artifact) and the failing rung above it;
    ``found`` indexes the bench's ladders by (artifact, runtime, target_ms)."""
    targets = bench.get("config", {}).get("ladder_targets_ms") or bench["targets_ms"]
    out = {}
    for t in targets:
        lad = found.get((rel, runtime, float(t)), {})
        out[target_label(t)] = {"mp": lad.get("max_output_mp"), "failing_mp": lad.get("failing_mp"),
                                "rungs": len(lad.get("rungs", []))}
    return out


def pareto_front(points: dict[object, tuple[float, float]], loss_tol_db: float = 0.0) -> set[object]:
    """Keys of the (latency, loss) staircase: from the fastest point on, each kept point loses at least
    ``loss_tol_db`` less than every faster kept point (with 0, the usual Pareto front; ties in latency go
    to the lower loss)."""
    front, best = set(), float("inf")
    for key, (_, loss) in sorted(points.items(), key=lambda kv: kv[1]):
        if loss < best - loss_tol_db or not front:
            front.add(key)
            best = loss
    return front


REPORTED_NUMBERS = ("params", "macs_256x256", "overall_sparsity", "conv_weight_sparsity")  # sidecar fields the report prints
REPORTED_TEXT = ("format", "method")


def _sidecar(path: Path) -> dict:
    """The artifact's sidecar (its printed fields checked), or ``{}`` for an artifact written without one."""
    if not sidecar_path(path).is_file():
        return {}
    side = read_sidecar(path)
    bad = [k for k in REPORTED_NUMBERS if side.get(k) is not None and not is_number(side[k])]
    bad += [k for k in REPORTED_TEXT if side.get(k) is not None and not isinstance(side[k], str)]
    storage = side.get("storage", {})
    if not isinstance(storage, dict) or not (storage.get("gzip_file_bytes") is None or is_number(storage["gzip_file_bytes"])):
        bad.append("storage")
    if bad:
        raise InputError(f"{sidecar_path(path)}: {', '.join(bad)} of the wrong type; rerun the stage that wrote it")
    return side


def quality_record(run: Path, artifact: Path) -> dict:
    """Sidecar holding the artifact's quality (an exported ONNX shares its checkpoint's)."""
    side = _sidecar(artifact)
    if "quality" in side:
        return side
    rel = artifact.relative_to(run).as_posix() if artifact.is_relative_to(run) else artifact.name
    if rel in (artifact_kind("fp32_onnx").pattern, artifact_kind("fp32_plain_onnx").pattern,
               artifact_kind("openvino_ir").pattern):
        return _sidecar(path_of(run, "baseline"))
    if fnmatch.fnmatch(rel, artifact_kind("pruned_onnx").pattern):
        return _sidecar(path_of(run, "pruned", artifact.parent.name))
    return side


def build_rows(run: Path) -> tuple[list[dict], dict]:
    bench_file = path_of(run, "latency")
    if not bench_file.is_file():
        raise InputError(f"{bench_file}: no benchmark results; run make bench first")
    bench = read_latency(bench_file)
    base_file = path_of(run, "baseline")
    base = _sidecar(base_file)
    if base.get("scale", bench["scale"]) != bench["scale"]:
        raise InputError(f"{bench_file}: scale {bench['scale']} but the baseline is x{base['scale']} "
                         f"({sidecar_path(base_file)}); rerun make bench")
    ref = {k: v["psnr_y_db"] for k, v in sidecar_quality(base, sidecar_path(base_file)).items()}
    ladders = {(lad["artifact"], lad["runtime"], float(lad["target_ms"])): lad for lad in bench.get("ladders", [])}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in bench["results"]:
        groups.setdefault((r["artifact"], r["runtime"]), []).append(r)
    rows = []
    for (rel, runtime), results in groups.items():
        artifact = run / rel
        side, qside = _sidecar(artifact), quality_record(run, artifact)
        own = bench.get("quality", {}).get(f"{rel}|{runtime}")  # bf16 / FP16, or a quantized graph on another runtime
        psnr = {k: v["psnr_y_db"] for k, v in (own or sidecar_quality(qside, f"{artifact} (its quality record)")).items()}
        ok = [r for r in results if "error" not in r]
        row = {
            "artifact": rel, "runtime": runtime, "format": side.get("format", qside.get("format", "")),
            "method": side.get("method", qside.get("method", "")),
            "params": qside.get("params", side.get("params")), "macs_256x256": qside.get("macs_256x256"),
            "size_bytes": artifact_bytes(artifact, side),
            "gzip_bytes": qside.get("storage", {}).get("gzip_file_bytes"),
            "sparsity": qside.get("conv_weight_sparsity", qside.get("overall_sparsity")),  # of the whole file
            "psnr_y_db": psnr, "db_lost": {k: round(ref[k] - v, 4) for k, v in psnr.items() if k in ref},
            "latency": {size_label(r["lr_size"]): {"p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "min_ms": r["min_ms"],
                                                   "out_mp": r["out_mp"], "peak_rss_mb": r["peak_rss_mb"],
                                                   "rss_opened_mb": r.get("rss_opened_mb")} for r in ok},
            "errors": {size_label(r["lr_size"]): r["error"] for r in results if "error" in r},
        }
        row["verdicts"] = {lab: {f"{int(t)}ms": v["p50_ms"] <= t for t in bench["targets_ms"]} for lab, v in row["latency"].items()}
        row["max_output_mp"] = measured_max_output(bench, ladders, rel, runtime)
        rows.append(row)
    header = {"run": str(run), "scale": bench["scale"], "machine": bench["machine"], "bench_config": bench["config"],
              "targets_ms": bench["targets_ms"], "libraries": _versions(), "git_commit": _git_commit(),
              "bicubic_psnr_y_db": {k: v["psnr_y_db"] for k, v in sidecar_quality(
                  base, sidecar_path(base_file), field="bicubic").items()},
              "fp32_psnr_y_db": ref, "stage_seconds": read_stage_seconds(run),
              "psnr_convention": "Y of BT.601, scale pixels shaved, 8-bit rounded; LR by PIL antialiased bicubic"}
    return rows, header


def _versions() -> dict[str, str]:
    out = {}
    for lib in LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(v: object, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "pass" if v else "FAIL"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


LOSS_BUDGETS_DB = (0.1, 0.3)  # the summary's "best within" columns


def target_summary(rows: list[dict], eval_set: str = "embedded") -> list[dict]:
    """Per target: the largest output the FP32 ONNX reference meets, and the best artifact overall and
    within each loss budget (largest output meeting the target; dB lost on ``eval_set``)."""
    out = []
    for target in dict.fromkeys(k for r in rows for k in r["max_output_mp"]):
        def best(cands: list[dict], target: str = target) -> dict | None:
            cands = [r for r in cands if r["max_output_mp"][target]["mp"] is not None]
            return max(cands, key=lambda r: r["max_output_mp"][target]["mp"], default=None)

        ref = best([r for r in rows if r["artifact"] == artifact_kind("fp32_onnx").pattern and r["runtime"] == "ort"])
        picks = {"fp32 ONNX": ref, "best": best(rows)}
        for budget in LOSS_BUDGETS_DB:
            known = [r for r in rows if r["db_lost"].get(eval_set) is not None]  # an unknown loss is no 0 dB
            picks[f"best within {budget} dB"] = best([r for r in known if r["db_lost"][eval_set] <= budget])
        for label, r in picks.items():
            if r is not None:
                out.append({"target": target, "pick": label, "artifact": r["artifact"], "runtime": r["runtime"],
                            "max_output_mp": r["max_output_mp"][target]["mp"],
                            "failing_mp": r["max_output_mp"][target]["failing_mp"],
                            "db_lost": r["db_lost"].get(eval_set)})
    return out


def _mp(entry: dict) -> str:
    """``1.64 (1.89)``: the largest passing measured output and the failing rung above it."""
    mp, failing = entry.get("max_output_mp", entry.get("mp")), entry.get("failing_mp")
    if mp is None:
        return f"< {failing:.2f}" if failing is not None else "-"
    return f"{mp:.2f}" + (f" ({failing:.2f})" if failing is not None else "")


def artifact_bytes(artifact: Path, side: dict) -> int | None:
    """An artifact's bytes on disk; for an OpenVINO IR, its ``.xml`` and the weights file its sidecar names."""
    if not artifact.is_file():
        return None
    weights = side.get("weights_file")
    extra = artifact.with_name(weights) if isinstance(weights, str) and weights and Path(weights).name == weights else None
    return artifact.stat().st_size + (extra.stat().st_size if extra is not None and extra.is_file() else 0)


def _runs(cfg: dict) -> str:
    """The timed calls per configuration, as the bench made them (fewer at the large sizes)."""
    small, large = cfg["runs"], cfg.get("large_runs", cfg["runs"])
    if large == small:
        return f"{small} runs"
    return f"{small} runs ({large} at LR sizes over {LARGE_LR_PIXELS / 1e6:g} MP)"


def to_markdown(rows: list[dict], header: dict) -> str:
    sets = sorted({k for r in rows for k in r["psnr_y_db"]})
    sizes = sorted({k for r in rows for k in r["latency"]}, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    m = header["machine"]
    lines = [f"# Compression report: {header['run']} (x{header['scale']})", "",
             f"- machine: {m.get('cpu_description', m.get('cpu'))}, {m.get('cores')} cores"
             f"{', GPU ' + m['gpu'] if m.get('gpu') else ''}; "
             f"threads {header['bench_config']['threads']}; git {header['git_commit']}",
             "- libraries: " + ", ".join(f"{k} {v}" for k, v in header["libraries"].items()),
             f"- PSNR: {header['psnr_convention']}; bicubic " + ", ".join(f"{k} {v:.2f} dB" for k, v in header["bicubic_psnr_y_db"].items()),
             f"- latency: p50 / min ms over {_runs(header['bench_config'])} after {header['bench_config']['warmup']} warm-ups, "
             "each configuration in its own process; inputs are LR sizes; verdicts use p50 (p95 in report.json and the CSV)"]
    if header.get("stage_seconds"):
        t = header["stage_seconds"]
        lines.append(f"- stage wall time: {sum(t.values()) / 60:.1f} min (" + ", ".join(f"{k} {v / 60:.1f}" for k, v in t.items()) + ")")
    lines += ["", "## Targets: largest output (MP) measured meeting each latency target", "",
              "| target | pick | artifact | runtime | max output MP (fails at) | dB lost (embedded) |",
              "|---|---|---|---|---|---|"]
    for t in target_summary(rows):
        lines.append(f"| {t['target']} | {t['pick']} | {t['artifact']} | {t['runtime']} | "
                     f"{_mp(t)} | {_fmt(t['db_lost'], 3)} |")
    lines += ["", "1920x1080 output is 2.07 MP. Each figure is a timed 16:9 size (a ladder of sizes 15% apart, "
              "each in its own process, p50 of the large-size runs); the failing rung above it in brackets. "
              "Only the FP32 ONNX reference and the artifacts on the Pareto front are laddered.", "",
              "## All artifacts", ""]
    cols = ["artifact", "runtime", "params", "MACs@256 (G)", "file MB", "gzip MB", "sparsity"]
    cols += [f"PSNR-Y {s}" for s in sets] + [f"dB lost {s}" for s in sets]
    targets = list(dict.fromkeys(k for r in rows for k in r["max_output_mp"]))
    cols += [f"{z} p50/min ms" for z in sizes] + [f"{z} 300/1000" for z in sizes]
    cols += [f"max out MP @{t}" for t in targets]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        mx = [_mp(r["max_output_mp"][t]) for t in targets]
        cells = [r["artifact"], r["runtime"], _fmt(r["params"]), _fmt(r["macs_256x256"] / 1e9 if r["macs_256x256"] else None),
                 _fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None), _fmt(r["gzip_bytes"] / 1e6 if r["gzip_bytes"] else None),
                 _fmt(r["sparsity"])]
        cells += [_fmt(r["psnr_y_db"].get(s), 3) for s in sets] + [_fmt(r["db_lost"].get(s), 3) for s in sets]
        cells += [f"{_fmt(r['latency'][z]['p50_ms'], 1)} / {_fmt(r['latency'][z]['min_ms'], 1)}" if z in r["latency"] else "-" for z in sizes]
        cells += [f"{_fmt(r['verdicts'][z]['300ms'])} / {_fmt(r['verdicts'][z]['1000ms'])}" if z in r["verdicts"] else "-" for z in sizes]
        lines.append("| " + " | ".join(cells + mx) + " |")
    lines += ["", "max out MP: measured by the ladder (failing rung in brackets); `-`: not laddered.",
              "Unstructured sparsity shrinks only storage (gzip column): dense runtimes do not skip zeros."]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["artifact", "runtime", "params", "macs_256x256", "size_bytes", "gzip_bytes", "sparsity", "eval_set",
                     "psnr_y_db", "db_lost", "lr_size", "p50_ms", "min_ms", "p95_ms", "pass_300ms", "pass_1000ms"])
    for r in rows:
        for s in r["psnr_y_db"] or {"": None}:
            for z, lat in r["latency"].items():
                writer.writerow([r["artifact"], r["runtime"], r["params"], r["macs_256x256"], r["size_bytes"], r["gzip_bytes"],
                                 r["sparsity"], s, r["psnr_y_db"].get(s), r["db_lost"].get(s), z, lat["p50_ms"], lat["min_ms"], lat["p95_ms"],
                                 r["verdicts"][z]["300ms"], r["verdicts"][z]["1000ms"]])
    return buf.getvalue()


MARKERS = {"FP32": "o", "FP16": "s", "INT8": "^", "pruned": "D", "pruned + INT8": "P", "bf16": "*"}


def technique(row: dict) -> str:
    """A short name of what was done to the model, for the plot's markers."""
    art, rt = row["artifact"], row["runtime"]
    kind, stem = kind_of(art), Path(art).stem
    int8 = kind in QUANTIZED_KINDS or (kind == "tflite" and "int8" in stem)  # by kind, not by a recipe's name
    if from_pruned(art):
        return "pruned + INT8" if int8 else "pruned"
    if int8:
        return "INT8"
    if rt.endswith("fp16") or (kind == "tflite" and "fp16" in stem):
        return "FP16"
    return "bf16" if rt.endswith("bf16") else "FP32"


def _panel(ax, rows: list[dict], size: str, eval_set: str, colours: dict, targets: list[float]) -> None:  # noqa: ANN001
    points = {(r["artifact"], r["runtime"]): (r["latency"][size]["p50_ms"], r["db_lost"][eval_set])
              for r in rows if size in r["latency"] and eval_set in r["db_lost"]}
    for r in rows:
        key = (r["artifact"], r["runtime"])
        if key in points:
            ax.scatter(*points[key], color=colours[r["runtime"]], marker=MARKERS[technique(r)], s=36, zorder=3)
    front = sorted((points[k] for k in pareto_front(points)), key=lambda p: p[0])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.4", lw=1, zorder=2)
        for key in pareto_front(points):
            ax.annotate(Path(key[0]).stem.removeprefix("model_"), points[key], fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    for t in targets:
        ax.axvline(t, color="tab:red", ls="--", lw=0.8)
        ax.text(t, ax.get_ylim()[1], f" {t:g} ms", color="tab:red", fontsize=7, va="top")
    ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency at {size} LR (ms, log)")
    ax.grid(alpha=0.3, which="both")


def front_size(rows: list[dict]) -> str:
    """The size the front is drawn at: of the sizes the most rows were timed at, the largest (256x256
    with the default sizes; the large sizes time only the reference and the front)."""
    counts: dict[str, int] = {}
    for r in rows:
        for z in r["latency"]:
            counts[z] = counts.get(z, 0) + 1
    if not counts:
        return "256x256"
    most = max(counts.values())
    return max((z for z, n in counts.items() if n == most), key=lambda z: int(z.split("x")[0]) * int(z.split("x")[1]))


def pareto_png(rows: list[dict], size: str | None = None, eval_set: str = "embedded",
               targets: tuple[float, ...] = (300.0, 1000.0)) -> bytes:
    """PSNR loss against latency: colour = runtime, marker = technique, the Pareto front drawn and
    labelled at ``size`` (default :func:`front_size`); a second panel at the largest measured size
    (the 1080p output) with the targets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    size = size or front_size(rows)
    sizes = sorted({k for r in rows for k in r["latency"]}, key=lambda s: int(s.split("x")[0]) * int(s.split("x")[1]))
    panels = [size] + ([sizes[-1]] if sizes and sizes[-1] != size else [])
    runtimes = sorted({r["runtime"] for r in rows})
    colours = {rt: plt.get_cmap("tab10")(i % 10) for i, rt in enumerate(runtimes)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, sz in zip(axes[0], panels):
        _panel(ax, rows, sz, eval_set, colours, list(targets) if sz == panels[-1] else [])
    axes[0][0].set_ylabel(f"PSNR-Y lost vs FP32 on {eval_set} (dB)")
    handles = [Line2D([], [], ls="", marker="o", color=colours[rt], label=rt) for rt in runtimes]
    handles += [Line2D([], [], ls="", marker=m, color="0.3", label=t) for t, m in MARKERS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    fig.suptitle("PSNR loss against latency (grey: Pareto front)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_report(run: Path) -> Path:
    rows, header = build_rows(run)
    if not any(r["latency"] for r in rows):
        raise InputError(f"{path_of(run, 'latency')}: no configuration was timed successfully; "
                         "nothing to report (rerun make bench and read its errors)")
    md = to_markdown(rows, header)
    texts = {"report.md": md, "report.csv": to_csv(rows), "report.html": _html(run, rows, header, md)}
    summary = {"header": header, "targets": target_summary(rows), "rows": rows}
    with fresh_stage_folder(stage_dir(run, "report")) as out:  # all built first; a failure leaves no folder
        for name, text in texts.items():
            write_text_atomic(out / name, text)
        write_json_atomic(path_of(run, "report"), summary)
    return out / "report.md"


def _html(run: Path, rows: list[dict], header: dict, md: str) -> str:
    import html

    png = base64.b64encode(pareto_png(rows)).decode()
    try:
        crops = base64.b64encode(front_crops(run, rows, header["scale"])).decode()
        visual = f"<img alt='Zoomed crops' src='data:image/png;base64,{crops}'>"
    except InputError as exc:  # an artifact this host cannot run: the tables still stand
        visual = f"<p>No crops: {html.escape(str(exc))}</p>"
    return ("<!doctype html><meta charset=utf-8><title>Compression report</title>"
            f"<img alt='Pareto plot' src='data:image/png;base64,{png}'>"
            f"<h2>The Pareto front up close</h2>{visual}<pre>{html.escape(md)}</pre>\n")


VISUAL_MAX = 6  # artifacts of the front shown as crops


def front_crops(run: Path, rows: list[dict], scale: int, size: str | None = None, eval_set: str = "embedded") -> bytes:
    """Zoomed crops of the Pareto front (latency at ``size``, default :func:`front_size`; dB lost on
    ``eval_set``), fastest first."""
    from compress.pipeline.visual import front_comparison

    size = size or front_size(rows)
    points = {(r["artifact"], r["runtime"]): (r["latency"][size]["p50_ms"], r["db_lost"][eval_set])
              for r in rows if size in r["latency"] and eval_set in r["db_lost"]}
    front = sorted(pareto_front(points), key=lambda k: points[k][0])
    if len(front) > VISUAL_MAX:  # spread over the front: the fastest, the most faithful and between
        front = [front[round(i * (len(front) - 1) / (VISUAL_MAX - 1))] for i in range(VISUAL_MAX)]
    return front_comparison(run, scale, front)
