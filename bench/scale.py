"""Bench: scaling over Ray by simulation (issue 17). Four measurements in one run:

  episodes/s    a two-call YAML graph on N Ray episode workers against N simulated endpoints (a replica list
                for the one role endpoint), N = 1, 2, 4, 8, 16; against N × the rate at N = 1 (linear)
  writer        the single store-writer actor driven directly by many concurrent writers: sustained steps/s
  overhead      Ray at N = 1 against the single-machine runtime (`run_graph` without Ray) on the same
                endpoint: the extra wall time per episode
Targets: ≥ 0.8× linear to 16; ≥ 5,000 steps/s for the writer; < 10% overhead at N = 1.

The endpoints are `bench/sim_endpoint.py`: a fixed time per generated token and a fixed number of requests
generating at once, so an endpoint's capacity is known and does not depend on the host's CPUs. This machine
has 2 cores: the per-token time is long enough that the endpoints, not the runtime, bound the rate, so a
runtime that scales shows N times the rate with N endpoints.

The bench re-executes itself in a fresh network namespace with loopback alone (`unshare -n`), starts its own
Ray cluster and simulated endpoints there, and stops them (only the processes in its namespace) at the end.

    python bench/scale.py                 # print the table and the ratios
    python bench/scale.py --write         # also record them (and bench/scale.png) in bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results import write_section  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
PLOT = HERE / "scale.png"
SECTION = "## Scale (Ray)"
IN_NETNS = "ROLEGRAPH_SCALE_BENCH_NETNS"
"""Set in the re-executed bench: it runs inside its own network namespace."""
COUNTS = (1, 2, 4, 8, 16)
LINEAR_TARGET = 0.8
WRITER_TARGET = 5000.0
OVERHEAD_TARGET = 0.10
RAY_PORT = 6380
SIM_PORT = 9100
MODEL = "sim"


@dataclass(frozen=True)
class Settings:
    """The workload: what one episode costs on a simulated endpoint, and how much of it is measured."""

    per_token_ms: float
    tokens: int
    calls: int
    slots: int
    """Requests one endpoint generates at once; each worker runs this many episodes at once."""
    episodes: int
    """Episodes per endpoint per measurement."""
    writer_steps: int
    writers: int
    rounds: int
    """Rounds of the N = 1 comparison (single machine, then Ray); the median is reported."""

    @property
    def episode_s(self) -> float:
        """An episode's time on an idle endpoint: its calls one after another."""
        return self.calls * self.tokens * self.per_token_ms / 1000

    @property
    def capacity(self) -> float:
        """Episodes/s one endpoint can serve: the ceiling the runtime should reach per endpoint."""
        return self.slots / self.episode_s


# ----------------------------------------------------------------------------------- namespace + processes


def reexec_in_netns(argv: list[str]) -> int:
    """Run this bench again inside a new network namespace with only loopback up; returns its exit code."""
    if shutil.which("unshare") is None:
        sys.exit("error: `unshare` is missing (fix: apt-get install -y util-linux)")
    script = 'ip link set lo up && exec "$@"'
    command = ["unshare", "-n", "bash", "-c", script, "scale", sys.executable, str(Path(__file__)), *argv]
    env = {**os.environ, IN_NETNS: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.call(command, env=env)


def processes_in_my_netns() -> list[int]:
    """Every other process in this process's network namespace: all of them were started by this bench."""
    mine = os.readlink("/proc/self/ns/net")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / "net") == mine:
                found.append(int(entry.name))
    return found


