"""Exact rewrites of a narrow output convolution that make ONNX Runtime's CPU kernels fast on it.

An SR network ends in a convolution with 1 or 3 output channels at the HR size. ONNX Runtime's
integer GEMM (MLAS) computes output channels in panels of 16, and EDSR's last convolution also reads
the output of a PixelShuffle, which in an INT8 graph sits between two layout transposes. On a 2-core
AVX-512 VNNI host this took EDSR-baseline's INT8 speed-up over FP32 at 256x256 input from 2.8x / 2.5x /
2.0x to 3.8x / 3.7x / 3.4x at x2 / x3 / x4, against an FP32 graph that gained 6-23% from the same
rewrite (benchmarks/MEASUREMENTS.md, sessions 1-5; the export stage writes the plain graph beside the rewritten one so
``make bench`` shows both). Both rewrites are exact (same function, to float rounding), so they are
applied to the output convolution of every exported graph, FP32 included:

* ``SUBPIXEL``: ``PixelShuffle(r)`` followed by a 3x3 convolution with O outputs equals a 3x3
  convolution on the LR grid with ``O * r * r`` outputs (one per output phase, see :func:`lr_kernel`)
  followed by ``PixelShuffle(r)`` on those few channels. It costs ``r * r`` times the MACs of the
  original convolution, so it is applied only to a narrow convolution (fewer than 16 outputs), where
  the GEMM wasted that much and more on padding anyway.
* ``PADDED``: zero filters pad any other narrow output convolution (RRDB's and SRCNN's last one) to
  16 outputs; a ``Slice`` drops them.

The padded convolution output, its ``Slice`` and the tail's PixelShuffle hold the same values and
share one quantization range (:func:`tied_tensors`), taken from the ``Slice`` output.
"""

from __future__ import annotations

import dataclasses
import enum
import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

PANEL = 16  # output channels per MLAS GEMM panel
METADATA_KEY = "sr_compress.tail_rewrites"


class TailKind(enum.Enum):
    SUBPIXEL = "subpixel"
    PADDED = "padded"


@dataclasses.dataclass(frozen=True)
class TailRewrite:
    """One rewritten convolution: its node name, rewrite, original and padded output channels."""

    node: str
    kind: TailKind
    out_channels: int
    padded_channels: int
    block: int = 1

    def to_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "kind": self.kind.value}


