"""Built-in roles (PromptCoT 1.0/2.0) and roles registered at runtime or built from YAML specs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rolegraph.agents.parsers import JUDGE_FORMAT_REGEX, PARSERS
from rolegraph.agents.role import Role
from rolegraph.errors import ConfigError

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"

# name → (parser name, sampling defaults, description)
BUILTINS: dict[str, tuple[str, dict[str, Any], str]] = {
    "concept_extractor": (
        "list",
        {"temperature": 0.3, "max_tokens": 256},
        "k foundational concepts of a seed problem, as a list",
    ),
    "rationale_writer": (
        "rationale",
        {"temperature": 0.7, "max_tokens": 512},
        "a problem-design thinking process from concepts (and the problem, when inferring it: q(z|c,x))",
    ),
    "proposer": (
        "proposal",
        {"temperature": 0.8, "max_tokens": 768},
        "a rationale, then a problem, from concepts and a difficulty level",
    ),
    "problem_writer": (
        "problem",
        {"temperature": 0.7, "max_tokens": 384},
        "a problem from concepts, a difficulty level and a design rationale (PromptCoT 2.0's p(x|z,c))",
    ),
    "solver": (
        "boxed",
        {"temperature": 0.7, "max_tokens": 768},
        "solves a problem; final answer in \\boxed{}",
    ),
    "judge": (
        "verdict",
        # Constrained decoding keeps the rubric parseable whatever the model. An endpoint without vLLM's
        # structured outputs: bind the judge with `sampling: {extra: {structured_outputs: null}}`.
        {
            "temperature": 0.0,
            "max_tokens": 512,
            "extra": {"structured_outputs": {"regex": JUDGE_FORMAT_REGEX}},
        },
        "rates a proposal on PromptCoT 1.0's five criteria; verdict perfect / acceptable / bad",
    ),
    # Absolute Zero (graphs/azr): prompts of the proposer and solver roles; graphs/azr/parse.py parses them.
    "azr_propose_deduction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: a program and an input"),
    "azr_propose_abduction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: a program and an input"),
    "azr_propose_induction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: inputs and a message"),
    "azr_solve_deduction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: the output, R1 format"),
    "azr_solve_abduction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: an input, R1 format"),
    "azr_solve_induction": ("text", {"temperature": 1.0, "max_tokens": 512}, "AZR: the program, R1 format"),
    # CoRT (graphs/cort): the TIR solver continues its own token ids; the graph extracts the \boxed{} answer.
    "cort_solver": (
        "text",
        {"temperature": 0.7, "max_tokens": 1024},
        "CoRT: reasons with ```python cells run in a stateful sandbox session; answer in \\boxed{}",
    ),
}

PREFILL_EXTRA = {"continue_final_message": True, "add_generation_prompt": False}
"""vLLM chat options for continuing a final assistant message."""

_registered: dict[str, Role] = {}


def _read_prompt(path: Path, role: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read prompt file {path} for role '{role}': {exc.strerror or exc}",
            "check the path in the spec or your prompts directory",
        ) from None


def _parser(name: str, role: str) -> Any:
    if name not in PARSERS:
        known = ", ".join(sorted(PARSERS))
        raise ConfigError(f"role '{role}' names unknown parser '{name}'", f"use one of: {known}")
    return PARSERS[name]


def role_from_file(
    name: str, prompt_path: Path | str, parser_name: str, sampling: dict[str, Any] | None = None
) -> Role:
    """A role from a prompt file and a parser name (for YAML graph specs)."""
    path = Path(prompt_path)
    role = Role(
        name=name,
        template=_read_prompt(path, name),
        parser=_parser(parser_name, name),
        sampling=dict(sampling or {}),
        description=f"from {path.name}",
    )
    return with_prefill_sampling(role)


def register_role(role: Role) -> None:
    """Make a role available to `get_role` (replaces a registered or built-in role of the same name)."""
    _registered[role.name] = role


def list_roles() -> list[str]:
    return sorted(set(BUILTINS) | set(_registered))


def get_role(name: str, prompts_dir: Path | None = None) -> Role:
    """A role by name. A `<name>.md` in `prompts_dir` overrides the role's prompt (built-in or registered)."""
    if name in _registered:
        role = _registered[name]
    elif name in BUILTINS:
        parser_name, sampling, description = BUILTINS[name]
        role = Role(
            name=name,
            template=_read_prompt(PROMPTS_DIR / f"{name}.md", name),
            parser=PARSERS[parser_name],
            sampling=dict(sampling),
            description=description,
        )
    else:
        raise ConfigError(f"unknown role '{name}'", f"use one of: {', '.join(list_roles())}, or register it")
    if prompts_dir is not None:
        override = Path(prompts_dir) / f"{name}.md"
        if override.is_file():
            role = replace(role, template=_read_prompt(override, name))
    return with_prefill_sampling(role)


def with_prefill_sampling(role: Role) -> Role:
    """A role whose prompt ends in an assistant prefill asks vLLM to continue that message, not start anew."""
    extra = dict(role.sampling.get("extra") or {})
    if role.prefill:
        extra.update(PREFILL_EXTRA)
    else:
        for key in PREFILL_EXTRA:
            extra.pop(key, None)
    sampling = {k: v for k, v in role.sampling.items() if k != "extra"}
    return replace(role, sampling={**sampling, "extra": extra} if extra else sampling)
