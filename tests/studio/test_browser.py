"""The studio in a real headless Chromium, served by the real `studio` command: hostile completions never
run and never break the layout; a real promptcot episode is listed, filtered, opened, forked and compared."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.promptcot.graph import PROMPTCOT
from rolegraph.graphs.runtime import run_graph
from rolegraph.store import Store
from tests.studio.builders import HOSTILE
from tests.studio.conftest import StudioServer

EDIT = "Make the problem about prime numbers."


def _open(browser: Any) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return page, dialogs


def _usable(page: Any) -> None:
    """Nothing ran, no markup escaped its box, and the page does not scroll sideways."""
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("document.getElementById('broken')") is None
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_hostile_completions_never_run(
    seeded: Path, studio_server: StudioServer, browser: Any, artifacts: Path
) -> None:
    url = studio_server(str(seeded))
    page, dialogs = _open(browser)
    page.goto(url)
    with page.expect_navigation():
        page.click("#runs .run-row a")
    assert page.locator(".episode-row").count() == 7
    page.select_option("select[name=status]", "failed")
    with page.expect_navigation():
        page.click("#apply")
    assert "status=failed" in page.url and page.locator(".episode-row").count() == 2
    listing = page.url.split("?")[0]
    for index in range(len(HOSTILE)):
        page.goto(f"{listing}/episode?id=0-0000{index}-ep")
        _usable(page)
        completion = page.locator(".step .completion").first
        shown = HOSTILE[index].replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\u202e", "\\u202e")
        assert completion.inner_text()[:200] == shown[:200]  # shown as text, exactly
        box = completion.bounding_box()
        assert box is not None and box["width"] <= 1280 and box["height"] <= 28 * 16 + 40
        page.screenshot(path=str(artifacts / f"hostile-{index}.png"), full_page=False)
    assert dialogs == []


@pytest.fixture(scope="module")
def promptcot_run(rg_config: RolegraphConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real promptcot episode on the test server, tiny generations."""
    root = tmp_path_factory.mktemp("studio-runs")
    options = {"seed_limit": 1, "k": 2, "max_tokens": 48, "use_embeddings": False}  # room for a concept list
    run = run_graph(PROMPTCOT, rg_config, RunParams(n=1, options=options), root / "promptcot", progress=False)
    # Playwright's sync API holds this thread's event loop: run the graph on a loop of its own
    with ThreadPoolExecutor(1) as worker:
        worker.submit(asyncio.run, run).result()
    return root


@pytest.mark.vllm
def test_fork_a_real_episode_in_the_browser(
    promptcot_run: Path, studio_server: StudioServer, browser: Any, artifacts: Path
) -> None:
    url = studio_server(str(promptcot_run))
    page, dialogs = _open(browser)
    page.goto(url)
    page.screenshot(path=str(artifacts / "runs.png"))
    with page.expect_navigation():
        page.click("#runs .run-row a")
    page.select_option("select[name=status]", "finished")
    with page.expect_navigation():
        page.click("#apply")
    assert page.locator(".episode-row").count() == 1
    page.screenshot(path=str(artifacts / "episodes.png"))
    with page.expect_navigation():
        page.locator(".episode-row a").first.click()
    assert page.locator("svg.rolegraph text.visit").count() >= 3  # propose, solve, judge, decide numbered
    page.screenshot(path=str(artifacts / "episode.png"), full_page=True)

    # the episode's last role step: the replay from there is the shortest (the fewest calls on the server)
    step = page.locator("article.step", has=page.locator("details.fork")).last
    step.locator("details.fork > summary").click()
    page.wait_for_function("document.querySelector('.model-select').options.length >= 1")
    (field,) = step.locator("input[name^=role_][value=user]").evaluate_all(
        "els => els.map(e => e.name.replace('role_', 'content_'))"
    )
    user = step.locator(f"textarea[name={field}]")
    user.fill(user.input_value() + "\n" + EDIT)
    sampling = step.locator("textarea[name=sampling]")
    sampling.fill(re.sub(r'"max_tokens": \d+', '"max_tokens": 12', sampling.input_value()))
    with page.expect_navigation(url="**/branch?**", timeout=240_000):
        step.locator("button.fork-submit").click(timeout=240_000)
    assert page.locator("#diff pre.diff").count() >= 1
    assert page.locator("#rewards .reward-row").count() >= 1
    assert EDIT in page.locator("#side-by-side .side").nth(1).inner_text()
    page.screenshot(path=str(artifacts / "branch.png"), full_page=True)
    assert dialogs == []

    run_dir = promptcot_run / "promptcot"
    with Store(run_dir / "forks", create=False) as forks:
        (branch,) = forks.episodes()
        steps = forks.steps(episode_id=branch.id)
    assert branch.id.endswith("~1") and branch.status in ("finished", "failed")
    link = steps[0]
    assert link.kind == "env" and link.role == "fork" and link.request["parent_episode"] == branch.id[:-2]
    replayed = next(s for s in steps if s.kind == "role")
    assert (replayed.node, replayed.role) == (link.request["node"], link.request["role"])
    assert EDIT in next(m["content"] for m in replayed.messages if m["role"] == "user")
    assert replayed.sampling["max_tokens"] == 12
    assert replayed.model and replayed.error is None
    if branch.status == "finished":
        assert "verdict" in branch.rewards  # judged again by the graph's outcome
    with Store(run_dir, create=False) as original:
        assert len(original.episodes()) == 1  # the original run is never written
