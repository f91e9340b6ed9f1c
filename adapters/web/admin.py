"""`/admin`: a server-rendered page for operators (aiohttp + Jinja2, no front-end build).

Off unless `SDBOT_ADMIN_TOKEN` is set. Then every request must carry the token as
`Authorization: Bearer <token>`, or the session cookie the login form sets (Secure, HttpOnly,
SameSite=Strict, derived from the token so no session state is kept). The page is read-only
except "cancel job", which goes through the dispatcher's `cancel` command like chat does, as an
admin of the job's server.

Every user-controlled string (prompts, names, captions, failure reasons, filter values) reaches
HTML through Jinja2's autoescaping; the Content-Security-Policy allows no script at all, and
images and the style sheet only from this server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from bot.errors import ConfigError, OperationalError
from bot.jobs import RESULT_SLOT
from bot.model import Caller, Job, JobState, Platform
from bot.ports import ImageStore, JobQuery, JobRepo, OperatorQueries, Replicas
from bot.render import duration
from commands import COMMANDS, Family, parse
from commands.options import given, text_form

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bot.app import BotApp
    from bot.ports import DayCount
    from bot.views import ResultImage

_LOGGER = logging.getLogger(__name__)


class AdminStore(JobRepo, ImageStore, OperatorQueries, Replicas, Protocol):
    """What the admin page reads: jobs, their images, the operators' figures, and the
    replicas sharing the store."""


COOKIE: Final = "sdbot_admin"
PAGE_SIZE: Final = 50
MAX_FIELD: Final = 200  # characters of any filter value
THUMB_SIDE: Final = 160  # the job list
IMAGE_SIDE: Final = 512  # a job's page
# Stored inputs are kept before they are validated: never decode more pixels than this.
MAX_SOURCE_PIXELS: Final = 50_000_000
CHART_DAYS: Final = 14
# Replicas that reported within this long are listed (as `sdbot check` does).
REPLICAS_SEEN: Final = timedelta(minutes=10)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_JOB_COMMANDS: Final = tuple(n for n, c in COMMANDS.items() if c.family is not Family.QUERY)
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("adapters.web", "templates"),
    autoescape=True,  # every {{ value }} is HTML-escaped, in text and attributes alike
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class FilterError(ValueError):
    """A filter value the page cannot use; the message is shown above the form."""


@dataclass(frozen=True)
class Filters:
    """The job list's filters, from the query string (validated, bounded)."""

    server: str = ""  # "<platform>:<server id>"
    state: str = ""
    command: str = ""
    user: str = ""
    endpoint: str = ""
    model: str = ""
    since: str = ""  # YYYY-MM-DD (UTC), inclusive
    until: str = ""  # YYYY-MM-DD (UTC), inclusive
    offset: int = 0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filters:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = query.get(f.name, "").strip()
            if len(raw) > MAX_FIELD:
                raise FilterError(f"{f.name} is longer than {MAX_FIELD} characters")
            values[f.name] = raw
        if values["state"] and values["state"] not in {s.value for s in JobState}:
            raise FilterError("state must be one of " + ", ".join(s.value for s in JobState))
        if values["command"] and values["command"] not in _JOB_COMMANDS:
            raise FilterError("command must be one of " + ", ".join(_JOB_COMMANDS))
        for name in ("since", "until"):
            if values[name]:
                _day(values[name], name)
        try:
            values["offset"] = max(0, int(values["offset"] or 0))
        except ValueError:
            raise FilterError("offset must be a number") from None
        return cls(**values)

    def query(self, platform: Platform, server: str) -> JobQuery:
        until = _day(self.until, "until") + timedelta(days=1) if self.until else None
        return JobQuery(
            platform=platform,
            server=server,
            user=self.user or None,
            states=(JobState(self.state),) if self.state else (),
            command=self.command or None,
            endpoint=self.endpoint or None,
            model=self.model or None,
            since=_day(self.since, "since") if self.since else None,
            until=until,
            limit=PAGE_SIZE + 1,  # one more: is there an older page?
            offset=self.offset,
        )

    def link(self, **changes: Any) -> str:
        """The query string of these filters with `changes` (empty values left out)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", 0, None)})


def _day(text: str, name: str) -> datetime:
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise FilterError(f"{name} must be a date like 2026-11-25") from None
    return day


@dataclass
class _Flash:
    """What the dispatcher answered a cancel with (a `Responder` for one request)."""

    lines: list[str] = field(default_factory=list)
    refused: bool = False

    async def accepted(self, job_id: str) -> None:  # a cancel never creates a job
        self.lines.append(f"job {job_id} accepted")

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        self.lines.append(text)

    async def refuse(self, message: str) -> None:
        self.refused = True
        self.lines.append(message)


class AdminPage:
    """The `/admin` routes over one running app and its store (any engine)."""

    def __init__(self, app: BotApp, store: AdminStore, token: str) -> None:
        if len(token) < 16:
            # A short token is guessable over the network; refuse it at start-up.
            raise ConfigError("SDBOT_ADMIN_TOKEN must be at least 16 characters")
        self._app = app
        self._store = store
        self._token = token.encode()
        self._session = self._derive("session")
        self._csrf = self._derive("csrf")

    def _derive(self, purpose: str) -> str:
        return hmac.new(self._token, f"sdbot-admin:{purpose}".encode(), hashlib.sha256).hexdigest()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin", self._index),
            web.get("/admin/login", self._login_form),
            web.post("/admin/login", self._login),
            web.post("/admin/logout", self._logout),
            web.get("/admin/admin.css", self._css),
            web.get(r"/admin/jobs/{job_id:[a-z0-9]{1,40}}", self._job),
            web.get(r"/admin/jobs/{job_id:[a-z0-9]{1,40}}/image/{n:\d{1,3}}", self._image),
            web.get(r"/admin/jobs/{job_id:[a-z0-9]{1,40}}/thumb", self._image),
            web.post(r"/admin/jobs/{job_id:[a-z0-9]{1,40}}/cancel", self._cancel),
        ]

    # -- authentication --------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:].strip().encode(), self._token)
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def _require(self, request: web.Request) -> None:
        if not self._authorized(request):
            if request.method == "GET" and "Authorization" not in request.headers:
                raise web.HTTPSeeOther("/admin/login")
            raise web.HTTPUnauthorized(
                text="sign in at /admin/login or send Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="sdbot admin"'},
            )

    async def _login_form(self, request: web.Request) -> web.Response:
        return self._render("login.html", error="")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", ""))[:1000].encode()
        if not hmac.compare_digest(given, self._token):
            _LOGGER.warning("admin page: a sign-in with a wrong token")
            return self._render("login.html", status=403, error="that token is not right")
        response = web.HTTPSeeOther("/admin")
        response.set_cookie(
            COOKIE,
            self._session,
            path="/admin",
            secure=True,
            httponly=True,
            samesite="Strict",
            max_age=12 * 3600,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        self._require(request)
        await self._check_csrf(request)
        response = web.HTTPSeeOther("/admin/login")
        response.del_cookie(COOKIE, path="/admin")
        raise response

    async def _check_csrf(self, request: web.Request) -> None:
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")).encode(), self._csrf.encode()):
            raise web.HTTPForbidden(text="the form is stale; reload the page")

    # -- pages -----------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        self._require(request)
        error = ""
        try:
            filters = Filters.parse(request.query)
        except FilterError as exc:
            error, filters = str(exc), Filters()
        servers = list(await self._store.servers())
        names = [f"{p}:{s}" for p, s in servers]
        selected = filters.server if filters.server in names else (names[0] if names else "")
        filters = Filters(**{**filters.__dict__, "server": selected})
        context: dict[str, Any] = {
            "filters": filters,
            "servers": names,
            "states": [s.value for s in JobState],
            "commands": _JOB_COMMANDS,
            "error": error,
            "jobs": [],
            "more": False,
            "usage": [],
            "failures": [],
            "chart": None,
        }
        if selected:
            platform_name, server = selected.split(":", 1)
            platform = Platform(platform_name)
            jobs = list(await self._store.query(filters.query(platform, server)))
            context["more"] = len(jobs) > PAGE_SIZE
            context["jobs"] = [_row(j) for j in jobs[:PAGE_SIZE]]
            context.update(await self._summaries(platform, server))
        context["endpoints"], context["endpoint_error"] = await self._endpoints()
        context["store"] = await self._store_summary()
        return self._render("index.html", **context)

    async def _store_summary(self) -> dict[str, Any]:
        """The store's engine (no secrets), schema version and the replicas seen recently."""
        now = self._app.clock.now()
        seen = await self._store.replicas(now - REPLICAS_SEEN)
        return {
            "describe": self._store.describe,
            "version": await self._store.schema_version(),
            "minutes": int(REPLICAS_SEEN.total_seconds() // 60),
            "replicas": [
                {
                    "id": r.id,
                    "seen": duration(max(0.0, (now - r.seen_at).total_seconds())),
                    "jobs": r.jobs,
                    "stale": r.stale_writes,
                    "since": r.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                }
                for r in seen
            ],
        }

    async def _summaries(self, platform: Platform, server: str) -> dict[str, Any]:
        now = self._app.clock.now()
        today = datetime.combine(now.date(), time(0), UTC)
        week = today - timedelta(days=6)
        usage = []
        for title, since in (("today", today), ("last 7 days", week)):
            for by in ("user", "channel"):
                rows = await self._store.usage(platform, server, by, since)
                usage.append(
                    {
                        "title": f"per {by}, {title}",
                        "by": by,
                        "rows": [
                            {
                                "key": r.key,
                                "name": r.name,
                                "jobs": r.jobs,
                                "gpu": duration(r.gpu_seconds) if r.gpu_seconds else "–",
                            }
                            for r in rows
                        ],
                    }
                )
        chart_start = today - timedelta(days=CHART_DAYS - 1)
        days = await self._store.daily(platform, server, chart_start)
        return {
            "usage": usage,
            "failures": await self._store.failures(platform, server, week),
            "chart": chart(days, chart_start.date(), CHART_DAYS),
        }

    async def _endpoints(self) -> tuple[list[Any], str]:
        try:
            return list(await self._app.catalog.endpoints()), ""
        except OperationalError as exc:
            return [], f"the backend did not answer: {exc.short}"

    async def _job(self, request: web.Request) -> web.Response:
        self._require(request)
        job = await self._found(request)
        images = await self._store.images(job.id)
        params = job.params or job.interrogate
        return self._render(
            "job.html",
            job=_row(job),
            raw=job,
            params=[(f.name, getattr(params, f.name)) for f in fields(params)] if params else [],
            options=sorted((k, text_form(v)) for k, v in given(job.options).items()),
            images=[{"n": n, "slot": i.slot, "name": i.name} for n, i in enumerate(images)],
            flash=request.query.get("flash", "")[:500],
            cancellable=not job.state.terminal,
        )

    async def _image(self, request: web.Request) -> web.Response:
        self._require(request)
        job = await self._found(request)
        images = list(await self._store.images(job.id))
        if "n" in request.match_info:
            n = int(request.match_info["n"])
            if n >= len(images):
                raise web.HTTPNotFound(text="no such image (retention may have removed it)")
            chosen: bytes | None = images[n].data
            side = IMAGE_SIDE
        else:  # the list's thumbnail: the first result, else the input, else a grey square
            images.sort(key=lambda i: i.slot != RESULT_SLOT)
            chosen = images[0].data if images else None
            side = THUMB_SIDE
        data = await asyncio.to_thread(thumbnail, chosen, side)
        return web.Response(body=data, content_type="image/png", headers=_SECURITY_HEADERS)

    async def _cancel(self, request: web.Request) -> web.Response:
        self._require(request)
        await self._check_csrf(request)
        job = await self._found(request)
        # The chat path: the dispatcher's `cancel` command, as an admin of the job's server.
        caller = Caller(
            job.caller.platform,
            job.caller.server,
            "sdbot-admin-page",
            job.caller.conversation,
            is_admin=True,
            user_name="admin page",
        )
        flash = _Flash()
        await self._app.dispatcher.handle_command(
            caller, parse(f"cancel {job.id}", now=self._app.clock.now()), [], flash
        )
        raise web.HTTPSeeOther(
            f"/admin/jobs/{job.id}?" + urlencode({"flash": " ".join(flash.lines)[:500]})
        )

    async def _found(self, request: web.Request) -> Job:
        job = await self._store.get(request.match_info["job_id"])
        if job is None:
            raise web.HTTPNotFound(text="no such job")
        return job

    async def _css(self, request: web.Request) -> web.Response:
        # Public: a style sheet holds nothing secret, and the login page needs it.
        css = _ENV.loader.get_source(_ENV, "admin.css")[0]  # type: ignore[union-attr]
        return web.Response(text=css, content_type="text/css", headers=_SECURITY_HEADERS)

    def _render(self, template: str, *, status: int = 200, **context: Any) -> web.Response:
        html = _ENV.get_template(template).render(csrf=self._csrf, **context)
        return web.Response(
            text=html, status=status, content_type="text/html", headers=_SECURITY_HEADERS
        )


def _row(job: Job) -> dict[str, Any]:
    """What the templates show of a job (every string escaped there)."""
    prompt = job.params.prompt if job.params else str(given(job.options).get("prompt", ""))
    run = None
    if job.started_at and job.finished_at:
        run = duration((job.finished_at - job.started_at).total_seconds())
    return {
        "id": job.id,
        "state": job.state.value,
        "command": job.command,
        "user": job.caller.user,
        "user_name": job.caller.user_name or job.caller.user,
        "channel": job.caller.conversation.channel,
        "endpoint": job.endpoint or "",
        "model": job.model or "",
        "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "run": run,
        "prompt": str(prompt),
        "caption": job.caption or "",
        "error": job.error or "",
    }


def thumbnail(data: bytes | None, side: int = THUMB_SIDE) -> bytes:
    """A PNG at most `side` pixels on its longest side; no image, an undecodable one (a failed
    job's bad upload) or one of more than `MAX_SOURCE_PIXELS` becomes a grey square."""
    try:
        if data is None:
            raise UnidentifiedImageError("no image")
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise Image.DecompressionBombError("too many pixels for a thumbnail")
            image.draft("RGB", (side, side))
            small = image.convert("RGBA")
            small.thumbnail((side, side))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        small = Image.new("RGBA", (side, side), (200, 200, 200, 255))
    out = io.BytesIO()
    small.save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Bar:
    x: float
    day: str
    jobs: int
    failed: int
    jobs_y: float
    jobs_h: float
    failed_y: float
    failed_h: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    top: int  # the largest count, the y axis' top label
    bars: list[Bar]
    bar_width: float


def chart(days: Sequence[DayCount], start: date, count: int) -> Chart:
    """Bars of jobs per day with the failed part overlaid, for `count` days from `start`,
    laid out for an inline SVG (numbers only; the template draws)."""
    by_day = {d.day: d for d in days}
    width, height, base, left = 640, 200, 180, 30
    slot = (width - left) / count
    top = max([d.jobs for d in days] + [1])
    bars = []
    for i in range(count):
        day = (start + timedelta(days=i)).isoformat()
        found = by_day.get(day)
        jobs, failed = (found.jobs, found.failed) if found else (0, 0)
        jobs_h = (base - 10) * jobs / top
        failed_h = (base - 10) * failed / top
        bars.append(
            Bar(
                x=round(left + i * slot + slot * 0.15, 1),
                day=day,
                jobs=jobs,
                failed=failed,
                jobs_y=round(base - jobs_h, 1),
                jobs_h=round(jobs_h, 1),
                failed_y=round(base - failed_h, 1),
                failed_h=round(failed_h, 1),
            )
        )
    return Chart(width, height, top, bars, round(slot * 0.7, 1))
