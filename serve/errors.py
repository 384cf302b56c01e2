"""What the API answers when it cannot answer 200: a status, a stable code a client switches on, and a
message in words that says whose fault it is.

The codes (README, "Status codes"): every JSON error of the service carries one of ERROR_CODES.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from stadapter_deploy.errors import RequestError
from stadapter_deploy.video.pool import (
    DecodeFailure,
    DecodeTimedOut,
    PoolUnavailable,
    VideoRefused,
    WorkerBug,
    WorkerCrashed,
)

log = logging.getLogger("stadapter.serve")

RETRY_AFTER_S = 2  # what a 503 or 429 tells the client to wait before trying again

ERROR_CODES = {
    "bad_request": "400: the request is malformed (a missing or unknown field, options in the query string)",
    "bad_option": "400: an option is out of range or not a number (`top_k`, `views`, `window_s`, `stride_s`)",
    "no_video": "400: no file, or an empty one, in the video field",
    "too_many_videos": "400: more videos than `STADAPTER_MAX_VIDEOS` in one `/classify_batch`",
    "upload_incomplete": "400: the multipart body was cut off, or the client left before it was sent",
    "unauthorized": "401: no `Authorization: Bearer <token>`, or a wrong one",
    "not_found": "404: no such route, or no task of that id (finished tasks expire)",
    "method_not_allowed": "405: the route takes another method",
    "upload_timeout": "408: the body did not arrive within `STADAPTER_BODY_TIMEOUT_S`",
    "task_not_done": "409: the task has no result yet (poll its status)",
    "task_canceled": "409: the task was canceled (the answer of its `/get`)",
    "upload_too_large": "413: the body is over `STADAPTER_MAX_UPLOAD_MB`",
    "unsupported_media_type": "415: not multipart/form-data, or the file part is not `video/*` or binary",
    "video_unreadable": "422: not a video, a still image, truncated, no video stream, unknown codec, nothing decodes",
    "video_too_large": "422: over a decode limit (pixels per frame, frames, decode memory)",
    "video_too_long": "422: longer than `STADAPTER_MAX_DURATION_S` (or, for a task, `STADAPTER_MAX_TASK_SECONDS`)",
    "video_too_long_use_task": "422: more timeline windows than `STADAPTER_MAX_TIMELINE_WINDOWS`: send it to "
    "`/timeline_task/submit`",
    "decode_timeout": "422: decoding took longer than `STADAPTER_DECODE_TIMEOUT_S`",
    "too_many_tasks": "429: `STADAPTER_MAX_TASKS` tasks are pending or running; retry after `Retry-After`",
    "internal_error": "500: a fault of this deployment (logged); retrying will not help",
    "embeddings_unavailable": "501: the served bundle was exported before embeddings (`/embed`): export it again",
    "model_failed": "500: the model failed on a well-formed input: a fault of the deployment",
    "worker_crashed": "503: the decode process died twice on this request (it is replaced); retry",
    "busy": "503: no decode worker is running right now; retry after `Retry-After`",
    "model_unavailable": "503: the model worker is restarting; retry",
    "model_overloaded": "503: the model's queue is past `STADAPTER_MAX_LATENCY_MS`; retry",
}
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
}


def codes_table() -> str:
    """The README's table of error codes, from ERROR_CODES."""
    rows = ["| code | status: when |", "|---|---|"]
    return "\n".join(rows + [f"| `{code}` | {meaning} |" for code, meaning in ERROR_CODES.items()])


def code_for_status(status: int) -> str:
    """The code of an error answer that came without one (the router's 404, BentoML's own answers)."""
    return STATUS_CODES.get(status, "internal_error" if status >= 500 else "bad_request")


def json_error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    if status in (429, 503):
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def error(e: RequestError) -> JSONResponse:
    return json_error(e.status, e.code, str(e))


def decode_failure(e: DecodeFailure, what: str, upload: str) -> RequestError:
    """A decode that gave no value, as the client hears it: the file's fault (422) only when it is."""
    if isinstance(e, VideoRefused):
        return RequestError(422, f"cannot use {what}: {str(e).replace(upload, 'the upload')}", e.code)
    if isinstance(e, DecodeTimedOut):
        log.warning("decode of %s timed out after %g s; its worker was replaced", what, e.timeout_s)
        return RequestError(
            422,
            f"decoding {what} took longer than {e.timeout_s:g} s, the server's limit; send a shorter or smaller video",
            "decode_timeout",
        )
    if isinstance(e, WorkerCrashed):
        log.error("decode worker died on %s (%d attempts); it was replaced", what, e.attempts)
        return RequestError(
            503, f"the server failed while decoding {what} (not the file's fault); try again", "worker_crashed"
        )
    if isinstance(e, PoolUnavailable):
        log.error("no decode worker for %s: %s", what, e)
        return RequestError(503, "no decode worker is running right now; try again", "busy")
    assert isinstance(e, WorkerBug)
    log.error("decoding %s hit a fault of this deployment: %s", what, e)
    return RequestError(
        500, f"the server failed on {what}: a fault of this deployment, not of the file", "internal_error"
    )


def model_failure(e: Exception) -> RequestError:
    """The answer for a failed model call: 503 (retry) when the model is busy or away, 500 when it broke."""
    status = int(getattr(e, "error_code", 0) or 0)  # BentoML's client carries the model service's status
    if status in (429, 503):
        log.warning("model queue past its latency limit: %s", e)
        return RequestError(
            503,
            "the model is overloaded right now (its queue is past the latency limit); try again",
            "model_overloaded",
        )
    if status == 0:  # no answer at all: the model worker is down or restarting
        log.error("model worker unreachable: %s: %s", type(e).__name__, e)
        return RequestError(
            503, "the model is unavailable right now (its worker is restarting); try again", "model_unavailable"
        )
    log.error("model call failed with %s: %s", status, e)
    return RequestError(
        500, "the model failed on this input: a fault of this deployment, not of the video", "model_failed"
    )
