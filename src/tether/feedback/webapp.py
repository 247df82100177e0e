"""The annotation web app behind `tether label serve`: people compare two answers in a browser.

One FastAPI app over a :class:`~tether.feedback.store.Store`, pages rendered on the server
from the Jinja2 templates in ``feedback/templates`` (autoescaped: a model output holding
``<script>`` shows as text), a few lines of inline JavaScript for the keyboard and no build step.

    GET  /login            the sign-in form (a token in the address never signs in: see below)
    POST /login            token and the form's own nonce -> HttpOnly, SameSite=Strict cookie; 303 to /
    POST /logout           forget the cookie
    GET  /                 the next pair for this annotator: guidelines, prompt, left | right, progress
    POST /judge            task_id, choice (left | right | tie | skip), reason -> the store; 303 to /
    GET  /api/me           the annotator's own judgements (nobody else's), in screen terms
    GET  /admin/stats      agreement statistics as a page (admin token)
    GET  /api/stats        the same as JSON (admin token; cookie or ``Authorization: Bearer``)

Security, each property tested in ``tests/feedback/test_webapp.py``:

* Every page and API needs a valid token (only /login does not): pages send a visitor
  without one to /login, APIs and posts answer 401; admin pages answer 403 to non-admins.
  The cookie holds the token (the store keeps only its SHA-256), HttpOnly, SameSite=Strict,
  Secure when served over https. FastAPI's own /docs and /openapi.json are switched off.
* Signing in takes a token only by POST from the sign-in form: the form carries a nonce that must match a
  SameSite=Strict cookie set with the form (so another site cannot sign a visitor in as someone else, a
  login CSRF), and a token in the address (``?token=``, however spelled or percent-encoded) signs nobody in
  and is kept out of the access log. A revoked or expired token, or a removed annotator, signs in no more.
* Requests whose ``Host`` header is not one of ``allowed_hosts`` (by default the loopback names and the
  address served on) are answered 400: a DNS-rebinding page cannot talk to the app under its own name.
* CSRF, three layers: the SameSite=Strict cookie is never sent with a request started by
  another site; every POST whose ``Origin`` header names another host is refused (403); and
  the judgement form carries a per-session token, HMAC-SHA256 of the annotator's token,
  which another site cannot compute.
* A judgement is accepted only for the task the store has assigned to this annotator and
  they have not answered (403 otherwise); answering again is a 409, never an overwrite. No
  endpoint takes an annotator name or a judgement id, so nobody can read or change another
  annotator's answers; the page never says which response is the task's A or B (for an
  imported golden pair that would give the known answer away).
* Bodies over ``max_body_bytes`` (16 KiB) and reasons over ``max_reason_chars`` are refused
  with 413 before anything is recorded; a reason holding a NUL character with 400.
* Every response carries a Content-Security-Policy that runs only the page's own inline
  script (a per-response nonce), forbids framing, and is not cached.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from tether.feedback.agreement import stats
from tether.feedback.store import Annotator, DuplicateJudgementError, Store, StoreError

TEMPLATES = Path(__file__).parent / "templates"
"""The page templates (shipped as package data)."""

COOKIE = "tether_token"
"""The cookie that carries the annotator's token after signing in."""

COOKIE_MAX_AGE = 14 * 24 * 3600
"""How long a browser stays signed in (seconds); the token's own expiry (the store's) still applies."""

LOGIN_COOKIE = "tether_login"
"""The cookie that holds the sign-in form's nonce, which the form posts back (double submit)."""

LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
"""The Host names always answered: the app on loopback."""

MAX_BODY_BYTES = 16 * 1024
"""Largest request body accepted; a larger one is answered 413."""

MAX_REASON_CHARS = 2000
"""Longest reason accepted with a judgement; a longer one is answered 413."""

SCREEN_CHOICES: dict[str, str] = {"left": "A (left)", "right": "B (right)", "tie": "tie", "skip": "skip"}
"""What the form may post, and how the page names it; the store turns left/right into the task's A or B."""

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def csrf_token(token: str) -> str:
    """The form token of a session: HMAC-SHA256 keyed by the annotator's token (unforgeable without it)."""
    return hmac.new(token.encode("utf-8"), b"tether-label-csrf", hashlib.sha256).hexdigest()


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda x, digits=3: "-" if x is None else f"{x:.{digits}f}"
    return env


