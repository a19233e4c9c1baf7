"""Reading untrusted checkpoints into canonical models, and writing the pipeline's own.

``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)`` on the CPU (CUDA-saved files
included); ``.safetensors`` through safetensors. Wrappers (``params_ema``, ``params``, ``state_dict``,
``model``) and ``module.`` prefixes are removed before the layout is detected.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from compress.core.archs import of_config
from compress.core.errors import InputError, first_line
from compress.core.layouts import LAYOUTS, Config, Layout, matching_layouts
from compress.core.files import atomic_path, require_regular

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
        sizes = {k: getattr(cfg, k) for k in ("num_feat", "num_block", "num_grow_ch") if hasattr(cfg, k)}
        return {"arch": self.arch, "scale": cfg.scale, **sizes, "params": count_params(self.model),
                "layout": self.layout, "config": config_to_dict(cfg)}


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
    require_regular(path, missing="checkpoint not found")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return dict(load_file(str(path), device="cpu")), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        sniffed = _looks_like_safetensors(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if sniffed:
        raise InputError(f"{path}: a safetensors file with another suffix; name it *.safetensors")
    _refuse_zip_bomb(path)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes would precede the one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _starts_like_torch_save(path):  # bytes that are neither torch.save's zip nor a binary pickle
            raise InputError(f"{path}: not a readable PyTorch checkpoint (neither a zip archive nor a pickle)") from exc
        raise InputError(f"{path}: refused: the file holds Python objects beyond tensors, which could run code "
                         "when unpickled; only plain tensor checkpoints (or .safetensors) are read") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file raises anything from struct.error to AssertionError
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj, {}


ZIP_SLACK_BYTES = 1 << 20  # headers and a little compression beyond torch.save's stored entries


def _refuse_zip_bomb(path: Path) -> None:
    """An :class:`InputError` for a zip checkpoint whose entries expand past twice the file's size:
    ``torch.save`` stores them uncompressed, so memory stays near the file's size; a deflated entry
    could ask for a thousand times it."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except Exception:  # noqa: BLE001 - a corrupt archive raises anything from BadZipFile to NotImplementedError
        return  # torch.load names what is wrong with it
    size = path.stat().st_size
    if expanded > 2 * size + ZIP_SLACK_BYTES:
        raise InputError(f"{path}: refused: its zip entries expand to {expanded / 2**20:.0f} MiB from a "
                         f"{size / 2**20:.1f} MiB file (torch.save stores them uncompressed)")


PICKLE_SNIFF_BYTES = 1 << 20


def _starts_like_torch_save(path: Path) -> bool:
    """Whether ``path`` starts as ``torch.save`` writes, a zip archive, or with a well-formed pickle: its
    opcodes parse up to ``STOP`` (or past the first MiB), so a text page or random bytes do not pass."""
    with path.open("rb") as fh:
        head = fh.read(PICKLE_SNIFF_BYTES)
    if head[:2] == b"PK":
        return True
    buf = io.BytesIO(head)
    try:
        for op, _arg, _pos in pickletools.genops(buf):
            if op.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - genops raises ValueError, UnicodeDecodeError, struct.error, ...
        # ran out at the end of a full sniff: cut off there, not malformed, so it cannot tell
        return len(head) == PICKLE_SNIFF_BYTES and buf.tell() == len(head)
    return False


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and then ``{``."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def _first_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message (:func:`first_line`)."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def unwrap_state_dict(obj: dict[str, object], path: Path) -> dict[str, torch.Tensor]:
    """Strip training wrappers and ``module.`` / ``_orig_mod.`` prefixes; keep tensors only."""
    for _ in range(3):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and any(isinstance(v, (dict, torch.Tensor)) for v in inner.values()):
                obj = inner
                break
        else:
            break
    # detached: weights saved as nn.Parameter carry requires_grad, and reading shapes and means from
    # them would warn about autograd, which a loaded checkpoint never needs
    sd = {k: v.detach() for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise InputError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:10]}")
    for prefix in ("module.", "_orig_mod."):  # DDP / DataParallel, then torch.compile (DDP of a compiled model)
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: dict[str, torch.Tensor], path: Path) -> Layout:
    """The unique layout that matches, or an InputError listing the first keys and what is supported."""
    found = matching_layouts(sd)
    if len(found) == 1:
        return found[0]
    keys = ", ".join(repr(k)[:80] for k in list(sd)[:12])  # escaped: a key can hold newlines or terminal codes
    if not found:
        supported = ", ".join(lay.name for lay in LAYOUTS)
        raise InputError(f"{path}: unknown checkpoint layout (first keys: {keys}); supported: {supported} "
                         "(README, 'Checkpoints it reads')")
    raise InputError(f"{path}: ambiguous layout, matches {[f.name for f in found]}; first keys: {keys}")


