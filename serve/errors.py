"""What the API answers when it cannot answer 200: a status, a message in words, and whose fault it is."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from stadapter_deploy.errors import RequestError

log = logging.getLogger("stadapter.serve")

RETRY_AFTER_S = 2  # what a 503 tells the client to wait before trying again


def error(e: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)


def model_failure(e: Exception) -> RequestError:
    """The answer for a failed model call: 503 (retry) when the model is busy or away, 500 when it broke."""
    status = int(getattr(e, "error_code", 0) or 0)  # BentoML's client carries the model service's status
    if status in (429, 503):
        log.warning("model queue past its latency limit: %s", e)
        return RequestError(503, "the model is overloaded right now (its queue is past the latency limit); try again")
    if status == 0:  # no answer at all: the model worker is down or restarting
        log.error("model worker unreachable: %s: %s", type(e).__name__, e)
        return RequestError(503, "the model is unavailable right now (its worker is restarting); try again")
    log.error("model call failed with %s: %s", status, e)
    return RequestError(500, "the model failed on this input: a fault of this deployment, not of the video")
