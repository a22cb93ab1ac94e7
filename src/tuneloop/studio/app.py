"""The studio's web app: server-rendered pages over `tuneloop.feedback`.

Security by default, because the studio holds a team's data and judgments:

- no route but `/login`, `/health` and `/static/*` answers without a session (pages
  redirect to the login, `/api/*` says 401);
- sessions are random tokens kept in this process (a restart signs everyone out), in an
  HttpOnly, SameSite=Strict cookie that is also Secure behind TLS;
- every POST carries the session's CSRF token (a form field, or `X-CSRF-Token` for the
  page's own JSON calls); the login form has its own double-submit token;
- five failed logins per name or per client address in 15 minutes answer 429;
- every template is autoescaped and the Content-Security-Policy allows only this server's
  own script and stylesheet, so text inside a dataset can never run;
- file-like parameters are never paths: exports are found by dataset id among the task's
  own exports, static files by name among the two this package ships, and task sources
  from the web are registry references only (`eval:ID`, `run:ID`, `dataset:ID`).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneloop import api, feedback
from tuneloop.errors import Conflict, Forbidden, NotFound, TuneloopError

COOKIE = "tuneloop_studio"
LOGIN_COOKIE = "tuneloop_login"
SESSION_HOURS = 12
LOGIN_FAILURES = 5
LOGIN_WINDOW_S = 15 * 60
MAX_BODY = 1_000_000
STATIC = {"studio.css": "text/css; charset=utf-8", "studio.js": "text/javascript; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
WEB_SOURCES = ("eval:", "run:", "dataset:")


@dataclass
class Session:
    user: str
    csrf: str
    expires: float


class Unauthenticated(Exception):
    pass


class _Sessions:
    """Random tokens -> sessions, in memory; expired ones are dropped when seen."""

    def __init__(self, hours: float) -> None:
        self.hours = hours
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def new(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.time() + self.hours * 3600)
        with self._lock:
            self._by_token[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._by_token.get(token)
            if session is not None and session.expires < time.time():
                del self._by_token[token]
                return None
            return session

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


class _Limiter:
    """Failed logins per key (a name, a client address) in a sliding window."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit, self.window = limit, window_s
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, *keys: str) -> float:
        """Seconds until a login for these keys may be tried again (0: now)."""
        now = time.time()
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._fails.get(key[:200])
                if q is None:
                    continue
                while q and q[0] < now - self.window:
                    q.popleft()
                if not q:  # forget keys with no recent failure: memory stays bounded
                    del self._fails[key[:200]]
                elif len(q) >= self.limit:
                    wait = max(wait, q[0] + self.window - now)
        return wait

    def fail(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails[key[:200]].append(time.time())

    def clear(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key[:200], None)


def _int(text: str) -> int:
    """A path id: anything but plain digits is a 404 (never a parse error page)."""
    if not re.fullmatch(r"[0-9]{1,12}", text):
        raise NotFound(f"no such record: {text[:40]!r}")
    return int(text)


async def _capped_body(request: Any) -> bytes:
    """The request body, refused past MAX_BODY before it is all in memory (a declared
    Content-Length is checked first; a chunked body as it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared and (not declared.isascii() or not declared.isdigit() or int(declared) > MAX_BODY):
        raise TuneloopError(f"the request is larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise TuneloopError(f"the request is larger than {MAX_BODY} bytes")
    return bytes(body)


def _local(path: str | None) -> str:
    """A post-login target on this server only (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _curve(history: list[dict[str, Any]], width: int = 720, height: int = 240) -> dict | None:
    """SVG polyline points of the training loss (and validation loss) by step."""
    train = [(h["step"], h["loss"]) for h in history if isinstance(h.get("loss"), int | float)]
    held = [
        (h["step"], h["eval_loss"]) for h in history if isinstance(h.get("eval_loss"), int | float)
    ]
    both = train + held
    if not both:
        return None
    steps = [s for s, _ in both]
    values = [v for _, v in both]
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0

    def points(series: list[tuple[int, float]]) -> str:
        return " ".join(
            f"{10 + (s - s0) / (s1 - s0) * (width - 20):.1f},"
            f"{10 + (high - v) / (high - low) * (height - 30):.1f}"
            for s, v in series
        )

    return {
        "width": width,
        "height": height,
        "train": points(train),
        "eval": points(held) if held else "",
        "low": low,
        "high": high,
        "last_step": max(steps),
        "points": len(history),
    }


def create_app(
    secure_cookies: bool | None = None,
    session_hours: float = SESSION_HOURS,
    jobs_root: Any = None,
) -> Any:
    """The studio as an ASGI app. secure_cookies: None marks the cookie Secure when the
    request came over https (directly or per `X-Forwarded-Proto` from a TLS proxy).
    jobs_root: where background jobs keep their recipe and log (default under
    `$TUNELOOP_HOME/studio/jobs`)."""
    from contextlib import asynccontextmanager
    from pathlib import Path

    from tuneloop.studio.jobs import Jobs

    jobs = Jobs(Path(jobs_root) if jobs_root else api.home() / "studio" / "jobs")

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        jobs.stop_all()  # a studio that stops takes its running jobs down (checkpointed)

    app = FastAPI(
        title="tuneloop studio",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    env = Environment(
        loader=PackageLoader("tuneloop.studio", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    sessions = _Sessions(session_hours)
    limiter = _Limiter(LOGIN_FAILURES, LOGIN_WINDOW_S)

    def secure(request: Request) -> bool:
        if secure_cookies is not None:
            return secure_cookies
        proto = request.headers.get("x-forwarded-proto", request.url.scheme)
        return proto.split(",")[0].strip() == "https"

    def page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=code)

    def current(request: Request) -> tuple[feedback.User, Session]:
        token = request.cookies.get(COOKIE)
        session = sessions.get(token)
        if session is None:
            raise Unauthenticated
        try:
            user = feedback.get_user(session.user)
        except NotFound:
            user = None
        if user is None or user.disabled:  # removed or disabled since logging in
            sessions.drop(token)
            raise Unauthenticated
        return user, session

    def admin(user: feedback.User) -> None:
        if user.role != "admin":
            raise Forbidden("only admins can do this")

    def reader(user: feedback.User) -> None:
        """Runs, datasets, evaluations, agreement, leaderboards and exports name models and
        carry other people's votes: annotators, whose work must stay blind, see none of
        them (admins and viewers do)."""
        if user.role == "annotator":
            raise Forbidden(
                "annotators see only their own tasks and answers, so blind tasks stay blind"
            )

    async def form(request: Request, session: Session | None, csrf: str | None = None) -> dict:
        """The urlencoded body, after its CSRF token is checked."""
        kind = request.headers.get("content-type", "").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise TuneloopError("expected a form (application/x-www-form-urlencoded)")
        body = await _capped_body(request)
        fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        expected = csrf if csrf is not None else (session.csrf if session else None)
        if not expected or not secrets.compare_digest(fields.get("csrf", ""), expected):
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page")
        return fields

    async def json_body(request: Request, session: Session, empty_ok: bool = False) -> dict:
        token = request.headers.get("x-csrf-token", "")
        if not secrets.compare_digest(token, session.csrf):
            raise Forbidden("the X-CSRF-Token header is missing or wrong; reload the page")
        body = await _capped_body(request)
        if empty_ok and not body.strip():
            return {}
        try:
            data = json.loads(body)
        except ValueError as err:
            raise TuneloopError(f"the body is not JSON: {err}") from None
        if not isinstance(data, dict):
            raise TuneloopError("the body must be a JSON object")
        return data

    # --- errors and headers -----------------------------------------------------------------

    def status_of(err: Exception) -> int:
        if isinstance(err, Unauthenticated):
            return 401
        if isinstance(err, NotFound):
            return 404
        if isinstance(err, Forbidden):
            return 403
        if isinstance(err, Conflict):
            return 409
        return 400

    @app.exception_handler(Unauthenticated)
    async def _unauth(request: Request, err: Unauthenticated) -> Response:
        if request.url.path.startswith("/api/") or request.method != "GET":
            return JSONResponse({"error": "log in first"}, status_code=401)
        target = quote(_local(request.url.path), safe="/")
        return RedirectResponse(f"/login?next={target}", status_code=303)

    @app.exception_handler(TuneloopError)
    async def _error(request: Request, err: TuneloopError) -> Response:
        status = status_of(err)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(err)}, status_code=status)
        user = None
        try:
            user, session = current(request)
            csrf = session.csrf
        except Unauthenticated:
            csrf = ""
        return page("error.html", status, status=status, message=str(err), user=user, csrf=csrf)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)
        return page(
            "error.html",
            err.status_code,
            status=err.status_code,
            message=str(err.detail),
            user=None,
            csrf="",
        )

    @app.middleware("http")
    async def _headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    # --- open routes ------------------------------------------------------------------------

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise NotFound(f"no static file {name[:40]!r}")
        body = resources.files("tuneloop.studio").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    @app.get("/login")
    def login_page(request: Request, next: str = "/") -> Response:
        token = secrets.token_urlsafe(32)
        response = page("login.html", login_csrf=token, next=_local(next), user=None)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure(request),
            max_age=3600,
        )
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        fields = await form(request, None, csrf=request.cookies.get(LOGIN_COOKIE) or "")
        name, password = fields.get("name", ""), fields.get("password", "")
        client = f"ip:{request.client.host if request.client else '?'}"
        wait = limiter.blocked(f"name:{name}", client)
        if wait > 0:
            return page(
                "login.html",
                429,
                login_csrf=request.cookies.get(LOGIN_COOKIE),
                next=_local(fields.get("next")),
                user=None,
                error=f"too many failed logins; try again in {int(wait) + 1} s",
            )
        user = await run_in_threadpool(feedback.verify_login, name, password)
        if user is None:
            limiter.fail(f"name:{name}", client)
            return page(
                "login.html",
                401,
                login_csrf=request.cookies.get(LOGIN_COOKIE),
                next=_local(fields.get("next")),
                user=None,
                error="wrong name or password",
            )
        limiter.clear(f"name:{name}")
        token, _ = sessions.new(user.name)
        response = RedirectResponse(_local(fields.get("next")), status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=secure(request),
            max_age=int(session_hours * 3600),
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        _, session = current(request)
        await form(request, session)
        sessions.drop(request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # --- pages ------------------------------------------------------------------------------

    @app.get("/")
    def tasks_page(request: Request) -> Response:
        user, session = current(request)
        evals = feedback.recent_evals() if user.role == "admin" else []
        return page(
            "tasks.html",
            user=user,
            csrf=session.csrf,
            tasks=[feedback.visible_to(t, user) for t in feedback.list_tasks()],
            evals=evals,
        )

    @app.post("/tasks")
    async def create_task(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        f = await form(request, session)
        sources = [s.strip() for s in f.get("sources", "").replace(",", "\n").split("\n")]
        sources = [s for s in sources if s]
        for s in sources:
            if not s.startswith(WEB_SOURCES) or not re.fullmatch(
                r"[0-9]{1,12}", s.split(":", 1)[1]
            ):
                raise TuneloopError(
                    f"source {s[:60]!r}: the studio takes eval:ID, run:ID or dataset:ID "
                    "(files: `tuneloop studio task create --from FILE`)"
                )
        names = [a.strip() for a in f.get("annotators", "").split(",") if a.strip()]
        criteria = [c.strip() for c in f.get("criteria", "").split(",") if c.strip()]
        try:
            overlap = int(f.get("overlap") or 1)
            limit = int(f["limit"]) if f.get("limit") else None
        except ValueError:
            raise TuneloopError("overlap and limit must be whole numbers") from None
        task = await run_in_threadpool(
            feedback.create_task,
            f.get("name", "").strip(),
            f.get("kind", ""),
            sources,
            criteria=criteria or None,
            overlap=overlap,
            annotators=names or None,
            blind=f.get("blind") == "1",
            instructions=f.get("instructions", ""),
            limit=limit,
            actor=user.name,
        )
        return RedirectResponse(f"/tasks/{task.id}", status_code=303)

    def task_context(user: feedback.User, task_id: int) -> dict[str, Any]:
        task = feedback.visible_to(feedback.get_task(task_id), user)
        if user.role == "annotator":  # progress and their own pace only: nothing blind
            return {
                "task": task,
                "agreement": {},
                "leaderboard": None,
                "disagreements": [],
                "exports": [],
            }
        board = feedback.human_leaderboard([task_id]) if task.kind in ("compare", "rank") else None
        return {
            "task": task,
            "agreement": feedback.task_agreement(task_id),
            "leaderboard": board,
            "disagreements": feedback.disagreements(task_id, user) if user.role == "admin" else [],
            "exports": feedback.task_exports(task_id),
        }

    @app.get("/tasks/{task_id}")
    def task_page(request: Request, task_id: str, done: str = "") -> Response:
        user, session = current(request)
        notice = "Nothing left for you in this task: thank you." if done else None
        return page(
            "task.html",
            user=user,
            csrf=session.csrf,
            error=notice,
            **task_context(user, _int(task_id)),
        )

    @app.post("/tasks/{task_id}/annotate")
    async def annotate_next(request: Request, task_id: str) -> Response:
        """Take the next item (a POST: taking one reserves a place among its annotators)."""
        user, session = current(request)
        tid = _int(task_id)
        await form(request, session)
        item = await run_in_threadpool(feedback.next_item, tid, user)
        if item is None:
            return page(
                "task.html",
                user=user,
                csrf=session.csrf,
                **task_context(user, tid),
                error="Nothing left for you in this task: thank you.",
            )
        return RedirectResponse(f"/tasks/{tid}/items/{item}", status_code=303)

    @app.get("/tasks/{task_id}/items/{item_id}")
    def item_page(request: Request, task_id: str, item_id: str) -> Response:
        user, session = current(request)
        tid, iid = _int(task_id), _int(item_id)
        view = feedback.item_view(tid, iid, user)
        task = feedback.get_task(tid)
        data = {
            "kind": view["task"]["kind"],
            "answers": len(view["answers"]),
            "version": view["version"],
            "value": view["value"],
            "scale": view["task"]["scale"],
            "flags": view["task"]["flags"],
            "csrf": session.csrf,
            "url": f"/api/tasks/{tid}/items/{iid}",
            "next": f"/api/tasks/{tid}/next",
            "task_url": f"/tasks/{tid}",
            "item_prefix": f"/tasks/{tid}/items/",
        }
        mine = task.by_annotator.get(user.name, {}).get("submitted", 0)
        return page(
            "annotate.html",
            user=user,
            csrf=session.csrf,
            view=view,
            data=data,
            total=task.items,
            mine=mine,
        )

    @app.post("/tasks/{task_id}/items/{item_id}/resolve")
    async def resolve(request: Request, task_id: str, item_id: str) -> Response:
        user, session = current(request)
        admin(user)
        tid, iid = _int(task_id), _int(item_id)
        f = await form(request, session)
        value: dict[str, Any]
        if "winner" in f:
            w = f["winner"]
            value = {"winner": int(w) if w in ("0", "1") else w}
        elif "ranking" in f:
            try:
                value = {"ranking": [int(x) for x in f["ranking"].split(",") if x.strip()]}
            except ValueError:
                raise TuneloopError("ranking: answer indices separated by commas") from None
        else:
            value = {"correction": f.get("correction", "")}
        await run_in_threadpool(feedback.resolve, tid, iid, value, user)
        return RedirectResponse(f"/tasks/{tid}#disagreement-{iid}", status_code=303)

    @app.post("/tasks/{task_id}/export")
    async def export(request: Request, task_id: str) -> Response:
        user, session = current(request)
        admin(user)
        tid = _int(task_id)
        f = await form(request, session)
        done = await run_in_threadpool(
            lambda: feedback.export_task(tid, f.get("kind", ""), actor=user.name)
        )
        return page(
            "task.html", user=user, csrf=session.csrf, exported=done, **task_context(user, tid)
        )

    @app.get("/tasks/{task_id}/exports/{name}")
    def download(request: Request, task_id: str, name: str) -> Response:
        user, _ = current(request)
        reader(user)
        tid = _int(task_id)
        if not name.endswith(".jsonl"):
            raise NotFound(f"no export {name[:40]!r}")
        path = feedback.export_file(tid, _int(name.removesuffix(".jsonl")))
        return Response(
            path.read_bytes(),
            media_type="application/x-ndjson",
            headers={
                "Content-Disposition": f'attachment; filename="task{tid}-{path.stem[:40]}.jsonl"'
            },
        )

    @app.get("/users")
    def users_page(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        return page("users.html", user=user, csrf=session.csrf, users=feedback.list_users())

    @app.post("/users")
    async def create_user(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        f = await form(request, session)
        created, password = await run_in_threadpool(
            lambda: feedback.create_user(
                f.get("name", "").strip(), f.get("role", "annotator"), actor=user.name
            )
        )
        return page(
            "users.html",
            user=user,
            csrf=session.csrf,
            users=feedback.list_users(),
            created=created,
            password=password,
        )

    @app.get("/leaderboard")
    def leaderboard_page(request: Request) -> Response:
        user, session = current(request)
        reader(user)
        return page(
            "leaderboard.html", user=user, csrf=session.csrf, board=feedback.human_leaderboard()
        )

    @app.get("/audit")
    def audit_page(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        return page("audit.html", user=user, csrf=session.csrf, entries=feedback.audit_log())

    # --- runs, datasets, evaluations (read through tuneloop.api, like the CLI) -------------

    @app.get("/runs")
    def runs_page(request: Request) -> Response:
        user, session = current(request)
        reader(user)
        return page("runs.html", user=user, csrf=session.csrf, runs=api.runs(limit=200))

    @app.get("/runs/{run_id}")
    def run_page(request: Request, run_id: str) -> Response:
        import yaml

        user, session = current(request)
        reader(user)
        run = api.get_run(_int(run_id))
        curve = _curve(api.run_history(run.id))
        recipe = yaml.safe_dump(run.recipe, sort_keys=False) if run.recipe else ""
        return page(
            "run.html", user=user, csrf=session.csrf, run=run, curve=curve, recipe_yaml=recipe
        )

    @app.get("/datasets")
    def datasets_page(request: Request) -> Response:
        user, session = current(request)
        reader(user)
        found = sorted(api.datasets(), key=lambda d: -d.id)
        return page("datasets.html", user=user, csrf=session.csrf, datasets=found)

    @app.get("/datasets/{dataset_id}")
    def dataset_page(request: Request, dataset_id: str, offset: str = "0") -> Response:
        user, session = current(request)
        reader(user)
        d = api.dataset(_int(dataset_id))
        start = _int(offset) if offset else 0
        rows = api.dataset_rows(d.id, offset=start, limit=50)
        return page("dataset.html", user=user, csrf=session.csrf, d=d, rows=rows, offset=start)

    @app.get("/evals/{eval_id}")
    def eval_page(request: Request, eval_id: str) -> Response:
        user, session = current(request)
        reader(user)
        return page(
            "eval.html", user=user, csrf=session.csrf, a=api.eval_examples(_int(eval_id)), b=None
        )

    @app.get("/evals/{eval_id}/vs/{other_id}")
    def evals_side_by_side(request: Request, eval_id: str, other_id: str) -> Response:
        user, session = current(request)
        reader(user)
        a, b = api.eval_examples(_int(eval_id)), api.eval_examples(_int(other_id))
        if [e["prompt"] for e in a["examples"]] != [e["prompt"] for e in b["examples"]]:
            raise TuneloopError(f"eval:{a['id']} and eval:{b['id']} answer different prompts")
        return page("eval.html", user=user, csrf=session.csrf, a=a, b=b)

    # --- synthetic data: the review queue of `tuneloop synth run` (admins) -------------------

    @app.get("/synth")
    def synth_page(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        return page("synth.html", user=user, csrf=session.csrf, batches=api.synth_batches())

    def batch_context(bid: int, status: str) -> dict[str, Any]:
        tabs = ("pending", "approved", "edited", "rejected", "filtered", "all")
        if status not in tabs:
            raise TuneloopError(f"unknown status {status[:20]!r}")
        info = api.synth_batch(bid)
        shown = api.synth_candidates(bid, None if status == "all" else status, limit=200)
        return {"batch": info, "candidates": shown, "status": status,
                "counts": info["counts"], "statuses": tabs}  # fmt: skip

    @app.get("/synth/{batch_id}")
    def synth_batch_page(request: Request, batch_id: str, status: str = "pending") -> Response:
        user, session = current(request)
        admin(user)
        ctx = batch_context(_int(batch_id), status)
        return page("synth_batch.html", user=user, csrf=session.csrf, **ctx)

    @app.post("/synth/{batch_id}/candidates/{candidate_id}")
    async def synth_review(request: Request, batch_id: str, candidate_id: str) -> Response:
        user, session = current(request)
        admin(user)
        bid, cid = _int(batch_id), _int(candidate_id)
        f = await form(request, session)
        decision = f.get("decision", "")
        if decision not in ("approve", "reject", "edit", "reset"):
            raise TuneloopError("decision must be approve, reject, edit or reset")
        answer = f.get("answer") if decision == "edit" else None
        question = f.get("question") if decision == "edit" else None
        await run_in_threadpool(
            lambda: api.synth_review(bid, [cid], decision, reviewer=user.name, answer=answer,
                                     question=question)
        )  # fmt: skip
        await run_in_threadpool(
            feedback.log_event, user.name, f"synth {decision}", "synth_candidate", cid,
            {"batch": bid, **({"answer": answer} if answer else {})},
        )  # fmt: skip
        back = f.get("status", "pending")
        return RedirectResponse(f"/synth/{bid}?status={back}#c{cid}", status_code=303)

    @app.post("/synth/{batch_id}/export")
    async def synth_export(request: Request, batch_id: str) -> Response:
        user, session = current(request)
        admin(user)
        bid = _int(batch_id)
        await form(request, session)
        done = await run_in_threadpool(api.synth_export, bid)
        await run_in_threadpool(
            feedback.log_event, user.name, "synth export", "synth_batch", bid,
            {"dataset_id": done["dataset_id"], "rows": done["rows"]},
        )  # fmt: skip
        return RedirectResponse(f"/datasets/{done['dataset_id']}", status_code=303)

    # --- jobs: tuneloop train / eval in the background (admins) -----------------------------

    @app.get("/jobs")
    def jobs_page(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        return page(
            "jobs.html", user=user, csrf=session.csrf, jobs=[j.public() for j in jobs.list()]
        )

    @app.post("/jobs")
    async def start_job(request: Request) -> Response:
        user, session = current(request)
        admin(user)
        f = await form(request, session)
        models = [m.strip() for m in f.get("models", "").split(",") if m.strip()]
        job = await run_in_threadpool(
            jobs.start, f.get("kind", ""), f.get("recipe", ""), user.name, models
        )
        feedback.log_event(
            user.name,
            "start",
            "job",
            job.id,
            {"command": job.public()["command"], "folder": str(job.folder)},
        )
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.get("/jobs/{job_id}")
    def job_page(request: Request, job_id: str) -> Response:
        user, session = current(request)
        admin(user)
        return page("job.html", user=user, csrf=session.csrf, job=jobs.get(_int(job_id)).public())

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_job(request: Request, job_id: str) -> Response:
        user, session = current(request)
        admin(user)
        await form(request, session)
        job = jobs.cancel(_int(job_id))
        feedback.log_event(user.name, "cancel", "job", job.id, {"status": job.status})
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    @app.get("/api/jobs/{job_id}/log")
    def job_log(request: Request, job_id: str, offset: str = "0") -> dict[str, Any]:
        user, _ = current(request)
        admin(user)
        text, following = jobs.read_log(_int(job_id), _int(offset) if offset else 0)
        return {"text": text, "offset": following, "status": jobs.get(_int(job_id)).status}

    # --- JSON API (the annotation page's own calls, and scripts with a session) -------------

    @app.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        user, session = current(request)
        return {"user": user.to_dict(), "csrf": session.csrf}

    @app.get("/api/tasks")
    def api_tasks(request: Request) -> list[dict[str, Any]]:
        user, _ = current(request)
        return [feedback.visible_to(t, user).to_dict() for t in feedback.list_tasks()]

    @app.get("/api/tasks/{task_id}")
    def api_task(request: Request, task_id: str) -> dict[str, Any]:
        user, _ = current(request)
        context = task_context(user, _int(task_id))
        return {"task": context["task"].to_dict(), "agreement": context["agreement"]}

    @app.post("/api/tasks/{task_id}/next")
    async def api_next(request: Request, task_id: str) -> dict[str, Any]:
        """Take the next item: its id, or null when nothing is left for this user."""
        user, session = current(request)
        await json_body(request, session, empty_ok=True)
        return {"item_id": await run_in_threadpool(feedback.next_item, _int(task_id), user)}

    @app.get("/api/tasks/{task_id}/items/{item_id}")
    def api_item(request: Request, task_id: str, item_id: str) -> dict[str, Any]:
        user, _ = current(request)
        return feedback.item_view(_int(task_id), _int(item_id), user)

    @app.post("/api/tasks/{task_id}/items/{item_id}")
    async def api_save(request: Request, task_id: str, item_id: str) -> dict[str, Any]:
        user, session = current(request)
        data = await json_body(request, session)
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise TuneloopError("version must be the whole number the item was loaded with")
        return await run_in_threadpool(
            feedback.save_response,
            _int(task_id),
            _int(item_id),
            user,
            data.get("value") or {},
            version,
            submit=bool(data.get("submit")),
        )

    @app.get("/api/tasks/{task_id}/items/{item_id}/responses")
    def api_responses(request: Request, task_id: str, item_id: str) -> list[dict[str, Any]]:
        user, _ = current(request)
        return feedback.item_responses(_int(task_id), _int(item_id), user)

    @app.get("/api/leaderboard")
    def api_leaderboard(request: Request) -> dict[str, Any]:
        user, _ = current(request)
        reader(user)
        return feedback.human_leaderboard()

    return app
