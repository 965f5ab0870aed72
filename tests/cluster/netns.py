"""A loopback-only network namespace for Ray tests, a Ray cluster in it, and bridges to servers outside it.

Ray must never run in the machine's own network namespace (it probes a public DNS address and binds the
non-loopback address). Everything here lives in a namespace the test session creates with `unshare -n`:
a holder process (`sleep infinity`) keeps it alive, every process that must reach the cluster joins it with
`nsenter --net=/proc/HOLDER/ns/net`, and teardown ends exactly the processes inside it (never `ray stop`,
which would end every Ray process on the machine, other sessions' included).

A server outside (the session's vLLM) is reached through a bridge: outside, a forwarder listens on a Unix
socket (a file, visible in both namespaces) and connects to the server's 127.0.0.1:PORT; inside, a forwarder
listens on 127.0.0.1:PORT2 and connects to that socket. Killing the inside forwarder makes the replica dead.

Run as a script, this module is the forwarder: `python tests/cluster/netns.py unix PATH HOST:PORT` (listen on
a Unix socket, forward to TCP) or `python tests/cluster/netns.py tcp HOST:PORT PATH` (listen on TCP, forward
to a Unix socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
RAY = str(REPO / ".venv" / "bin" / "ray")
ROLEGRAPH = str(REPO / ".venv" / "bin" / "rolegraph")
HEAD_PORT = 6390
BRIDGE_PORTS = 28100
"""Inside the namespace, bridge i listens on 127.0.0.1:(BRIDGE_PORTS + i), above Ray's worker port range."""
SECOND_NODE_RESOURCES = '{"sandbox": 1}'
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


class NetnsError(RuntimeError):
    """The test namespace or something in it could not be set up."""


