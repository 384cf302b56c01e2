"""An ASGI middleware that checks every request before BentoML parses it: the one guard of the service.

With an API token set (STADAPTER_API_TOKEN), every route but the health probes and /metrics needs
`Authorization: Bearer <token>`, compared in constant time; without it the answer is a JSON 401.

The upload routes are derived from the service's own API methods (`upload_routes`): any method that
takes a `Path` (one video) or a `list[Path]` (several) is an upload route, its integer parameters are
its whole-number options and its float parameters its seconds. A route added later is guarded
without being named here. Their ranges (top_k against the classes, views against the recipe, seconds
> 0) are checked once, by the service, where the in-process /ui page's calls pass too.

BentoML's own multipart parsing would read any body size, and it fetches a URL that is sent in a
file field as text. This guard lets through only what the upload endpoints take:
- POST only (else 405, in JSON); options as form fields, never in the query string (else 400);
- a multipart/form-data body (else 415) no larger than the limit: a declared Content-Length over it is
  refused from the headers alone (413, nothing read); an undeclared body is read a little past the
  limit so that the client hears the answer rather than a reset connection;
- the whole body within the body deadline (else 408), so a slow upload cannot hold a worker;
- a complete multipart body (it ends with its closing boundary; else 400 saying the upload was cut off);
- the video field(s) as real file parts (never a path or URL as text), of a video or binary type
  (else 415), not empty, with a sane name;
- the option fields as JSON integers (or null) and numbers, and no other fields.
Every refusal is a JSON {"error": "..."} in words. The body is held in a spooled temporary file
(anonymous on disk past 1 MB) and replayed to the app; it is closed on every path.
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
from starlette.responses import JSONResponse

CHUNK = 1 << 20  # replay chunk: big chunks make the multipart parser ~2x faster than 64 KB ones
DRAIN_BYTES = 32 << 20  # read at most this much past the limit before answering 413
MAX_NAME = 200  # file names become temp-file suffixes; longer ones are refused
OPEN_PATHS = ("/readyz", "/livez", "/healthz", "/metrics")  # what a load balancer and a scraper reach without the token


class Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadRoute:
    file_field: str  # the multipart field that carries the video(s)
    max_files: int
    options: tuple[str, ...] = ("top_k", "views")  # whole numbers
    numbers: tuple[str, ...] = ()  # numbers (seconds)


def upload_routes(service, max_videos: int) -> dict[str, UploadRoute]:
    """{path: UploadRoute} for every API method of a BentoML service that takes an upload (see above).
    A task's upload arrives at its `/submit` path."""
    routes = {}
    for api in service.apis.values():
        hints = typing.get_type_hints(api.func)  # as the method declares them
        fields = {name: hints[name] for name in api.input_spec.model_fields}
        files = [name for name, kind in fields.items() if kind in (Path, list[Path])]
        if not files:
            continue
        (name,) = files  # one upload field per route
        options = tuple(n for n, kind in fields.items() if _plain(kind) is int)
        numbers = tuple(n for n, kind in fields.items() if _plain(kind) is float)
        max_files = max_videos if fields[name] == list[Path] else 1
        path = f"{api.route}/submit" if getattr(api, "is_task", False) else api.route
        routes[path] = UploadRoute(name, max_files, options, numbers)
    return routes


