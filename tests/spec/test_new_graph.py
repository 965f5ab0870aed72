"""`rolegraph new graph NAME`: the starter is a valid spec; bad names and occupied folders are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegraph.cli.new_cmd import write_starter
from rolegraph.errors import ConfigError
from rolegraph.graphs.registry import check_graph


def test_the_starter_is_a_valid_commented_spec(tmp_path: Path) -> None:
    spec, prompt, inputs = write_starter("my-graph", tmp_path / "g")
    assert check_graph(spec) == []
    text = spec.read_text()
    assert text.startswith("# my-graph: a starter role graph") and "env: math.verify" in text
    assert "{{question}}" in prompt.read_text() and "\\boxed{}" in prompt.read_text()
    assert len(inputs.read_text().splitlines()) == 3


def test_bad_names_and_occupied_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad graph name '1x'"):
        write_starter("1x", tmp_path / "a")
    write_starter("ok", tmp_path / "b")
    with pytest.raises(ConfigError, match="not empty") as err:
        write_starter("ok", tmp_path / "b")
    assert err.value.hint == "pick another --dir, or pass --force"
    assert write_starter("ok", tmp_path / "b", force=True)
