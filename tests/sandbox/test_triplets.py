"""Absolute Zero semantics: validation, typed literals, and reward-hacking attempts that must score 0."""

from __future__ import annotations

import pytest

from rolegraph.environments.policy import Policy
from rolegraph.environments.sandbox.base import Limits, Status
from rolegraph.environments.sandbox.pool import Job, SandboxPool
from rolegraph.environments.triplets import TripletRunner, check_input, check_program, literals_equal

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]

PROGRAM = "def f(xs, k=1):\n    return [x * k for x in xs]"


@pytest.mark.parametrize(
    "text",
    [
        "None) if False else (True",
        "1)(2",
        "1) # ",
        "1), f(2",
        "*[1]) + (2",
        "x=1) or (True",
        "1)\nimport os\n(1",
    ],
)
def test_inputs_that_escape_the_call_are_rejected_on_the_host(text: str) -> None:
    assert check_input(text) is not None


@pytest.mark.parametrize(
    "text", ["[1, 2], key=3", "range(5)", "dict()", "lambda x: x + 1", "'a)b', *[1]", ""]
)
def test_argument_lists_and_expressions_are_accepted(text: str) -> None:
    assert check_input(text) is None


def test_policy_rejects_configured_modules_and_builtins() -> None:
    for code in [
        "import os\ndef f(): pass",
        "from subprocess import run\ndef f(): pass",
        "def f(): return open('x')",
        "def f(): return __import__('os')",
        "def f(): return eval('1')",
        "import importlib.util\ndef f(): pass",
        "def f(): return ().__class__.__subclasses__()",
    ]:
        assert check_program(code) is not None, code
    assert check_program("import math\ndef f(x): return math.sqrt(x)") is None
    assert check_program("def g(): pass") == "program does not define f()"
    assert check_program("import math\ndef f(): pass", Policy(banned_modules=frozenset({"math"}))) is not None


def test_literals_compare_with_types() -> None:
    assert literals_equal("[1, (2, 'a')]", "[1, (2, 'a')]")
    assert not literals_equal("1", "1.0")
    assert not literals_equal("1", "True")
    assert not literals_equal("[1]", "(1,)")
    assert not literals_equal("{1: 2}", "{True: 2}")
    assert not literals_equal("1", "not a literal")


def test_validate_records_output_and_determinism(sandbox_pool: SandboxPool) -> None:
    runner = TripletRunner(sandbox_pool)
    v = runner.validate(PROGRAM, "[1, 2], k=3")
    assert v.valid and v.deterministic and v.output == "[3, 6]"
    # Expression inputs are evaluated inside the sandbox.
    assert runner.validate(PROGRAM, "range(3)").output == "[0, 1, 2]"
    bad = runner.validate("def f(x):\n    return object()", "1")
    assert not bad.valid and "literal" in (bad.error or "")
    nondeterministic = "def f(x):\n    return id(object()) % 1000003 + x"
    assert not runner.validate(nondeterministic, "1").deterministic


def test_judges_score_right_answers(sandbox_pool: SandboxPool) -> None:
    runner = TripletRunner(sandbox_pool)
    assert runner.judge_deduction("[3, 6]", "[3, 6]").score == 1.0
    assert runner.judge_deduction("[3, 6]", "[3.0, 6]").score == 0.0
    assert runner.judge_abduction(PROGRAM, "[3, 6]", "[1, 2], k=3").score == 1.0
    assert runner.judge_abduction(PROGRAM, "[3, 6]", "[1, 2]").score == 0.0
    cases = [("[1, 2], k=3", "[3, 6]"), ("[1], k=5", "[5]")]
    assert runner.judge_induction(PROGRAM, cases).score == 1.0
    half = runner.judge_induction("def f(xs, k=1):\n    return [x * 3 for x in xs]", cases)
    assert half.score == 0.5 and not half.correct


def test_an_eq_overriding_answer_never_scores(sandbox_pool: SandboxPool) -> None:
    runner = TripletRunner(sandbox_pool)
    cheat = """
class Anything:
    def __eq__(self, other):
        return True
    def __repr__(self):
        return "[3, 6]"
def f(xs, k=1):
    return Anything()
"""
    assert runner.judge_induction(cheat, [("[1, 2], k=3", "[3, 6]")]).score == 0.0
    int_cheat = (
        "class I(int):\n    def __eq__(self, o):\n        return True\ndef f(xs, k=1):\n    return I(5)"
    )
    assert runner.judge_induction(int_cheat, [("[1], k=5", "5")]).score == 0.0
    assert runner.judge_abduction(cheat, "[3, 6]", "[1, 2], k=3").score == 0.0


def test_an_input_that_escapes_the_call_never_scores(sandbox_pool: SandboxPool) -> None:
    runner = TripletRunner(sandbox_pool)
    program = "def f(x):\n    return x"
    assert runner.judge_abduction(program, "True", "None) if False else (True").score == 0.0
    assert not runner.validate(program, "None) if False else (True").valid
    # Even sent straight to the worker, the input is re-checked inside the sandbox.
    direct = sandbox_pool.execute(Job(op="call", code=program, input="None) if False else (True"))
    assert direct.status == Status.ERROR and direct.value is None


def test_a_program_that_patches_builtins_cannot_affect_the_next_run(sandbox_image: str) -> None:
    patcher = """
import builtins
builtins.sorted = lambda *a, **k: [42]
builtins.repr = lambda x: "[42]"
def f(xs):
    return sorted(xs)
"""
    honest = "def f(xs):\n    return sorted(xs)"
    for backend in ("docker", "bwrap"):
        with SandboxPool(backend, size=1, limits=Limits(timeout_s=5)) as pool:  # one worker: same process
            runner = TripletRunner(pool, policy=Policy(banned_modules=frozenset()))
            assert runner.validate(patcher, "[3, 1]").output == "[42]"
            assert runner.validate(honest, "[3, 1]").output == "[1, 3]"
            assert runner.judge_abduction(honest, "[42]", "[3, 1]").score == 0.0
