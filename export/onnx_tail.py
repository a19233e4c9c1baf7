"""Exact rewrites of a narrow output convolution that make ONNX Runtime's CPU kernels fast on it.

An SR network ends in a convolution with 1 or 3 output channels at the HR size. ONNX Runtime's
integer GEMM (MLAS) computes output channels in panels of 16, and EDSR's last convolution also reads
the output of a PixelShuffle, which in an INT8 graph sits between two layout transposes. Measured on
the 2-core VNNI host at 256x256 input (EDSR-baseline, Percentile INT8, p50): x4 582 -> 437 ms by
padding the last convolution to 16 outputs, 289 ms with the sub-pixel form below; x2 236 -> 198 ->
162 ms; FP32 gains 8-19% from the sub-pixel form too. Both rewrites are exact (same function, to
float rounding), so they are applied to the output convolution of every exported graph, FP32 included:

* ``SUBPIXEL``: ``PixelShuffle(r)`` followed by a 3x3 convolution with O outputs equals a 3x3
  convolution on the LR grid with ``O * r * r`` outputs (one per output phase, see :func:`lr_kernel`)
  followed by ``PixelShuffle(r)`` on those few channels. It costs ``r * r`` times the MACs of the
  original convolution, so it is applied only to a narrow convolution (fewer than 16 outputs), where
  the GEMM wasted that much and more on padding anyway.
* ``PADDED``: zero filters pad any other narrow output convolution (RRDB's and SRCNN's last one) to
  16 outputs; a ``Slice`` drops them.

A sliced convolution output's calibration range is the range of the ``Slice`` output (the padded
zeros carry no information): :func:`range_aliases` names those pairs for the calibration step.
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


def output_convs(graph: onnx.GraphProto) -> set[str]:
    """Names of the convolutions that reach a graph output through non-convolution nodes only."""
    producer = {o: n for n in graph.node for o in n.output}
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


def rewrite_narrow_tail(model: onnx.ModelProto, panel: int = PANEL) -> list[TailRewrite]:
    """Rewrite each output convolution (:func:`output_convs`) with fewer than ``panel`` outputs, in place.

    The graph's inputs, outputs and every other tensor keep their names and values; the rewrites are
    also recorded in the model's metadata under ``METADATA_KEY``.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {o.name for o in g.output}
    tail = output_convs(g)
    done: list[TailRewrite] = []
    removed: set[int] = set()
    after: dict[int, list[onnx.NodeProto]] = {}
    for node in g.node:
        if node.name not in tail or node.input[1] not in inits or uses.get(node.input[1]) != 1:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        has_bias = len(node.input) > 2 and node.input[2] in inits and uses.get(node.input[2]) == 1
        if len(node.input) > 2 and node.input[2] and not has_bias:
            continue
        bias = numpy_helper.to_array(inits[node.input[2]]) if has_bias else np.zeros(weight.shape[0], weight.dtype)
        o = weight.shape[0]
        if o >= panel:
            continue
        d2s = producer.get(node.input[0])
        block = 1
        if (d2s is not None and d2s.op_type == "DepthToSpace" and _attr(d2s, "mode", b"DCR") in (b"CRD", "CRD")
                and uses.get(d2s.output[0]) == 1 and d2s.output[0] not in graph_outputs and _plain_3x3(node, weight)):
            block = int(_attr(d2s, "blocksize", 1))
        kind = TailKind.SUBPIXEL if block >= 2 else TailKind.PADDED
        if kind is TailKind.SUBPIXEL:
            weight, bias = lr_kernel(weight, block), np.repeat(bias, block * block)
            node.input[0] = d2s.input[0]
            removed.add(id(d2s))
        kept = weight.shape[0]
        rows = -(-kept // panel) * panel
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(_padded(weight, rows), node.input[1]))
        bias_name = node.input[2] if has_bias else node.input[1] + "_bias"
        if has_bias:
            inits[bias_name].CopyFrom(numpy_helper.from_array(_padded(bias, rows), bias_name))
        else:
            g.initializer.append(numpy_helper.from_array(_padded(bias, rows), bias_name))
            del node.input[2:]
            node.input.append(bias_name)
        y = node.output[0]
        node.output[0] = f"{y}_padded"
        stops = [numpy_helper.from_array(np.array([v], np.int64), f"{y}_slice_{k}")
                 for k, v in (("start", 0), ("end", kept), ("axis", 1))]
        g.initializer.extend(stops)
        sliced = y if kind is TailKind.PADDED else f"{y}_lr"
        extra = [helper.make_node("Slice", [f"{y}_padded"] + [t.name for t in stops], [sliced], name=f"{node.name}_slice")]
        if kind is TailKind.SUBPIXEL:
            extra.append(helper.make_node("DepthToSpace", [sliced], [y], blocksize=block, mode="CRD",
                                          name=f"{node.name}_pixel_shuffle"))
        after[id(node)] = extra
        done.append(TailRewrite(node.name, kind, o, rows, block))
    if done:
        nodes = []
        for n in g.node:
            if id(n) not in removed:
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


def range_aliases(graph: onnx.GraphProto) -> dict[str, str]:
    """{convolution output: Slice output} for each channel-sliced convolution output of ``graph``.

    The Slice keeps exactly the real channels, so its output's calibration range is the range the
    padded tensor should be quantized with (zeros would shift a Percentile or Entropy statistic).
    """
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1

    def const(name: str) -> list[int] | None:
        return numpy_helper.to_array(inits[name]).tolist() if name in inits else None

    out = {}
    for n in graph.node:
        if n.op_type != "Slice" or len(n.input) < 4 or consumers.get(n.input[0]) != 1:
            continue
        src = producer.get(n.input[0])
        if src is not None and src.op_type == "Conv" and const(n.input[1]) == [0] and const(n.input[3]) == [1]:
            out[n.input[0]] = n.output[0]
    return out
