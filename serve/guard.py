"""An ASGI middleware that checks upload requests before BentoML parses them.

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
- the option fields as JSON integers (or null), and no other fields.
Every refusal is a JSON {"error": "..."} in words. The body is held in a spooled temporary file
(anonymous on disk past 1 MB) and replayed to the app; it is closed on every path.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

CHUNK = 1 << 20  # replay chunk: big chunks make the multipart parser ~2x faster than 64 KB ones
DRAIN_BYTES = 32 << 20  # read at most this much past the limit before answering 413
MAX_NAME = 200  # file names become temp-file suffixes; longer ones are refused


class Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadRoute:
    file_field: str  # the multipart field that carries the video(s)
    max_files: int
    options: tuple[str, ...] = ("top_k", "views")  # whole numbers
    numbers: tuple[str, ...] = ()  # any positive number (seconds)


class UploadGuard:
    def __init__(self, app, routes: dict[str, UploadRoute], max_bytes: int, body_timeout_s: float = 60.0):
        self.app, self.routes, self.max_bytes, self.body_timeout_s = app, routes, max_bytes, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        try:
            try:
                check_request_line(scope, route)
                await self._read_body(scope, receive, body)
                await check_form(scope, body, route)
            except Refusal as r:
                headers = {"Allow": "POST"} if r.status == 405 else {"Connection": "close"} if r.status == 413 else None
                return await JSONResponse({"error": str(r)}, status_code=r.status, headers=headers)(
                    scope, receive, send
                )
            body.seek(0)
            await self.app(scope, _replay(body, receive), send)
        finally:
            body.close()

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
        parsed = float(value)
    except ValueError:
        raise Refusal(400, f"{name} must be a number of seconds, got {value!r}") from None
    if not parsed > 0 or parsed == float("inf"):
        raise Refusal(400, f"{name} must be a positive number of seconds, got {value!r}")


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
