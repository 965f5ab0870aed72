"""`rolegraph studio`: a local web app to browse, debug, fork and replay a run's traces."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import typer

from rolegraph.errors import ConfigError
from rolegraph.terminal import safe, safe_console

err_console = safe_console(stderr=True)


def studio(
    folders: list[Path] = typer.Argument(
        None, help="Run directories, or folders that hold them (default: runs)."
    ),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs a token."),
    config: Path | None = typer.Option(
        None, "--config", help="Endpoints for forks (default: the run's own)."
    ),
    spec: list[Path] = typer.Option([], "--spec", help="A YAML graph spec the runs used (repeatable)."),
) -> None:
    """Serve the studio: runs, episodes, role graphs, step timelines, fork and replay, compare, training."""
    import uvicorn

    from rolegraph.config import load_config
    from rolegraph.graphs.spec import compile_spec
    from rolegraph.studio.app import Studio, create_app
    from rolegraph.studio.runs import check_roots
    from rolegraph.studio.security import Access

    roots = check_roots(folders or [Path("runs")])
    graphs = {g.name: g for g in (compile_spec(path) for path in spec)}
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    access = Access.for_host(host, bound)
    studio_ = Studio(roots, access, specs=graphs, config=load_config(config) if config else None)
    url = f"http://{'127.0.0.1' if host in ('127.0.0.1', 'localhost') else host}:{bound}/"
    if access.token is not None:
        err_console.print(
            safe(
                f"warning: the studio listens on {host}, beyond this machine; every request needs its token"
            ),
            style="bold yellow",
        )
        url += f"?token={access.token}"
    err_console.print(safe(f"rolegraph studio: {url}  (Ctrl-C stops it)"))
    server = uvicorn.Server(uvicorn.Config(create_app(studio_), log_level="warning", access_log=False))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts, so a taken port is a one-line error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is taken", "pass another --port, or --port 0") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})", "pass a local --host") from None
    sock.listen(128)
    return sock


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("studio")(studio)