def host_name(host: str) -> str:
    """The name part of a Host header: ``[::1]:8000`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _LimitsAndHeaders:
    """ASGI middleware: refuse a Host not in ``allowed_hosts`` with 400 and bodies over ``max_body`` bytes with 413
    (declared or streamed), and put the security headers and the server's own time (Server-Timing) on every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
        (b"cache-control", b"no-store"),
    ]

    def __init__(self, app, max_body: int, allowed_hosts: frozenset[str]):
        self.app = app
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in names]
                # the time this server spent on the request (W3C Server-Timing): a client's latency less this is queueing
                headers.append((b"server-timing", f"app;dur={1000 * (time.perf_counter() - started):.1f}".encode()))
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"))
                message = {**message, "headers": headers}
            await send(message)

        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if host_name(host) not in self.allowed_hosts:
            text = (
                f"This server does not answer for the host {host[:100]!r} (it answers for {', '.join(sorted(self.allowed_hosts))}); "
                "an admin adds a name with `tether label serve --allowed-host NAME`."
            )
            return await Response(text, status_code=400, media_type="text/plain; charset=utf-8")(scope, receive, send_with_headers)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._too_large(scope, receive, send_with_headers)
        body, more = b"", True
        while more:  # read it all here, counting, so a chunked body cannot slip past the limit
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await self._too_large(scope, receive, send_with_headers)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_with_headers)

    async def _too_large(self, scope, receive, send):
        text = f"The request is larger than {self.max_body // 1024} KiB, the most this server accepts."
        await Response(text, status_code=413, media_type="text/plain; charset=utf-8", headers={"connection": "close"})(scope, receive, send)


