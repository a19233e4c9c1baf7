"""Canonical super-resolution architectures and their one registry, :data:`ARCHITECTURES`.

Every canonical model maps an RGB image in ``[0, 1]`` (N, 3, h, w) to an RGB image in ``[0, 1]``
(N, 3, h*scale, w*scale). Input ranges and mean shifts of the original releases are folded in at the
edges so that every downstream stage sees one convention. Each architecture file describes itself
with an :class:`~compress.core.archs.spec.Architecture` entry (config, module, structural facts).
"""

from __future__ import annotations

from torch import nn

from compress.core.archs import edsr, rrdb, srcnn
from compress.core.archs.edsr import EDSR, EDSRConfig
from compress.core.archs.rrdb import RRDBConfig, RRDBNet
from compress.core.archs.spec import Architecture, Structure
from compress.core.archs.srcnn import SRCNN, SRCNNConfig
from compress.core.registry import by_name

ARCHITECTURES: tuple[Architecture, ...] = (edsr.ARCH, rrdb.ARCH, srcnn.ARCH)

__all__ = ["ARCHITECTURES", "EDSR", "EDSRConfig", "RRDBNet", "RRDBConfig", "SRCNN", "SRCNNConfig", "Architecture",
           "Structure", "architecture", "of_config", "of_model", "structure_of"]


def architecture(name: str) -> Architecture:
    """The entry called ``name``."""
    return by_name(ARCHITECTURES, name, "architecture", ValueError)


def of_config(cfg: object) -> Architecture:
    """The entry whose config type ``cfg`` is."""
    for arch in ARCHITECTURES:
        if type(cfg) is arch.config_type:
            return arch
    raise TypeError(f"no architecture has config type {type(cfg).__name__}")


def of_model(model: nn.Module) -> Architecture:
    """The entry whose module type ``model`` is."""
    for arch in ARCHITECTURES:
        if type(model) is arch.module_type:
            return arch
    raise TypeError(f"{type(model).__name__} is none of the architectures {[a.name for a in ARCHITECTURES]}")


def structure_of(model: nn.Module) -> Structure:
    """The structural facts of a built model (see :class:`Structure`)."""
    return of_model(model).structure(model)
