"""Every checkpoint layout the loader reads, gathered from the architecture files.

Each architecture declares the layouts of its public releases (:attr:`Architecture.layouts`, records
of :class:`~compress.core.archs.layout.Layout` with a pure ``detect(state_dict)`` and a pure
``to_canonical``); :data:`LAYOUTS` is their one list, in :data:`~compress.core.archs.ARCHITECTURES`
order. Order does not matter for detection: exactly one layout may match (tested).
"""

from __future__ import annotations

from compress.core.archs import ARCHITECTURES, EDSRConfig, RRDBConfig, SRCNNConfig
from compress.core.archs.layout import Layout, StateDict

Config = EDSRConfig | RRDBConfig | SRCNNConfig

LAYOUTS: tuple[Layout, ...] = tuple(layout for arch in ARCHITECTURES for layout in arch.layouts)

__all__ = ["LAYOUTS", "Config", "Layout", "StateDict", "matching_layouts"]


def matching_layouts(sd: StateDict) -> list[Layout]:
    """All layouts whose predicate accepts ``sd`` (exactly one for any supported checkpoint)."""
    return [layout for layout in LAYOUTS if layout.detect(sd)]