#: Weight dtypes read (converted to float32); anything else is refused, naming the tensor.
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class Unshaped:
    """Config fields that tensor shapes do not reveal (EDSR's ``res_scale`` and ``img_range``).

    The pipeline's checkpoints record them in their metadata and :func:`rebuild` carries them over, so a
    model trained or pruned with other values than the shape-based guess reloads as it was.
    """

    res_scale: float | None = None
    img_range: float | None = None

    @classmethod
    def of(cls, cfg: object) -> Unshaped:
        return cls(**{f.name: getattr(cfg, f.name, None) for f in dataclasses.fields(cls)})

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> Unshaped:
        values: dict[str, float] = {}
        for field in dataclasses.fields(cls):
            text = meta.get(field.name)
            if text is None:
                continue
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (value > 0 and math.isfinite(value)):
                raise InputError(f"{path}: metadata {field.name}={text!r} is not a positive number")
            values[field.name] = value
        return cls(**values)

    def apply(self, cfg: Config) -> Config:
        known = {f.name for f in dataclasses.fields(cfg)}
        updates = {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k in known}
        return dataclasses.replace(cfg, **updates) if updates else cfg


def load_checkpoint(path: str | Path, scale: int | None = None) -> LoadedModel:
    """Load any supported checkpoint as a canonical model in eval mode on the CPU.

    Args:
        path: ``.pth``, ``.pt`` or ``.safetensors`` file.
        scale: expected scale; required for SRCNN (unless the file records it), checked otherwise.

    Raises:
        InputError: unreadable file, unknown layout, wrong scale, NaN/Inf weights, shape mismatch.
    """
    path = Path(path)
    raw, meta = _read_file(path)
    recorded = _recorded_scale(meta, path)
    if scale is not None and recorded is not None and recorded != scale:
        raise InputError(f"{path}: the checkpoint records scale {recorded}, but scale {scale} was requested")
    return from_state_dict(unwrap_state_dict(raw, path), scale if scale is not None else recorded, path,
                           Unshaped.from_metadata(meta, path), scale_from="requested" if scale is not None else "recorded")


def _recorded_scale(meta: dict[str, str], path: Path) -> int | None:
    text = meta.get("scale")
    if not text:
        return None
    if not (text.isascii() and text.isdecimal()) or int(text) < 1:
        raise InputError(f"{path}: metadata scale={text!r} is not a positive integer")
    return int(text)


def from_state_dict(sd: dict[str, torch.Tensor], scale: int | None, path: Path,
                    unshaped: Unshaped = Unshaped(), scale_from: str = "requested") -> LoadedModel:
    """Detect, validate and convert a bare state dict (``path`` names it in errors; ``scale_from`` says
    where ``scale`` came from: ``requested``, or ``recorded`` in the file's metadata).

    Every shape is checked against a skeleton built on the meta device before any weight is allocated,
    so a small file cannot make the loader reserve gigabytes for the widths it declares.
    """
    _check_tensors(sd, path)
    layout = detect_layout(sd, path)
    try:
        cfg, canon = layout.to_canonical(sd, scale)
    except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError, RuntimeError) as exc:
        raise InputError(f"{path}: layout {layout.name}: tensor shapes fit no {layout.arch} model ({_first_line(exc)})") from exc
    try:
        cfg = unshaped.apply(cfg)
    except ValueError as exc:  # the architecture's own bounds (EDSR's res_scale in (0, 1])
        raise InputError(f"{path}: metadata outside the {layout.arch} model's bounds ({_first_line(exc)})") from exc
    if scale is not None and cfg.scale != scale:
        raise InputError(f"{path}: checkpoint is a x{cfg.scale} {layout.arch} model, but scale {scale} was {scale_from}")
    try:
        with torch.device("meta"):
            skeleton = build_model(cfg)
    except (RuntimeError, ValueError, OverflowError) as exc:  # widths read from shapes no tensor can hold
        raise InputError(f"{path}: layout {layout.name}: the {layout.arch} model its shapes describe cannot be "
                         f"built ({_first_line(exc)})") from exc
    _check_shapes(skeleton, canon, path, layout.name)
    model = build_model(cfg)
    own = model.state_dict()  # the model's own tensors; each is filled in place, converted one at a time, so a
    with torch.no_grad():  # half-precision file never has a whole FP32 copy of itself beside the model
        for key, value in canon.items():
            own[key].copy_(value)
    model.eval()
    return LoadedModel(model=model, arch=layout.arch, config=cfg, layout=layout.name, path=path)


