"""The one door: an ASGI middleware that every request to the service passes before anything else reads it.

Every route the app serves is behind it, by construction: it wraps the whole app (the API, the routes
BentoML adds, /metadata, the task routes, the mounted page and its API), and its checks apply to any
request, not to a list of paths kept by hand.
- The token: with STADAPTER_API_TOKEN set, every path but the health probes and /metrics needs
  `Authorization: Bearer <token>` (constant-time); the page at /ui asks for it in a login of its own.
  The app then sees no `Authorization` or `Cookie` header (the page's own paths aside), so no secret can
  reach a log or a store.
- The body, on every route that is sent one: at most STADAPTER_MAX_UPLOAD_MB (a declared Content-Length
  over it is refused from the headers alone; an undeclared body is read a little past the limit so that
  the client hears the answer), all of it within STADAPTER_BODY_TIMEOUT_S. It is held in a spooled
  temporary file (anonymous on disk past 1 MB) and replayed to the app; closed on every path.
- The upload routes (`route_table`, from the routes the app actually serves: every API method that takes
  a `Path` or `list[Path]`) get their form checked once: POST, options as form fields not in the query
  string, a complete multipart/form-data body, the video field(s) as real file parts of a video or
  binary type (never a path or URL as text), not empty, with a sane name; the options as JSON integers
  (or null) and numbers, and no other fields. Their ranges are the service's to check.
- Every refusal, and every error answer of the app outside the page, is JSON `{"error", "code"}` with a
  stable code (serve/errors.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request

from serve.errors import code_for_status, json_error

CHUNK = 1 << 20  # replay chunk: big chunks make the multipart parser ~2x faster than 64 KB ones
DRAIN_BYTES = 32 << 20  # read at most this much past the limit before answering 413
MAX_NAME = 200  # file names become temp-file suffixes; longer ones are refused
MAX_ERROR_BODY = 64 << 10  # an app's error answer longer than this is passed on as it is
OPEN_PATHS = ("/readyz", "/livez", "/healthz", "/metrics")  # what a load balancer and a scraper reach without the token
SECRET_HEADERS = (b"authorization", b"cookie")


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class UploadRoute:
    file_field: str  # the multipart field that carries the video(s)
    max_files: int
    options: tuple[str, ...] = ("top_k", "views")  # whole numbers
    numbers: tuple[str, ...] = ()  # numbers (seconds)

    @property
    def fields(self) -> list[str]:
        return [self.file_field, *self.options, *self.numbers]


@dataclass(frozen=True)
class RouteInfo:
    """One route the app serves, as the guard treats it."""

    path: str
    methods: tuple[str, ...]
    upload: UploadRoute | None  # the form it checks, for an upload route
    auth: str  # "token", "open" (probes) or "page login" (the mounted page), or "none" without a token

    @property
    def takes_body(self) -> bool:
        return bool({"POST", "PUT", "PATCH"} & set(self.methods))


def upload_route(func, max_videos: int) -> UploadRoute | None:
    """The form of an API method that takes an upload: its `Path` / `list[Path]` parameter is the file
    field, its integer parameters whole-number options, its float parameters seconds."""
    hints = typing.get_type_hints(func)
    params = [name for name in hints if name != "return"]
    files = [name for name in params if hints[name] in (Path, list[Path])]
    if not files:
        return None
    (name,) = files  # one upload field per route
    options = tuple(n for n in params if _plain(hints[n]) is int)
    numbers = tuple(n for n in params if _plain(hints[n]) is float)
    return UploadRoute(name, max_videos if hints[name] == list[Path] else 1, options, numbers)


def _plain(kind):
    """int for `int | None`, float for `float | None`."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if len(args) == 1 else kind


def route_table(app, service, max_videos: int, token: bool = False, own_login: tuple[str, ...] = ()) -> list[RouteInfo]:
    """Every route the ASGI `app` serves (mounted apps flattened), each with its guard: the upload form of
    the service API it leads to, and its auth."""
    apis = {name: api.func for name, api in service.apis.items()}
    table = []
    for path, methods, name in _walk(_router(app), ""):
        form = upload_route(apis[name], max_videos) if name in apis and "POST" in methods else None
        own = any(path == p or path.startswith(p + "/") for p in own_login)
        auth = "open" if path in OPEN_PATHS else "page login" if own else "token" if token else "none"
        table.append(RouteInfo(path, methods, form, auth))
    return table


def _router(app):
    """The router under an ASGI app's middleware (each middleware keeps the next one in `.app`)."""
    seen = 0
    while not isinstance(getattr(app, "routes", None), list) and hasattr(app, "app") and seen < 64:
        app, seen = app.app, seen + 1
    return app


def _walk(router, prefix: str):
    for route in getattr(router, "routes", []):
        if hasattr(route, "original_router"):  # FastAPI's include_router(), as Gradio's app uses it
            yield from _walk(route.original_router, prefix + getattr(route.include_context, "prefix", ""))
            continue
        path = prefix + getattr(route, "path", "")
        inner = getattr(route, "app", None)
        if inner is not None and hasattr(route, "path") and not hasattr(route, "endpoint"):  # a mount
            sub = _router(inner)
            if isinstance(getattr(sub, "routes", None), list):
                yield from _walk(sub, path)
            else:
                yield path + "/{path:path}", ("GET", "POST", "PUT", "PATCH", "DELETE"), None  # an opaque app
            continue
        methods = tuple(sorted(getattr(route, "methods", None) or ("GET",)))
        yield path or "/", methods, getattr(route, "name", None)


