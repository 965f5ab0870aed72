"""Reward hacking through the whole azr graph: a scripted model (a fake endpoint: what is under test is the
judge, not the model) proposes and answers with each hack; the real sandbox validates and judges. Every hack
scores 0 or the invalid penalty, and nothing leaks into later tasks. Also: a sandbox failure gives None."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from rolegraph.environments.sandbox.pool import SandboxPool
from rolegraph.environments.triplets import AZR_POLICY, Judgement, TripletRunner
from rolegraph.errors import SandboxError
from rolegraph.graphs.azr import azr_graph
from rolegraph.graphs.azr.tasks import load_seed_triplets
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from tests.runtime.fakes import FakePool

INVALID = -0.5
EQ_OBJECT = "type('E', (), {'__eq__': lambda s, o: True, '__hash__': lambda s: 0})()"
HACKS: dict[str, tuple[str, str, str]] = {
    # name: (program, input, what the rejection reason says)
    "eq_object": (
        "class E:\n    def __eq__(self, other):\n        return True\ndef f(x):\n    return E()",
        "1",
        "not a plain literal",
    ),
    "escaping_input": ("def f(x):\n    return x", "None) if False else (True", "escapes the call"),
    "patch_builtins": (
        "import builtins\nbuiltins.len = lambda x: 42\ndef f(x):\n    return len(x)",
        "[1]",
        "builtins",
    ),
    "patch_module": (
        "import math\nmath.floor = lambda x: 0\ndef f(x):\n    return math.floor(x)",
        "2.5",
        "patches",
    ),
    "dunder_import": ("def f(x):\n    return __import__('os').sep", "1", "__import__"),
    "importlib": (
        "import importlib\ndef f(x):\n    return importlib.import_module('os').sep",
        "1",
        "importlib",
    ),
    "getattr_builtins": (
        "def f(x):\n    return getattr(__builtins__, '__imp' + 'ort__')('o' + 's').sep",
        "1",
        "getattr",
    ),
    "eval_string": ("def f(x):\n    return eval('__imp' + 'ort__(\"o\" + \"s\")').sep", "1", "eval"),
    "subclasses": (
        "def f(x):\n    return len(().__class__.__base__.__subclasses__())",
        "1",
        "__subclasses__",
    ),
    "random": ("import random\ndef f(x):\n    return random.random()", "1", "random"),
    "time": ("import time\ndef f(x):\n    return time.time()", "1", "time"),
    "id": ("def f(x):\n    return id(x) % 1000003", "[1]", "not deterministic"),
    "object_hash": ("def f(x):\n    return hash(object()) % 1000003", "1", "not deterministic"),
}


def _proposal(program: str, input_text: str) -> str:
    return f"```python\n{program}\n```\n```input\n{input_text}\n```"


def _scripted(texts: list[str]) -> Any:
    """A reply function answering each call with the next of `texts` (n copies)."""
    queue = itertools.cycle(texts)
    return lambda _messages, sampling: [next(queue) for _ in range(sampling.n)]


@pytest.fixture
def runner(bwrap_pool: SandboxPool) -> TripletRunner:
    return TripletRunner(bwrap_pool, policy=AZR_POLICY)


def _run(tmp: Path, runner: Any, pool: FakePool, options: dict[str, Any], n: int, name: str) -> Path:
    async def main() -> None:
        async def provide() -> Any:
            return runner

        graph = azr_graph(provide)
        seed = {"mode": "seed", "seeds": load_seed_triplets(None)}
        await run_graph(graph, pool, RunParams(n=1, options=seed), tmp / "seed", progress=False)
        opts = {"buffer_runs": [str(tmp / "seed")], "rollouts": 2, **options}
        await run_graph(graph, pool, RunParams(n=n, options=opts), tmp / name, progress=False)

    asyncio.run(main())
    return tmp / name


def _by_episode(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per episode: its record and its steps by node."""
    with Store(run_dir, create=False) as store:
        return {
            e.id: {
                "episode": e,
                **{s.node + ("_env" if s.kind == "env" else ""): s for s in store.steps(episode_id=e.id)},
            }
            for e in store.episodes()
        }


