"""What the API answers when it cannot answer 200: a status, a message in words, and whose fault it is."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

log = logging.getLogger("stadapter.serve")

RETRY_AFTER_S = 2  # what a 503 tells the client to wait before trying again


def error(e: BadRequest) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if e.status == 503 else None
    return JSONResponse({"error": str(e)}, status_code=e.status, headers=headers)


class BadRequest(Exception):
    """An answer other than 200: a status and a message in words. 4xx: the request is at fault;
    503: the server cannot answer right now and the client should retry; 500: the server is broken."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def model_failure(e: Exception) -> BadRequest:
    """The answer for a failed model call: 503 (retry) when the model is busy or away, 500 when it broke."""
    status = int(getattr(e, "error_code", 0) or 0)  # BentoML's client carries the model service's status
    if status in (429, 503):
        log.warning("model queue past its latency limit: %s", e)
        return BadRequest(503, "the model is overloaded right now (its queue is past the latency limit); try again")
    if status == 0:  # no answer at all: the model worker is down or restarting
        log.error("model worker unreachable: %s: %s", type(e).__name__, e)
        return BadRequest(503, "the model is unavailable right now (its worker is restarting); try again")
    log.error("model call failed with %s: %s", status, e)
    return BadRequest(500, "the model failed on this input: a fault of this deployment, not of the video")
