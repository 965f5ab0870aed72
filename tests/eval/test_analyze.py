"""`rolegraph analyze`: funnel, diversity (real MiniLM embeddings) and difficulty (real server), with its
plots, HTML report and tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from rolegraph.cli import analyze_cmd
from rolegraph.errors import ConfigError
from rolegraph.eval.diversity import cosine_distances, diversity, mds_2d
from rolegraph.eval.funnel import read_funnel
from tests.eval.runs import math500, promptcot_run
from tests.fixtures.serving import VLLMServer


def cli() -> typer.Typer:
    app = typer.Typer()
    analyze_cmd.register(app)
    app.command("unused")(lambda: None)  # two commands keep typer's subcommand syntax
    return app


def test_funnel_counts_stages_and_groups_reasons(tmp_path: Path) -> None:
    funnel = read_funnel(promptcot_run(tmp_path / "run", kept=3, rejected=3, failed=1))
    assert funnel.stages == {"proposed": 7, "valid": 6, "judged": 6, "kept": 3}
    assert funnel.reasons == {"judge verdict bad (accepted: perfect)": 2, "agreement # < #": 1}
    assert funnel.failures == {"endpoint_down": 1}


def test_diversity_counts_near_duplicates_and_mds_keeps_distances() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 8))
    copy = np.vstack([base[:2], base[:2] + 1e-4])  # two near-duplicate pairs, both near the first set
    div = diversity(["a", "b"], [base, copy])
    assert div.sets[0].near_duplicates == 0 and div.sets[1].near_duplicates == 2
    assert div.sets[1].near_first == 4 and div.mean_distances[0, 0] == 0.0
    points = np.array([[0, 0], [3, 0], [0, 4]], dtype=float)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    coords = mds_2d(distances)
    assert np.allclose(np.linalg.norm(coords[:, None] - coords[None], axis=-1), distances, atol=0.05)
    assert cosine_distances(base, base).diagonal() == pytest.approx(0.0, abs=1e-6)


def test_analyze_writes_plots_report_and_tables(tmp_path: Path, vllm_server: VLLMServer) -> None:
    run = promptcot_run(tmp_path / "run", kept=2, rejected=1, failed=0)
    against = tmp_path / "math.jsonl"
    against.write_text("".join(json.dumps(row) + "\n" for row in math500(2)))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"endpoints": {"local": {"base_url": vllm_server.base_url}}}))
    out = tmp_path / "out"
    command = [
        "analyze", str(run), "--against", str(against), "--solver", "local", "--config", str(config),
        "--out", str(out), "--samples", "1", "--max-tokens", "16",
    ]  # fmt: skip
    result = CliRunner().invoke(cli(), command)
    assert result.exit_code == 0, result.output
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"difficulty.png", "diversity_mds.png", "pairwise_distances.png", "funnel.png"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "Difficulty" in html and "math" in html
    for title in ("difficulty", "funnel", "diversity"):
        assert title in result.output
    summaries = [
        json.loads((out / "difficulty" / name / "eval_summary.json").read_text()) for name in ("run", "math")
    ]
    assert [s["bindings"][0]["problems"] for s in summaries] == [2, 2]


def test_analyze_without_solver_or_kept_problems(tmp_path: Path) -> None:
    run = promptcot_run(tmp_path / "run", kept=0, rejected=2, failed=0)
    result = CliRunner().invoke(cli(), ["analyze", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "kept none" in result.output and {p.name for p in (tmp_path / "out").glob("*.png")} == {
        "funnel.png"
    }
    bad = CliRunner().invoke(cli(), ["analyze", str(tmp_path)])
    assert isinstance(bad.exception, ConfigError) and "no rolegraph run" in bad.exception.message
