"""The models a service holds: opened once at start-up, chosen per request by scale, tier and size."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path


from compress.core.cpu import host_cpu
from compress.core.errors import InputError
from compress.core.infer import Upscaler
from compress.pipeline.choose import TARGETS_MS, choose, measured_elsewhere, measured_on, read_report, worst_loss
from compress.pipeline.contract import path_of
from compress.pipeline.defaults import DEFAULT_MODELS, default_checkpoint
from export.runtimes import for_file, open_artifact, runs_here


@dataclasses.dataclass(frozen=True)
class Served:
    """One opened artifact."""

    artifact: Path
    runtime: str
    scale: int
    run: Upscaler
    figures: dict[str, object]


def _open(path: Path, runtime: str | None, threads: int, figures: dict[str, object]) -> Served:
    opened = open_artifact(path, runtime, threads, untrusted=True)
    return Served(path, runtime or for_file(path).name, opened.scale, opened.run, figures)


class ModelSet:
    """Artifacts by scale, plus (with ``run``) everything its report could choose."""

    def __init__(self, artifacts: tuple[Path, ...] = (), run: Path | None = None, blend: tuple[Path, ...] = (),
                 threads: int = 0, max_loss_db: float = 0.1) -> None:
        self.run, self.threads, self.max_loss_db = run, threads, max_loss_db
        self.by_scale: dict[int, Served] = {}
        self.chosen: dict[tuple[str, str], Served] = {}
        if run is not None:
            self._open_run(run)
        for path in artifacts or (() if run else tuple(default_checkpoint(s) for a, s in DEFAULT_MODELS if a == "edsr")):
            served = _open(Path(path), None, threads, {})
            if (first := self.by_scale.get(served.scale)) is not None:
                raise InputError(f"{path}: scale {served.scale} is already served by {first.artifact} "
                                 "(give one --artifact per scale)")
            self.by_scale[served.scale] = served
        self.blend = None
        if blend:
            self._prepare_blend(artifacts, blend)

    def _open_run(self, run: Path) -> None:
        report, scale = read_report(run)
        self.report = report
        for row in report.get("rows", []):
            loss = worst_loss(row)
            if row.get("latency") and loss is not None and loss <= self.max_loss_db and runs_here(str(row["runtime"])):
                figures = {"db_lost": row["db_lost"], "p50_ms": {k: v["p50_ms"] for k, v in row["latency"].items()}}
                served = _open(Path(run) / row["artifact"], row["runtime"], self.threads, figures)
                self.chosen[(row["artifact"], row["runtime"])] = served
        if not self.chosen:
            raise InputError(f"{path_of(run, 'report')}: no timed artifact within {self.max_loss_db} dB to serve")
        self.run_scale = scale

    def _prepare_blend(self, artifacts: tuple[Path, ...], blend: tuple[Path, ...]) -> None:
        from compress.core.checkpoint import load_checkpoint

        if len(artifacts) != 1 or len(blend) != 1:
            raise InputError("--blend needs exactly one --artifact (A) and one --blend checkpoint (B)")
        a, b = load_checkpoint(artifacts[0]), load_checkpoint(blend[0])
        if a.config != b.config:
            raise InputError(f"{blend[0]}: not the same architecture as {artifacts[0]}")
        self.blend = (a, b)

    def scales(self) -> list[int]:
        return sorted(set(self.by_scale) | ({self.run_scale} if self.run is not None else set()))

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a handful of alphas, held with the service)
    def _blended(self, alpha: float) -> Upscaler:
        from compress.core.checkpoint import interpolate
        from compress.core.infer import torch_upscaler

        return torch_upscaler(interpolate(*self.blend, alpha))

    def require_scale(self, scale: int) -> None:
        """Refuse a scale no model here serves (checked before an upload is decoded)."""
        if scale not in self.scales():
            raise InputError(f"scale {scale} is not served; scales: {self.scales()}")

    def pick(self, scale: int, tier: str, out_mp: float, alpha: float | None) -> tuple[Served, str]:
        """The model for one request, and why it was chosen."""
        self.require_scale(scale)
        if alpha is not None:
            if self.blend is None:
                raise InputError("alpha needs a service started with --artifact A --blend B")
            if not 0.0 <= alpha <= 1.0:  # before rounding: 1.0004 is no alpha, though it rounds to one
                raise InputError(f"alpha must be in [0, 1], got {alpha}")
            base = self.by_scale[scale]
            return dataclasses.replace(base, run=self._blended(round(alpha, 3))), f"blend alpha={alpha:.3f}"
        if self.run is not None and scale == self.run_scale:
            if tier not in TARGETS_MS:
                raise InputError(f"tier must be one of {list(TARGETS_MS)}, got {tier!r}")
            c = choose(self.run, out_mp, tier, self.max_loss_db, self.report)
            return self.chosen[(str(c.artifact.relative_to(self.run)), c.runtime)], c.why
        served = self.by_scale[scale]
        return served, f"{served.artifact} (the model served for x{scale})"

    def machine(self) -> dict[str, object]:
        """This host's CPU and, for a run, the CPU its report's latencies were measured on and a note
        when they differ (:func:`measured_elsewhere`)."""
        here = {"cpu": host_cpu().describe()}
        if self.run is None:
            return here
        return {**here, "latencies_measured_on": measured_on(self.report),
                "note": measured_elsewhere(self.report).removesuffix("; ")}

    def describe(self) -> list[dict[str, object]]:
        items = list(self.by_scale.values()) + list(self.chosen.values())
        return [{"artifact": str(m.artifact), "runtime": m.runtime, "scale": m.scale, **m.figures} for m in items]
