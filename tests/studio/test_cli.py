"""`rolegraph studio` refuses bad input with one line naming the fix, before serving anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rolegraph.cli.studio_cmd import studio
from rolegraph.errors import ConfigError


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        studio([tmp_path / "nope"], port=0, host="127.0.0.1", config=None, spec=[])
    assert "nope is not a directory" in caught.value.message and caught.value.hint


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            studio([tmp_path], port=port, host="127.0.0.1", config=None, spec=[])
    assert f"port {port} on 127.0.0.1 is taken" in caught.value.message and "--port" in str(caught.value.hint)
