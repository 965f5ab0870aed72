"""A role: a prompt template file, an output parser and sampling defaults. It knows nothing of graphs.

Prompt files are Markdown. `<!-- system -->` and `<!-- user -->` marker lines split a file into chat
messages (without markers the whole file is the user message). A final `<!-- assistant -->` part is a prefill:
the model continues it (see `Role.prefill`). `{{name}}` inserts a variable (lists become numbered
lines); `{{#name}}…{{/name}}` keeps its text only when `name` is given and non-empty. Plain braces and `$` are
left alone, so LaTeX like `\\boxed{}` needs no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rolegraph.errors import ConfigError, ParseError

_MARKER = re.compile(r"^[ \t]*<!--\s*(system|user|assistant)\s*-->[ \t]*$", re.MULTILINE | re.IGNORECASE)
_SECTION = re.compile(r"\{\{#\s*(\w+)\s*\}\}(.*?)\{\{/\s*\1\s*\}\}", re.DOTALL)
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def format_value(value: Any) -> str:
    """How a variable appears in a prompt: lists as numbered lines, everything else as `str`."""
    if isinstance(value, list | tuple):
        return "\n".join(f"{i}. {item}" for i, item in enumerate(value, 1))
    return str(value)


def template_variables(template: str) -> tuple[set[str], set[str]]:
    """(required, optional) variable names of a template."""
    optional = {m.group(1) for m in _SECTION.finditer(template)}
    outside = _SECTION.sub("", template)
    required = {m.group(1) for m in _VARIABLE.finditer(outside)}
    return required, optional


def split_messages(template: str) -> list[tuple[str, str]]:
    """(chat role, text) parts of a template, in file order."""
    parts = _MARKER.split(template)
    if len(parts) == 1:
        return [("user", template.strip())]
    messages = [(parts[i].lower(), parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return [(who, text) for who, text in messages if text]


@dataclass(frozen=True)
class Role:
    name: str
    template: str
    """The prompt file's text."""
    parser: Callable[[str], dict[str, Any]]
    sampling: dict[str, Any] = field(default_factory=dict)
    """Sampling defaults (temperature, max_tokens, …); the config binding and the call override them."""
    description: str = ""

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages with the variables filled in; a missing required variable is a ConfigError."""

        def section(match: re.Match[str]) -> str:
            value = variables.get(match.group(1))
            return match.group(2) if value not in (None, "", [], ()) else ""

        def variable(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables or variables[name] is None:
                given = ", ".join(sorted(variables)) or "none"
                raise ConfigError(
                    f"prompt of role '{self.name}' needs variable '{name}' (given: {given})",
                    f"pass '{name}' in the node's variables or remove {{{{{name}}}}} from the prompt file",
                )
            return format_value(variables[name])

        messages = []
        for who, text in split_messages(self.template):
            if who == "assistant" and text == self.prefill.rstrip("\n"):
                messages.append({"role": who, "content": text + "\n"})
                continue
            filled = _VARIABLE.sub(variable, _SECTION.sub(section, text))
            messages.append({"role": who, "content": re.sub(r"\n{3,}", "\n\n", filled).strip()})
        return messages

    @property
    def prefill(self) -> str:
        """The start of the answer the prompt writes for the model (a final `<!-- assistant -->` part without
        variables); the model continues it, and the parser sees it in front of the completion."""
        parts = split_messages(self.template)
        if parts and parts[-1][0] == "assistant" and len(parts) > 1 and "{{" not in parts[-1][1]:
            return parts[-1][1] + "\n"
        return ""

    def parse(self, text: str) -> dict[str, Any]:
        """The parser's fields; any failure is a ParseError naming the role."""
        try:
            return self.parser(self.prefill + text if isinstance(text, str) else text)
        except ParseError as exc:
            raise ParseError(f"{self.name}: {exc.message}", exc.hint) from None
        except Exception as exc:  # a parser bug must not crash a run; it is recorded like bad output
            raise ParseError(f"{self.name}: parser failed ({type(exc).__name__}: {exc})") from None
