"""The studio's pages in process: what they show, what they refuse, and how they guard access."""

from __future__ import annotations

import re
from pathlib import Path

from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig
from rolegraph.studio.runs import run_id
from tests.studio.builders import HOSTILE, seed_run
from tests.studio.conftest import client_for


def test_runs_page_lists_each_run_with_counts_and_training(seeded: Path) -> None:
    page = client_for(seeded).get("/")
    assert page.status_code == 200
    row = page.text.split('class="run-row"')[1]
    cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row)
    assert cells == ["7", "5", "0", "2", "336", "100%"]
    assert "grpo #1" in row and "proposer v1" in row


def test_episode_list_filters_sorts_and_refuses_bad_input(seeded: Path) -> None:
    client = client_for(seeded)
    rid = run_id(seeded / "hostile")
    assert client.get(f"/runs/{rid}").text.count('class="episode-row"') == 7
    failed = client.get(f"/runs/{rid}?status=failed&sort=tokens&desc=1")
    assert failed.text.count('class="episode-row"') == 2 and "endpoint_down" in failed.text
    bad = client.get(f"/runs/{rid}?sort=colour")
    assert bad.status_code == 400 and "sort by one of" in bad.text
    assert client.get("/runs/nope").status_code == 400


def test_hostile_text_is_escaped_and_controls_made_visible(seeded: Path) -> None:
    client = client_for(seeded)
    rid = run_id(seeded / "hostile")
    html = "".join(client.get(f"/runs/{rid}/episode?id=0-0000{i}-ep").text for i in range(5))
    assert "<script>window" not in html and "&lt;script&gt;window" in html
    assert "<img src=x" not in html and "id=broken" not in html.replace("id=broken&gt;", "")
    assert "\x1b" not in html and "\\x1b[31m" in html and "\\u202e" in html


def test_episode_page_highlights_the_path_and_numbers_visits(seeded: Path) -> None:
    rid = run_id(seeded / "hostile")
    html = client_for(seeded).get(f"/runs/{rid}/episode?id=0-00000-ep").text
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert re.search(r'data-node="propose">.*?#1</text>', svg) and re.search(
        r'data-node="solve">.*?#2</text>', svg
    )
    assert 'data-node="judge"><rect' in svg.replace("\n", "")  # never visited: left as drawn
    assert 'class="fork"' not in html  # steps without a LangGraph task id cannot be forked


def test_training_and_compare_pages(tmp_path: Path) -> None:
    seed_run(tmp_path / "a", episodes=6)
    seed_run(tmp_path / "b", episodes=3)
    client = client_for(tmp_path)
    training = client.get(f"/runs/{run_id(tmp_path / 'a')}/training").text
    assert training.count("<polyline") == 2 and ">loss</figcaption>" in training
    compare = client.get(f"/compare?a={run_id(tmp_path / 'a')}&b={run_id(tmp_path / 'b')}").text
    assert "on the 2 inputs both runs have" in compare
    assert re.findall(r'class="accuracy">([^<]*)<', compare) == ["1", "1"]


def test_loopback_studio_refuses_other_host_names(seeded: Path) -> None:
    client = client_for(seeded)
    assert client.get("/", headers={"host": "evil.example:8765"}).status_code == 403
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


def test_other_addresses_need_the_token(seeded: Path) -> None:
    client = client_for(seeded, host="0.0.0.0")
    token = client.app.user_middleware[0].kwargs["access"].token  # type: ignore[attr-defined]
    assert token and client.get("/").status_code == 403
    moved = client.get(f"/?token={token}", follow_redirects=False)
    assert moved.status_code == 303 and "token" not in moved.headers["location"]
    assert client.get("/").status_code == 200  # the cookie carries it from now on
    client.cookies.clear()
    assert client.get("/?token=wrong").status_code == 403


def test_fork_needs_the_page_csrf_token_and_same_origin(seeded: Path) -> None:
    client = client_for(seeded)
    rid = run_id(seeded / "hostile")
    form = {"episode": "0-00000-ep", "step": "1"}
    assert client.post(f"/runs/{rid}/fork", data=form).status_code == 403
    token = client.app.user_middleware[0].kwargs["access"].csrf  # type: ignore[attr-defined]
    cross = client.post(
        f"/runs/{rid}/fork", data={**form, "csrf": token}, headers={"origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    allowed = client.post(f"/runs/{rid}/fork", data={**form, "csrf": token})
    assert allowed.status_code == 400 and "recorded no endpoints to fork on" in allowed.text


def test_models_endpoint_says_which_endpoint_is_down_and_how_to_start_it(seeded: Path) -> None:
    dead = RolegraphConfig(
        endpoints={"gpu-box": EndpointConfig(base_url="http://127.0.0.1:9/v1")},
        roles={"proposer": RoleBinding(endpoint="gpu-box")},
    )
    client = client_for(seeded, config=dead)
    answer = client.get(f"/runs/{run_id(seeded / 'hostile')}/models?role=proposer")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert "endpoint 'gpu-box' at http://127.0.0.1:9/v1 is down" in error and "(fix: start it" in error


def test_huge_and_many_texts_are_cut(tmp_path: Path) -> None:
    seed_run(tmp_path / "big", episodes=1, texts=["y" * 300_000])
    html = client_for(tmp_path).get(f"/runs/{run_id(tmp_path / 'big')}/episode?id=0-00000-ep").text
    assert "200000 more characters not shown" in html and len(html) < 400_000
    assert HOSTILE  # the shared corpus stays importable for the browser tests
