"""Sandboxed execution backends."""