def stop_my_processes(grace_s: float = 3.0) -> None:
    """End what the bench started (Ray, endpoints): only processes in its own namespace, never by name."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_in_my_netns():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while processes_in_my_netns() and time.monotonic() < deadline:
            time.sleep(0.1)


def venv_tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def ray_cluster(cpus: int) -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 (this namespace), `cpus` logical CPUs; yields its address."""
    temp = tempfile.mkdtemp(prefix="rgs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    address = f"127.0.0.1:{RAY_PORT}"
    head = [
        venv_tool("ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}",
        f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
    ]  # fmt: skip
    try:
        subprocess.run(head, check=True, capture_output=True, text=True)
        yield address
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        stop_my_processes()
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def sim_endpoints(count: int, settings: Settings) -> Iterator[list[str]]:
    """`count` simulated endpoints in one child process; yields their base URLs."""
    command = [
        sys.executable, str(HERE / "sim_endpoint.py"), "--count", str(count), "--port", str(SIM_PORT),
        "--per-token-ms", str(settings.per_token_ms), "--slots", str(settings.slots),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the simulated endpoints did not start")
        yield list(json.loads(line)["base_urls"])
    finally:
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------------------------- workload


def write_spec(folder: Path, settings: Settings) -> Path:
    """A YAML graph of `calls` role calls in a row, each generating `tokens` tokens."""
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    (folder / "prompts" / "step.md").write_text("<!-- user -->\nContinue: {{text}}\n")
    nodes = {
        f"call{i}": {"role": "step", "inputs": {"text": "text"}, "output": {"text": "text"}}
        for i in range(settings.calls)
    }
    names = ["START", *nodes, "END"]
    spec = {
        "name": "scale",
        "description": "bench/scale.py: role calls in a row on a simulated endpoint",
        "roles": {
            "step": {
                "prompt": "prompts/step.md",
                "parser": "text",
                "sampling": {"temperature": 0.0, "max_tokens": settings.tokens},
            }
        },
        "state": {"text": "str"},
        "inputs": {"items": [{"id": f"e{i}", "text": f"episode {i}"} for i in range(64)], "key": "id"},
        "nodes": nodes,
        "edges": [list(pair) for pair in itertools.pairwise(names)],
    }
    path = folder / "graph.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return path


def config_for(urls: list[str]) -> Any:
    """One endpoint serving the role: a replica list when there are several URLs. Capabilities are declared,
    so no worker spends requests probing."""
    from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig
    from rolegraph.config.schema import EndpointCapabilities

    declared = EndpointCapabilities(
        lists_models=True, n=True, logprobs=True, token_ids=True, prompt_logprobs=False,
        structured_outputs=False, runtime_lora=False, tokenize=True,
    )  # fmt: skip
    base_url: Any = urls[0] if len(urls) == 1 else urls
    endpoint = EndpointConfig(base_url=base_url, capabilities=declared, max_concurrency=256, max_retries=0)
    return RolegraphConfig(
        endpoints={"sim": endpoint}, roles={"step": RoleBinding(endpoint="sim", model=MODEL)}
    )


async def run_episodes(
    spec: Path, urls: list[str], episodes: int, concurrency: int, run_dir: Path
) -> tuple[float, float]:
    """Run `episodes` episodes with `run_graph` (on Ray when a cluster is activated). Returns the episode
    window (first episode's start to last one's end, read from the store: a run's fixed start-up, such as
    starting Ray workers, is left out) and the whole call's wall time."""
    from rolegraph.graphs.base import RunParams
    from rolegraph.graphs.runtime import run_graph
    from rolegraph.graphs.spec import compile_spec
    from rolegraph.store import Store

    graph = compile_spec(spec)
    params = RunParams(n=episodes, run_dir=run_dir)
    start = time.perf_counter()
    summary = await run_graph(
        graph, config_for(urls), params, run_dir, concurrency=concurrency, progress=False
    )
    wall = time.perf_counter() - start
    if summary.finished != episodes:
        raise RuntimeError(f"{summary.finished} of {episodes} episodes finished: the measurement is void")
    with Store(run_dir) as store:
        records = store.episodes()
    first = min(record.started_at for record in records)
    last = max(record.finished_at or 0.0 for record in records)
    return last - first, wall


# -------------------------------------------------------------------------------------------- reporting


@dataclass
class Point:
    endpoints: int
    episodes: int
    seconds: float
    """The episode window: first episode's start to last one's end."""
    wall: float
    """The whole run, start-up included."""
    queued_s: float = 0.0
    """Mean time a request waited for a slot at its endpoint: callers colliding on one replica."""

    @property
    def rate(self) -> float:
        return self.episodes / self.seconds


def render(
    points: list[Point],
    local: Point,
    writer: dict[str, float],
    settings: Settings,
    command: str,
    started: str,
    load: tuple[float, float],
) -> str:
    base = points[0].rate
    lines = [
        SECTION,
        f"`{command}` on {os.cpu_count()} CPU cores ({platform.machine()}, Python "
        f"{platform.python_version()}), {started}, 1-minute load {load[0]:.1f} before and {load[1]:.1f} "
        "after. Ray 2.60 in a network namespace with loopback "
        "alone (one node), the simulated endpoints (`bench/sim_endpoint.py`) in the same namespace: "
        f"{settings.per_token_ms:g} ms per token, {settings.slots} request(s) generating at once per "
        "endpoint. "
        f"An episode is {settings.calls} role calls of {settings.tokens} tokens ({settings.episode_s:.2f} s "
        f"on an idle endpoint), so one endpoint serves at most {settings.capacity:.2f} episodes/s; N workers "
        f"run {settings.slots} episode(s) each at once, {settings.episodes} episodes per endpoint per point, "
        "the role's endpoint a list of the N endpoints (replicas; worker i's list starts at replica i, see "
        "`rotate_replicas` in rolegraph/cluster/workers.py). The per-token time is this long because "
        "the machine has 2 cores: the endpoints, not the runtime's CPU, must bound the rate for scaling to "
        "show. Rates are over the episode window (first episode's start to last one's end, from the store), "
        "so a run's fixed start-up (Ray workers importing rolegraph) is left out; it is in the last column.",
        "",
    ]
    lines += [*_table(points, base, settings), ""]
    last = points[-1]
    linear = last.rate / base / last.endpoints
    overhead = (1 / base - 1 / local.rate) / (1 / local.rate)
    lines += [
        "![episodes/s against endpoints](scale.png)",
        "",
        f"- Scaling to {last.endpoints}: **{linear:.2f}× linear** (target ≥ {LINEAR_TARGET}): "
        f"{'PASS' if linear >= LINEAR_TARGET else 'FAIL'}.",
        f"- Ray's overhead per episode at N = 1: **{overhead:+.1%}**, "
        f"{(1 / base - 1 / local.rate) * 1000:+.0f} ms ({1 / base:.3f} s an episode on Ray against "
        f"{1 / local.rate:.3f} s for `run_graph` without Ray, "
        f"{local.episodes} episodes on the same endpoint, the median of {settings.rounds} alternated rounds; "
        f"target < {OVERHEAD_TARGET:.0%}): {'PASS' if overhead < OVERHEAD_TARGET else 'FAIL'}.",
    ]
    if writer:
        grouped, single = writer["grouped"], writer["per-step"]
        lines.append(
            f"- The store writer actor under {settings.writers} concurrent episodes recording steps "
            f"({settings.writer_steps} steps of ~3 KB, each awaited before the episode's next): "
            f"**{grouped:,.0f} steps/s** through `RemoteStore.arecord_step`, the runtime's path, where the "
            f"steps a process records meanwhile share one writer call and one commit (target ≥ "
            f"{WRITER_TARGET:,.0f}: {'PASS' if grouped >= WRITER_TARGET else 'FAIL'}); {single:,.0f} steps/s "
            f"with each step its own call and commit. One caller alone waits {writer['latency_ms']:.1f} ms "
            f"per `record_step` round trip."
        )
    return "\n".join(lines) + "\n"


def _table(points: list[Point], base: float, settings: Settings) -> list[str]:
    lines = [
        "| endpoints (= workers) | episodes | episode window, s | episodes/s | × N=1 | of linear "
        "| of capacity | queued per request, ms | whole run, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for point in points:
        speedup = point.rate / base
        lines.append(
            f"| {point.endpoints} | {point.episodes} | {point.seconds:.2f} | {point.rate:.2f} | "
            f"{speedup:.2f} | {speedup / point.endpoints:.2f} | "
            f"{point.rate / (settings.capacity * point.endpoints):.2f} | {point.queued_s * 1000:.0f} | "
            f"{point.wall:.1f} |"
        )
    return lines


def plot(points: list[Point], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [p.endpoints for p in points]
    base = points[0].rate
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    axes.plot(counts, [p.rate for p in points], "o-", label="Ray workers")
    axes.plot(counts, [base * n for n in counts], "--", color="black", lw=0.8, label="linear from N = 1")
    axes.plot(counts, [LINEAR_TARGET * base * n for n in counts], ":", color="black", label="0.8 × linear")
    axes.plot(
        counts, [settings.capacity * n for n in counts], color="grey", lw=0.8, label="endpoints' capacity"
    )
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xticks(counts, [str(n) for n in counts])
    axes.set_xlabel("simulated endpoints = Ray episode workers (N)")
    axes.set_ylabel("episodes / s")
    axes.set_title("rolegraph on Ray (simulated endpoints, 2 cores)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), help="endpoint counts N")
    parser.add_argument("--per-token-ms", type=float, default=25.0)
    parser.add_argument("--tokens", type=int, default=16, help="max_tokens of each call")
    parser.add_argument("--calls", type=int, default=2, help="role calls per episode")
    parser.add_argument("--slots", type=int, default=1, help="requests one endpoint generates at once")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per endpoint per point")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers on the store writer")
    parser.add_argument("--writer-steps", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the N = 1 comparison")
    parser.add_argument("--write", action="store_true", help="record in bench/RESULTS.md and bench/scale.png")
    return parser.parse_args(argv)


def main() -> None:
    argv = sys.argv[1:]
    if not os.environ.get(IN_NETNS):
        sys.exit(reexec_in_netns(argv))
    args = parse_args(argv)
    settings = Settings(
        per_token_ms=args.per_token_ms, tokens=args.tokens, calls=args.calls, slots=args.slots,
        episodes=args.episodes, writer_steps=args.writer_steps, writers=args.writers, rounds=args.rounds,
    )  # fmt: skip
    command = ("python bench/scale.py " + " ".join(argv)).strip()
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    counts = sorted(set(args.counts) | {1})
    with tempfile.TemporaryDirectory(prefix="rolegraph-scale-") as tmp:
        root = Path(tmp)
        spec = write_spec(root / "graph", settings)
        with sim_endpoints(max(counts), settings) as urls, ray_cluster(cpus=os.cpu_count() or 1) as address:
            bench = Measure(spec, urls, settings, root, address)
            local, ray_one = bench.overhead_rounds()
            points = [ray_one] + [bench.point(n, on_ray=True) for n in counts if n > 1]
            writer = measure_writer(root / "writer", settings)
    load = (load_before, os.getloadavg()[0])
    text = render(points, local, writer, settings, command, started, load)
    print(text)
    if args.write:
        plot(points, settings, PLOT)
        write_section(SECTION, text)


@dataclass
class Measure:
    """Runs the workload on N endpoints, on Ray or on this machine alone, and reads the endpoints' stats."""

    spec: Path
    urls: list[str]
    settings: Settings
    root: Path
    address: str
    runs: int = 0

    def point(self, n: int, *, on_ray: bool) -> Point:
        from rolegraph.cluster import activate, deactivate

        episodes = self.settings.episodes * n
        urls = self.urls[:n]
        self.runs += 1
        run_dir = self.root / f"{'ray' if on_ray else 'local'}-{n}-{self.runs}"
        before = endpoint_stats(urls)
        if on_ray:
            activate(self.address, workers=n)
        try:
            concurrency = self.settings.slots * n
            window, wall = asyncio.run(run_episodes(self.spec, urls, episodes, concurrency, run_dir))
        finally:
            deactivate()
        after = endpoint_stats(urls)
        requests = after[0] - before[0]
        queued = (after[1] - before[1]) / max(1, requests)
        point = Point(n, episodes, window, wall, queued)
        where = "ray" if on_ray else "single machine"
        print(
            f"{where}, N={n}: {point.rate:.2f} episodes/s, {queued * 1000:.0f} ms queued per request at the "
            f"endpoints ({wall:.1f} s in all)",
            file=sys.stderr,
        )
        return point

    def overhead_rounds(self) -> tuple[Point, Point]:
        """N = 1 alone and on Ray, alternated for `rounds` rounds (so load from other processes hits both);
        the median round of each."""
        local, ray = [], []
        for _ in range(self.settings.rounds):
            local.append(self.point(1, on_ray=False))
            ray.append(self.point(1, on_ray=True))
        return median_point(local), median_point(ray)


def median_point(points: list[Point]) -> Point:
    return sorted(points, key=lambda point: point.seconds)[len(points) // 2]


def endpoint_stats(urls: list[str]) -> tuple[int, float]:
    """Requests served and seconds queued, summed over these simulated endpoints."""
    import httpx

    requests, waited = 0, 0.0
    for url in urls:
        stats = httpx.get(url.removesuffix("/v1") + "/sim/stats", timeout=10).json()
        requests += int(stats["requests"])
        waited += float(stats["waited_s"])
    return requests, waited


def bench_step(episode: str, index: int) -> Any:
    """A step the size the runtime records for a short call (~3 KB: messages, 64 token ids, a completion)."""
    from rolegraph.serving.types import Choice
    from rolegraph.store import Step

    return Step(
        id=0,
        episode_id=episode,
        attempt=1,
        kind="role",
        node=f"node{index}",
        role="step",
        endpoint="sim",
        model=MODEL,
        sampling={"temperature": 0.0, "max_tokens": 64, "n": 1},
        messages=[{"role": "user", "content": "Continue the text. " * 40}],
        choices=[Choice(text="tok " * 64, finish_reason="length", token_ids=[7] * 64)],
        prompt_token_ids=list(range(160)),
        prompt_tokens=160,
        completion_tokens=64,
        latency_s=1.0,
        started_at=time.time(),
    )


def measure_writer(run_dir: Path, settings: Settings) -> dict[str, float]:
    """Steps/s of the one store-writer actor under `writers` concurrent episodes recording steps: through
    `RemoteStore.arecord_step` (the runtime's path: concurrent steps of a process share one call and one
    commit), and one step per call (each step its own call and commit) for comparison."""
    import ray

    from rolegraph.cluster.connect import driver_node
    from rolegraph.cluster.store_writer import RemoteStore, start_writer

    rates: dict[str, float] = {}
    for path in ("grouped", "per-step"):
        folder = run_dir / path
        folder.mkdir(parents=True)
        writer = start_writer(folder, driver_node())
        store = RemoteStore(writer, folder)
        rates[path] = asyncio.run(_drive_writer(store, settings, grouped=path == "grouped"))
        if path == "grouped":
            rates["latency_ms"] = _round_trip_ms(store)
        ray.kill(writer, no_restart=True)
    return rates


def _round_trip_ms(store: Any, calls: int = 200) -> float:
    """Mean ms of one `record_step` with no other caller (what an episode's step write waits)."""
    store.begin_episode("alone", {})
    steps = [bench_step("alone", i) for i in range(calls)]
    started = time.perf_counter()
    for step in steps:
        store.record_step(step)
    return (time.perf_counter() - started) / calls * 1000


async def _drive_writer(store: Any, settings: Settings, *, grouped: bool) -> float:
    from rolegraph.store.db import step_row

    store.start_run("scale-writer", {}, 0, {})
    per_writer = max(1, settings.writer_steps // settings.writers)
    keys = [f"w{i}" for i in range(settings.writers)]
    for key in keys:
        store.begin_episode(key, {})
    steps = {key: [bench_step(key, i) for i in range(per_writer)] for key in keys}

    async def one_writer(key: str) -> None:
        for step in steps[key]:
            if grouped:
                await store.arecord_step(step)
            else:
                await store.writer.record_rows.remote([step_row(step)])

    started = time.perf_counter()
    await asyncio.gather(*(one_writer(key) for key in keys))
    seconds = time.perf_counter() - started
    recorded = store.usage_by_role()["step"]["calls"]
    if recorded != settings.writers * per_writer:
        raise RuntimeError(f"{recorded} of {settings.writers * per_writer} steps recorded: the rate is void")
    return recorded / seconds


if __name__ == "__main__":
    main()
