"""The service's datasette plugin: the pages a team opens after a nightly (the HUD at `/`,
a run, a case, a compare), byte-identical golden downloads with the goldens index kept in
step with the directory, the suite and bench history charts, and errors answered as one
sentence with the right status (one log line each, never a traceback for user input).

Registered by `harness.service.app.build` (not through an entry point), so it is active only
in `harness serve`, never in an unrelated datasette of the same environment.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import weakref
from pathlib import Path
from urllib.parse import quote, urlencode

import sqlite_utils
from datasette import hookimpl
from datasette.utils.asgi import BadRequest, Base400, NotFound, Response, asgi_send_file
from datasette.views.base import DatasetteError
from markupsafe import Markup, escape

from harness.errors import HarnessError
from harness.records import rundiff
from harness.service import goldens_index, history, pages
from harness.service.plot import FAILING_COLOUR, line_chart
from harness.service.queries import canned
from harness.status import FAILING, BenchStatus, CaseStatus, RunStatus

NAME = "harness"
GOLDENS_DB = "goldens"
log = logging.getLogger("harness.service")
# datasette 0.65 raises these for a bad `_sort` / `_sort_desc` parameter with its default
# status, 500 (views/table.py): the client's mistake, answered here as a 400.
SORT_ERRORS = ("Cannot sort table by", "Cannot use _sort and _sort_desc")
# The goldens directory's signature when the index was last built, per served datasette.
_indexed: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(pm) -> None:
    # datasette's own handler prints a rich traceback with locals (about 250 lines) for
    # every error, a 404 included; ours logs one line and answers the same statuses.
    if pm.get_plugin("datasette.handle_exception") is not None:
        pm.unregister(name="datasette.handle_exception")
    if not pm.is_registered(sys.modules[__name__]):
        pm.register(sys.modules[__name__], name=NAME)


# The goldens directory per served datasette: kept out of datasette's metadata and plugin
# config, which /-/metadata.json would show to every client.
_goldens_dirs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def configure(datasette, directory: Path) -> None:
    _goldens_dirs[datasette] = directory.resolve()


def goldens_dir(datasette) -> Path:
    return _goldens_dirs[datasette]


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
    canned_names = tuple(canned())

    def wrap(app):
        async def refreshed(scope, receive, send):
            path = scope.get("path", "")
            if scope["type"] == "http":
                # A canned query is read-only here: datasette answers a POST to one with a
                # 500 (it expects a writable query); say what is allowed instead.
                parts = path.strip("/").split("/")
                if (
                    scope["method"] == "POST"
                    and len(parts) == 2
                    and parts[1].split(".")[0] in canned_names
                ):
                    log.warning("405 POST %s: canned queries are read-only", path)
                    response = Response.text("canned queries are read-only: use GET\n", status=405)
                    response.headers["Allow"] = "GET"
                    await response.asgi_send(send)
                    return
                # Only the pages that show goldens pay for looking at the directory.
                if path.startswith((f"/{GOLDENS_DB}", "/-/goldens", "/-/case/")):
                    await refresh_index(datasette)
            await app(scope, receive, send)

        return refreshed

    return wrap


@hookimpl
def register_routes():
    return [
        (r"^/$", hud_page),
        (r"^/-/run/(?P<db>[^/]+)/(?P<run_id>[^/]+)$", run_page),
        (r"^/-/case/(?P<db>[^/]+)/(?P<key>[^/]+?)(?P<json>\.json)?$", case_page),
        (r"^/-/compare/(?P<db>[^/]+)$", compare_page),
        (r"^/-/goldens/(?P<name>.*)$", golden_download),
        (r"^/-/history$", history_page),
    ]


@hookimpl
def handle_exception(datasette, request, exception):
    """Every error as one sentence with its status: 4xx for what the client asked, 500 only
    for a fault of the service; one log line each."""

    async def inner():
        if isinstance(exception, pages.Missing | pages.BadRequest):
            status = 404 if isinstance(exception, pages.Missing) else 400
            message = str(exception)
        elif isinstance(exception, Base400):
            status, message = exception.status, str(exception.args[0] if exception.args else "")
        elif isinstance(exception, DatasetteError):
            status, message = exception.status, exception.message
            if status == 500 and message.startswith(SORT_ERRORS):
                status = 400
        elif isinstance(exception, sqlite3.OperationalError):
            # A parameter that made datasette's SQL invalid (a sort by a column that does
            # not exist, a filter on one): the request's fault, not the service's.
            status, message = 400, f"the database refused that request: {exception}"
        else:
            status, message = 500, f"internal error: {type(exception).__name__}: {exception}"
        line = f"{status} {request.method} {request.path}: {message}".splitlines()[0]
        (log.error if status >= 500 else log.warning)(line)
        info = {"ok": False, "error": str(message), "status": status, "title": None}
        if request.path.endswith(".json") or request.args.get("_shape"):
            return Response.json(info, status=status)
        html = await datasette.render_template("error.html", info, request=request)
        return Response.html(html, status=status)

    return inner


def _database(datasette, name: str):
    if name not in harness_databases(datasette):
        raise NotFound(f"there is no harness database named '{name}' on this service")
    return datasette.get_database(name)


async def _read(db, fn, *args):
    """Run a pages function on datasette's read connection (its refusals, `pages.Missing`
    and `pages.BadRequest`, answer 404 and 400 in `handle_exception`)."""
    return await db.execute_fn(lambda conn: fn(conn, *args))


async def _page(datasette, request, template: str, context: dict) -> Response:
    html = await datasette.render_template(template, context, request=request)
    return Response.html(html)


async def hud_page(datasette, request):
    """Each database's suites: the latest run of each as a grid of its cases."""
    strip = pages.positive(request.args.get("strip"), "strip", pages.STRIP, 50)
    databases = []
    for name in harness_databases(datasette):
        grids = await _read(datasette.get_database(name), pages.hud, strip)
        databases.append({"name": name, "grids": grids})
    return await _page(
        datasette,
        request,
        "harness_hud.html",
        {"databases": databases, "failing": FAILING, "strip": strip},
    )