def _plain(kind):
    """int for `int | None`, float for `float | None`."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if len(args) == 1 else kind


def authorized(scope, token: str) -> bool:
    given = Headers(scope=scope).get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class RequestGuard:
    def __init__(
        self,
        app,
        routes: dict[str, UploadRoute],
        max_bytes: int,
        body_timeout_s: float = 60.0,
        token: str | None = None,
        own_login: tuple[str, ...] = (),
    ):
        self.app, self.routes, self.max_bytes, self.body_timeout_s = app, routes, max_bytes, body_timeout_s
        self.token, self.own_login = token, own_login

    def needs_token(self, path: str) -> bool:
        """Every path but the probes, /metrics, and pages that ask for the token in a login of their own."""
        own = any(path == p or path.startswith(p + "/") for p in self.own_login)
        return bool(self.token) and path not in OPEN_PATHS and not own

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.needs_token(path) and not authorized(scope, self.token):
            return await self.refuse(
                scope,
                receive,
                send,
                Refusal(401, "this service needs its API token: send the header 'Authorization: Bearer <token>'"),
            )
        route = self.routes.get(path) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        try:
            try:
                check_request_line(scope, route)
                await self._read_body(scope, receive, body)
                await check_form(scope, body, route)
            except Refusal as r:
                return await self.refuse(scope, receive, send, r)
            body.seek(0)
            await self.app(scope, _replay(body, receive), send)
        finally:
            body.close()

    @staticmethod
    async def refuse(scope, receive, send, r: Refusal) -> None:
        headers = {405: {"Allow": "POST"}, 413: {"Connection": "close"}, 401: {"WWW-Authenticate": "Bearer"}}
        if scope["type"] == "websocket":  # Gradio's page uses one; a refused handshake is a close
            return await send({"type": "websocket.close", "code": 1008})
        response = JSONResponse({"error": str(r)}, status_code=r.status, headers=headers.get(r.status))
        await response(scope, receive, send)

    async def _read_body(self, scope, receive, body) -> None:
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "multipart/form-data":
            raise Refusal(
                415,
                f"send the request as multipart/form-data with the video as a file upload "
                f"(got Content-Type {media_type or 'none'!r})",
            )
        limit_mb = f"{self.max_bytes / 2**20:g} MB"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:  # refused before reading a byte
            declared_mb = int(declared) / 2**20
            raise Refusal(
                413, f"the upload ({declared_mb:.0f} MB declared) is larger than the server's limit of {limit_mb}"
            )
        too_big, total = False, 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                late = f"the upload did not arrive within {self.body_timeout_s:g} s; send it faster or a smaller file"
                raise Refusal(408, late) from None
            if message["type"] == "http.disconnect":
                raise Refusal(400, "the client closed the connection before the upload finished")
            chunk = message.get("body", b"")
            total += len(chunk)
            too_big = too_big or total > self.max_bytes
            if not too_big:
                body.write(chunk)
            if not message.get("more_body", False) or total > self.max_bytes + DRAIN_BYTES:
                break
        if too_big:
            raise Refusal(413, f"the upload is larger than the server's limit of {limit_mb}")
        if total == 0:
            raise Refusal(400, "the request body is empty: send the video as a file upload")


def check_request_line(scope, route: UploadRoute) -> None:
    if scope["method"] != "POST":
        raise Refusal(405, f"{scope['path']} takes POST with a multipart upload, not {scope['method']}")
    if scope.get("query_string"):
        fields = " ".join(f"-F {name}=..." for name in (*route.options, *route.numbers))
        raise Refusal(400, f"send options as multipart form fields ({fields}), not in the query string")


def check_complete(scope, body) -> None:
    """A multipart body ends with its closing boundary; one that does not was cut off in transit."""
    boundary = Headers(scope=scope).get("content-type", "").partition("boundary=")[2].split(";")[0].strip('"')
    size = body.seek(0, 2)
    body.seek(max(size - len(boundary) - 16, 0))
    if boundary and f"--{boundary}--".encode() not in body.read():
        raise Refusal(400, "the upload is incomplete: the multipart body ends before its closing boundary")


async def check_form(scope, body, route: UploadRoute) -> None:
    """Parse the buffered multipart body once to check its fields; raise Refusal on the first problem."""
    check_complete(scope, body)
    body.seek(0)
    request = Request(scope, _replay(body, None))
    try:
        form = await request.form(max_files=route.max_files + 1, max_fields=len(route.options) + 1)
    except Exception as e:  # malformed multipart: starlette and python-multipart raise several kinds
        raise Refusal(400, f"the request body is not valid multipart/form-data ({e})") from None
    try:
        known = [route.file_field, *route.options, *route.numbers]
        unknown = sorted(set(form.keys()) - set(known))
        if unknown:
            raise Refusal(400, f"unknown field(s) {unknown}; this endpoint takes {known}")
        files = form.getlist(route.file_field)
        if not files:
            raise Refusal(400, f"no video: upload the file in the multipart field {route.file_field!r}")
        if len(files) > route.max_files:
            raise Refusal(400, f"too many videos: at most {route.max_files} per request")
        for item in files:
            check_file(item, route.file_field)
        checks = [(name, check_integer) for name in route.options] + [(name, check_number) for name in route.numbers]
        for name, check in checks:
            values = form.getlist(name)
            if len(values) > 1:
                raise Refusal(400, f"the field {name!r} is given {len(values)} times")
            if values:
                check(name, values[0])
    finally:
        await form.close()


def check_file(item, field: str) -> None:
    if not isinstance(item, UploadFile):
        raise Refusal(
            400,
            f"the field {field!r} must be a file part with a file name, e.g. curl -F {field}=@clip.mp4 "
            "(a plain text value, such as a server-side path or a URL, is not accepted)",
        )
    name = item.filename or ""
    if not name:
        raise Refusal(400, f"the uploaded file in {field!r} has an empty file name; send it with its name")
    if len(name) > MAX_NAME or "\x00" in name:
        raise Refusal(400, f"the file name is too long or invalid (at most {MAX_NAME} characters)")
    media_type = (item.content_type or "").split(";")[0].strip().lower()
    if media_type and not (media_type.startswith("video/") or media_type == "application/octet-stream"):
        raise Refusal(
            415,
            f"the file {name!r} was sent as {media_type}; send a video (video/* or application/octet-stream)",
        )
    if item.size == 0:
        raise Refusal(400, f"the uploaded file {name!r} is empty (0 bytes)")


def check_integer(name: str, value) -> None:
    if isinstance(value, UploadFile):
        raise Refusal(400, f"the field {name!r} must be a number, not a file")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if parsed is not None and (isinstance(parsed, bool) or not isinstance(parsed, int)):
        raise Refusal(400, f"{name} must be a whole number, got {value!r}")


def check_number(name: str, value) -> None:
    if isinstance(value, UploadFile):
        raise Refusal(400, f"the field {name!r} must be a number, not a file")
    try:
        float(value)
    except ValueError:
        raise Refusal(400, f"{name} must be a number of seconds, got {value!r}") from None


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
