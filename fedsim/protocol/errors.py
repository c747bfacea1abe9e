"""Errors a plug-in raises that fedsim's core turns into a one-line report."""

from __future__ import annotations


class PartitionImpossible(ValueError):
    """A partitioner found no draw that meets its rules (sizes, minimum rows) within the allowed retries; its
    message says what to change."""
