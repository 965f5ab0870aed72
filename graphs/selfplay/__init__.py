"""Self-play rollouts and their verification as a graph on the runtime."""

from rolegraph.graphs.selfplay.graph import REWARDS, selfplay_graph
from rolegraph.graphs.selfplay.problems import Problem, load_problems

__all__ = ["REWARDS", "Problem", "load_problems", "selfplay_graph"]
