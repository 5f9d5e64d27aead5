"""Downloading dataset archives: resumable, mirrored, checksum-verified, atomic.

An archive is downloaded to ``DOWNLOADS/<filename>.part``. A transfer that breaks off resumes with
an HTTP ``Range`` request from the bytes already there (on the same or the next mirror); a server
that ignores ranges makes it start over. Once complete, the size and the digest (sha256 or md5)
are checked and only then is the file renamed to its final name, so a file under the final name
is always a verified archive. A digest mismatch deletes the partial file and stops with an error
naming the file, the expected and the actual digest.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import RibError
from ..progress import progress
from .suites import Archive

log = logging.getLogger("rib.download")
CHUNK = 1 << 20
USER_AGENT = "rib-benchmark/0.1 (+https://github.com/; dataset download)"


class DownloadError(RibError):
    pass


class ChecksumError(DownloadError):
    pass


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, archive: Archive) -> None:
    """Check size and digest; raise :class:`ChecksumError` naming the file and both values."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise ChecksumError(f"{path}: size {size} bytes, expected {archive.size}")
    for algorithm in ("sha256", "md5"):
        expected = getattr(archive, algorithm)
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise ChecksumError(f"{path}: {algorithm} {actual} does not match the expected {expected}")


def _fetch_once(url: str, part: Path, total: int | None, timeout: float, show_progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its current size)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            log.info("%s: the server ignored the range request; starting over", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected_total = total or ((have + int(length)) if length is not None else None)
        mode = "ab" if have else "wb"
        with open(part, mode) as out:
            bar = progress(iter(lambda: response.read(CHUNK), b""), desc=f"download {part.name[:-5]}",
                           unit="MB", total=None if expected_total is None else -(-(expected_total - have) // CHUNK),
                           enabled=show_progress)
            for block in bar:
                out.write(block)
    got = part.stat().st_size
    if expected_total is not None and got < expected_total:
        raise ConnectionError(f"transfer ended at {got} of {expected_total} bytes")


def download(archive: Archive, downloads: str | os.PathLike, *, attempts: int = 3, timeout: float = 60.0,
             show_progress: bool = True) -> Path:
    """Return the path of the verified archive in ``downloads``, downloading what is missing."""
    downloads = Path(downloads)
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / archive.filename
    if final.exists():
        verify(final, archive)  # a file under the final name was verified once; check it is still whole
        log.info("%s: already downloaded and verified", final)
        return final
    part = downloads / f"{archive.filename}.part"
    if not archive.urls:
        raise DownloadError(f"{archive.filename}: no download address is known")
    errors: list[str] = []
    done = False
    for url in archive.urls:  # mirrors in order; bytes already fetched carry over (same file)
        for attempt in range(1, attempts + 1):
            try:
                _fetch_once(url, part, archive.size, timeout, show_progress)
                done = True
                break
            except urllib.error.HTTPError as err:
                errors.append(f"{url}: HTTP {err.code}")
                if err.code == 416 and part.exists():  # asked past the end: the part is already whole
                    done = True
                    break
                if 400 <= err.code < 500:
                    break  # a client error will not go away by retrying this mirror
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
                reason = getattr(err, "reason", err)
                errors.append(f"{url}: {reason}")
                log.warning("%s: attempt %d of %d failed (%s); resuming", url, attempt, attempts, reason)
                if attempt < attempts:
                    time.sleep(min(0.5 * attempt, 5.0))
        if done:
            break
    if not done:
        raise DownloadError(f"{archive.filename}: could not be downloaded from any of its {len(archive.urls)} "
                            f"address(es) ({'; '.join(errors[-3:])})")
    try:
        verify(part, archive)
    except ChecksumError as err:
        part.unlink()
        raise ChecksumError(str(err).replace(f"{part}:", f"{part} (deleted):", 1)) from None
    os.replace(part, final)
    return final
