"""Atomic writes: a crash, a SIGKILL or a full disk never leaves a file or folder that looks complete
and is not.

Files are written to `<name>.partial-XXXX` beside the target, fsynced and `os.replace`d over it (atomic
within one POSIX file system); the parent folder is fsynced so the rename itself survives a power cut.
Folders (checkpoints, saved models) are written into `<name>.partial-<pid>/`, every file fsynced, optionally
with a `manifest.json` of each file's size and sha256 written last, and then renamed to `<name>`. So a
folder under its final name is complete, and the manifest lets a reader prove it later
(`verify_manifest`): it catches what a rename cannot, a file damaged or cut short after it was written
(a failing disk, an interrupted copy of the run folder).

A full disk (ENOSPC, EDQUOT, or EFBIG from a file size limit) becomes a TunesmithError naming the path
and the fix, after the partial output is removed; the previous complete copy is never touched before
the new one is complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs.kill_points import kill_point

PARTIAL = ".partial"  # suffix of everything not yet complete; `remove_partials` clears leftovers
MANIFEST = "manifest.json"
_DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large for the file system or the file size limit (ulimit -f)"}


# ---------------------------------------------------------------------------------------------------
# Durability


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to the disk (a folder: the names in it, so renames persist)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder; the rename is still atomic there
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        fsync_path(path)
    fsync_path(folder)


# ---------------------------------------------------------------------------------------------------
# A full disk


def disk_full_reason(exc: BaseException) -> str | None:
    """Why a write failed when the disk (or a size limit) is full, else None. Looks through the chain:
    torch.save wraps the OSError in a RuntimeError, safetensors keeps only '(os error 28)' in its text."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return _DISK_FULL[current.errno]
        found = re.search(r"os error (\d+)", str(current))
        if found and int(found.group(1)) in _DISK_FULL:
            return _DISK_FULL[int(found.group(1))]
        current = current.__cause__ or current.__context__
    return None


def disk_full_error(exc: BaseException, target: Path, then: str = "") -> TunesmithError | None:
    reason = disk_full_reason(exc)
    if reason is None:
        return None
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {shutil.disk_usage(_existing_parent(target)).free / 1024**2:.0f} MiB free there now"
    return TunesmithError(
        f"{reason} while writing {target}; nothing partial was kept and the previous complete copy is untouched",
        where=str(target),
        fix=f"free space on the disk holding {_existing_parent(target)}{free} (or point output.dir at a disk with "
            f"room, or raise `ulimit -f`){then}")


def _existing_parent(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


# ---------------------------------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def atomic_file(path: Path, *, then: str = ""):
    """Yield a temporary path beside `path`; once the block has written it, it is fsynced and renamed
    to `path`. On any failure the temporary file is removed and `path` keeps its old content. `then`
    is added to a disk-full error's fix (e.g. how to resume)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; a fresh name keeps the umask's permissions.
    staging = path.with_name(f"{path.name}{PARTIAL}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield staging
        fsync_path(staging)
        os.replace(staging, path)
        fsync_path(path.parent)
    except BaseException as exc:
        staging.unlink(missing_ok=True)
        error = disk_full_error(exc, path, then)
        if error is not None:
            raise error from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name and rename, so a crash never leaves a half-written file."""
    with atomic_file(path) as staging:
        staging.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Folders


@contextlib.contextmanager
def atomic_directory(target: Path, *, manifest: bool = False, then: str = ""):
    """Yield `<target>.partial-<pid>/`; when the block is done its files are fsynced, `manifest.json` is
    written last when `manifest`, and the folder is renamed to `target` (an existing `target` is moved
    aside first and removed only after the rename). On failure the staging folder is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Per process: two processes converting the same starter model must not write into one folder.
    staging = target.with_name(f"{target.name}{PARTIAL}-{os.getpid()}")
    if staging.exists():  # left by an earlier process with this pid that died while writing
        shutil.rmtree(staging)
    staging.mkdir()
    old = target.with_name(f"{target.name}{PARTIAL}-old-{os.getpid()}")
    try:
        yield staging
        if manifest:
            write_manifest(staging)
        _fsync_tree(staging)
        kill_point(f"{target.name}-before-rename")
        if target.exists():
            if old.exists():
                shutil.rmtree(old)
            target.rename(old)
        staging.rename(target)
        fsync_path(target.parent)
        if old.exists():
            shutil.rmtree(old)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not target.exists():  # failed between the two renames: the old copy goes back
            old.rename(target)
        error = disk_full_error(exc, target, then)
        if error is not None:
            raise error from exc
        raise


def remove_partials(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Remove what writers that died left in `folder` (and its subfolders when `recursive`): names
    holding `.partial`; return what was removed, for the caller to report."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    found = folder.rglob(f"*{PARTIAL}*") if recursive else folder.glob(f"*{PARTIAL}*")
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a partial folder removed just before
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------
# Manifests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict:
    """`manifest.json`: every other file of `folder` (relative path -> size, sha256), fsynced."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"version": 1, "files": files}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    fsync_path(path)
    return manifest


def verify_manifest(folder: Path) -> str | None:
    """None when every file the manifest lists has its size and hash; else what is wrong."""
    path = Path(folder) / MANIFEST
    try:
        files = json.loads(path.read_text())["files"]
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({exc})"
    for name, expected in files.items():
        file = Path(folder) / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the manifest says {expected.get('size')}"
        if _sha256(file) != expected.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None
