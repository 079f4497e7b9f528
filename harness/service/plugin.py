"""The service's datasette plugin: byte-identical golden downloads, the goldens index kept in
step with the directory, and the tok/s history page with its charts.

Registered by `harness.service.app.build` (not through an entry point), so it is active only
in `harness serve`, never in an unrelated datasette of the same environment.
"""

from __future__ import annotations

import json
import statistics
import sys
import weakref
from pathlib import Path
from urllib.parse import urlencode

from datasette import hookimpl
from datasette.utils.asgi import NotFound, Response, asgi_send_file
from markupsafe import Markup, escape

from harness.records.result import FAILING
from harness.service import goldens_index
from harness.service.plot import Series, line_chart
from harness.service.queries import canned

NAME = "harness"
GOLDENS_DB = "goldens"
HISTORY_KEYS = ("case_key", "suite", "bench_key")  # columns whose values link to /-/history
# The goldens directory's signature when the index was last built, per served datasette.
_indexed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(pm) -> None:
    if not pm.is_registered(sys.modules[__name__]):
        pm.register(sys.modules[__name__], name=NAME)


def goldens_dir(datasette) -> Path:
    return Path(datasette.plugin_config(NAME)["goldens"])


def harness_databases(datasette) -> list[str]:
    return [name for name in datasette.databases if name not in (GOLDENS_DB, "_internal")]


async def refresh_index(datasette) -> None:
    """Rebuild the `goldens` table when a golden was written, replaced or removed since."""
    directory = goldens_dir(datasette)
    current = goldens_index.signature(directory)
    if _indexed.get(datasette) == current:
        return
    rows = goldens_index.scan(directory)

    def write(conn) -> None:
        with conn:  # datasette leaves committing to the write function
            _replace_table(conn, rows)

    await datasette.get_database(GOLDENS_DB).execute_write_fn(write, block=True)
    _indexed[datasette] = current


def _replace_table(conn, rows: list[dict]) -> None:
    names = list(goldens_index.COLUMNS)
    columns = ", ".join(
        f"[{name}] {'integer' if kind is int else 'text'}"
        for name, kind in goldens_index.COLUMNS.items()
    )
    conn.execute(f"create table if not exists goldens ({columns}, primary key ([key]))")
    conn.execute("delete from goldens")
    conn.executemany(
        f"insert into goldens values ({', '.join('?' for _ in names)})",
        [[row[name] for name in names] for row in rows],
    )


@hookimpl
def startup(datasette):
    async def index_goldens():
        await refresh_index(datasette)

    return index_goldens


@hookimpl
def asgi_wrapper(datasette):
    def wrap(app):
        async def refreshed(scope, receive, send):
            # Only the pages that show goldens pay for looking at the directory.
            path = scope.get("path", "")
            if scope["type"] == "http" and (
                path == "/" or path.startswith((f"/{GOLDENS_DB}", "/-/goldens"))
            ):
                await refresh_index(datasette)
            await app(scope, receive, send)

        return refreshed

    return wrap


@hookimpl
def register_routes():
    return [
        (r"^/-/goldens/(?P<key>[^/]+)\.(?P<ext>npz|json)$", golden_download),
        (r"^/-/history$", history_page),
    ]


async def golden_download(datasette, request, send):
    """The golden's file exactly as it is on disk."""
    key, ext = request.url_vars["key"], request.url_vars["ext"]
    path = goldens_index.golden_file(goldens_dir(datasette), key, ext)
    if path is None:
        raise NotFound(f"no golden {key}.{ext}")
    await asgi_send_file(send, path, content_type=goldens_index.CONTENT_TYPES[ext])


@hookimpl
def render_cell(value, column, database):
    """Case keys, bench keys and suites link to their tok/s history."""
    if database == GOLDENS_DB or column not in HISTORY_KEYS or not value:
        return None
    query = urlencode({"db": database, column: value})
    return Markup(f'<a href="/-/history?{escape(query)}">{escape(value)}</a>')


def _geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v]
    return statistics.geometric_mean(values) if values else None


def _case_view(rows: list[dict]) -> tuple[Series, Series]:
    """One series per (strategy, ranks): tensor and pipeline parallel differ in speed."""
    prefill, decode = {}, {}
    for row in rows:
        name = f"{row['strategy']}, {row['ranks']} rank(s)"
        failed = row["status"] in FAILING
        prefill.setdefault(name, []).append((row["run_id"], row["prefill_tok_s"], failed))
        decode.setdefault(name, []).append((row["run_id"], row["decode_tok_s"], failed))
    return prefill, decode


