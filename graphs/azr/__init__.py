"""Absolute Zero: proposer/solver self-play on code triplets, as a graph on the runtime."""

from rolegraph.graphs.azr.graph import AZR, REWARDS, azr_graph
from rolegraph.graphs.azr.state import TASK_TYPES, AZROptions

__all__ = ["AZR", "REWARDS", "TASK_TYPES", "AZROptions", "azr_graph"]