async def run_page(datasette, request):
    name = request.url_vars["db"]
    db = _database(datasette, name)
    run_id = request.url_vars["run_id"]
    if not run_id.isdigit():
        raise NotFound(f"'{run_id}' is not a run id: run ids are whole numbers")
    run, cases = await _read(db, pages.run_page, int(run_id))
    await refresh_index(datasette)
    goldens = await datasette.get_database(GOLDENS_DB).execute("select key from goldens")
    context = {"db": name, "run": run, "cases": cases, "failing": FAILING}
    context["golden_keys"] = {row["key"] for row in goldens}
    return await _page(datasette, request, "harness_run.html", context)


async def case_page(datasette, request):
    """A case's history: charts over a window of runs, its rows newest first (paged), its
    golden and the ladder of its last failure; `.json` answers the rows with paging links."""
    name, key = request.url_vars["db"], request.url_vars["key"]
    db = _database(datasette, name)
    args = request.args
    size = pages.positive(args.get("_size"), "_size", pages.PAGE, pages.MAX_PAGE)
    before = pages.positive(args.get("before"), "before", 0, 2**62) or None
    rows, next_before = await _read(db, pages.case_history, key, before, size)
    base = f"/-/case/{quote(name)}/{quote(key)}"
    if request.url_vars.get("json"):
        next_url = None
        if next_before:
            next_url = datasette.absolute_url(
                request, f"{base}.json?{urlencode({'before': next_before, '_size': size})}"
            )
        return Response.json({"case_key": key, "rows": rows, "next_url": next_url})
    window = pages.positive(args.get("range"), "range", pages.WINDOW, pages.MAX_WINDOW)
    prefill, decode, runs = await _read(db, pages.case_chart, key, window)
    failure = await _read(db, pages.last_failure, key)
    golden = [
        dict(row)
        for row in await datasette.get_database(GOLDENS_DB).execute(
            "select * from goldens where key = ?", [key]
        )
    ]
    context = {
        "db": name,
        "key": key,
        "label": rows[0]["label"] if rows else key,
        "rows": rows,
        "charts": [
            Markup(line_chart("prefill tok/s (model calls)", prefill, runs)),
            Markup(line_chart("decode tok/s (model calls)", decode, runs)),
        ],
        "window": window,
        "shown_runs": len(runs),
        "golden": golden[0] if golden else None,
        "failure": failure,
        "failing": FAILING,
        "next_url": f"{base}?{urlencode({'before': next_before, 'range': window})}"
        if next_before
        else None,
        "json_url": f"{base}.json",
        "newest_url": base if before else None,
    }
    return await _page(datasette, request, "harness_case.html", context)


