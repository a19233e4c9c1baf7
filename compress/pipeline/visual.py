"""Visual comparison for the report: one zoomed crop of an evaluation image for HR, bicubic, FP32
and each artifact on the Pareto front, with the difference to the FP32 output amplified beneath.

PSNR alone hides where a compressed model loses: INT8 range clipping shows as flat highlights,
pruning as softened texture. The crop is the most textured window of the embedded evaluation image
``CROP_IMAGE`` (highest mean gradient of the HR luminance), so the differences have somewhere to show.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from compress.core.data import ImagePair, load_pair
from compress.core.default_data import split_paths
from compress.core.errors import BadModelOutput
from compress.core.infer import NonFiniteOutput, upscale
from compress.pipeline.contract import path_of, quantized_from
from export.runtimes import open_artifact

CROP_LR = 48  # LR side of the crop
CONTEXT_LR = 16  # LR pixels of context each side, so the crop's borders are not the model's borders
AMPLIFY = 8.0  # difference maps: |artifact - FP32| x AMPLIFY
CROP_IMAGE = "barbara.png"


def textured_window(hr: np.ndarray, scale: int, side: int, context: int) -> tuple[int, int]:
    """LR (y, x) of the ``side`` x ``side`` window (with ``context`` to spare) of highest mean HR
    luminance gradient, searched on a grid of half a window."""
    y_lum = hr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    grad = np.abs(np.diff(y_lum, axis=0))[:, :-1] + np.abs(np.diff(y_lum, axis=1))[:-1, :]
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    best, where = -1.0, (context, context)
    for y in range(context, max(context + 1, h - side - context), side // 2):
        for x in range(context, max(context + 1, w - side - context), side // 2):
            g = float(grad[y * scale:(y + side) * scale, x * scale:(x + side) * scale].mean())
            if g > best:
                best, where = g, (y, x)
    return where


def crops(pair: ImagePair, scale: int, entries: list[tuple[str, Path, str]], threads: int = 2) -> dict[str, np.ndarray]:
    """HR, bicubic and every entry's output (label, artifact, runtime) on the same HR crop."""
    from compress.core.evaluate import bicubic_upscaler

    y, x = textured_window(pair.hr, scale, CROP_LR, CONTEXT_LR)
    c = CONTEXT_LR
    lr = pair.lr[y - c:y + CROP_LR + c, x - c:x + CROP_LR + c]
    inner = slice(c * scale, (c + CROP_LR) * scale)
    out = {"HR": pair.hr[y * scale:(y + CROP_LR) * scale, x * scale:(x + CROP_LR) * scale]}
    out["bicubic"] = upscale(bicubic_upscaler(scale), lr, scale)[inner, inner]
    for label, artifact, runtime in entries:
        try:
            out[label] = upscale(open_artifact(artifact, runtime, threads, scale).run, lr, scale)[inner, inner]
        except NonFiniteOutput:
            raise BadModelOutput(f"{artifact}: the model's output holds NaN or Inf") from None
    return out


def comparison_png(images: dict[str, np.ndarray], reference: str, title: str) -> bytes:
    """A grid: the crops on top, ``|image - reference| x AMPLIFY`` beneath each (black: identical)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    fig, axes = plt.subplots(2, len(names), figsize=(2.2 * len(names), 5.0), squeeze=False)
    for i, name in enumerate(names):
        axes[0][i].imshow(np.clip(images[name], 0, 1), interpolation="nearest")
        axes[0][i].set_title(name, fontsize=7)
        diff = np.abs(images[name] - images[reference]).mean(axis=2) * AMPLIFY
        axes[1][i].imshow(np.clip(diff, 0, 1), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes[1][i].set_title(f"|x - {reference}| x{AMPLIFY:g}", fontsize=6)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def label(artifact: str, runtime: str) -> str:
    """``prune-channel/int8_percentile (openvino)``: the source folder when it is not the baseline's."""
    path = Path(artifact)
    name = path.stem.removeprefix("model_") if path.stem != "model" else path.parent.name
    source = quantized_from(artifact)
    source = "" if source == "model" else source
    return f"{source + '/' if source else ''}{name} ({runtime})"


def front_comparison(run: Path, scale: int, front: list[tuple[str, str]], threads: int = 2) -> bytes:
    """The report's figure: ``front`` is (artifact relative to ``run``, runtime), fastest first."""
    path = next((p for p in split_paths("evaluation") if p.name == CROP_IMAGE), split_paths("evaluation")[0])
    pair = load_pair(path, scale)
    fp32 = path_of(run, "fp32_onnx")
    entries = [("FP32", fp32, "ort")] if fp32.is_file() else [("FP32", path_of(run, "baseline"), "pytorch")]
    entries += [(label(a, rt), run / a, rt) for a, rt in front if (a, rt) != (str(entries[0][1].relative_to(run)), "ort")]
    images = crops(pair, scale, entries, threads)
    return comparison_png(images, "FP32", f"{path.name}, x{scale}: {CROP_LR * scale}x{CROP_LR * scale} HR crop, "
                                          "nearest-neighbour zoom; bottom: difference to FP32, amplified")
