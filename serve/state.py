"""The files a server writes are its own: one private folder (0700) per `bentoml serve`.

`bentoml serve` imports the service once in its own process before it starts the workers. That first
import checks the named bundle folder against its manifest, makes the folder and pins the bundle in it:
a snapshot of hard links (copies where links cannot be made), verified, whose manifest digest travels
with the folder's path to every worker (STADAPTER_STATE_DIR, STADAPTER_PINNED_DIGEST). A worker,
restarted or not, serves the snapshot only if the folder is still this user's and private and the
manifest still has that digest, and verifies every file's checksum again. `stadapter-export --overwrite`
writes new files and renames folders, so the links keep the old version alive; a file edited in place
fails the checksums and the worker refuses to start.

The folder also holds the tasks (`tasks/`: results and uploads) and the mounted page's cache (`gradio/`,
its uploads). It is removed when the server stops, after a failed start, and, for a server that was
killed, by the next start on this machine. The server's other temporary files (a request's upload while it
is answered) stay in TMPDIR, readable by the server's user only (umask 077) and deleted on every path.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from stadapter_deploy.errors import BundleError, ConfigError
from stadapter_deploy.runtime.bundle import MANIFEST_FILE, Bundle, load_bundle
from stadapter_deploy.video.pool import process_alive

STATE_ENV = "STADAPTER_STATE_DIR"
DIGEST_ENV = "STADAPTER_PINNED_DIGEST"
PREFIX = "stadapter-serve-"
OWNER_FILE = "owner.pid"


def server_state(bundle: Path) -> tuple[Path, Bundle]:
    """(this server's private folder, the pinned bundle, verified): made here on the first import of a
    server, inherited by its workers after that."""
    os.umask(0o077)  # whatever this server writes (tasks, uploads, Gradio's cache) is readable by its user only
    inherited = os.environ.get(STATE_ENV)
    if inherited:
        state = check_private(Path(inherited))
        return state, load_pinned(state / "bundle", os.environ.get(DIGEST_ENV, ""), bundle)
    sweep_stale(Path(tempfile.gettempdir()))
    load_bundle(bundle, verify=True)  # the folder that was named, checked before anything is made of it
    state = Path(tempfile.mkdtemp(prefix=PREFIX))  # 0700, a name no one could have planted
    try:
        (state / OWNER_FILE).write_text(str(os.getpid()))
        link_tree(bundle, state / "bundle")
        digest = manifest_digest(state / "bundle")
        verified = load_pinned(state / "bundle", digest, bundle)
        for folder in ("tasks", "gradio"):
            (state / folder).mkdir(mode=0o700)
    except BaseException:
        shutil.rmtree(state, ignore_errors=True)
        raise
    atexit.register(shutil.rmtree, state, True)
    # The workers started from here on inherit the folder (TMPDIR stays: sockets are made there, and their
    # paths have a length limit).
    os.environ.update({STATE_ENV: str(state), DIGEST_ENV: digest, "GRADIO_TEMP_DIR": str(state / "gradio")})
    return state, verified


def check_private(state: Path) -> Path:
    """The inherited folder, if it is still this user's alone; else ConfigError."""
    try:
        info = state.lstat()
    except OSError:
        raise ConfigError(f"the server's folder {state} is gone; restart the server") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(f"the server's folder {state} is not a private folder of this user; refusing to serve it")
    return state


def load_pinned(snapshot: Path, digest: str, named: Path) -> Bundle:
    """The snapshot, verified: its manifest must still have the pinned digest and every file its checksum."""
    try:
        if manifest_digest(snapshot) != digest:
            raise BundleError(f"{named}: the pinned snapshot's manifest changed; restart the server")
        return load_bundle(snapshot, verify=True)
    except (BundleError, ValueError, OSError) as e:
        raise BundleError(str(e).replace(str(snapshot), str(named))) from None


def manifest_digest(bundle: Path) -> str:
    return hashlib.sha256((bundle / MANIFEST_FILE).read_bytes()).hexdigest()


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of src into dst (copy where the file system cannot link); the manifest last."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == MANIFEST_FILE)
    for path in files:
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def sweep_stale(temp: Path) -> None:
    """Remove the folders of this user's servers that were killed (their owner process is gone)."""
    for folder in temp.glob(PREFIX + "*"):
        try:
            if folder.lstat().st_uid != os.getuid() or not folder.is_dir():
                continue
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not process_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