async def compare_page(datasette, request):
    """Two runs compared as `harness compare` does: `?a=ID&b=ID`, or `?suite=S` for the
    suite's latest run against the one before it."""
    name = request.url_vars["db"]
    db = _database(datasette, name)
    a, b, suite = (request.args.get(k, "").strip() for k in ("a", "b", "suite"))
    context = {"db": name, "a": a, "b": b, "suite": suite, "result": None, "failing": FAILING}
    if suite and not (a or b):
        a_id, b_id = await _read(db, pages.latest_pair, suite)
        a, b = str(a_id), str(b_id)
    if a or b:
        for spec, side in ((a, "a"), (b, "b")):
            if not spec.isdigit():
                raise BadRequest(f"'{side}' must be a run id (a whole number), not '{spec}'")

        def judge(conn):
            stored = sqlite_utils.Database(conn)
            try:
                return rundiff.compare_stored(stored, a, name, stored, b, name)
            except HarnessError as exc:
                raise pages.Missing(str(exc)) from None

        context["result"] = await _read(db, judge)
        context.update(a=a, b=b)
    context["suites"] = await _read(db, pages.comparable_suites)
    return await _page(datasette, request, "harness_compare.html", context)


async def golden_download(datasette, request, send):
    """The golden's file exactly as it is on disk; anything but KEY.npz or KEY.json of a
    listed golden is a 404 (no path ever reaches the filesystem unchecked)."""
    file_name = request.url_vars["name"]
    key, _, ext = file_name.rpartition(".")
    path = goldens_index.golden_file(goldens_dir(datasette), key, ext) if key else None
    if path is None:
        raise NotFound(f"there is no golden file '{file_name}'")
    await asgi_send_file(send, path, content_type=goldens_index.CONTENT_TYPES[ext])


def _get(row, column: str):
    try:
        return row[column]
    except (KeyError, IndexError):
        return None


# A status column's colour, whichever vocabulary it holds (a case's, a bench case's, a run's).
STATUS_COLOURS = {
    **dict.fromkeys((CaseStatus.PASS, BenchStatus.OK, RunStatus.PASSED), "#2da44e"),
    **dict.fromkeys((*FAILING, RunStatus.FAILED), FAILING_COLOUR),
    CaseStatus.SKIP: "#8c959f",
    RunStatus.RUNNING: "#bf8700",
}


@hookimpl
def render_cell(row, value, column, database, datasette):
    """In datasette's own tables: runs link to their page, case keys to the case page,
    suites and bench keys to their history, goldens to their download and case; statuses
    are coloured as on the HUD, diagnoses read as a sentence."""
    if value in (None, ""):
        return None
    if database == GOLDENS_DB:
        # The key is the table's primary key, which datasette links to the row itself: the
        # downloads and the case hang on the file's hash instead.
        if column != "sha256":
            return None
        key = quote(str(row["key"]))
        cases = " ".join(
            f'<a href="/-/case/{quote(name)}/{key}">case in {escape(name)}</a>'
            for name in harness_databases(datasette)
        )
        return Markup(
            f'<a href="/-/goldens/{key}.npz" title="download">{escape(value[:16])}</a> '
            f'<a href="/-/goldens/{key}.json">sidecar</a> {cases}'
        )
    db = quote(database)
    if column == "run_id" and isinstance(value, int):
        return Markup(f'<a href="/-/run/{db}/{value}">{value}</a>')
    if column == "case_key":
        return Markup(f'<a href="/-/case/{db}/{quote(str(value))}">{escape(value)}</a>')
    if column == "suite" and _get(row, "kind") == "bench" and _get(row, "run_id"):
        # A bench run's history is per bench case: its page links to each.
        return Markup(f'<a href="/-/run/{db}/{_get(row, "run_id")}">{escape(value)}</a>')
    if column in ("suite", "bench_key"):
        query = urlencode({"db": database, column: value})
        return Markup(f'<a href="/-/history?{escape(query)}">{escape(value)}</a>')
    if column.startswith("status") or column == "run_status":
        if colour := STATUS_COLOURS.get(value):
            return Markup(
                f'<span style="background:{colour};color:#fff;padding:0 4px;border-radius:3px">'
                f"{escape(value)}</span>"
            )
    if column in ("diagnoses", "warnings") and str(value).startswith("["):
        try:
            return "; ".join(json.loads(value))
        except ValueError:
            return None
    return None