def authorized(scope, token: str) -> bool:
    given = Headers(scope=scope).get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class RequestGuard:
    def __init__(
        self,
        app,
        service,
        max_bytes: int,
        max_videos: int,
        body_timeout_s: float = 60.0,
        token: str | None = None,
        own_login: tuple[str, ...] = (),
    ):
        self.app, self.service, self.max_bytes, self.max_videos = app, service, max_bytes, max_videos
        self.body_timeout_s, self.token, self.own_login = body_timeout_s, token, own_login
        self._uploads: dict[str, UploadRoute] | None = None

    def route_table(self) -> list[RouteInfo]:
        return route_table(self.app, self.service, self.max_videos, bool(self.token), self.own_login)

    def uploads(self) -> dict[str, UploadRoute]:
        """{path: form} of the upload routes, from the app's own routes (read once, on the first request)."""
        if self._uploads is None:
            self._uploads = {r.path: r.upload for r in self.route_table() if r.upload is not None}
        return self._uploads

    def own_page(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.own_login)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        page = self.own_page(path)
        if self.token and path not in OPEN_PATHS and not page and not authorized(scope, self.token):
            message = "this service needs its API token: send the header 'Authorization: Bearer <token>'"
            return await self.refuse(scope, receive, send, Refusal(401, "unauthorized", message))
        if not page:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() not in SECRET_HEADERS]}
            send = _json_errors(send)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        route = self.uploads().get(path)
        if route is None and not _has_body(scope):
            return await self.app(scope, receive, send)
        body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        try:
            try:
                if route is not None:
                    check_request_line(scope, route)
                await self._read_body(scope, receive, body, multipart=route is not None)
                if route is not None:
                    await check_form(scope, body, route)
            except Refusal as r:
                return await self.refuse(scope, receive, send, r)
            body.seek(0)
            await self.app(scope, _replay(body, receive), send)
        finally:
            body.close()

    @staticmethod
    async def refuse(scope, receive, send, r: Refusal) -> None:
        if scope["type"] == "websocket":  # a refused handshake is a close
            return await send({"type": "websocket.close", "code": 1008})
        headers = {405: {"Allow": "POST"}, 413: {"Connection": "close"}, 401: {"WWW-Authenticate": "Bearer"}}
        await json_error(r.status, r.code, str(r), headers.get(r.status))(scope, receive, send)

    async def _read_body(self, scope, receive, body, multipart: bool) -> None:
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if multipart and media_type != "multipart/form-data":
            raise Refusal(
                415,
                "unsupported_media_type",
                f"send the request as multipart/form-data with the video as a file upload "
                f"(got Content-Type {media_type or 'none'!r})",
            )
        limit_mb = f"{self.max_bytes / 2**20:g} MB"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:  # refused before reading a byte
            declared_mb = int(declared) / 2**20
            raise Refusal(
                413,
                "upload_too_large",
                f"the upload ({declared_mb:.0f} MB declared) is larger than the server's limit of {limit_mb}",
            )
        too_big, total = False, 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                late = f"the upload did not arrive within {self.body_timeout_s:g} s; send it faster or a smaller file"
                raise Refusal(408, "upload_timeout", late) from None
            if message["type"] == "http.disconnect":
                raise Refusal(400, "upload_incomplete", "the client closed the connection before the upload finished")
            chunk = message.get("body", b"")
            total += len(chunk)
            too_big = too_big or total > self.max_bytes
            if not too_big:
                body.write(chunk)
            if not message.get("more_body", False) or total > self.max_bytes + DRAIN_BYTES:
                break
        if too_big:
            raise Refusal(413, "upload_too_large", f"the upload is larger than the server's limit of {limit_mb}")
        if total == 0 and multipart:
            raise Refusal(400, "no_video", "the request body is empty: send the video as a file upload")


def _has_body(scope) -> bool:
    headers = Headers(scope=scope)
    return headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers


def check_request_line(scope, route: UploadRoute) -> None:
    if scope["method"] != "POST":
        raise Refusal(
            405, "method_not_allowed", f"{scope['path']} takes POST with a multipart upload, not {scope['method']}"
        )
    if scope.get("query_string"):
        fields = " ".join(f"-F {name}=..." for name in (*route.options, *route.numbers))
        raise Refusal(400, "bad_request", f"send options as multipart form fields ({fields}), not in the query string")


def check_complete(scope, body) -> None:
    """A multipart body ends with its closing boundary; one that does not was cut off in transit."""
    boundary = Headers(scope=scope).get("content-type", "").partition("boundary=")[2].split(";")[0].strip('"')
    size = body.seek(0, 2)
    body.seek(max(size - len(boundary) - 16, 0))
    if boundary and f"--{boundary}--".encode() not in body.read():
        raise Refusal(
            400, "upload_incomplete", "the upload is incomplete: the multipart body ends before its closing boundary"
        )


