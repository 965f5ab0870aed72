"""The studio's web app: server-rendered pages (Starlette + Jinja2, autoescaped) over run directories."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rolegraph.config import RolegraphConfig
from rolegraph.errors import ConfigError, EndpointError, RolegraphError
from rolegraph.graphs.base import GraphDef
from rolegraph.store import EpisodeRecord, Step, Store
from rolegraph.store.lock import live_writer
from rolegraph.studio import fork as forking
from rolegraph.studio import views
from rolegraph.studio.graphview import highlighted_svg, visits_from_history, visits_from_steps
from rolegraph.studio.queries import EpisodeFilter, RunQueries
from rolegraph.studio.runs import FORKS_DIR, RunRef, discover, run_id
from rolegraph.studio.security import Access, Guard

HERE = Path(__file__).parent


@dataclass
class Studio:
    """What the app serves: the folders it was given, graph specs by name, a config for forks, and caches."""

    roots: list[Path]
    access: Access
    specs: Mapping[str, GraphDef] = field(default_factory=dict)
    config: RolegraphConfig | None = None
    """Endpoints for forks of runs that recorded no config (or to override theirs)."""
    _runs: dict[str, RunRef] = field(default_factory=dict)
    _queries: dict[str, RunQueries] = field(default_factory=dict)
    _stores: dict[str, Store] = field(default_factory=dict)

    def runs(self) -> list[RunRef]:
        found = discover(self.roots)
        self._runs.update({r.id: r for r in found})
        return found

    def run(self, rid: str) -> RunRef:
        if rid not in self._runs:
            self.runs()
        if rid not in self._runs:
            raise ConfigError(
                f"no run with id {rid!r} under the studio's folders", "go back to the runs page"
            )
        return self._runs[rid]

    def queries(self, ref: RunRef) -> RunQueries:
        if ref.id not in self._queries:
            self._queries[ref.id] = RunQueries(ref.path)
        return self._queries[ref.id]

    def store(self, path: Path) -> Store:
        """A read-only Store, kept open per thread (SQLite connections stay in the thread that made them)."""
        key = f"{threading.get_ident()}:{path}"
        if key not in self._stores:
            self._stores[key] = Store(path, create=False)
        return self._stores[key]

    def graph(self, name: str) -> GraphDef | None:
        if name in self.specs:
            return self.specs[name]
        from rolegraph.graphs.registry import BUILTIN, get_graph

        return get_graph(name) if name in BUILTIN else None

    def fork_config(self, ref: RunRef) -> RolegraphConfig:
        if self.config is not None:
            return self.config
        record = self.store(ref.path).run()
        if record is None or not record.config:
            raise ConfigError(
                "this run recorded no endpoints to fork on", "start the studio with --config FILE"
            )
        return RolegraphConfig.model_validate(record.config)

    def close(self) -> None:
        for q in self._queries.values():
            q.close()
        for s in self._stores.values():
            s.close()


def _when(ts: float | None) -> str:
    return "" if not ts else datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(visible=views.visible, pretty=views.pretty, when=_when)
    env.globals.update(urlencode=urlencode)
    return env


def create_app(studio: Studio) -> Starlette:
    env = _environment()

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(csrf=studio.access.csrf, path=request.url.path, **context)
        return HTMLResponse(html, status)

    def failure(request: Request, exc: RolegraphError) -> HTMLResponse:
        status = 503 if isinstance(exc, EndpointError) else 400 if isinstance(exc, ConfigError) else 500
        return page(request, "error.html", status, error=exc)

    async def runs_page(request: Request) -> Response:
        rows = []
        for ref in studio.runs():
            try:
                record = studio.store(ref.path).run()
                totals = studio.queries(ref).totals()
                training = studio.store(ref.path).training_runs()
            except RolegraphError as exc:  # a damaged run does not hide the others
                rows.append({"ref": ref, "error": exc})
                continue
            rows.append(
                {
                    "ref": ref,
                    "error": None,
                    "record": record,
                    "totals": totals,
                    "training": training,
                    "live": live_writer(ref.path),
                    "forks_of": run_id(ref.forks_of) if ref.forks_of else None,
                }
            )
        return page(request, "runs.html", rows=rows, roots=studio.roots)

    async def episodes_page(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        flt = EpisodeFilter.from_query(dict(request.query_params))
        queries = studio.queries(ref)
        result = queries.episodes(flt)
        return page(
            request,
            "episodes.html",
            ref=ref,
            record=studio.store(ref.path).run(),
            flt=flt,
            result=result,
            facets=queries.facets(),
            totals=queries.totals(),
            live=live_writer(ref.path) is not None,
        )

    def _steps(ref: RunRef, episode_id: str) -> tuple[EpisodeRecord, list[Step]]:
        store = studio.store(ref.path)
        record = store.episode(episode_id)
        if record is None:
            raise ConfigError(f"the run has no episode {episode_id!r}", "pick one from the episodes page")
        return record, store.steps(episode_id=episode_id, include_superseded=True)

    def _branches(ref: RunRef, episode_id: str) -> list[EpisodeRecord]:
        forks = ref.path / FORKS_DIR
        if not (forks / "store.sqlite").is_file():
            return []
        return [e for e in studio.store(forks).episodes() if e.id.startswith(f"{episode_id}~")]

    async def episode_page(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        episode_id = request.query_params.get("id", "")
        record, steps = _steps(ref, episode_id)
        run_record = studio.store(ref.path).run()
        graph = studio.graph(run_record.graph) if run_record else None
        svg, visit_of = "", {}
        if graph is not None:
            snapshots = forking.history(ref.path, graph, episode_id)
            visits = visits_from_history(snapshots) if snapshots else visits_from_steps(steps)
            visit_of = {v.task: v.number for v in visits if v.task}
            svg = highlighted_svg(graph, visits, finished=record.status == "finished")
        link = next((forking.link_of(s) for s in steps if forking.link_of(s)), None)
        return page(
            request,
            "episode.html",
            ref=ref,
            record=record,
            run_record=run_record,
            steps=steps,
            svg=svg,
            visit_of=visit_of,
            graph_known=graph is not None,
            env_view=views.env_view,
            segments=views.interpreter_segments,
            tool_integrated=views.is_tool_integrated(steps),
            branches=_branches(ref, episode_id),
            parent_rid=run_id(ref.forks_of) if ref.forks_of else None,
            link=link,
            forks_rid=run_id(ref.path / FORKS_DIR),
            live=record.status == "running" and live_writer(ref.path) is not None,
        )

    def _step(steps: list[Step], raw: str) -> Step:
        found = next((s for s in steps if str(s.id) == raw), None)
        if found is None:
            raise ConfigError(f"the episode has no step {raw!r}", "fork a step shown on the episode page")
        return found

    async def fork_post(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        form = await request.form()
        if not studio.access.csrf_ok(request, str(form.get("csrf", ""))):
            return page(
                request,
                "error.html",
                403,
                error=ConfigError(
                    "this fork request did not come from the studio's own page", "fork from the episode page"
                ),
            )
        _, steps = _steps(ref, str(form.get("episode", "")))
        step = _step(steps, str(form.get("step", "")))
        run_record = studio.store(ref.path).run()
        graph = studio.graph(run_record.graph) if run_record else None
        if graph is None:
            raise ConfigError(
                f"graph {run_record.graph if run_record else '?'!r} is not built in",
                "start the studio with --spec FILE.yaml for its spec",
            )
        edits = _edits(form, step)
        branch = await forking.fork(ref.path, graph, studio.fork_config(ref), step, edits)
        query = urlencode({"id": branch})
        return RedirectResponse(f"/runs/{ref.id}/branch?{query}", 303)

    async def branch_page(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        branch_id = request.query_params.get("id", "")
        forks_ref = RunRef(run_id(ref.path / FORKS_DIR), ref.path / FORKS_DIR)
        branch, branch_steps = _steps(forks_ref, branch_id)
        link = next((forking.link_of(s) for s in branch_steps if forking.link_of(s)), None)
        if link is None:
            raise ConfigError(f"{branch_id!r} is not a branch of this run", "open it from its episode page")
        parent, parent_steps = _steps(ref, str(link["parent_episode"]))
        original = _step(parent_steps, str(link["parent_step"]))
        replayed = next(
            (
                s
                for s in branch_steps
                if s.kind == "role" and s.node == original.node and s.role == original.role
            ),
            None,
        )
        pairs = []
        for index in range(max(len(original.choices), len(replayed.choices) if replayed else 0)):
            before = original.choices[index].text if index < len(original.choices) else ""
            after = replayed.choices[index].text if replayed and index < len(replayed.choices) else ""
            pairs.append(views.word_diff(before, after))
        blank: dict[str, Any] = {}
        prompt_diffs = [
            (
                str(b.get("role") or a.get("role")),
                views.word_diff(str(a.get("content", "")), str(b.get("content", "")), context=160),
            )
            for a, b in itertools.zip_longest(
                original.messages, replayed.messages if replayed else [], fillvalue=blank
            )
            if a.get("content") != b.get("content")
        ]
        names = sorted(set(parent.rewards) | set(branch.rewards))
        step_names = sorted(
            {n for r in original.rewards for n in r}
            | {n for r in (replayed.rewards if replayed else []) for n in r}
        )
        return page(
            request,
            "branch.html",
            ref=ref,
            forks_rid=forks_ref.id,
            parent=parent,
            branch=branch,
            original=original,
            replayed=replayed,
            link=link,
            pairs=pairs,
            prompt_diffs=prompt_diffs,
            reward_names=names,
            step_reward_names=step_names,
        )

    async def models_api(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        role = request.query_params.get("role", "")
        try:
            endpoint, models = await forking.served_models(studio.fork_config(ref), role)
        except RolegraphError as exc:
            return JSONResponse({"error": str(exc)}, 503 if isinstance(exc, EndpointError) else 400)
        return JSONResponse({"endpoint": endpoint, "models": models})

    async def state_api(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        _, steps = _steps(ref, request.query_params.get("episode", ""))
        step = _step(steps, request.query_params.get("step", ""))
        run_record = studio.store(ref.path).run()
        graph = studio.graph(run_record.graph) if run_record else None
        if graph is None:
            return JSONResponse({"error": "the graph is not known: start the studio with --spec FILE"}, 400)
        try:
            state, as_node = forking.state_before(ref.path, graph, step)
        except RolegraphError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse({"state": json.loads(json.dumps(state, default=str)), "after": as_node})

    async def version_api(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        totals = studio.queries(ref).totals()
        return JSONResponse(
            {"version": f"{totals.episodes}/{totals.last_change}", "live": live_writer(ref.path) is not None}
        )

    async def training_page(request: Request) -> Response:
        ref = studio.run(request.path_params["rid"])
        runs = studio.store(ref.path).training_runs()
        plots = [(r, views.training_plots(r)) for r in runs]
        return page(request, "training.html", ref=ref, plots=plots)

    async def compare_page(request: Request) -> Response:
        ids = [request.query_params.get("a", ""), request.query_params.get("b", "")]
        all_runs = studio.runs()
        if not all(ids):
            return page(request, "compare.html", runs=all_runs, sides=[], shared=0, ids=ids)
        sides = [_side(studio.run(rid)) for rid in ids]
        shared_inputs = set(sides[0]["inputs"].values()) & set(sides[1]["inputs"].values())
        for side in sides:
            side["same"] = _same_inputs(studio, side, shared_inputs)
        return page(request, "compare.html", runs=all_runs, sides=sides, shared=len(shared_inputs), ids=ids)

    def _side(ref: RunRef) -> dict[str, Any]:
        store = studio.store(ref.path)
        return {
            "ref": ref,
            "record": store.run(),
            "totals": studio.queries(ref).totals(),
            "inputs": studio.queries(ref).inputs(),
            "usage": store.usage_by_role(),
            "models": studio.queries(ref).facets().models,
        }

    async def handle(request: Request, call: Any) -> Response:
        try:
            response: Response = await call(request)
            return response
        except RolegraphError as exc:
            return failure(request, exc)

    def guarded(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            return await handle(request, fn)

        return endpoint

    routes = [
        Route("/", guarded(runs_page)),
        Route("/compare", guarded(compare_page)),
        Route("/runs/{rid}", guarded(episodes_page)),
        Route("/runs/{rid}/episode", guarded(episode_page)),
        Route("/runs/{rid}/fork", guarded(fork_post), methods=["POST"]),
        Route("/runs/{rid}/branch", guarded(branch_page)),
        Route("/runs/{rid}/training", guarded(training_page)),
        Route("/runs/{rid}/models", guarded(models_api)),
        Route("/runs/{rid}/state", guarded(state_api)),
        Route("/runs/{rid}/version", guarded(version_api)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        studio.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(Guard, access=studio.access)
    return app


def _same_inputs(studio: Studio, side: dict[str, Any], shared: set[str]) -> dict[str, Any]:
    """Accuracy (kept rate), mean rewards and mean completion tokens over the episodes on shared inputs."""
    store = studio.store(side["ref"].path)
    ids = [eid for eid, key in side["inputs"].items() if key in shared]
    records = [r for r in (store.episode(eid) for eid in ids) if r is not None]
    rewards: dict[str, list[float]] = {}
    for record in records:
        for name, value in record.rewards.items():
            if value is not None:
                rewards.setdefault(name, []).append(float(value))
    lengths = [
        s.completion_tokens / max(len(s.choices), 1)
        for eid in ids
        for s in store.steps(episode_id=eid)
        if s.kind == "role" and s.choices and s.request is None
    ]
    return {
        "episodes": len(records),
        "accuracy": sum(1 for r in records if r.kept) / len(records) if records else None,
        "rewards": {n: sum(v) / len(v) for n, v in sorted(rewards.items())},
        "length": sum(lengths) / len(lengths) if lengths else None,
    }


def _edits(form: Any, step: Step) -> forking.ForkEdits:
    """The fork form's edits; fields left as recorded are None. Bad JSON is a ConfigError naming the field."""

    def load(name: str) -> Any:
        raw = str(form.get(name, "")).strip()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"the {name} field is not valid JSON ({exc.msg})", f"fix the {name} JSON"
            ) from None

    messages = [
        {
            "role": str(form.get(f"role_{i}", m.get("role"))),
            "content": str(form.get(f"content_{i}", "")).replace("\r\n", "\n"),
        }
        for i, m in enumerate(step.messages)
    ]
    recorded = [{"role": m.get("role"), "content": m.get("content")} for m in step.messages]
    sampling = load("sampling")
    if sampling is not None and not isinstance(sampling, dict):
        raise ConfigError("the sampling field must be a JSON object", 'write it as {"temperature": 0.7}')
    state = load("state")
    if state is not None and not isinstance(state, dict):
        raise ConfigError("the state field must be a JSON object", "edit the state as loaded, a JSON object")
    model = str(form.get("model", "")).strip() or None
    return forking.ForkEdits(
        messages=messages if messages != recorded else None,
        sampling=sampling if sampling != step.sampling else None,
        model=model if model != step.model else None,
        state=state,
    )
