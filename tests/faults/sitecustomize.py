"""A test build of the decode worker: on PYTHONPATH (tests/faults), every Python process imports this first,
and the decode jobs then misbehave for files whose content starts with a marker, as real faults would:

    FAULT:bug    a bug in the job (a ValueError that is no VideoError)
    FAULT:crash  the process dies (every time it is tried)
    FAULT:hang   the decode never returns

Any other file decodes as usual. Never on PYTHONPATH outside the tests that ask for it.
"""

import os
import time

import stadapter_deploy.video.jobs as jobs

_real_eval_clips = jobs.eval_clips


def _fault(video) -> str:
    with open(video, "rb") as f:
        head = f.read(16)
    return head[6:].split(b"\n")[0].decode() if head.startswith(b"FAULT:") else ""


def eval_clips(video, pre, views, limits):
    fault = _fault(video)
    if fault == "bug":
        raise ValueError("index 3 is out of range (a bug planted by the test build of the worker)")
    if fault == "crash":
        os._exit(7)
    if fault == "hang":
        time.sleep(3600)
    return _real_eval_clips(video, pre, views, limits)


jobs.eval_clips = eval_clips