def _check_tensors(sd: dict[str, torch.Tensor], path: Path) -> None:
    """Dense CPU float weights only, each backed by as much data as it claims and by data of its own
    (tensors overlapping in one storage would let a small file fill a large model), all finite.

    The storage checks come before the finiteness check, which would otherwise read an expanded view
    at its full size.
    """
    owner: dict[int, str] = {}
    stored = claimed = 0
    for key, tensor in sd.items():
        if tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_quantized:
            raise InputError(f"{path}: tensor {key!r} is a {tensor.layout} {tensor.device.type} tensor"
                             f"{' (quantized)' if tensor.is_quantized else ''}; only dense weights are read")
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.dtype not in WEIGHT_DTYPES:
            raise InputError(f"{path}: tensor {key!r} has dtype {tensor.dtype}; weights must be float16, bfloat16, "
                             "float32 or float64")
        storage, size = tensor.untyped_storage(), tensor.numel() * tensor.element_size()
        if size == 0:  # holds no data to share (its shape is checked against the architecture later)
            continue
        if size > storage.nbytes():
            raise InputError(f"{path}: tensor {key!r} of shape {tuple(tensor.shape)} is a view larger than the "
                             "data stored for it")
        first = owner.setdefault(storage.data_ptr(), key)
        stored += storage.nbytes() if first == key else 0
        claimed += size
        if claimed > stored:
            raise InputError(f"{path}: tensor {key!r} shares its data with {first!r}; each weight must be stored once")
        if tensor.is_floating_point() and not torch.isfinite(tensor.float()).all():  # float64 past float32's range too
            raise InputError(f"{path}: tensor {key!r} contains NaN or Inf values (as the float32 it is run in)")


def _check_shapes(skeleton: nn.Module, canon: dict[str, torch.Tensor], path: Path, layout: str) -> None:
    """Every tensor the architecture needs, of its shape and dtype, and no other (``mean`` may default)."""
    want = skeleton.state_dict()
    missing = [k for k in want if k not in canon and k != "mean"]
    unexpected = [k for k in canon if k not in want]
    if missing or unexpected:
        raise InputError(f"{path}: layout {layout} did not convert cleanly: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    for key, tensor in canon.items():
        if not tensor.is_floating_point():
            raise InputError(f"{path}: tensor {key!r} has dtype {tensor.dtype}; weights must be floating point")
    odd = [k for k, tensor in canon.items() if tuple(want[k].shape) != tuple(tensor.shape)]
    if odd:  # the widths are read from a few tensors: when one of those is the odd one, all others disagree
        key, others = odd[0], (f" ({len(odd)} of {len(canon)} tensors disagree: the widths are read from the "
                               "first convolutions, so one of those may be the odd one)") if len(odd) > 1 else ""
        raise InputError(f"{path}: layout {layout}: tensor {key!r} has shape {tuple(canon[key].shape)}, but the "
                         f"architecture read from the tensor shapes needs {tuple(want[key].shape)}{others}")


def rebuild(model: nn.Module, scale: int) -> LoadedModel:
    """Fresh canonical model and config read from the (e.g. channel-pruned) model's tensor shapes.

    What shapes do not reveal (:class:`Unshaped`) is carried over from the model's own ``cfg``.
    """
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    name = Path(f"<{type(model).__name__} in memory>")
    return from_state_dict(sd, scale, name, Unshaped.of(getattr(model, "cfg", None)))


def save_checkpoint(
    model: nn.Module, cfg: Config, path: str | Path, metadata: dict[str, object] | None = None, fp16: bool = False
) -> Path:
    """Write a canonical checkpoint as safetensors, atomically.

    The architecture is re-detected from tensor shapes on load; the metadata stores only what shapes do
    not reveal: ``scale`` (SRCNN) and the :class:`Unshaped` fields.
    """
    from safetensors.torch import save_file

    path = Path(path)
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    meta = {"arch": arch_of(cfg), "scale": str(cfg.scale), "layout": of_config(cfg).canonical_layout}
    meta |= {k: str(float(v)) for k, v in dataclasses.asdict(Unshaped.of(cfg)).items() if v is not None}
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
