"""Canonical super-resolution architectures.

Every canonical model maps an RGB image in ``[0, 1]`` (N, 3, h, w) to an RGB image in ``[0, 1]``
(N, 3, h*scale, w*scale). Input ranges and mean shifts of the original releases are folded in at the
edges so that every downstream stage sees one convention.
"""

from compress.core.archs.edsr import EDSR, EDSRConfig
from compress.core.archs.rrdb import RRDBNet, RRDBConfig
from compress.core.archs.srcnn import SRCNN, SRCNNConfig

__all__ = ["EDSR", "EDSRConfig", "RRDBNet", "RRDBConfig", "SRCNN", "SRCNNConfig"]
