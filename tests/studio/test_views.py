"""Method-specific views, diffs and the live-update version, from records alone."""

from __future__ import annotations

from pathlib import Path

from rolegraph.store import Step, Store
from rolegraph.studio import views
from rolegraph.studio.runs import run_id
from tests.studio.builders import seed_run
from tests.studio.conftest import client_for


def env(request: object, response: object) -> Step:
    return Step(
        id=1,
        episode_id="e",
        attempt=1,
        kind="env",
        node="n",
        role="sandbox",
        request=request,
        response=response,
    )


def test_interpreter_calls_show_code_and_output() -> None:
    view = views.env_view(env({"code": "print(1)"}, {"status": "ok", "stdout": "1\n", "stderr": ""}))
    assert view.kind == "interpreter" and view.fields["code"] == "print(1)" and view.fields["stdout"] == "1\n"
    parts = views.interpreter_segments("let me run\n```python\nprint(1)\n```\n```output\n1\n```\nso 1")
    assert [tool for tool, _ in parts] == [False, True, False] and parts[1][1] == "```output\n1\n```"


def test_absolute_zero_calls_show_the_triplet_and_its_judgment() -> None:
    view = views.env_view(
        env({"program": "def f(x): return x", "input": "3"}, {"valid": True, "output": "3"})
    )
    assert (
        view.kind == "triplet" and view.fields["output"] == "3" and '"valid": true' in view.fields["judgment"]
    )
    assert views.env_view(env({"answers": [1]}, {"majority": 1})).kind == "plain"


def test_word_diff_marks_what_changed() -> None:
    assert views.word_diff("the answer is 5", "the answer is 7") == [
        ("same", "the answer is "),
        ("del", "5"),
        ("ins", "7"),
    ]


def test_version_moves_when_an_episode_finishes(tmp_path: Path) -> None:
    run = seed_run(tmp_path / "live", episodes=2)
    client = client_for(tmp_path)
    before = client.get(f"/runs/{run_id(run)}/version").json()
    with Store(run) as store:
        store.begin_episode("new", {"x": 1})
        store.finish_episode("new", {"x": 1}, kept=True, rewards={"verdict": 1.0})
    after = client.get(f"/runs/{run_id(run)}/version").json()
    assert before["version"] != after["version"] and after["live"] is False


def test_prompt_diffs_keep_only_context_around_changes() -> None:
    long = "word " * 200
    runs = views.word_diff(long + "end", long + "end now", context=20)
    assert runs == [("same", " … d word word word end"), ("ins", " now")]
