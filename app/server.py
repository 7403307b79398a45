"""The review app's web layer (I/O): Starlette routes that render tasks.review's queues and record decisions.

Safety: binds 127.0.0.1 by default; with a token (RAGLOOP_REVIEW_TOKEN, required off loopback) every
request must carry it (Authorization: Bearer, or the cookie a first `?token=` visit sets). Every state
change is a JSON POST with a CSRF token bound to the session cookie. Templates autoescape and never mark
document, question or answer text safe; a Content-Security-Policy allows only the package's own script
and stylesheet, so no inline script can run. The app writes only through the Lake.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ragloop.tasks import review
from ragloop.tasks.settings import LogsConfig
from ragloop.tasks.storage import Lake

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
SESSION_COOKIE, TOKEN_COOKIE, REVIEWER_COOKIE = "ragloop_review_session", "ragloop_review_token", "ragloop_reviewer"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
QUEUES = ("golden", "stale", "answers", "compare", "production")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """ReviewError (exit 2) when the app would listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise review.ReviewError(f"--host {host} is reachable from other machines: set RAGLOOP_REVIEW_TOKEN to a secret "
                                 "(every request must then carry it), or keep the default 127.0.0.1")


class _Guard(BaseHTTPMiddleware):
    """Host check, token check, session cookie and CSRF check on POST, security headers."""

    def __init__(self, app, state: "AppState") -> None:
        super().__init__(app)
        self.state = state

    async def dispatch(self, request: Request, call_next) -> Response:
        st = self.state
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if st.allowed_hosts is not None and host not in st.allowed_hosts:
            return PlainTextResponse("unknown host", status_code=400)
        if st.token:
            given = request.cookies.get(TOKEN_COOKIE) or ""
            auth = request.headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            query_token = request.query_params.get("token")
            if query_token and request.method == "GET" and hmac.compare_digest(query_token, st.token):
                target = request.url.remove_query_params("token")
                response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""), status_code=303)
                self._cookie(response, TOKEN_COOKIE, st.token)
                return self._headers(response)
            if not (given and hmac.compare_digest(given, st.token)):
                return self._headers(PlainTextResponse("a review token is required (RAGLOOP_REVIEW_TOKEN): open the URL "
                                                       "with ?token=... or send Authorization: Bearer ...", status_code=401))
        session = request.cookies.get(SESSION_COOKIE)
        new_session = None
        if not session:
            if request.method == "POST":
                return self._headers(JSONResponse({"error": "no session: load a page first"}, status_code=403))
            new_session = session = secrets.token_urlsafe(24)
        request.state.session = session
        request.state.csrf = st.csrf(session)
        if request.method == "POST":
            sent = request.headers.get("x-csrf-token") or ""
            if not hmac.compare_digest(sent, request.state.csrf):
                return self._headers(JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403))
            if not (request.headers.get("content-type") or "").startswith("application/json"):
                return self._headers(JSONResponse({"error": "expected application/json"}, status_code=415))
        response = await call_next(request)
        if new_session:
            self._cookie(response, SESSION_COOKIE, new_session)
        return self._headers(response)

    @staticmethod
    def _cookie(response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", path="/")

    @staticmethod
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response


class AppState:
    """What the routes share: the lake, the default reviewer, the token, the CSRF secret and a cached index."""

    def __init__(self, lake_uri: str, reviewer: str | None, token: str | None, allowed_hosts, index_factory,
                 line: str | None = None, logs: LogsConfig | None = None) -> None:
        self.lake = Lake(lake_uri)
        self.logs = logs or LogsConfig()  # what counts as negative feedback (the production queue)
        self.line = line
        self.reviewer = (reviewer or "").strip() or None
        self.token = token or None
        self.allowed_hosts = allowed_hosts
        self.secret = secrets.token_bytes(32)
        self._index_factory = index_factory
        self._index, self._index_key = None, None
        self._lock = threading.Lock()

    def csrf(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def index(self) -> review.MemoryIndex:
        """The served index, reloaded when serving moves."""
        key = json.dumps([self.lake.read_ref("serving"), self.lake.read_ref("candidate")], sort_keys=True)
        with self._lock:
            if self._index is None or key != self._index_key:
                self._index, self._index_key = self._index_factory(self.lake), key
            return self._index


# -- view models --------------------------------------------------------------------------------------
def _params(request: Request) -> dict[str, str]:
    q = request.query_params
    return {k: (q.get(k) or "").strip() for k in ("line", "run", "type", "folder", "status", "item")}


def _skipped(request: Request) -> list[str]:
    return [s for s in (request.query_params.get("skipped") or "").split(",") if s]


def _chunk_views(index: review.MemoryIndex, row: dict, ids: list[str], references: set[str]) -> list[dict]:
    found = index.get(ids)
    out = []
    for cid in ids:
        info = found.get(cid)
        if info is None:
            out.append({"chunk_id": cid, "missing": True})
            continue
        out.append({"chunk_id": cid, "doc_id": info.doc_id, "headings": info.headings, "missing": False,
                    "reference": cid in references, "segments": review.highlight(info.text, review.evidence_spans(row, cid))})
    return out


def _progress(state: review.QueueState) -> dict:
    return {"done": state.done, "left": state.left, "by_reviewer": state.by_reviewer}


def _visible(state: review.QueueState, p: dict[str, str]) -> list[dict]:
    items = review.filter_items(state.items, p["type"], p["folder"])
    pending = set(state.pending)
    if p["status"] == "decided":
        return [i for i in items if i["qa_id"] not in pending]
    if p["status"] in ("", "pending"):
        return [i for i in items if i["qa_id"] in pending]
    return items


def _pick(state: review.QueueState, visible: list[dict], p: dict[str, str], skipped: list[str]) -> dict | None:
    by_id = {i["qa_id"]: i for i in visible}
    if p["item"] in by_id:
        return by_id[p["item"]]
    if p["status"] in ("", "pending"):
        nxt = review.next_pending(state, visible, skipped)
        return by_id.get(nxt) if nxt else None
    fresh = [i for i in visible if i["qa_id"] not in set(skipped)]
    return (fresh or visible or [None])[0]


def golden_context(st: AppState, p: dict[str, str], skipped: list[str], queue: str) -> dict[str, Any]:
    """What the golden and stale pages show for the line: both queues' progress, the filters, one item."""
    lake, index = st.lake, st.index()
    line = p["line"] or st.line or review.default_line(lake)
    if not line:
        return {"queue": queue, "empty_lake": True}
    ref, rows, events = review.effective_rows(lake, line)
    stale = review.stale_ids(rows, index.chunk_ids())
    states = {"golden": review.golden_queue(rows, stale, events, line), "stale": review.stale_queue(rows, stale, events, line)}
    state = states[queue]
    visible = _visible(state, p)
    item = _pick(state, visible, p, skipped)
    latest = review.latest_events(events, ("golden", "stale"), line=line)
    ctx: dict[str, Any] = {
        "queue": queue, "line": line, "golden_set_id": ref.golden_set_id, "lines": sorted(review.promotion.Refs(lake).lines().lines),
        "progress": {k: _progress(v) for k, v in states.items()}, "params": p, "item": item,
        "types": sorted({i["qa_type"] for i in state.items}), "folders": sorted({review.item_folder(i) for i in state.items}),
        "visible": len(visible), "reject_reasons": review.REJECT_REASONS, "latest": None, "base_event_id": "",
    }
    if item is None:
        return ctx
    last = latest.get(item["qa_id"])
    ctx.update(latest=last, base_event_id=last["event_id"] if last else "")
    refs = set(item["reference_chunk_ids"])
    ids = list(dict.fromkeys(item["reference_chunk_ids"] + item["source_chunk_ids"]))
    ctx["chunks"] = _chunk_views(index, item, ids, refs)
    if queue == "stale":
        ctx["diffs"] = stale_diffs(index, item, events)
        try:
            ctx["reapproval"] = review.reapproval(item, index, events)
        except review.ReviewError as exc:
            ctx["reapproval_error"] = str(exc)
    return ctx


def stale_diffs(index: review.MemoryIndex, item: dict, events: list[dict]) -> list[dict]:
    """Per lost source chunk: its old text (as approved) against the most similar chunk of its document now."""
    present = index.chunk_ids()
    lost = [c for c in item["source_chunk_ids"] if c not in present]
    old = {**{c: i.text for c, i in index.old(lost).items()}, **review.old_chunk_texts(events, lost)}
    out = []
    for cid in lost:
        candidates = [c for d in item["source_doc_ids"] for c in index.doc_chunks(d)]
        match = review.best_match(old.get(cid, ""), candidates)
        out.append({"old_id": cid, "old_known": cid in old, "new": match,
                    "diff": review.word_diff(old.get(cid, ""), match.text if match else "")})
    return out


def answers_context(st: AppState, p: dict[str, str], skipped: list[str], queue: str) -> dict[str, Any]:
    """The answers queue (grade) or compare queue (baseline vs candidate) of an eval run."""
    lake, index = st.lake, st.index()
    runs = review.eval_runs(lake)
    if queue == "compare":
        runs = [r for r in runs if r["baseline_run_id"]]
    ctx: dict[str, Any] = {"queue": queue, "runs": runs, "params": p, "item": None, "grades": review.GRADES}
    usable = []
    for r in runs:
        table = lake.read_eval_items(r["run_id"])
        if table is not None and any(a is not None for a in table.column("answer").to_pylist()):
            usable.append(r)
    ctx["runs"] = usable
    run_id = p["run"] or (usable[0]["run_id"] if usable else "")
    if not run_id:
        return ctx
    run, items = review.answer_items(lake, run_id)
    events = review.read_events(lake)
    state = review.answers_queue(items, events, run_id, queue)
    other_queue = "compare" if queue == "answers" else "answers"
    progress = {queue: _progress(state)}
    if other_queue == "answers" or run["baseline_run_id"]:  # a run without a baseline has nothing to compare
        progress[other_queue] = _progress(review.answers_queue(items, events, run_id, other_queue))
    visible = _visible(state, p)
    item = _pick(state, visible, p, skipped)
    latest = review.latest_events(events, (queue,), run_id=run_id)
    ctx.update(run=run, progress=progress,
               types=sorted({i["qa_type"] for i in items}), folders=sorted({review.item_folder(i) for i in items}),
               visible=len(visible), item=item, latest=None, base_event_id="")
    if item is None:
        return ctx
    last = latest.get(item["qa_id"])
    ctx.update(latest=last, latest_after=json.loads(last["after"]) if last else {}, base_event_id=last["event_id"] if last else "")
    ctx["retrieved"] = _chunk_views(index, {"evidence": []}, item["retrieved_chunk_ids"], set(item["reference_chunk_ids"]))
    if queue == "compare" and run["baseline_run_id"]:
        try:
            _, base_items = review.answer_items(lake, run["baseline_run_id"])
            ctx["baseline"] = next((b for b in base_items if b["qa_id"] == item["qa_id"]), None)
        except review.ReviewError:
            ctx["baseline"] = None
    return ctx


def production_context(st: AppState, p: dict[str, str], skipped: list[str], queue: str) -> dict[str, Any]:
    """The production queue: logged questions rated down or not covered by the golden set, with the logged
    answer and contexts; a promoted one joins the line (the line selector) when reviews are applied."""
    from ragloop.tasks import production

    lake = st.lake
    line = p["line"] or st.line or review.default_line(lake)
    if not line:
        return {"queue": queue, "empty_lake": True}
    ref, _ = review.line_head(lake, line)
    candidates = [dict(c, qa_id=c["log_id"], qa_type="+".join(c["reasons"]), source_doc_ids=[])
                  for c in production.review_candidates(lake, st.logs)]
    events = review.read_events(lake)
    state = review.production_queue(candidates, events)
    visible = _visible(state, p)
    item = _pick(state, visible, p, skipped)
    latest = review.latest_events(events, ("production",))
    ctx: dict[str, Any] = {"queue": queue, "line": line, "golden_set_id": ref.golden_set_id,
                           "lines": sorted(review.promotion.Refs(lake).lines().lines), "progress": {queue: _progress(state)},
                           "params": p, "item": item, "types": sorted({i["qa_type"] for i in state.items}), "folders": [],
                           "visible": len(visible), "latest": None, "base_event_id": ""}
    if item is not None:
        last = latest.get(item["qa_id"])
        ctx.update(latest=last, base_event_id=last["event_id"] if last else "")
        ctx["contexts"] = list(item.get("contexts") or [])
    return ctx


def production_candidate(st: AppState, log_id: str) -> dict:
    """The logged question a production decision is about; ReviewError when it is not a candidate."""
    from ragloop.tasks import production

    found = next((c for c in production.review_candidates(st.lake, st.logs) if c["log_id"] == log_id), None)
    if found is None:
        raise review.ReviewError(f"log {log_id} is not a production candidate (rated down or uncovered) in {st.lake.uri}")
    return found


CONTEXTS = {"golden": golden_context, "stale": golden_context, "answers": answers_context, "compare": answers_context,
            "production": production_context}


# -- the app ------------------------------------------------------------------------------------------
def create_app(lake_uri: str, reviewer: str | None = None, token: str | None = None,
               allowed_hosts: set[str] | None = None, index_factory=review.LakeIndex, line: str | None = None,
               logs: LogsConfig | None = None) -> Starlette:
    """The review app over one lake. allowed_hosts: Host header names accepted (None: any; `serve` passes the
    loopback names when bound to loopback, against DNS rebinding)."""
    st = AppState(lake_uri, reviewer, token, allowed_hosts, index_factory, line, logs)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["short"] = lambda s, n=12: (s or "")[:n]

    def reviewer_of(request: Request) -> str | None:
        return (request.cookies.get(REVIEWER_COOKIE) or "").strip()[:80] or st.reviewer

    def render(name: str, request: Request, **ctx) -> str:
        return env.get_template(name).render(csrf=request.state.csrf, reviewer=reviewer_of(request), queues=QUEUES,
                                             query=lambda **kw: urlencode({k: v for k, v in kw.items() if v}), **ctx)

    def page(queue: str):
        async def endpoint(request: Request) -> Response:
            p = _params(request)
            try:
                ctx = CONTEXTS[queue](st, p, [], queue)
            except review.ReviewError as exc:
                return HTMLResponse(render("error.html", request, queue=queue, error=str(exc)), status_code=400)
            return HTMLResponse(render("page.html", request, **ctx))
        return endpoint

    async def fragment(request: Request) -> Response:
        queue = request.path_params["queue"]
        if queue not in QUEUES:
            return JSONResponse({"error": f"unknown queue {queue}"}, status_code=404)
        try:
            ctx = CONTEXTS[queue](st, _params(request), _skipped(request), queue)
        except review.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        item = ctx.get("item")
        return JSONResponse({"item_id": item["qa_id"] if item else None,
                             "item_html": render("item.html", request, **ctx),
                             "progress_html": render("progress.html", request, **ctx)})

    async def search(request: Request) -> Response:
        q = (request.query_params.get("q") or "").strip()[:200]
        hits = st.index().search(q, 8) if q else []
        return HTMLResponse(render("search_results.html", request, hits=hits, q=q))

    async def _body(request: Request) -> dict:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError:
            raise review.ReviewError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise review.ReviewError("the request body must be a JSON object")
        return data

    async def decide(request: Request) -> Response:
        try:
            data = await _body(request)
            name = reviewer_of(request)
            if not name:
                raise review.ReviewError("no reviewer: enter your name first")
            payload = data.get("payload") or {}
            if not isinstance(payload, dict):
                raise review.ReviewError("payload must be an object")
            d = review.Decision(queue=str(data.get("queue", "")), item_id=str(data.get("item_id", "")),
                                action=str(data.get("action", "")), reviewer=name, payload=payload,
                                base_event_id=str(data.get("base_event_id") or "") or None)
            if d.queue in ("golden", "stale"):
                line = str(data.get("line") or "") or st.line or review.default_line(st.lake)
                event = review.record_decision(st.lake, d, line=line, index=st.index())
            elif d.queue == "production":
                line = str(data.get("line") or "") or st.line or review.default_line(st.lake)
                event = review.record_decision(st.lake, d, line=line, index=st.index(),
                                               candidate=production_candidate(st, d.item_id))
            else:
                run_id = str(data.get("run") or "")
                if d.queue == "compare":
                    run = next((r for r in review.eval_runs(st.lake) if r["run_id"] == run_id), None)
                    d.payload = {**payload, "baseline_run_id": run["baseline_run_id"] if run else None}
                event = review.record_decision(st.lake, d, run_id=run_id or None)
        except review.ReviewConflict as exc:
            e = exc.latest
            return JSONResponse({"conflict": {"event_id": e["event_id"], "reviewer": e["reviewer"], "action": e["action"],
                                              "at": e["at"].isoformat(), "after": json.loads(e["after"] or "{}")},
                                 "error": str(exc)}, status_code=409)
        except review.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"event_id": event["event_id"], "action": event["action"], "item_id": event["item_id"]})

    async def apply(request: Request) -> Response:
        try:
            data = await _body(request)
            line = str(data.get("line") or "") or st.line or review.default_line(st.lake)
            if not line:
                raise review.ReviewError("the lake has no golden-set line")
            result = review.apply_reviews(st.lake, line)
            if result["status"] != "ok":
                return JSONResponse({"error": result["error"], **result}, status_code=409)
            promote_to = str(data.get("promote_to") or "").strip()
            if promote_to:
                result["promotion"] = review.promote_curated(st.lake, line, promote_to)
        except (review.ReviewError, review.promotion.PromotionError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(result)

    async def set_reviewer(request: Request) -> Response:
        try:
            data = await _body(request)
        except review.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        name = str(data.get("name") or "").strip()[:80]
        if not name:
            return JSONResponse({"error": "a name is required"}, status_code=400)
        response = JSONResponse({"reviewer": name})
        response.set_cookie(REVIEWER_COOKIE, name, httponly=True, samesite="strict", path="/", max_age=3600 * 24 * 365)
        return response

    async def home(request: Request) -> Response:
        return RedirectResponse("/golden", status_code=303)

    routes = [Route("/", home), *(Route(f"/{q}", page(q)) for q in QUEUES),
              Route("/fragment/{queue}", fragment), Route("/api/search", search),
              Route("/api/decide", decide, methods=["POST"]), Route("/api/apply", apply, methods=["POST"]),
              Route("/api/reviewer", set_reviewer, methods=["POST"]),
              Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static")]
    app = Starlette(routes=routes, middleware=[Middleware(_Guard, state=st)])
    app.state.review = st
    return app


def serve(lake_uri: str, host: str = "127.0.0.1", port: int = 8765, reviewer: str | None = None,
          token: str | None = None, line: str | None = None, logs: LogsConfig | None = None) -> None:
    """Run the app with uvicorn until interrupted (ReviewError before binding when a token is missing)."""
    import uvicorn

    check_bind(host, token)
    allowed = {"127.0.0.1", "localhost", "::1"} if is_loopback(host) else None
    app = create_app(lake_uri, reviewer, token, allowed, line=line, logs=logs)
    uvicorn.run(app, host=host, port=port, log_level="warning")
