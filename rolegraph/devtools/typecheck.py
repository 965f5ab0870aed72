"""Run mypy over the installed package layout.

mypy cannot follow pyproject's package-dir mapping (agents/ → rolegraph.agents, …), so this builds a link tree
in .typecheck/rolegraph that mirrors the installed layout and checks that instead.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = ("agents", "graphs", "environments", "trainers")


def build_link_tree(root: Path = ROOT) -> Path:
    tree = root / ".typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "rolegraph"
    package.mkdir(parents=True)
    for child in (root / "rolegraph").iterdir():
        if child.name != "__pycache__":
            (package / child.name).symlink_to(child)
    for name in MAPPED:
        (package / name).symlink_to(root / name)
    return tree


def main() -> int:
    tree = build_link_tree()
    cmd = [sys.executable, "-m", "mypy", str(tree / "rolegraph"), *sys.argv[1:]]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
