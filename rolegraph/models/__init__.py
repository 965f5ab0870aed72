"""Models rolegraph can serve: the built-in GGUF conversion, prepared directories, local paths, hub ids."""

from rolegraph.models.prepare import BUILTIN_MODELS, MARKER, is_prepared, model_dir, prepare_model
from rolegraph.models.registry import ModelInfo, list_models, resolve_model

__all__ = [
    "BUILTIN_MODELS",
    "MARKER",
    "ModelInfo",
    "is_prepared",
    "list_models",
    "model_dir",
    "prepare_model",
    "resolve_model",
]
