"""``make compare A=<run|report.json> B=<run|report.json>``: two reports side by side with deltas."""

from __future__ import annotations

import sys
from pathlib import Path

from compress.core import options as opt
from compress.core.errors import InputError, error_line
from compress.core.files import read_json_object
from compress.pipeline.choose import check_rows, text_artifact_problem
from compress.pipeline.contract import path_of


def load_report(path: str | Path) -> dict:
    """A report (``report.json``, or a run folder holding one) whose rows carry what :func:`compare` reads.

    Raises:
        InputError: no report, not JSON, or rows :func:`~compress.pipeline.choose.check_rows` refuses
            (the message names the file and the row).
    """
    path = Path(path)
    if path.is_dir():
        path = path_of(path, "report")
    if not path.is_file():
        raise InputError(f"{path}: no report.json (run make report first)")
    report = read_json_object(path)
    check_rows(path, report.get("rows"), text_artifact_problem)  # compare only prints an artifact
    return report


def _get(row: dict | None, key: str, sub: str | None = None) -> float | None:
    if row is None:
        return None
    value = row.get(key)
    if sub is not None:
        value = (value or {}).get(sub)
        if isinstance(value, dict):
            value = value.get("p50_ms")
    return value


def compare(a: dict, b: dict, eval_set: str = "embedded", size: str = "256x256") -> list[dict]:
    """Rows matched by (artifact, runtime); each metric as A, B and B - A."""
    index_a = {(r["artifact"], r["runtime"]): r for r in a["rows"]}
    index_b = {(r["artifact"], r["runtime"]): r for r in b["rows"]}
    out = []
    for key in list(index_a) + [k for k in index_b if k not in index_a]:
        ra, rb = index_a.get(key), index_b.get(key)
        entry = {"artifact": key[0], "runtime": key[1]}
        for name, k, sub in (("psnr_y_db", "psnr_y_db", eval_set), ("db_lost", "db_lost", eval_set),
                             (f"p50_ms@{size}", "latency", size), ("size_bytes", "size_bytes", None), ("params", "params", None)):
            va, vb = _get(ra, k, sub), _get(rb, k, sub)
            entry[name] = (va, vb, None if va is None or vb is None else round(vb - va, 4))
        out.append(entry)
    return out


def cell(text: str) -> str:
    """A report's text as one Markdown table cell: control characters escaped (a newline cannot start a
    row of its own), ``|`` escaped, long text cut."""
    return error_line(text).replace("|", "\\|")


def format_table(rows: list[dict]) -> str:
    metrics = [k for k in rows[0] if k not in ("artifact", "runtime")] if rows else []
    head = ["artifact", "runtime"] + [f"{m} {part}" for m in metrics for part in ("A", "B", "B-A")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        cells = [cell(r["artifact"]), cell(r["runtime"])] + [" | ".join(fmt(v) for v in r[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conditions(report: dict) -> dict[str, str]:
    """What a report's figures were measured under: scale, CPU with its features, runtime threads
    (``?`` where its header does not say)."""
    def part(d: object, key: str) -> object:
        return d.get(key) if isinstance(d, dict) else None

    head = report.get("header")
    machine = part(head, "machine")
    found = {"scale": part(head, "scale"), "CPU": part(machine, "cpu_description") or part(machine, "cpu"),
             "threads": part(part(head, "bench_config"), "threads")}
    return {k: "?" if v is None or isinstance(v, (dict, list)) else cell(str(v)) for k, v in found.items()}


def header_lines(a: dict, b: dict, names: tuple[str, str]) -> list[str]:
    """One line per report naming its conditions, and a warning when they differ: a B-A latency delta
    across CPUs, thread counts or scales is not a difference between the models."""
    ca, cb = conditions(a), conditions(b)
    lines = [f"- {label}: {cell(name)}: x{c['scale']}, {c['threads']} threads, {c['CPU']}"
             for label, name, c in (("A", names[0], ca), ("B", names[1], cb))]
    differ = [k for k in ca if ca[k] != cb[k]]
    if differ:
        lines.append(f"- warning: A and B differ in {', '.join(differ)}; their deltas mix that difference with the models'")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = opt.Parser(prog="python -m compress.pipeline.compare")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--eval-set", default="embedded")
    p.add_argument("--size", default="256x256")
    args = p.parse_args(argv)
    try:
        a, b = load_report(args.a), load_report(args.b)
        print("\n".join(header_lines(a, b, (args.a, args.b)) + [format_table(compare(a, b, args.eval_set, args.size))]))
    except InputError as exc:
        print(f"error: {error_line(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
