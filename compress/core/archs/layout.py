"""Checkpoint layouts: the record each architecture file gives of the layouts its public releases use.

One frozen :class:`Layout` per layout, with a pure ``detect(state_dict)`` predicate and a pure
``to_canonical(state_dict, scale)`` that returns the architecture's config (hyperparameters read from
tensor shapes) and the state dict under the canonical parameter names; the helpers below read shapes
and rename keys for them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import torch

StateDict = Mapping[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A checkpoint layout: which architecture it holds, how to recognise it, how to convert it."""

    name: str
    arch: str
    description: str
    detect: Callable[[StateDict], bool]
    to_canonical: Callable[[StateDict, int | None], tuple[object, dict[str, torch.Tensor]]]


def rename_keys(sd: StateDict, rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching rule to each key; two keys landing on one name is an error."""
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        if new in out:
            raise ValueError(f"keys {source[new]!r} and {key!r} both map to {new!r}")
        out[new], source[new] = value, key
    return out


def count_indices(sd: StateDict, pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys (blocks, stages)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def out_channels(sd: StateDict, key: str) -> int:
    """Output channels of the convolution weight ``key``."""
    return int(sd[key].shape[0])


def in_channels(sd: StateDict, key: str) -> int:
    """Input channels of the convolution weight ``key``."""
    return int(sd[key].shape[1])


def has_keys(*keys: str) -> Callable[[StateDict], bool]:
    """A ``detect`` predicate: every one of ``keys`` is present."""
    return lambda sd: all(k in sd for k in keys)
