"""The judge's constrained-decoding regex: everything it admits parses, and vLLM honours it."""

from __future__ import annotations

import re

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolegraph.agents.parsers import JUDGE_FORMAT_REGEX, parse_verdict
from rolegraph.agents.registry import get_role
from tests.fixtures.serving import VLLMServer


@settings(max_examples=200, deadline=None)
@given(st.from_regex(JUDGE_FORMAT_REGEX, fullmatch=True))
def test_every_admitted_answer_parses_to_a_verdict(answer: str) -> None:
    parsed = parse_verdict("Format:" + answer)
    assert parsed["verdict"] in {"perfect", "acceptable", "bad"}
    assert len(parsed["criteria"]) == 5


@pytest.mark.vllm
def test_the_real_server_constrains_the_judge(vllm_server: VLLMServer) -> None:
    judge = get_role("judge")
    variables = {"rationale": "Use the sum rule.", "problem": "What is 2+3?", "concepts": ["addition"]}
    messages = judge.render({**variables, "difficulty": "easy"})
    body = {"model": vllm_server.model, "messages": messages, "max_tokens": 200, **judge.sampling["extra"]}
    reply = httpx2.post(f"{vllm_server.base_url}/chat/completions", json=body, timeout=300)
    reply.raise_for_status()
    text = reply.json()["choices"][0]["message"]["content"]
    assert re.fullmatch(JUDGE_FORMAT_REGEX, text), text
    assert judge.parse(text)["verdict"] in {"perfect", "acceptable", "bad"}