def lr_kernel(weight: np.ndarray, r: int) -> np.ndarray:
    """3x3 kernel on the LR grid equal to ``PixelShuffle(r)`` followed by the 3x3 ``weight``.

    HR pixel (r*Y + i, r*X + j) reads HR rows r*Y + i + dy, dy in {-1, 0, 1}: LR row Y + ky with
    (ky, p) = divmod(i + dy, r), phase p, and ky stays in {-1, 0, 1} for r >= 2. Output channel
    ``o*r*r + i*r + j`` (PixelShuffle's channel order) of the result is output o at phase (i, j);
    input channel ``c*r*r + p*r + q`` is channel c at phase (p, q), as PixelShuffle reads it.

    Args:
        weight: [O, C, 3, 3].
        r: PixelShuffle factor, at least 2.

    Returns:
        [O*r*r, C*r*r, 3, 3], zero where an output phase does not read an input phase.
    """
    o, c, kh, kw = weight.shape
    if (kh, kw) != (3, 3) or r < 2:
        raise ValueError(f"lr_kernel needs a 3x3 kernel and r >= 2, got {kh}x{kw} and r={r}")
    out = np.zeros((o, r, r, c, r, r, 3, 3), weight.dtype)
    for i in range(r):
        for j in range(r):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ky, p = divmod(i + dy, r)
                    kx, q = divmod(j + dx, r)
                    out[:, i, j, :, p, q, ky + 1, kx + 1] = weight[:, :, dy + 1, dx + 1]
    return out.reshape(o * r * r, c * r * r, 3, 3)


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _plain_3x3(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    return (weight.shape[2:] == (3, 3) and list(_attr(node, "strides", [1, 1])) == [1, 1]
            and list(_attr(node, "dilations", [1, 1])) == [1, 1] and _attr(node, "group", 1) == 1
            and list(_attr(node, "pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + array.shape[1:], array.dtype)
    out[: array.shape[0]] = array
    return out


@dataclasses.dataclass(frozen=True)
class _Index:
    """Lookups over one graph: initializers, the node producing each tensor, the nodes reading each,
    and how often each is read (a graph output counts as one read)."""

    inits: dict[str, onnx.TensorProto]
    producer: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    uses: dict[str, int]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> _Index:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        uses = {name: len(nodes) for name, nodes in consumers.items()}
        for o in graph.output:
            uses[o.name] = uses.get(o.name, 0) + 1
        return cls({t.name: t for t in graph.initializer}, {o: n for n in graph.node for o in n.output},
                   consumers, uses)

    def array(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def owned(self, name: str) -> bool:
        """An initializer read by exactly one node (safe to change in place)."""
        return name in self.inits and self.uses.get(name) == 1


def output_convs(graph: onnx.GraphProto) -> set[str]:
    """Names of the convolutions that reach a graph output through non-convolution nodes only."""
    producer = _Index.of(graph).producer
    found: set[str] = set()
    seen: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.add(node.name)
        else:
            stack.extend(node.input)
    return found


def _shuffle_block(node: onnx.NodeProto, weight: np.ndarray, idx: _Index) -> int:
    """r of the CRD PixelShuffle that only ``node`` reads, when ``node`` is a plain 3x3 conv; else 1."""
    d2s = idx.producer.get(node.input[0])
    if (d2s is None or d2s.op_type != "DepthToSpace" or _attr(d2s, "mode", b"DCR") not in (b"CRD", "CRD")
            or idx.uses.get(d2s.output[0]) != 1 or not _plain_3x3(node, weight)):
        return 1
    return int(_attr(d2s, "blocksize", 1))


def _rewrite(g: onnx.GraphProto, node: onnx.NodeProto, idx: _Index, panel: int
             ) -> tuple[TailRewrite, list[onnx.NodeProto], onnx.NodeProto | None] | None:
    """Rewrite one convolution in place: (record, nodes to insert after it, node to drop), or None."""
    weight = idx.array(node.input[1])
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if (weight is None or weight.shape[0] >= panel or _attr(node, "group", 1) != 1 or not idx.owned(node.input[1])
            or (bias_name is not None and not idx.owned(bias_name))):
        return None
    out_channels = weight.shape[0]
    bias = idx.array(bias_name) if bias_name else np.zeros(out_channels, weight.dtype)
    block = _shuffle_block(node, weight, idx)
    kind = TailKind.SUBPIXEL if block >= 2 else TailKind.PADDED
    dropped = None
    if kind is TailKind.SUBPIXEL:
        dropped = idx.producer[node.input[0]]
        weight, bias = lr_kernel(weight, block), np.repeat(bias, block * block)
        node.input[0] = dropped.input[0]
    kept = weight.shape[0]
    rows = -(-kept // panel) * panel
    idx.inits[node.input[1]].CopyFrom(numpy_helper.from_array(_padded(weight, rows), node.input[1]))
    if bias_name is None:
        bias_name = f"{node.input[1]}_bias"
        g.initializer.append(onnx.TensorProto())
        idx.inits[bias_name] = g.initializer[-1]
        del node.input[2:]
        node.input.append(bias_name)
    idx.inits[bias_name].CopyFrom(numpy_helper.from_array(_padded(bias, rows), bias_name))
    y = node.output[0]
    node.output[0] = f"{y}_padded"
    bounds = [numpy_helper.from_array(np.array([v], np.int64), f"{y}_slice_{k}")
              for k, v in (("start", 0), ("end", kept), ("axis", 1))]
    g.initializer.extend(bounds)
    sliced = y if kind is TailKind.PADDED else f"{y}_lr"
    extra = [helper.make_node("Slice", [f"{y}_padded"] + [t.name for t in bounds], [sliced], name=f"{node.name}_slice")]
    if kind is TailKind.SUBPIXEL:
        extra.append(helper.make_node("DepthToSpace", [sliced], [y], blocksize=block, mode="CRD",
                                      name=f"{node.name}_pixel_shuffle"))
    return TailRewrite(node.name, kind, out_channels, rows, block), extra, dropped


def rewrite_narrow_tail(model: onnx.ModelProto, panel: int = PANEL) -> list[TailRewrite]:
    """Rewrite each output convolution (:func:`output_convs`) with fewer than ``panel`` outputs, in place.

    The graph's inputs, outputs and every other tensor keep their names and values; the rewrites are
    also recorded in the model's metadata under ``METADATA_KEY``.
    """
    g = model.graph
    idx = _Index.of(g)
    tail = output_convs(g)
    done: list[TailRewrite] = []
    dropped: set[int] = set()
    after: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        result = _rewrite(g, node, idx, panel) if node.name in tail else None
        if result is not None:
            record, after[id(node)], drop = result
            done.append(record)
            if drop is not None:
                dropped.add(id(drop))
    if done:
        nodes = []
        for n in g.node:
            if id(n) not in dropped:
                nodes.append(n)
                nodes.extend(after.get(id(n), []))
        del g.node[:]
        g.node.extend(nodes)
        del g.value_info[:]  # shapes of rewritten tensors changed; ORT and the pre-processing re-infer them
        helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                       METADATA_KEY: json.dumps([r.to_dict() for r in done])})
    return done


def recorded_rewrites(model: onnx.ModelProto) -> list[dict[str, object]]:
    """The rewrites :func:`rewrite_narrow_tail` recorded in ``model`` (empty if none)."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return []


def tied_tensors(graph: onnx.GraphProto) -> list[tuple[str, ...]]:
    """(sliced, padded[, shuffled]) for each channel-sliced convolution output of ``graph``.

    The tensors of one tuple hold the same values (the Slice drops only zero channels, the tail's
    DepthToSpace only moves values), so they must share one quantization range: otherwise the INT8
    graph would requantize the image between them. The first, the Slice output, holds exactly the
    real values, so its calibration range is the one to share (padded zeros would shift a Percentile
    or Entropy statistic).
    """
    idx = _Index.of(graph)
    out = []
    for n in graph.node:
        if n.op_type != "Slice" or len(n.input) < 4 or idx.uses.get(n.input[0]) != 1:
            continue
        src = idx.producer.get(n.input[0])
        start, axis = idx.array(n.input[1]), idx.array(n.input[3])
        if (src is None or src.op_type != "Conv" or start is None or axis is None
                or start.tolist() != [0] or axis.tolist() != [1]):
            continue
        group = (n.output[0], n.input[0])
        after = idx.consumers.get(n.output[0], [])
        if len(after) == 1 and after[0].op_type == "DepthToSpace" and idx.uses.get(n.output[0]) == 1:
            group += (after[0].output[0],)
        out.append(group)
    return out
