"""Versioned adapters on disk: `$ROLEGRAPH_HOME/adapters/ROLE/vN`, published by an atomic rename."""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from rolegraph import paths
from rolegraph.errors import TrainingError

_VERSION = re.compile(r"^v(\d+)$")
_ROLE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter of a role. Its vLLM name is `ROLE-vN`."""

    role: str
    version: int
    path: Path

    @property
    def lora_name(self) -> str:
        return f"{self.role}-v{self.version}"


def parse_lora_name(name: str) -> tuple[str, int] | None:
    """`ROLE-vN` → (ROLE, N); None for names rolegraph did not give."""
    role, sep, version = name.rpartition("-v")
    if not sep or not role or not version.isdigit():
        return None
    return role, int(version)


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
        """Published versions of a role, oldest first; half-written temp dirs are never listed."""
        folder = self.root / role
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            match = _VERSION.match(child.name)
            if match and (child / "adapter_config.json").is_file():
                found.append(AdapterVersion(role=role, version=int(match.group(1)), path=child))
        return sorted(found, key=lambda v: v.version)

    def latest(self, role: str) -> AdapterVersion | None:
        versions = self.versions(role)
        return versions[-1] if versions else None

    def get(self, role: str, version: int) -> AdapterVersion:
        for candidate in self.versions(role):
            if candidate.version == version:
                return candidate
        raise TrainingError(
            f"adapter {role}-v{version} does not exist in {self.root}", "list them: rolegraph adapters list"
        )

    def roles(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def publish(self, role: str, trained_dir: Path) -> AdapterVersion:
        """Move a finished adapter dir to the next version. A rename is atomic; a concurrent publisher that
        takes the same number makes ours retry with the next one."""
        trained_dir = Path(trained_dir)
        if not (trained_dir / "adapter_config.json").is_file():
            raise TrainingError(f"{trained_dir} holds no adapter (no adapter_config.json)", "train it first")
        folder = self.role_dir(role)
        if trained_dir.parent.resolve() != folder.resolve():
            staged = self.staging(role)
            shutil.copytree(trained_dir, staged)
            trained_dir = staged
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
            return AdapterVersion(role=role, version=version, path=target)
        raise TrainingError(f"could not publish an adapter for role '{role}'", f"check {folder} is writable")

    def prune(self, role: str, keep: int) -> list[AdapterVersion]:
        """Delete all but the newest `keep` versions from disk; returns what was deleted."""
        versions = self.versions(role)
        doomed = versions[: max(len(versions) - keep, 0)]
        for version in doomed:
            shutil.rmtree(version.path, ignore_errors=True)
        return doomed