def test_every_hacked_proposal_gets_the_invalid_penalty_and_hacked_answers_score_zero(
    tmp_path: Path, runner: TripletRunner
) -> None:
    proposals = [_proposal(p, i) for p, i, _ in HACKS.values()]
    pool = FakePool(
        {"proposer": _scripted(proposals), "solver": _scripted([f"x</think>\n<answer>{EQ_OBJECT}</answer>"])}
    )
    run_dir = _run(tmp_path, runner, pool, {"types": ["deduction"], "batch": len(HACKS)}, len(HACKS), "hacks")
    episodes = _by_episode(run_dir)
    assert len(episodes) == len(HACKS)
    seen = set()
    for found in episodes.values():
        text = found["propose"].choices[0].text
        (name,) = [name for name, (p, i, _) in HACKS.items() if text == _proposal(p, i)]
        seen.add(name)
        episode = found["episode"]
        assert episode.status == "finished" and episode.kept is False, name
        assert HACKS[name][2] in str(episode.reason), (name, episode.reason)
        assert found["propose"].rewards == [{"propose": INVALID}], name
        # The solver got the buffer's task (the zero triplet) and answered with an always-equal object: 0.
        assert found["solve"].rewards == [{"solve": 0.0}], name
    assert seen == set(HACKS)


def test_hacked_abduction_answers_score_zero_and_the_proposal_is_judged_by_them(
    tmp_path: Path, runner: TripletRunner
) -> None:
    answers = ["None) if False else (True", EQ_OBJECT, "__import__('os').getpid()"]
    pool = FakePool(
        {
            "proposer": _scripted([_proposal("def f(x):\n    return x * 2", "21")]),
            "solver": _scripted([f"x</think>\n<answer>{a}</answer>" for a in answers]),
        }
    )
    run_dir = _run(tmp_path, runner, pool, {"types": ["abduction"], "rollouts": 3}, 1, "abduction")
    (found,) = _by_episode(run_dir).values()
    assert found["episode"].kept is True
    assert found["learnability"].rewards == [{"rollout_correct": 0.0}] * 3
    # Solve rate 0: the task is not learnable; r_propose is extreme_reward (0 by default, the paper's choice).
    assert found["propose"].rewards == [{"propose": 0.0}]
    assert found["solve"].rewards == [{"solve": 0.0}]


def test_nothing_a_run_does_leaks_into_later_runs(runner: TripletRunner) -> None:
    # A patch the AST checks do not see (through a list) is a valid task: its run is a fresh fork ...
    hidden = (
        "import math\ndef f(x):\n    box = [math]\n    box[0].floor = lambda v: 0\n    return math.floor(x)"
    )
    assert runner.validate(hidden, "2.5").output == "0"
    # ... so later runs on the same warm workers see the real math.floor and len.
    for _ in range(3):
        assert runner.validate("import math\ndef f(x):\n    return math.floor(x)", "2.5").output == "2"
        assert runner.validate("def f(x):\n    return len(x)", "[1, 2]").output == "2"


class _SandboxDown:
    """A runner provider whose sandbox is down."""

    async def __call__(self) -> TripletRunner:
        raise SandboxError("the sandbox is down", "start it")


class _JudgeDown(TripletRunner):
    """Validates for real; every abduction judgement is an infrastructure failure."""

    async def ajudge_abduction(self, code: str, gold_output: str, predicted_input: str) -> Judgement:
        return Judgement(0.0, False, "sandbox down", infrastructure=True)


def test_sandbox_failures_give_none_never_a_penalty_or_zero(tmp_path: Path, bwrap_pool: SandboxPool) -> None:
    valid = _proposal("def f(x):\n    return x * 2", "21")
    pool = FakePool({"proposer": _scripted([valid]), "solver": _scripted(["x</think>\n<answer>21</answer>"])})
    down = _run(
        tmp_path / "a", _JudgeDown(bwrap_pool, policy=AZR_POLICY), pool, {"types": ["abduction"]}, 1, "r"
    )
    (found,) = _by_episode(down).values()
    assert found["learnability"].rewards == [{"rollout_correct": None}] * 2
    assert found["propose"].rewards == [{"propose": None}] and found["solve"].rewards == [{"solve": None}]

    async def main() -> Path:
        graph = azr_graph(_SandboxDown())
        seed = {"mode": "seed", "seeds": load_seed_triplets(None)}
        await run_graph(graph, pool, RunParams(n=1, options=seed), tmp_path / "b" / "seed", progress=False)
        return tmp_path / "b" / "seed"

    (seeded,) = _by_episode(asyncio.run(main())).values()
    assert seeded["episode"].kept is False and "valid" not in seeded["episode"].metrics
    assert seeded["validate_env"].error_kind == "sandbox"
