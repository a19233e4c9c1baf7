"""Pruning: the AGP schedule (Zhu & Gupta, arXiv:1710.01878), unstructured magnitude pruning and
structured channel pruning through torch-pruning's dependency graph.

Public verbs: :func:`prune_low_magnitude` / :func:`strip_pruning` (unstructured) and
:func:`prune_channels` (structured).
"""

from pruning.channel import prune_channels
from pruning.magnitude import prune_low_magnitude, strip_pruning
from pruning.schedule import PolynomialDecay

__all__ = ["PolynomialDecay", "prune_channels", "prune_low_magnitude", "strip_pruning"]
