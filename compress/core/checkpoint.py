"""Reading untrusted checkpoints into canonical models, and writing the pipeline's own.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` on the CPU (CUDA-saved files
included); ``.safetensors`` through safetensors. Wrappers (``params_ema``, ``params``, ``state_dict``,
``model``) and ``module.`` prefixes are removed before the layout is detected.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from compress.core.archs import of_config
from compress.core.errors import InputError
from compress.core.layouts import LAYOUTS, Config, Layout, matching_layouts
from compress.core.files import atomic_path

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "generator")


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model in canonical form with where it came from."""

    model: nn.Module
    arch: str
    config: Config
    layout: str
    path: Path

    @property
    def scale(self) -> int:
        return self.config.scale

    def describe(self) -> dict[str, object]:
        cfg = self.config
        return {
            "arch": self.arch,
            "scale": cfg.scale,
            "num_feat": cfg.num_feat,
            "num_block": getattr(cfg, "num_block", 3),
            "params": count_params(self.model),
            "layout": self.layout,
            "config": config_to_dict(cfg),
        }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


MAC_SIZE = 256  # MACs are reported for a 256x256 LR input


def count_macs(model: torch.nn.Module, size: int = MAC_SIZE) -> int:
    """Multiply-accumulates of one forward pass on a ``size`` x ``size`` LR input (torch-pruning's counter)."""
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(model, torch.rand(1, 3, size, size))
    return int(macs)


def config_to_dict(cfg: Config) -> dict[str, object]:
    return {"type": type(cfg).__name__, **dataclasses.asdict(cfg)}


def build_model(cfg: Config) -> nn.Module:
    """Instantiate the canonical module for a config."""
    return of_config(cfg).build(cfg)


def arch_of(cfg: Config) -> str:
    return of_config(cfg).name


def _read_file(path: Path) -> tuple[dict[str, object], dict[str, str]]:
    """Raw mapping and safetensors metadata (empty for torch files)."""
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return dict(load_file(str(path), device="cpu")), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: refused: the file holds Python objects beyond tensors, which could run code "
                         "when unpickled; only plain tensor checkpoints (or .safetensors) are read") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError) as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj, {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def unwrap_state_dict(obj: dict[str, object], path: Path) -> dict[str, torch.Tensor]:
    """Strip training wrappers and ``module.`` prefixes; keep tensors only."""
    for _ in range(3):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and any(isinstance(v, (dict, torch.Tensor)) for v in inner.values()):
                obj = inner
                break
        else:
            break
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise InputError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:10]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: dict[str, torch.Tensor], path: Path) -> Layout:
    """The unique layout that matches, or an InputError listing the first keys and what is supported."""
    found = matching_layouts(sd)
    if len(found) == 1:
        return found[0]
    keys = ", ".join(list(sd)[:12])
    if not found:
        supported = "\n".join(f"  - {lay.name}: {lay.description}" for lay in LAYOUTS)
        raise InputError(f"{path}: unknown checkpoint layout. First keys: {keys}\nSupported layouts:\n{supported}")
    raise InputError(f"{path}: ambiguous layout, matches {[f.name for f in found]}; first keys: {keys}")


def load_checkpoint(path: str | Path, scale: int | None = None) -> LoadedModel:
    """Load any supported checkpoint as a canonical model in eval mode on the CPU.

    Args:
        path: ``.pth``, ``.pt`` or ``.safetensors`` file.
        scale: expected scale; required for SRCNN, checked against the checkpoint otherwise.

    Raises:
        InputError: unreadable file, unknown layout, wrong scale, NaN/Inf weights, shape mismatch.
    """
    path = Path(path)
    raw, meta = _read_file(path)
    if scale is None and meta.get("scale"):
        scale = int(meta["scale"])
    return from_state_dict(unwrap_state_dict(raw, path), scale, path)


def from_state_dict(sd: dict[str, torch.Tensor], scale: int | None, path: Path) -> LoadedModel:
    """Detect, validate and convert a bare state dict (``path`` names it in errors)."""
    layout = detect_layout(sd, path)
    for key, tensor in sd.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(f"{path}: tensor {key!r} contains NaN or Inf values")
    try:
        cfg, canon = layout.to_canonical(sd, scale)
    except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as exc:
        raise InputError(f"{path}: layout {layout.name}: tensor shapes fit no {layout.arch} model ({_first_line(exc)})") from exc
    if scale is not None and cfg.scale != scale:
        raise InputError(f"{path}: checkpoint is a x{cfg.scale} {layout.arch} model, but scale {scale} was requested")
    model = build_model(cfg)
    _check_shapes(model, canon, path, layout.name)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in canon.items()}, strict=False)
    missing = [k for k in missing if k != "mean"]
    if missing or unexpected:
        raise InputError(
            f"{path}: layout {layout.name} did not convert cleanly: missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    model.eval()
    return LoadedModel(model=model, arch=layout.arch, config=cfg, layout=layout.name, path=path)


def _check_shapes(model: nn.Module, canon: dict[str, torch.Tensor], path: Path, layout: str) -> None:
    """Name the first tensor whose shape does not fit the detected architecture, with both shapes."""
    want = model.state_dict()
    for key, tensor in canon.items():
        if key in want and tuple(want[key].shape) != tuple(tensor.shape):
            raise InputError(f"{path}: layout {layout}: tensor {key!r} has shape {tuple(tensor.shape)}, but the "
                             f"architecture read from the other tensors needs {tuple(want[key].shape)}")


def rebuild(model: nn.Module, scale: int) -> LoadedModel:
    """Fresh canonical model and config read from the (e.g. channel-pruned) model's tensor shapes."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return from_state_dict(sd, scale, Path(f"<{type(model).__name__} in memory>"))


def save_checkpoint(
    model: nn.Module, cfg: Config, path: str | Path, metadata: dict[str, object] | None = None, fp16: bool = False
) -> Path:
    """Write a canonical checkpoint as safetensors, atomically.

    The architecture is re-detected from tensor shapes on load; ``scale`` is stored in the metadata
    only because SRCNN's shapes do not reveal it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"arch": arch_of(cfg), "scale": str(cfg.scale), "layout": of_config(cfg).canonical_layout}
    meta["extra"] = json.dumps(metadata or {}, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def interpolate(a: LoadedModel, b: LoadedModel, alpha: float) -> nn.Module:
    """Network interpolation (Wang et al., ESRGAN, 2018): every tensor ``(1 - alpha) * A + alpha * B``.

    ``alpha`` 0 and 1 reproduce A and B exactly. Both must be the same architecture with the same shapes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    if a.config != b.config:
        raise InputError(f"{b.path}: not the same architecture as {a.path} ({b.config} vs {a.config})")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    blended = {k: (sa[k] * (1.0 - alpha) + sb[k] * alpha) if sa[k].is_floating_point() else sa[k] for k in sa}
    model = build_model(a.config)
    model.load_state_dict(blended)
    return model.eval()
