"""Versioned adapters on disk: `$ROLEGRAPH_HOME/adapters/ROLE/vN`, published by an atomic rename.

Each version also gets a random id at publish, kept in the version's folder, and its vLLM name is
`ROLE-vN-<id>`. Version numbers can repeat (the adapters dir wiped while a server lives on); names never do,
so a server can never serve stale weights under a name that now means other weights (vLLM #42125).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from rolegraph import paths
from rolegraph.errors import TrainingError

ID_FILE = "rolegraph-adapter-id"
"""The file in a version's folder that holds its id (8 hex digits)."""
_VERSION = re.compile(r"^v(\d+)$")
_ROLE = re.compile(r"^[A-Za-z0-9_.-]+$")
_ID = re.compile(r"^[0-9a-f]{8}$")
_LORA_NAME = re.compile(r"^(?P<role>[A-Za-z0-9_.-]+)-v(?P<version>\d+)-(?P<id>[0-9a-f]{8})$")


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter of a role. Its vLLM name is `ROLE-vN-<id>`."""

    role: str
    version: int
    path: Path
    id: str
    """Random, set at publish: it makes the name unique even where a version number repeats."""

    @property
    def lora_name(self) -> str:
        return f"{self.role}-v{self.version}-{self.id}"


def parse_lora_name(name: str) -> tuple[str, int] | None:
    """`ROLE-vN-<id>` → (ROLE, N); None for names rolegraph did not give."""
    match = _LORA_NAME.match(name)
    return (match["role"], int(match["version"])) if match else None


class AdapterRegistry:
    """The adapters directory. Trainers write into `staging(role)`; `publish` renames that to the next vN."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else paths.adapters_dir()

    def role_dir(self, role: str) -> Path:
        if not _ROLE.match(role):
            raise TrainingError(
                f"'{role}' is not a valid role name for an adapter", "use letters, digits, _ . -"
            )
        path = self.root / role
        path.mkdir(parents=True, exist_ok=True)
        return path

    def staging(self, role: str) -> Path:
        """A fresh path (not yet created) beside the versions, on the same filesystem, for a trainer's
        output."""
        return self.role_dir(role) / f".tmp-{uuid.uuid4().hex[:12]}"

    def versions(self, role: str) -> list[AdapterVersion]:
        """Published versions of a role, oldest first. Half-written temp dirs are never listed, nor are
        folders without an id (published before ids existed; their numbers stay taken)."""
        folder = self.root / role
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            match = _VERSION.match(child.name)
            if match and (child / "adapter_config.json").is_file() and (version_id := _read_id(child)):
                found.append(AdapterVersion(role, int(match.group(1)), child, version_id))
        return sorted(found, key=lambda v: v.version)

    def latest(self, role: str) -> AdapterVersion | None:
        versions = self.versions(role)
        return versions[-1] if versions else None

    def get(self, role: str, version: int) -> AdapterVersion:
        for candidate in self.versions(role):
            if candidate.version == version:
                return candidate
        raise TrainingError(
            f"adapter {role} v{version} does not exist in {self.root}", "list them: rolegraph adapters list"
        )

    def roles(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def publish(self, role: str, trained_dir: Path) -> AdapterVersion:
        """Move a finished adapter dir to the next version, with a fresh id. A rename is atomic; a concurrent
        publisher that takes the same number makes ours retry with the next one."""
        trained_dir = Path(trained_dir)
        if not (trained_dir / "adapter_config.json").is_file():
            raise TrainingError(f"{trained_dir} holds no adapter (no adapter_config.json)", "train it first")
        folder = self.role_dir(role)
        if trained_dir.parent.resolve() != folder.resolve():
            staged = self.staging(role)
            shutil.copytree(trained_dir, staged)
            trained_dir = staged
        version_id = uuid.uuid4().hex[:8]
        (trained_dir / ID_FILE).write_text(version_id + "\n")
        for _ in range(1000):
            latest = max((v.version for v in self.versions(role)), default=0)
            # Count any vN folder (even incomplete) so a number is never reused.
            taken = [int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name))]
            version = max([latest, *taken]) + 1
            target = folder / f"v{version}"
            try:
                trained_dir.rename(target)
            except OSError:
                continue
            return AdapterVersion(role, version, target, version_id)
        raise TrainingError(f"could not publish an adapter for role '{role}'", f"check {folder} is writable")

    def prune(self, role: str, keep: int, *, protect: Collection[str] = ()) -> list[AdapterVersion]:
        """Delete the role's versions older than the newest `keep` from disk, except those whose vLLM name is
        in `protect` (loaded or bound somewhere: vLLM may re-read a loaded adapter's folder); returns them."""
        versions = self.versions(role)
        doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v.lora_name not in protect]
        for version in doomed:
            # Renamed away first, so nobody lists (or loads) a half-deleted version.
            trash = version.path.with_name(f".trash-{uuid.uuid4().hex[:12]}")
            with contextlib.suppress(FileNotFoundError):  # a concurrent prune took it first
                version.path.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
        return doomed


def _read_id(folder: Path) -> str | None:
    try:
        text = (folder / ID_FILE).read_text().strip()
    except OSError:
        return None
    return text if _ID.match(text) else None