def _suite_view(rows: list[dict]) -> tuple[Series, Series, list[dict]]:
    """Per run, the geometric mean over its cases: the usual summary of a benchmark suite,
    where each case weighs the same whatever its absolute speed."""
    runs: dict[int, dict] = {}
    for row in rows:
        run = runs.setdefault(
            row["run_id"],
            {k: row[k] for k in ("run_id", "started", "ranks", "run_status")}
            | {"cases": 0, "failed": 0, "prefill": [], "decode": []},
        )
        run["cases"] += 1
        run["failed"] += row["status"] in FAILING
        run["prefill"].append(row["prefill_tok_s"])
        run["decode"].append(row["decode_tok_s"])
    prefill, decode = {}, {}
    for run in runs.values():
        run["prefill_tok_s"] = _geometric_mean(run.pop("prefill"))
        run["decode_tok_s"] = _geometric_mean(run.pop("decode"))
        name = f"{run['ranks']} rank(s)"
        failed = run["failed"] > 0
        prefill.setdefault(name, []).append((run["run_id"], run["prefill_tok_s"], failed))
        decode.setdefault(name, []).append((run["run_id"], run["decode_tok_s"], failed))
    return prefill, decode, list(runs.values())


def _bench_view(samples: list[dict]) -> tuple[Series, Series]:
    """Rank 0's median per run, one series per (strategy, ranks), as the bench table shows."""
    trials: dict[tuple[str, int], dict[str, list[float]]] = {}
    for row in samples:
        name = f"{row['strategy']}, {row['ranks']} rank(s)"
        per_run = trials.setdefault((name, row["run_id"]), {"prompt": [], "generation": []})
        per_run["prompt"].append(row["prompt_tps"])
        per_run["generation"].append(row["generation_tps"])
    prompt, generation = {}, {}
    for (name, run_id), values in trials.items():
        prompt.setdefault(name, []).append((run_id, statistics.median(values["prompt"]), False))
        generation.setdefault(name, []).append(
            (run_id, statistics.median(values["generation"]), False)
        )
    return prompt, generation


BENCH_SAMPLES = """select run_id, strategy, ranks, prompt_tps, generation_tps from bench_samples
where bench_key = ? and rank = 0 order by run_id"""


def _links(db: str, query: str, params: dict) -> dict:
    return {
        "query_url": f"/{db}/{query}?{urlencode(params)}",
        "json_url": f"/{db}/{query}.json?{urlencode({**params, '_shape': 'array'})}",
    }


async def history_page(datasette, request):
    """tok/s over runs for a case (`?case_key=`), a suite (`?suite=`) or a bench case
    (`?bench_key=`), with the runs' table below the charts; without one, the suites to
    choose from."""
    names = harness_databases(datasette)
    name = request.args.get("db") or (names[0] if names else None)
    if name not in names:
        raise NotFound(f"no harness database named {name}")
    db = datasette.get_database(name)
    case_key, suite = request.args.get("case_key"), request.args.get("suite")
    bench_key = request.args.get("bench_key")
    context = {
        "db": name,
        "case_key": case_key,
        "suite": suite,
        "bench_key": bench_key,
        "charts": [],
        "rows": [],
    }
    titles = ("prefill tok/s", "decode tok/s")
    if bench_key:
        rows = [dict(r) for r in await db.execute(canned()["bench_history"]["sql"], [bench_key])]
        samples = [dict(r) for r in await db.execute(BENCH_SAMPLES, [bench_key])]
        prefill, decode = _bench_view(samples)
        titles = ("prompt tok/s (median)", "generation tok/s (median)")
        context.update(
            title=f"bench {bench_key}",
            subtitle=", ".join(sorted({row["label"] for row in rows}))
            + ": generation as mlx_lm.benchmark times it, rank 0",
            rows=rows,
            **_links(name, "bench_history", {"bench_key": bench_key}),
        )
    elif case_key:
        rows = [dict(r) for r in await db.execute(canned()["case_history"]["sql"], [case_key])]
        prefill, decode = _case_view(rows)
        for row in rows:
            row["diagnoses"] = "; ".join(json.loads(row["diagnoses"] or "[]"))
        context.update(
            title=f"case {case_key}",
            subtitle=", ".join(sorted({row["label"] for row in rows})),
            rows=rows,
            **_links(name, "case_history", {"case_key": case_key}),
        )
    elif suite:
        rows = [dict(r) for r in await db.execute(canned()["suite_history"]["sql"], [suite])]
        prefill, decode, runs = _suite_view(rows)
        context.update(
            title=f"suite {suite}",
            subtitle="geometric mean over each run's cases",
            rows=runs,
            **_links(name, "suite_history", {"suite": suite}),
        )
    else:
        suites = await db.execute("select distinct suite from runs order by suite")
        context.update(title="tok/s history", suites=[row["suite"] for row in suites])
        prefill = decode = None
    if prefill is not None:
        context["charts"] = [
            Markup(line_chart(titles[0], prefill)),
            Markup(line_chart(titles[1], decode)),
        ]
    html = await datasette.render_template("harness_history.html", context, request=request)
    return Response.html(html)
