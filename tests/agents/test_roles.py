"""Roles: rendering prompt files, overrides, prefills and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolegraph.agents.registry import get_role, list_roles, register_role, role_from_file
from rolegraph.agents.role import Role
from rolegraph.errors import ConfigError, ParseError


def test_builtin_roles_render_with_their_variables() -> None:
    assert {"concept_extractor", "rationale_writer", "proposer", "problem_writer", "solver", "judge"} <= set(
        list_roles()
    )
    messages = get_role("solver").render({"problem": r"Find $\frac{a}{b}$."})
    assert [m["role"] for m in messages] == ["system", "user"]
    assert r"Find $\frac{a}{b}$." in messages[1]["content"]
    assert r"\boxed{}" in messages[1]["content"]  # literal braces survive


def test_rationale_writer_optional_problem() -> None:
    role = get_role("rationale_writer")
    without = role.render({"concepts": ["Ratios", "Primes"], "difficulty": "AMC"})[1]["content"]
    with_problem = role.render({"concepts": ["Ratios"], "difficulty": "AMC", "problem": "What is 2+2?"})[1][
        "content"
    ]
    assert "1. Ratios\n2. Primes" in without
    assert "What is 2+2?" not in without and "Reverse-engineer" not in without
    assert "What is 2+2?" in with_problem and "Reverse-engineer" in with_problem


def test_missing_variable_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="needs variable 'problem'") as info:
        get_role("solver").render({})
    assert "\n" not in str(info.value)


def test_prefill_is_sent_and_parsed() -> None:
    proposer = get_role("proposer")
    messages = proposer.render({"concepts": ["a"], "difficulty": "easy"})
    assert messages[-1] == {"role": "assistant", "content": "## Rationale\n"}
    assert proposer.sampling["extra"]["continue_final_message"] is True
    parsed = proposer.parse("Mix them.\n## Problem\nWhat is 1+1?")
    assert parsed == {"rationale": "Mix them.", "problem": "What is 1+1?"}


def test_prompts_dir_overrides_builtin(tmp_path: Path) -> None:
    (tmp_path / "solver.md").write_text("Just answer: {{problem}}")
    role = get_role("solver", prompts_dir=tmp_path)
    assert role.render({"problem": "1+1"}) == [{"role": "user", "content": "Just answer: 1+1"}]
    assert role.parse(r"\boxed{2}")["answer"] == "2"
    assert "extra" not in role.sampling


def test_unknown_role_and_parser(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown role 'nope'"):
        get_role("nope")
    prompt = tmp_path / "critic.md"
    prompt.write_text("Critique {{text}}")
    with pytest.raises(ConfigError, match="unknown parser 'yaml'"):
        role_from_file("critic", prompt, "yaml", {})
    with pytest.raises(ConfigError, match="cannot read prompt file"):
        role_from_file("critic", tmp_path / "missing.md", "text", {})


def test_role_from_file_and_register(tmp_path: Path) -> None:
    prompt = tmp_path / "critic.md"
    prompt.write_text("<!-- system -->\nBe terse.\n<!-- user -->\nCritique {{text}}")
    role = role_from_file("critic_test", prompt, "verdict", {"temperature": 0.0})
    register_role(role)
    got = get_role("critic_test")
    assert got.render({"text": "x"})[1]["content"] == "Critique x"
    assert got.sampling == {"temperature": 0.0}
    with pytest.raises(ParseError, match="critic_test"):
        got.parse("no ratings here")


def test_parser_bug_becomes_parse_error() -> None:
    def broken(text: str) -> dict[str, object]:
        raise KeyError("oops")

    role = Role(name="broken", template="{{x}}", parser=broken)
    with pytest.raises(ParseError, match="parser failed"):
        role.parse("anything")