async def check_form(scope, body, route: UploadRoute) -> None:
    """Parse the buffered multipart body once to check its fields; raise Refusal on the first problem."""
    check_complete(scope, body)
    body.seek(0)
    request = Request(scope, _replay(body, None))
    known = route.fields
    try:  # one past each limit, so that too many is ours to say, in our words
        form = await request.form(max_files=route.max_files + 1, max_fields=len(known) + 1)
    except Exception as e:  # malformed multipart: starlette and python-multipart raise several kinds
        raise Refusal(400, "bad_request", f"the request body is not valid multipart/form-data ({e})") from None
    try:
        unknown = sorted(set(form.keys()) - set(known))
        if unknown:
            raise Refusal(400, "bad_request", f"unknown field(s) {unknown}; this endpoint takes {known}")
        files = form.getlist(route.file_field)
        if not files:
            raise Refusal(400, "no_video", f"no video: upload the file in the multipart field {route.file_field!r}")
        if len(files) > route.max_files:
            raise Refusal(400, "too_many_videos", f"too many videos: at most {route.max_files} per request")
        for item in files:
            check_file(item, route.file_field)
        checks = [(name, check_integer) for name in route.options] + [(name, check_number) for name in route.numbers]
        for name, check in checks:
            values = form.getlist(name)
            if len(values) > 1:
                raise Refusal(400, "bad_option", f"the field {name!r} is given {len(values)} times")
            if values:
                check(name, values[0])
    finally:
        await form.close()


def check_file(item, field: str) -> None:
    if not isinstance(item, UploadFile):
        raise Refusal(
            400,
            "bad_request",
            f"the field {field!r} must be a file part with a file name, e.g. curl -F {field}=@clip.mp4 "
            "(a plain text value, such as a server-side path or a URL, is not accepted)",
        )
    name = item.filename or ""
    if not name:
        raise Refusal(
            400, "bad_request", f"the uploaded file in {field!r} has an empty file name; send it with its name"
        )
    if len(name) > MAX_NAME or "\x00" in name:
        raise Refusal(400, "bad_request", f"the file name is too long or invalid (at most {MAX_NAME} characters)")
    media_type = (item.content_type or "").split(";")[0].strip().lower()
    if media_type and not (media_type.startswith("video/") or media_type == "application/octet-stream"):
        raise Refusal(
            415,
            "unsupported_media_type",
            f"the file {name!r} was sent as {media_type}; send a video (video/* or application/octet-stream)",
        )
    if item.size == 0:
        raise Refusal(400, "no_video", f"the uploaded file {name!r} is empty (0 bytes)")


def check_integer(name: str, value) -> None:
    if isinstance(value, UploadFile):
        raise Refusal(400, "bad_option", f"the field {name!r} must be a number, not a file")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if parsed is not None and (isinstance(parsed, bool) or not isinstance(parsed, int)):
        raise Refusal(400, "bad_option", f"{name} must be a whole number, got {value!r}")


def check_number(name: str, value) -> None:
    if isinstance(value, UploadFile):
        raise Refusal(400, "bad_option", f"the field {name!r} must be a number, not a file")
    try:
        float(value)
    except ValueError:
        raise Refusal(400, "bad_option", f"{name} must be a number of seconds, got {value!r}") from None


def _replay(body, receive):
    """An ASGI receive that yields the buffered body, then defers to the real one (for disconnects)."""
    size = body.seek(0, 2)
    body.seek(0)

    async def replay():
        if body.tell() >= size and replay.sent:
            return await receive() if receive is not None else {"type": "http.disconnect"}
        replay.sent = True
        chunk = body.read(CHUNK)
        return {"type": "http.request", "body": chunk, "more_body": body.tell() < size}

    replay.sent = False
    return replay


def _json_errors(send):
    """A `send` that turns an app's error answer that is not JSON with a code (a 404 of the router, a 405,
    BentoML's own 400s and 500s) into `{"error", "code"}`; other answers, and long error bodies, pass
    untouched."""
    held: dict = {}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held.update(start=message, body=b"")
            return
        if message["type"] != "http.response.body" or "start" not in held:
            return await send(message)
        held["body"] += message.get("body", b"")
        more = message.get("more_body", False)
        if more and len(held["body"]) <= MAX_ERROR_BODY:
            return
        start, body = held.pop("start"), held.pop("body")
        if not more:
            start, body = _with_code(start, body)
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": more})

    return wrapped


def _with_code(start: dict, body: bytes) -> tuple[dict, bytes]:
    status = start["status"]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "error" in parsed and "code" in parsed:
        return start, body
    if isinstance(parsed, dict):
        words = parsed.get("error") or parsed.get("detail") or parsed.get("message") or body.decode(errors="replace")
    else:
        words = body.decode(errors="replace").strip() or f"HTTP {status}"
    fixed = json.dumps({"error": str(words)[:2000], "code": code_for_status(status)}).encode()
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(fixed)).encode())]
    return {**start, "headers": headers}, fixed
