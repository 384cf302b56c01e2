"""Long timelines as tasks, bounded and private: what `/timeline_task` stores and how it ends.

A task is a JSON record and, while it waits or runs, its upload, both in the server's private folder
(serve/state.py), readable by any API worker: the worker that accepted the task runs it in its own
event loop and is the only one that writes its record, except to mark a task whose worker died. No
request header is stored (the guard strips the token and cookies before the app sees a request), the
upload is deleted as soon as the task ends, and the record STADAPTER_TASK_TTL_S after that.

- At most STADAPTER_MAX_TASKS tasks are pending or running, over all API workers; past it, 429.
- Cancelling leaves a marker the running worker sees within CANCEL_POLL_S; it stops the decode (its
  process is replaced) and records the task as canceled.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stadapter_deploy.errors import RequestError
from stadapter_deploy.video.pool import process_alive

CANCEL_POLL_S = 0.25
LIVE = ("pending", "in_progress")
TASK_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Task:
    task_id: str
    status: str  # pending, in_progress, completed, failed, canceled
    created_at: float
    owner_pid: int  # the API worker that runs it
    windows: int = 0  # done so far
    seconds: float = 0.0  # of video, done so far
    executed_at: float | None = None
    completed_at: float | None = None
    http_status: int | None = None  # the answer /get gives once it ended
    result: dict | None = None

    def status_json(self) -> dict:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "created_at": self.created_at,
            "executed_at": self.executed_at,
            "completed_at": self.completed_at,
        }

    def progress_json(self) -> dict:
        return {"task_id": self.task_id, "status": self.status, "windows": self.windows, "seconds": self.seconds}


class TaskStore:
    def __init__(self, folder: Path, max_tasks: int, ttl_s: float):
        self.folder, self.max_tasks, self.ttl_s = Path(folder), max_tasks, ttl_s

    def record(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.json"

    def upload(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.upload"

    def cancel_marker(self, task_id: str) -> Path:
        return self.folder / f"{task_id}.cancel"

    @contextmanager
    def locked(self):
        """One API worker at a time counts, creates and marks tasks."""
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create(self, video: Path) -> Task:
        """A pending task holding a private copy of `video`; RequestError 429 when STADAPTER_MAX_TASKS are
        pending or running."""
        with self.locked():
            live = [t for t in self.all() if t.status in LIVE]
            if len(live) >= self.max_tasks:
                raise RequestError(
                    429,
                    f"{len(live)} tasks are pending or running, the server's limit (STADAPTER_MAX_TASKS); "
                    "submit again later",
                    "too_many_tasks",
                )
            task = Task(uuid.uuid4().hex, "pending", time.time(), os.getpid())
            try:
                os.link(video, self.upload(task.task_id))  # the request's own temp file goes when it ends
            except OSError:
                shutil.copyfile(video, self.upload(task.task_id))
            self.save(task)
        return task

    def save(self, task: Task) -> None:
        path = self.record(task.task_id)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(dataclasses.asdict(task)))
        partial.replace(path)

    def read(self, task_id: str) -> Task:
        """The task, as it stands; RequestError 404 for an id that is not a live or recent task."""
        if not TASK_ID.fullmatch(task_id or ""):
            raise RequestError(404, "no task of that id (a task id is 32 hex digits)", "not_found")
        try:
            task = Task(**json.loads(self.record(task_id).read_text()))
        except (OSError, ValueError, TypeError):
            raise RequestError(404, "no task of that id (finished tasks expire)", "not_found") from None
        if task.status in LIVE and not process_alive(task.owner_pid):
            self.end(
                task,
                "failed",
                503,
                {"error": "the worker running this task stopped; submit it again", "code": "worker_crashed"},
            )
        return task

    def end(self, task: Task, status: str, http_status: int, result: dict) -> None:
        """The task's last state; its upload and any cancel marker go."""
        task.status, task.http_status, task.result, task.completed_at = status, http_status, result, time.time()
        self.save(task)
        for path in (self.upload(task.task_id), self.cancel_marker(task.task_id)):
            path.unlink(missing_ok=True)

    def all(self) -> list[Task]:
        """Every task on record; expired ones are deleted on the way."""
        tasks = []
        for path in self.folder.glob("*.json"):
            try:
                task = Task(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if task.completed_at is not None and time.time() - task.completed_at > self.ttl_s:
                path.unlink(missing_ok=True)
                continue
            if task.status in LIVE and not process_alive(task.owner_pid):
                task.status = "failed"
            tasks.append(task)
        return tasks

    def request_cancel(self, task_id: str) -> None:
        self.cancel_marker(task_id).touch()

    def cancel_requested(self, task_id: str) -> bool:
        return self.cancel_marker(task_id).exists()
