"""CoRT: tool-integrated reasoning with a stateful sandbox interpreter, hints and masked training."""

from rolegraph.graphs.cort.graph import CORT, REWARDS, cort_graph
from rolegraph.graphs.cort.nodes import FINISH_NODE, TURN_NODE, add_tir_loop, tir_finish, tir_turn
from rolegraph.graphs.cort.sessions import SessionProvider
from rolegraph.graphs.cort.state import CortOptions, TIRState

__all__ = [
    "CORT",
    "FINISH_NODE",
    "REWARDS",
    "TURN_NODE",
    "CortOptions",
    "SessionProvider",
    "TIRState",
    "add_tir_loop",
    "cort_graph",
    "tir_finish",
    "tir_turn",
]
