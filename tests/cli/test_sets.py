"""`--set KEY=VALUE`: YAML scalars, checked against the graph's options model."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel, ConfigDict

from rolegraph.cli.run_cmd import parse_sets
from rolegraph.errors import ConfigError
from rolegraph.graphs.registry import get_graph


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def test_values_are_yaml_scalars_and_checked_by_the_graph() -> None:
    promptcot = get_graph("promptcot")
    sets = ["k=4", "use_embeddings=false", "accept_verdicts=[perfect]", "difficulty=AMC 12"]
    assert parse_sets(sets, promptcot) == {
        "k": 4,
        "use_embeddings": False,
        "accept_verdicts": ["perfect"],
        "difficulty": "AMC 12",
    }
    with pytest.raises(ConfigError) as info:
        parse_sets(["k=4", "temprature=0.3"], promptcot)
    assert info.value.message == "graph 'promptcot' has no option 'temprature'"
    assert info.value.hint is not None and "concept_temperature" in info.value.hint


def test_a_graph_without_an_options_model_takes_any_key_and_an_empty_one_takes_none() -> None:
    promptcot = get_graph("promptcot")
    assert parse_sets(["anything=1"], dataclasses.replace(promptcot, options=None)) == {"anything": 1}
    strict = dataclasses.replace(promptcot, options=NoOptions)
    assert parse_sets([], strict) == {}
    with pytest.raises(ConfigError, match="no option 'k'") as info:
        parse_sets(["k=1"], strict)
    assert info.value.hint == "drop --set: 'promptcot' takes no options"
