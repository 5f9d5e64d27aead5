"""Atomic output: a file or folder appears under its final name only once it is complete.

Every output of rib is written to a temporary sibling first and renamed into place, so an
interrupted job never leaves a half-written file that Snakemake or DVC could take as done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DamagedFileError, FormatError, MissingFileError, RibError

DIGEST_KEY = "record_sha256"  # the digest a result record carries of its own content
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write that failed for want of space


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".partial", dir=path.parent)
    os.close(fd)
    return Path(name)


def remove_leftovers(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by a writer that was killed (SIGKILL skips cleanup).

    Only one job writes a given output at a time (Snakemake and DVC lock the outputs of running
    jobs), so a temporary sibling that exists when a new write of ``path`` starts is dead. The names
    matched are exactly those :func:`atomic_path` and :func:`atomic_dir` make for ``path``."""
    endings = rf"({re.escape(path.suffix)}\.partial|\.partial|\.old)"
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{endings}")
    if not path.parent.is_dir():
        return
    for leftover in path.parent.iterdir():
        if pattern.fullmatch(leftover.name):
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed
    (``what`` names the file in the error of a full disk)."""
    path = Path(path)
    tmp = _tmp_sibling(path, path.suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise write_error(path, what, err) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` as a hard link to ``src`` (no second copy of a large file when both lie on one file
    system), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_error(path: str | os.PathLike, what: str, err: Exception) -> RibError:
    """The one-line error for a write that failed (a full disk, most often): what, where, how much
    space is left, and that the file written before is untouched."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    full = getattr(err, "errno", None) in DISK_FULL or (free is not None and free < (1 << 20))
    hint = (f"; the disk holding {folder} is full ({free / 2**20:.1f} MiB free): free some space or write the "
            "outputs elsewhere" if full and free is not None else "")
    kept = "; the previous file is kept unchanged" if Path(path).exists() else ""
    return RibError(f"{path}: could not write the {what} ({first}){hint}{kept}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "content")
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except OSError as err:
        if err.errno in DISK_FULL:
            raise write_error(path, "folder", err) from None
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not valid JSON (not UTF-8 text at byte {err.start})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def quarantine(path: str | os.PathLike) -> Path:
    """Move a damaged output aside (``NAME.damaged``) so that the pipeline sees it missing and rebuilds it."""
    path = Path(path)
    aside = path.with_name(path.name + ".damaged")
    if aside.is_dir():
        shutil.rmtree(aside)
    os.replace(path, aside)
    return aside


def _update(h, obj) -> None:
    """Feed a tree of dicts, lists, tensors, arrays and plain values into the hash ``h``."""
    import numpy as np

    if isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(repr(key).encode() + b":")
            _update(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _update(h, item)
        h.update(b"]")
    elif isinstance(obj, (set, frozenset)):
        h.update(b"(")
        for item in sorted(obj, key=repr):
            _update(h, item)
        h.update(b")")
    elif "torch" in sys.modules and isinstance(obj, sys.modules["torch"].Tensor):  # Parameters too
        torch = sys.modules["torch"]
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor:{t.dtype}:{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"array:{a.dtype}:{a.shape}:".encode())
        h.update(a.view(np.uint8).data if a.size else b"")
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def tree_digest(obj: Any) -> str:
    """A SHA-256 over a nested structure of tensors and plain values (a checkpoint, a training state)."""
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()


def record_digest(record: dict) -> str:
    blob = json.dumps({k: v for k, v in record.items() if k != DIGEST_KEY}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_record(path: str | os.PathLike, record: dict) -> None:
    """Write a result record (one cell, one distance) with the digest of its own content."""
    record = {k: v for k, v in record.items() if k != DIGEST_KEY}
    # the digest is of the record as it reads back from JSON (tuples become lists, keys strings)
    record = json.loads(json.dumps(record, sort_keys=True))
    write_json(path, {**record, DIGEST_KEY: record_digest(record)})


def read_record(path: str | os.PathLike) -> dict:
    """Read a result record; a truncated, unparsable or altered one is a :class:`DamagedFileError`."""
    path = Path(path)
    try:
        record = read_json(path)
    except MissingFileError:
        raise
    except FormatError as err:
        raise DamagedFileError(f"{err}: damaged result file", path) from None
    if not isinstance(record, dict):
        raise DamagedFileError(f"{path}: result file that is not a JSON object", path)
    if DIGEST_KEY not in record:  # written before records carried digests: nothing to check it against
        return record
    if record_digest(record) != record[DIGEST_KEY]:
        raise DamagedFileError(f"{path}: result file does not match the digest recorded when it was written "
                               "(altered or damaged)", path)
    return record
