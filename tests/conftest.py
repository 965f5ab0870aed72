"""Shared fixtures. Expensive servers (vLLM, Docker image) start once per test session."""

pytest_plugins = ["tests.fixtures.serving", "tests.fixtures.sandbox"]
