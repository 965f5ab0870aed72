"""Evaluation: accuracy metrics, the eval graph (problem × binding), its reports, and run analysis."""

from rolegraph.eval.bindings import Binding, solver_bindings
from rolegraph.eval.graph import SOLVER_GRAPHS, eval_graph
from rolegraph.eval.metrics import ProblemResult, Scores, pass_at_k, score, wilson
from rolegraph.eval.report import EvalReport, read_report
from rolegraph.eval.runner import EvalSettings, evaluate

__all__ = [
    "SOLVER_GRAPHS",
    "Binding",
    "EvalReport",
    "EvalSettings",
    "ProblemResult",
    "Scores",
    "eval_graph",
    "evaluate",
    "pass_at_k",
    "read_report",
    "score",
    "solver_bindings",
    "wilson",
]
