"""Latency harness, compression report and report comparison."""
