"""Quality evaluation of an upscaler (or bicubic) on a folder of HR images."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from compress.core.data import ImagePair, bicubic_up, list_images, load_pairs, to_array, to_image
from compress.core.default_data import split_paths
from compress.core.errors import InputError
from compress.core.infer import NonFiniteOutput, TileConfig, Upscaler, auto_tiles, upscale
from compress.core.metrics import mean_error, psnr_db, psnr_rgb_db, ssim, y_planes


@dataclasses.dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_y_db: float
    ssim_y: float
    psnr_rgb_db: float
    mean_error_y: float  # signed mean Y error (SR - HR) in 8-bit levels


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-image and mean scores. Convention: Y of BT.601, ``scale`` pixels shaved, 8-bit rounding."""

    scale: int
    images: tuple[ImageScore, ...]

    @property
    def psnr_y_db(self) -> float:
        return float(np.mean([s.psnr_y_db for s in self.images]))

    @property
    def ssim_y(self) -> float:
        return float(np.mean([s.ssim_y for s in self.images]))

    @property
    def psnr_rgb_db(self) -> float:
        return float(np.mean([s.psnr_rgb_db for s in self.images]))

    @property
    def mean_error_y(self) -> float:
        return float(np.mean([s.mean_error_y for s in self.images]))

    def to_dict(self) -> dict[str, object]:
        return {
            "convention": f"Y (BT.601), {self.scale}px border shaved, 8-bit rounded",
            "scale": self.scale,
            "psnr_y_db": round(self.psnr_y_db, 4),
            "ssim_y": round(self.ssim_y, 5),
            "psnr_rgb_db": round(self.psnr_rgb_db, 4),
            "mean_error_y": round(self.mean_error_y, 4),
            "images": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(s).items()}
                       for s in self.images],
        }


def bicubic_upscaler(scale: int) -> Upscaler:
    """PIL bicubic as an upscaler (the literature's reference row)."""

    def run(x: np.ndarray) -> np.ndarray:
        img = to_image(x[0].transpose(1, 2, 0))
        return to_array(bicubic_up(img, scale)).transpose(2, 0, 1)[None]

    return run


def evaluate(fn: Upscaler, pairs: Sequence[ImagePair], scale: int, tiles: TileConfig = TileConfig()) -> EvalResult:
    """Score ``fn`` on every pair; a non-finite metric is refused with the image named (never reported)."""
    scores = []
    for pair in pairs:
        try:
            sr = upscale(fn, pair.lr, scale, auto_tiles(pair.lr.shape, tiles, scale))
        except NonFiniteOutput:
            raise InputError(f"{pair.name}: the model's output holds NaN or Inf; no PSNR is reported") from None
        y_sr, y_hr = y_planes(sr, pair.hr, scale)  # once for the three Y metrics
        score = ImageScore(pair.name, psnr_db(y_sr, y_hr, peak=255.0), ssim(y_sr, y_hr),
                           psnr_rgb_db(sr, pair.hr, scale), mean_error(y_sr, y_hr))
        if not (math.isfinite(score.psnr_y_db) and math.isfinite(score.psnr_rgb_db) and math.isfinite(score.ssim_y)):
            raise InputError(f"{pair.name}: PSNR is {score.psnr_y_db} (output identical to the reference image); "
                             "an infinite PSNR is not reported")
        scores.append(score)
    if not scores:
        raise InputError("no images to evaluate")
    return EvalResult(scale=scale, images=tuple(scores))


def set_name(folder: str | Path) -> str:
    """The short name an evaluation folder's results go by: ``.../Set5`` and ``.../Set5/HR`` are ``Set5``."""
    folder = Path(folder)
    return folder.name if folder.name != "HR" else folder.parent.name


def eval_sets(scale: int, extra: list[str] | None) -> dict[str, list[ImagePair]]:
    """The embedded evaluation split plus any extra folders, keyed by :func:`set_name`."""
    sets, where = {"embedded": load_pairs(split_paths("evaluation"), scale)}, {"embedded": "the embedded split"}
    for folder in extra or []:
        name = set_name(folder)
        if name in sets:  # one name would hide the other's figures
            raise InputError(f"{folder}: its results would go by the name {name!r}, as {where[name]}'s do; "
                             "rename the folder")
        sets[name], where[name] = load_pairs(list_images(folder), scale), str(folder)
    return sets


def quality(fn, sets: dict[str, list[ImagePair]], scale: int) -> dict[str, dict[str, object]]:  # noqa: ANN001
    return {name: evaluate(fn, pairs, scale).to_dict() for name, pairs in sets.items()}


def psnr_delta_db(after: dict[str, dict], before: dict[str, dict]) -> dict[str, float]:
    """PSNR-Y change per evaluation set from ``before`` to ``after`` (two :func:`quality` results), in dB
    rounded to 4 decimals, over the sets both measured."""
    return {k: round(after[k]["psnr_y_db"] - before[k]["psnr_y_db"], 4) for k in after if k in before}
