"""Shared fixtures. Expensive servers (vLLM, a non-vLLM server, Docker image) start once per test session."""

pytest_plugins = ["tests.fixtures.serving", "tests.fixtures.sandbox", "tests.fixtures.compat"]
