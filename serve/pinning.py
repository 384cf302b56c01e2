"""Serve one verified bundle for the whole life of a server, even if its folder is rewritten meanwhile.

`bentoml serve` imports the service once in its own process before it starts the workers. That first
import verifies the bundle and pins it: a snapshot folder of hard links (a copy where links cannot be
made) named after the manifest's hash, passed to the workers in STADAPTER_PINNED_BUNDLE. `stadapter-export
--overwrite` writes new files and renames folders, so the links keep the old files alive; a file edited in
place fails the snapshot's checksums and the worker refuses to start. Either way the labels, the model
and /metadata come from the same verified version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from stadapter_deploy.errors import BundleError
from stadapter_deploy.runtime.bundle import MANIFEST_FILE, Bundle, load_bundle

PINNED_ENV = "STADAPTER_PINNED_BUNDLE"


def pin_bundle(bundle: Path) -> Bundle:
    """The pinned snapshot of `bundle`, verified (once per process): made here on the first call of a
    server, inherited after that."""
    pinned = os.environ.get(PINNED_ENV)
    if pinned and Path(pinned, MANIFEST_FILE).is_file():
        return load_bundle(pinned, verify=True)
    if not (bundle / MANIFEST_FILE).is_file():
        return load_bundle(bundle, verify=True)  # raises, saying what is missing
    digest = hashlib.sha256((bundle / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    snapshot = Path(tempfile.gettempdir()) / f"stadapter-bundle-{digest}"
    fresh = not (snapshot / MANIFEST_FILE).is_file()
    if fresh:
        partial = Path(tempfile.mkdtemp(prefix=f".{snapshot.name}-", dir=snapshot.parent))
        link_tree(bundle, partial)
        try:
            partial.rename(snapshot)
        except OSError:  # another server pinned the same version meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    try:
        verified = load_bundle(snapshot, verify=True)
    except (BundleError, ValueError, OSError) as e:
        if fresh:  # never leave a broken snapshot for a later, repaired bundle with the same manifest
            shutil.rmtree(snapshot, ignore_errors=True)
        raise BundleError(str(e).replace(str(snapshot), str(bundle))) from None
    os.environ[PINNED_ENV] = str(snapshot)  # the workers started from here on inherit it
    return verified


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of src into dst (copy where the file system cannot link); the manifest last."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == MANIFEST_FILE)
    for path in files:
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
