"""rolegraph: task synthesis and self-play training of LLM reasoners."""

__version__ = "0.1.0"
