"""Episode listings in SQL: filters, sort, pagination and one-line errors for bad parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegraph.errors import ConfigError
from rolegraph.studio.queries import EpisodeFilter, RunQueries
from tests.studio.builders import seed_run


@pytest.fixture
def queries(tmp_path: Path) -> RunQueries:
    seed_run(tmp_path / "run", episodes=9, texts=['alpha "quoted"\nline', "beta 100%_done", "gamma"])
    return RunQueries(tmp_path / "run")


def ids(queries: RunQueries, **query: str) -> list[str]:
    return [row.id for row in queries.episodes(EpisodeFilter.from_query(query)).rows]


def test_filters_select_the_right_episodes(queries: RunQueries) -> None:
    assert len(ids(queries)) == 9
    assert ids(queries, status="failed") == ["0-00002-ep", "0-00005-ep", "0-00008-ep"]
    assert ids(queries, kept="yes") == [
        "0-00000-ep",
        "0-00001-ep",
        "0-00003-ep",
        "0-00004-ep",
        "0-00006-ep",
        "0-00007-ep",
    ]
    assert ids(queries, model="solver-v2") == ["0-00001-ep", "0-00003-ep", "0-00005-ep", "0-00007-ep"]
    assert ids(queries, role="judge") == []
    assert ids(queries, node="solve", role="solver", error_kind="endpoint_down") == [
        "0-00002-ep",
        "0-00005-ep",
        "0-00008-ep",
    ]
    # an episode's reward, or the mean of its steps' rewards of that name
    assert ids(queries, reward="verdict", rmin="0.4", rmax="0.6") == [
        "0-00001-ep",
        "0-00004-ep",
        "0-00007-ep",
    ]
    assert len(ids(queries, reward="majority", rmin="0.5", rmax="0.5")) == 9


def test_search_matches_text_as_written_not_as_stored(queries: RunQueries) -> None:
    # the store keeps JSON (quotes and newlines escaped); LIKE's own wildcards in the query are literal
    assert ids(queries, q='"quoted"\nLINE') == ["0-00000-ep", "0-00003-ep", "0-00006-ep"]
    assert ids(queries, q="100%_") == ["0-00001-ep", "0-00004-ep", "0-00007-ep"]
    assert ids(queries, q="10_%") == []


def test_sort_and_pages(queries: RunQueries) -> None:
    flt = EpisodeFilter.from_query({"reward": "verdict", "sort": "reward", "desc": "1"})
    rewards = [row.reward for row in queries.episodes(flt).rows]
    assert rewards[:3] == [1.0, 1.0, 1.0] and rewards[-3:] == [None, None, None]
    first = queries.episodes(EpisodeFilter.from_query({"sort": "id"}), page_size=4)
    last = queries.episodes(EpisodeFilter.from_query({"sort": "id", "page": "3"}), page_size=4)
    assert (first.total, first.pages, len(first.rows), len(last.rows)) == (9, 3, 4, 1)
    assert last.rows[0].id == "0-00008-ep"
    assert first.rows[0].tokens == 12 + 8 + 12 + 16 and first.rows[0].steps == 2


def test_facets_and_totals(queries: RunQueries) -> None:
    facets = queries.facets()
    assert facets.roles == ["proposer", "solver"]
    assert facets.models == ["smollm2-135m-instruct", "solver-v2"]
    assert facets.error_kinds == ["endpoint_down"] and facets.rewards == ["majority", "verdict"]
    totals = queries.totals()
    assert (totals.episodes, totals.kept, totals.failed, totals.acceptance) == (9, 6, 3, 1.0)


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"sort": "colour"}, "sort by one of"),
        ({"rmin": "high"}, "give rmin as"),
        ({"page": "0"}, "page=1 or more"),
        ({"rmin": "0.5"}, "pick the reward by name"),
        ({"status": "done"}, "use running, finished or failed"),
    ],
)
def test_bad_parameters_name_the_fix(query: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EpisodeFilter.from_query(query)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_reader_never_blocks_a_writer(tmp_path: Path) -> None:
    from rolegraph.store import Store

    run = seed_run(tmp_path / "run", episodes=2)
    queries = RunQueries(run)
    queries.episodes(EpisodeFilter())
    assert queries.totals().running == 0
    with Store(run) as writer:  # a write while the studio's connection is open
        writer.begin_episode("late", {"x": 1})
    assert "late" in ids(queries)
    assert queries.totals().running == 1  # cached totals are dropped once a writer commits
