"""The `rolegraph sandbox` command line: JSON out, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rolegraph.environments.sandbox.image import build_image, image_exists, image_tag
from rolegraph.environments.sandbox.selection import resolve_backend

pytestmark = [pytest.mark.docker, pytest.mark.bwrap]
CLI = [sys.executable, "-m", "rolegraph.cli.app"]


def rolegraph(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    code = "from rolegraph.cli.app import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], input=stdin, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("backend", ["docker", "bwrap"])
def test_run_prints_one_json_line(sandbox_image: str, backend: str, tmp_path: Path) -> None:
    program = tmp_path / "p.py"
    program.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    proc = rolegraph("sandbox", "run", "--backend", backend, str(program))
    assert proc.returncode == 0
    result = json.loads(proc.stdout)
    assert result == {**result, "status": "error", "stdout": "out\n", "stderr": "err\n", "exit_code": 3}
    assert set(result) == {"status", "stdout", "stderr", "exit_code", "duration_s"}
    timed = json.loads(rolegraph("sandbox", "run", "--timeout", "1", "-", stdin="while True: pass").stdout)
    assert timed["status"] == "timeout"


def test_run_reports_bad_input_in_one_line() -> None:
    proc = rolegraph("sandbox", "run", "/no/such/program.py")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "program file not found" in proc.stderr
    bad = rolegraph("sandbox", "run", "--backend", "nope", "-", stdin="pass")
    assert bad.returncode == 2 and "unknown sandbox backend" in bad.stderr


def test_unsafe_local_warns_on_every_run() -> None:
    proc = rolegraph("sandbox", "run", "--backend", "unsafe-local", "-", stdin="print(6 * 7)")
    assert proc.returncode == 0 and json.loads(proc.stdout)["stdout"] == "42\n"
    assert "WITHOUT isolation" in proc.stderr


def test_triplets_command(sandbox_image: str, tmp_path: Path) -> None:
    lines = [
        {"id": "ok", "code": "def f(x):\n    return x * 2", "input": "21", "output": "42"},
        {"id": "wrong", "code": "def f(x):\n    return x * 2", "input": "21", "output": "42.0"},
        {
            "id": "hack",
            "code": "def f(x):\n    return x",
            "input": "None) if False else (True",
            "output": "True",
        },
        {"id": "noout", "code": "def f(x):\n    return [x]", "input": "range(2)"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    proc = rolegraph("sandbox", "triplets", str(path))
    assert proc.returncode == 0
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == ["ok", "wrong", "hack", "noout", None]
    assert out[0] == {
        "id": "ok",
        "valid": True,
        "output": "42",
        "deterministic": True,
        "matches": True,
        "error": None,
    }
    assert out[1]["matches"] is False
    assert out[2]["valid"] is False and out[2]["matches"] is False
    assert out[3]["output"] == "[range(0, 2)]" or out[3]["valid"] is False
    assert out[4]["valid"] is False and "not valid JSON" in out[4]["error"]


def test_doctor_reports_every_backend(sandbox_image: str) -> None:
    proc = rolegraph("sandbox", "doctor")
    reports = {r["backend"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert reports["docker"]["works"] and reports["bwrap"]["works"]
    assert set(reports) == {"docker", "bwrap", "unsafe-local"}


def test_image_build_is_idempotent_and_auto_picks_docker(sandbox_image: str) -> None:
    assert sandbox_image == image_tag() and image_exists(sandbox_image)
    assert build_image() == sandbox_image  # a second build finds the tag and does nothing
    proc = rolegraph("sandbox", "build-image")
    assert proc.returncode == 0 and proc.stdout.strip() == sandbox_image
    assert resolve_backend("auto").name == "docker"