def _links(db: str, query: str, params: dict) -> dict:
    return {
        "query_url": f"/{db}/{query}?{urlencode(params)}",
        "json_url": f"/{db}/{query}.json?{urlencode({**params, '_shape': 'array'})}",
    }


async def history_page(datasette, request):
    """tok/s over runs for a suite (`?suite=`) or a bench case (`?bench_key=`) with the runs'
    table below the charts; a case key goes to its case page; without one, what to pick."""
    names = harness_databases(datasette)
    name = request.args.get("db") or (names[0] if names else None)
    if name not in names:
        raise NotFound(f"there is no harness database named '{name}' on this service")
    db = datasette.get_database(name)
    case_key, suite = request.args.get("case_key"), request.args.get("suite")
    bench_key = request.args.get("bench_key")
    if case_key:
        return Response.redirect(f"/-/case/{quote(name)}/{quote(case_key)}")
    window = pages.positive(request.args.get("range"), "range", pages.WINDOW, pages.MAX_WINDOW)
    context = {"db": name, "suite": suite, "bench_key": bench_key, "charts": [], "rows": []}
    context["window"] = window
    if bench_key:
        rows = history.window(
            [dict(r) for r in await db.execute(canned()["bench_history"]["sql"], [bench_key])],
            window,
        )
        if not rows:
            raise NotFound(f"there is no bench case with key '{bench_key}' in '{name}'")
        oldest = min(row["run_id"] for row in rows)
        samples = [dict(r) for r in await db.execute(history.BENCH_SAMPLES, [bench_key, oldest])]
        prefill, decode, info = history.bench_view(samples, rows)
        titles = ("prompt tok/s (median)", "generation tok/s (median)")
        context.update(
            title=f"bench {bench_key}",
            subtitle=", ".join(sorted({row["label"] for row in rows}))
            + ": generation as mlx_lm.benchmark times it, rank 0",
            rows=rows,
            **_links(name, "bench_history", {"bench_key": bench_key}),
        )
    elif suite:
        rows = history.window(
            [dict(r) for r in await db.execute(canned()["suite_history"]["sql"], [suite])],
            window,
        )
        if not rows:
            raise NotFound(f"there is no run of suite '{suite}' in '{name}'")
        prefill, decode, runs, info = history.suite_view(rows)
        titles = ("prefill tok/s (geometric mean)", "decode tok/s (geometric mean)")
        context.update(
            title=f"suite {suite}",
            subtitle="geometric mean over each run's cases",
            rows=runs,
            **_links(name, "suite_history", {"suite": suite}),
        )
    else:
        suites = await db.execute(
            "select distinct suite from runs where kind != 'bench' and suite is not null "
            "order by suite"
        )
        benches = await db.execute(
            "select bench_key, max(label) as label from bench_cases group by bench_key "
            "order by label"
        )
        context.update(
            title="tok/s history",
            suites=[row["suite"] for row in suites],
            benches=[dict(row) for row in benches],
        )
        prefill = decode = None
    if prefill is not None:
        context["charts"] = [
            Markup(line_chart(titles[0], prefill, info)),
            Markup(line_chart(titles[1], decode, info)),
        ]
    return await _page(datasette, request, "harness_history.html", context)
