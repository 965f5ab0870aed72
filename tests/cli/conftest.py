"""The command line in process: argv in; exit code, stdout and stderr out. No server may start."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    def one_line_error(self, *fragments: str) -> str:
        """Assert exit code 2 and one line `error: ... (fix: ...)` on stderr naming every fragment."""
        lines = self.err.strip().splitlines()
        assert self.code == 2, self
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: ") and "(fix: " in lines[0], lines[0]
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        return lines[0]


Cli = Callable[..., Outcome]


@pytest.fixture(autouse=True)
def no_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fail any test that would start (or attach to) an endpoint; keep adapters and servers in tmp_path."""
    from rolegraph.serving import EndpointPool, launcher

    def launched(*args: object, **kwargs: object) -> None:
        raise AssertionError("a command started an endpoint before checking its inputs")

    monkeypatch.setattr(EndpointPool, "__aenter__", launched)
    monkeypatch.setattr(launcher, "launch_server", launched)
    monkeypatch.setenv("ROLEGRAPH_HOME", str(tmp_path / "home"))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `rolegraph ARGS...` through the console entry point (which turns errors into one line, exit 2)."""
    from rolegraph.cli.app import main

    def run(*args: str | Path) -> Outcome:
        monkeypatch.setattr(sys, "argv", ["rolegraph", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main()
        captured = capsys.readouterr()
        code = info.value.code
        return Outcome(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory that passes for a Hugging Face model (nothing may load it in these tests)."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path