def create_app(
    store: Store,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_reason_chars: int = MAX_REASON_CHARS,
    golden_threshold: float = 0.7,
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The labelling app over ``store``: give it to uvicorn (``tether label serve`` does) or to a TestClient.

    Args:
        store: the preference store (open; the app does not close it).
        max_body_bytes: largest request body accepted (413 above).
        max_reason_chars: longest reason accepted (413 above).
        golden_threshold: the statistics flag annotators whose golden-set accuracy is below this.
        allowed_hosts: Host names answered besides the loopback ones (``tether label serve`` adds the address it binds).
    """
    app = FastAPI(title="tether label", docs_url=None, redoc_url=None, openapi_url=None)
    hosts = frozenset(LOOPBACK_HOSTS) | {host_name(h) for h in allowed_hosts if h.strip()}
    app.add_middleware(_LimitsAndHeaders, max_body=max_body_bytes, allowed_hosts=hosts)
    env = _templates()

    # ------------------------------------------------------------------ helpers

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = env.get_template(name).render(nonce=nonce, **context)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; form-action 'self'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        return HTMLResponse(html, status_code=status_code, headers={"content-security-policy": csp})

    def error(status: int, message: str, annotator: Annotator | None = None) -> HTMLResponse:
        return page("error.html", status, status=status, message=message, annotator=annotator)

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(COOKIE)
        return token if token and len(token) <= 256 else None

    def who(request: Request) -> Annotator | None:
        token = token_of(request)
        return store.annotator_for_token(token) if token else None

    def same_origin(request: Request) -> bool:
        """False when the browser says the request was started by a page of another origin."""
        origin = request.headers.get("origin")
        if origin is None:  # browsers send Origin with every POST; without one this is not a cross-site form
            return True
        return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower() != ""

    def login_page(request: Request, status: int = 200, message: str | None = None) -> HTMLResponse:
        """The sign-in form, with a fresh nonce in the form and in a Strict cookie: only a POST from this form signs in."""
        nonce = secrets.token_urlsafe(24)
        response = page("login.html", status, message=message, annotator=None, login_nonce=nonce)
        if status == 401:
            response.delete_cookie(COOKIE, path="/")
        response.set_cookie(
            LOGIN_COOKIE, nonce, max_age=3600, path="/login", httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response

    def token_in_address(request: Request) -> Response | None:
        """A token in the address signs nobody in (a link from anywhere could carry someone else's): the form again, 400."""
        if not any("token" in key.lower() for key, _ in parse_qsl(unquote(request.url.query), keep_blank_values=True)):
            return None
        return login_page(
            request, 400, "A token in the address does not sign in (anyone can send such a link). Paste your token here instead."
        )

    # ------------------------------------------------------------------ signing in

    @app.get("/login")
    def login_form(request: Request):
        if (response := token_in_address(request)) is not None:
            return response
        if who(request) is not None:
            return RedirectResponse("/", status_code=303)
        return login_page(request)

    @app.post("/login")
    def login(request: Request, token: str = Form(""), nonce: str = Form("")):
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not same_origin(request) or not expected or not hmac.compare_digest(nonce.encode("utf-8"), expected.encode("utf-8")):
            return login_page(
                request, 403, "Sign in from this page: that sign-in did not come from its form (or the form was old), and was refused."
            )
        token = token.strip()
        if not token or len(token) > 256 or store.annotator_for_token(token) is None:
            return login_page(request, 401, "That token is not known, has expired or was revoked. Check it, or ask for a new one.")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE, token, max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @app.post("/logout")
    def logout(request: Request):
        if not same_origin(request):
            return error(403, "This request came from another site and was refused.")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ labelling

    @app.get("/")
    def label_page(request: Request):
        if (response := token_in_address(request)) is not None:
            return response
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        task = store.next_task_for(annotator)
        progress = store.progress(annotator)
        prompt = (
            None
            if task is None
            else task.prompt
            if isinstance(task.prompt, str)
            else [{"role": ROLE_NAMES.get(m["role"], m["role"]), "content": m["content"]} for m in task.prompt]
        )
        return page(
            "label.html",
            annotator=annotator,
            task=task,
            prompt=prompt,
            progress=progress,
            guidelines=store.guidelines(),
            csrf=csrf_token(token_of(request)),
            max_reason_chars=max_reason_chars,
        )

    @app.post("/judge")
    def judge(request: Request, task_id: str = Form(""), choice: str = Form(""), reason: str = Form(""), csrf: str = Form("")):
        annotator = who(request)
        if annotator is None:
            return error(401, "Sign in first: this answer carried no valid token, and nothing was recorded.")
        if not same_origin(request) or not hmac.compare_digest(csrf.encode("utf-8"), csrf_token(token_of(request)).encode("utf-8")):
            return error(403, "This answer did not come from your labelling page, and was not recorded. Reload the page.", annotator)
        if choice not in SCREEN_CHOICES:
            return error(400, f"The answer must be one of {', '.join(SCREEN_CHOICES)}; got {choice[:20]!r}.", annotator)
        if not (task_id.isascii() and task_id.isdigit() and len(task_id) <= 18):
            return error(400, f"The task must be a task number; got {task_id[:20]!r}.", annotator)
        if "\x00" in reason:
            return error(400, "The reason holds a NUL character, which cannot be stored; remove it and answer again.", annotator)
        if len(reason) > max_reason_chars:
            return error(
                413,
                f"The reason is {len(reason)} characters long; at most {max_reason_chars} are kept. Shorten it and answer again.",
                annotator,
            )
        task = int(task_id)
        if store.has_answered(annotator, task):
            return error(409, f"You have already answered task {task}; an answer cannot be changed.", annotator)
        if store.current_task_id(annotator) != task:
            return error(403, f"Task {task} is not the one assigned to you, so the answer was not recorded.", annotator)
        try:
            store.record_judgement(annotator, task, choice, reason=reason.strip() or None)
        except DuplicateJudgementError as e:
            return error(409, str(e), annotator)
        except StoreError as e:
            return error(403, str(e), annotator)
        return RedirectResponse("/", status_code=303)

    @app.get("/api/me")
    def my_judgements(request: Request):
        annotator = who(request)
        if annotator is None:
            return JSONResponse({"error": "a valid token is needed (cookie or Authorization: Bearer)"}, status_code=401)
        progress = store.progress(annotator)
        judgements = [
            {
                "task_id": v.task_id,
                "choice": _screen_choice(v.choice, v.left_side),
                "reason": v.reason,
                "seconds": v.seconds,
                "answered_at": _iso(v.answered_at),
            }
            for v in store.votes_of(annotator)
        ]
        return {"annotator": annotator.name, "done_today": progress.done_today, "total_today": progress.total, "judgements": judgements}

    # ------------------------------------------------------------------ admin

    def admin_stats() -> dict[str, Any]:
        return stats(store, golden_threshold)

    @app.get("/admin/stats")
    def stats_page(request: Request):
        if (response := token_in_address(request)) is not None:
            return response
        annotator = who(request)
        if annotator is None:
            return RedirectResponse("/login", status_code=303)
        if not annotator.is_admin:
            return error(403, "The statistics are for admins; your token is an annotator's.", annotator)
        return page("stats.html", annotator=annotator, stats=admin_stats())

    @app.get("/api/stats")
    def stats_json(request: Request):
        annotator = who(request)
        if annotator is None:
            return JSONResponse({"error": "a valid admin token is needed (cookie or Authorization: Bearer)"}, status_code=401)
        if not annotator.is_admin:
            return JSONResponse({"error": "the statistics are for admins"}, status_code=403)
        return admin_stats()

    return app


class HideTokens(logging.Filter):
    """Keeps a token given in the address out of the access log: the value of every query parameter whose name, once
    percent-decoded, holds "token" (``?token=``, ``?%74oken=``, ``?Token=``) is logged as ``[hidden]``."""

    PARAMETER = re.compile(r"([?&;])([^=&;\s]*)=([^&;\s]*)")

    @classmethod
    def hide(cls, text: str) -> str:
        return cls.PARAMETER.sub(lambda m: f"{m[1]}{m[2]}=[hidden]" if "token" in unquote(unquote(m[2])).lower() else m[0], text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.hide(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.hide(record.msg)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up, with tokens hidden from its access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["hide_tokens"] = {"()": HideTokens}
    config["handlers"]["access"].setdefault("filters", []).append("hide_tokens")
    return config


def _screen_choice(choice: str, left_side: str | None) -> str:
    """A stored answer (the task's A or B) as the annotator saw it: left or right."""
    if choice in ("A", "B") and left_side in ("A", "B"):
        return "left" if choice == left_side else "right"
    return choice


def _iso(t: datetime) -> str:
    return t.isoformat() + "Z"