@dataclasses.dataclass
class Netns:
    """A network namespace with loopback alone, held by one long-lived process."""

    holder: subprocess.Popen[bytes]

    @classmethod
    def create(cls) -> Netns:
        holder = subprocess.Popen(
            ["unshare", "-n", "bash", "-c", "ip link set lo up && exec sleep infinity"],
            start_new_session=True,
        )
        ns = cls(holder)
        deadline = time.monotonic() + 10
        while ns.inode() == _net_inode(os.getpid()) or not ns._lo_up():
            if holder.poll() is not None or time.monotonic() > deadline:
                raise NetnsError("unshare -n did not give a namespace with loopback up")
            time.sleep(0.05)
        return ns

    @property
    def pid(self) -> int:
        return self.holder.pid

    def inode(self) -> str | None:
        return _net_inode(self.pid)

    def _lo_up(self) -> bool:
        out = subprocess.run(
            [*self.prefix(), "ip", "-o", "link", "show", "lo"], capture_output=True, text=True
        )
        return ",UP" in out.stdout

    def prefix(self) -> list[str]:
        """Put before a command to run it inside the namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--"]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO), **(extra or {})}

    def run(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the namespace and wait for it (output captured as text)."""
        return subprocess.run(
            self.prefix() + list(cmd),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=kw.pop("cwd", REPO),
            **kw,
        )

    def popen(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[str]:
        """Start `cmd` inside the namespace (its own session, so a signal reaches it alone)."""
        kw.setdefault("cwd", REPO)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(
            self.prefix() + list(cmd), env=self.env(env), text=True, start_new_session=True, **kw
        )

    def rolegraph(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """Run the `rolegraph` CLI inside the namespace."""
        return self.run([ROLEGRAPH, *args], env=env, timeout=timeout)

    def pids(self) -> set[int]:
        """Every process inside the namespace, the holder included."""
        inode = self.inode()
        found: set[int] = set()
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and _net_inode(int(entry.name)) == inode:
                found.add(int(entry.name))
        return found

    def close(self) -> None:
        """End every process in the namespace (the holder last); the namespace goes with them."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            victims = self.pids() - {self.pid}
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while victims and time.monotonic() < deadline:
                victims = {p for p in victims if _alive(p)}
                time.sleep(0.1)
        self.holder.kill()
        self.holder.wait()


def _net_inode(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@dataclasses.dataclass
class RayCluster:
    """A two-node Ray cluster in a namespace: the head, and a second node with `{"sandbox": 1}`."""

    netns: Netns
    temp_dir: Path
    port: int = HEAD_PORT
    second_node: set[int] = dataclasses.field(default_factory=set)
    """The processes `ray start` left for the second node (its raylet among them)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RayCluster:
        self._ray_start(
            "--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"
        )
        self.start_second_node()
        return self

    def start_second_node(self) -> None:
        before = self.netns.pids()
        self._ray_start(f"--address={self.address}", f"--resources={SECOND_NODE_RESOURCES}")
        self.second_node = self.netns.pids() - before

    def _ray_start(self, *args: str) -> None:
        out = self.netns.run(
            [RAY, "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", *args],
            timeout=120,
        )
        if out.returncode != 0:
            raise NetnsError(f"ray start {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")

    def kill_second_node(self) -> None:
        """Kill the second node's raylet and everything it started (its workers), as a node crash would."""
        victims = set(self.second_node)
        for pid in self.second_node:
            victims |= _descendants(pid)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.second_node = set()

    def nodes_alive(self) -> int:
        """How many nodes the cluster counts as alive (asked from inside the namespace)."""
        out = self.netns.run(
            [
                PYTHON,
                "-c",
                f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(sum(n['Alive'] for n in ray.nodes()))",
            ],
            timeout=120,
        )
        if out.returncode != 0:
            raise NetnsError(f"cannot list the nodes: {out.stderr[-2000:]}")
        return int(out.stdout.strip().splitlines()[-1])


@dataclasses.dataclass
class Bridge:
    """One server outside reached from inside the namespace at `base_url`; `kill()` makes it unreachable."""

    base_url: str
    outside: subprocess.Popen[bytes]
    inside: subprocess.Popen[str]
    socket: Path

    def kill(self) -> None:
        """Stop the inside forwarder: new and open connections to `base_url` fail, as for a dead replica."""
        for proc in (self.inside,):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    @property
    def alive(self) -> bool:
        return self.inside.poll() is None

    def close(self) -> None:
        self.kill()
        if self.outside.poll() is None:
            self.outside.kill()
            self.outside.wait()
        self.socket.unlink(missing_ok=True)


def bridge(netns: Netns, target_base_url: str, index: int, workdir: Path) -> Bridge:
    """Bridge `target_base_url` (an http://127.0.0.1:PORT/... URL outside) into the namespace."""
    from urllib.parse import urlsplit

    parts = urlsplit(target_base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = workdir / f"bridge{index}.sock"
    sock.unlink(missing_ok=True)
    outside = subprocess.Popen(
        [PYTHON, __file__, "unix", str(sock), f"{host}:{port}"], start_new_session=True
    )
    _wait_for(lambda: sock.exists(), f"the outside forwarder for {target_base_url}")
    inside_port = BRIDGE_PORTS + index
    inside = netns.popen(
        [PYTHON, __file__, "tcp", f"127.0.0.1:{inside_port}", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        probe = netns.run(
            [PYTHON, "-c", f"import socket; socket.create_connection(('127.0.0.1', {inside_port}), 1)"],
            timeout=30,
        )
        return probe.returncode == 0

    _wait_for(listening, f"the inside forwarder on port {inside_port}")
    base_url = parts._replace(netloc=f"127.0.0.1:{inside_port}").geturl()
    return Bridge(base_url=base_url, outside=outside, inside=inside, socket=sock)


def _wait_for(ready: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise NetnsError(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.1)


def temp_dir() -> Path:
    """A short directory for Ray's sockets (Unix socket paths are limited to ~107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="rgray", dir="/tmp"))


# --- the forwarder (run as a script) ----------------------------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _forward(mode: str, listen: str, target: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if mode == "unix":
                host, port = target.rsplit(":", 1)
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            else:
                up_reader, up_writer = await asyncio.open_unix_connection(target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    if mode == "unix":
        server = await asyncio.start_unix_server(handle, path=listen)
    else:
        host, port = listen.rsplit(":", 1)
        server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_forward(sys.argv[1], sys.argv[2], sys.argv[3]))
