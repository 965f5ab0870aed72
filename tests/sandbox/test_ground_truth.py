"""Ground truth from real data: every CRUXEval triple reproduces, every HumanEval solution passes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from rolegraph.environments.code_tests import CodeTester, humaneval_case
from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.environments.triplets import TripletRunner, literals_equal
from tests.data import shared_file

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]


def _rows(name: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in shared_file(name).read_text().splitlines() if line.strip()]


def test_every_cruxeval_triple_validates_and_matches(sandbox_pool: SandboxPool) -> None:
    rows = _rows("cruxeval_dev.jsonl")
    assert len(rows) == 400
    validations = TripletRunner(sandbox_pool).validate_many([(r["code"], r["input"]) for r in rows])
    failures = [
        (r["id"], v.error)
        for r, v in zip(rows, validations, strict=True)
        if not (v.valid and v.deterministic and literals_equal(v.output, r["output"]))
    ]
    assert failures == []
    # A mutated expected output no longer matches.
    assert not literals_equal(validations[0].output, rows[0]["output"].replace("4", "5", 1))


def test_every_humaneval_canonical_solution_passes(docker_pool: SandboxPool) -> None:
    problems = _rows("humaneval_dev.jsonl")
    results = CodeTester(docker_pool).run_many([humaneval_case(p) for p in problems])
    failed = [(p["task_id"], r.error) for p, r in zip(problems, results, strict=True) if not r.passed]
    assert failed == []


def test_wrong_or_early_exiting_solutions_fail(docker_pool: SandboxPool) -> None:
    problem = _rows("humaneval_dev.jsonl")[0]
    tester = CodeTester(docker_pool)
    assert not tester.run(humaneval_case(problem, "    return None\n")).passed
    assert not tester.run(humaneval_case(problem, "    import sys\n    sys.exit(0)\n")).passed
    canonical = humaneval_case(problem)
    assert tester.run(canonical).passed
    assert not tester.run(replace(canonical, program="import os\nos._exit(0)\n" + canonical.program)).passed
