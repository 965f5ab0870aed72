"""An AST policy for model-written programs: which modules and builtins they may not use.

The policy is about task semantics (a proposed program must be deterministic and self-contained), not about
safety: every program still runs in a sandbox. It only parses; it never runs anything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from rolegraph.environments.pyparse import parse_module

DEFAULT_BANNED_MODULES = frozenset(
    {
        "os",
        "sys",
        "subprocess",
        "socket",
        "shutil",
        "threading",
        "multiprocessing",
        "random",
        "time",
        "datetime",
        "importlib",
    }
)
DEFAULT_BANNED_NAMES = frozenset({"open", "exec", "eval", "__import__", "compile", "input", "breakpoint"})
DEFAULT_BANNED_ATTRIBUTES = frozenset(
    {"__builtins__", "__globals__", "__subclasses__", "__code__", "__closure__", "__import__"}
)


@dataclass(frozen=True)
class Policy:
    """Configured bans. A module ban covers its submodules (`os` bans `os.path`)."""

    banned_modules: frozenset[str] = DEFAULT_BANNED_MODULES
    banned_names: frozenset[str] = DEFAULT_BANNED_NAMES
    banned_attributes: frozenset[str] = DEFAULT_BANNED_ATTRIBUTES

    def violations(self, tree: ast.AST) -> list[str]:
        """Every use of a banned module, builtin or attribute in `tree`, as short messages."""
        found: list[str] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [f"imports {a.name}" for a in node.names if self._banned_module(a.name)]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module and self._banned_module(node.module):
                    found.append(f"imports {node.module}")
            elif isinstance(node, ast.Name) and node.id in self.banned_names:
                found.append(f"uses {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in self.banned_attributes:
                found.append(f"uses .{node.attr}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in self.banned_names
            ):
                found.append(f"names {node.value!r}")  # getattr(builtins, "eval") and friends
        return sorted(set(found))

    def check_source(self, source: str) -> list[str]:
        """Violations in `source`, or one message when it does not parse."""
        try:
            tree = parse_module(source)
        except (SyntaxError, ValueError) as exc:
            return [f"does not parse: {exc}"]
        return self.violations(tree)

    def _banned_module(self, name: str) -> bool:
        return name.split(".")[0] in self.banned_modules or name in self.banned_modules


DEFAULT_POLICY = Policy()
