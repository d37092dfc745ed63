"""Locate an edit-data file: a local path, a verified cached copy, or a download from its canonical URL.

Downloads go to ``<cache_dir>/data/<file name>``: streamed into a temporary sibling, checked against
the pinned sha256 (when one is given) and renamed into place, under a file lock so two jobs never
download the same file at once. When the download is impossible (offline machine, HTTP error) one
:class:`~edit_runner.errors.DataError` says which file to fetch, from where, and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO
from urllib.parse import urlparse

from filelock import FileLock

from edit_runner.errors import DataError
from edit_runner.paths import default_cache_dir

MEMIT_DSETS_URL = "https://memit.baulab.info/data/dsets/"
OFFLINE_ENV = "EDIT_RUNNER_OFFLINE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CanonicalFile:
    """Where a published edit-dataset file lives and (when pinned) its sha256 and size in bytes."""

    name: str
    url: str
    sha256: str | None = None
    size: int | None = None

    @property
    def filename(self) -> str:
        """The file name the download is cached under."""
        return url_filename(self.url)


CANONICAL_FILES: MappingProxyType[str, CanonicalFile] = MappingProxyType(
    {
        "counterfact": CanonicalFile(
            "counterfact",
            MEMIT_DSETS_URL + "counterfact.json",
            "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f",
            45_108_470,
        ),
        # Published next to counterfact.json by the MEMIT authors; not pinned (verified only when
        # data.sha256 is given).
        "multi_counterfact": CanonicalFile("multi_counterfact", MEMIT_DSETS_URL + "multi_counterfact.json"),
        "zsre": CanonicalFile("zsre", MEMIT_DSETS_URL + "zsre_mem_eval.json"),
    }
)


def url_filename(url: str) -> str:
    """The last path component of ``url`` (the name a download is cached under)."""
    name = Path(urlparse(url).path).name
    if not name:
        raise DataError(f"data.url={url!r} does not end in a file name")
    return name


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_instructions(name: str, url: str, target: Path, sha256: str | None) -> str:
    pin = f" (sha256 {sha256})" if sha256 else " (sha256 not pinned)"
    return (
        f"Download {url}{pin} yourself and save it as {target}, "
        f"or pass data.path=<your local copy of {target.name}> for data={name}."
    )


def _copy_stream(response: BinaryIO, handle: BinaryIO, total: int | None, label: str) -> str:
    """Copy ``response`` into ``handle`` with a progress bar; return the hex sha256 of what was copied."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    digest = hashlib.sha256()
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            handle.write(chunk)
            digest.update(chunk)
            progress.advance(task, len(chunk))
    return digest.hexdigest()


def _download(name: str, url: str, target: Path, sha256: str | None, timeout: float) -> None:
    instructions = _manual_instructions(name, url, target, sha256)
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataError(
            f"data={name}: {target.name} is not in the cache and {OFFLINE_ENV} is set. {instructions}"
        )
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=timeout) as response:
                length = (
                    response.headers.get("Content-Length") if getattr(response, "headers", None) else None
                )
                total = int(length) if length and str(length).isdigit() else None
                actual = _copy_stream(response, handle, total, f"downloading {target.name}")
                handle.flush()
                os.fsync(handle.fileno())
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(f"data={name}: could not download {url} ({reason}). {instructions}") from err
        if sha256 and actual.lower() != sha256.lower():
            raise DataError(
                f"data={name}: the file downloaded from {url} has sha256 {actual}, expected {sha256} "
                f"(data.sha256); it was not saved. {instructions}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_dataset_file(
    name: str,
    path: str | os.PathLike[str] | None = None,
    url: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Return a local file holding dataset ``name``.

    * ``path`` given: that file (a clear DataError when it does not exist; not hash-checked, so
      partial or modified copies can be used on purpose).
    * otherwise the cached copy ``<cache_dir>/data/<file name of url>``, verified against ``sha256``
      when one is given (a mismatch is an error telling how to fix it);
    * otherwise downloaded from ``url`` (default: :data:`CANONICAL_FILES` for ``name``) into a
      temporary file, checked against ``sha256`` and renamed into the cache atomically.

    ``sha256=None`` means "not pinned" (the canonical pin is used when ``url`` is the canonical URL).
    An offline machine or a failed download raises one DataError naming the file to download,
    the URL and the place to save it (or ``data.path=...``). Set ``EDIT_RUNNER_OFFLINE=1`` to never
    try the network.
    """
    if path is not None and str(path) != "":
        local = Path(path).expanduser()
        if not local.is_file():
            where = f" (resolved to {local.resolve()})" if not local.is_absolute() else ""
            raise DataError(
                f"data.path={str(path)!r}{where} does not exist or is not a file (data={name}); "
                "point data.path at the dataset file, or leave it unset to use the download cache."
            )
        return local
    canonical = CANONICAL_FILES.get(name)
    if not url:
        if canonical is None:
            raise DataError(
                f"data={name} has neither data.path nor data.url; pass data.path=<file> "
                f"(known downloadable datasets: {', '.join(CANONICAL_FILES)})"
            )
        url = canonical.url
    if sha256 is None and canonical is not None and canonical.url == url:
        sha256 = canonical.sha256
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "data" / url_filename(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_file():
            _download(name, url, target, sha256, timeout)
            return target
    if sha256:
        actual = file_sha256(target)
        if actual.lower() != sha256.lower():
            raise DataError(
                f"data={name}: cached file {target} has sha256 {actual}, expected {sha256} (data.sha256). "
                f"Delete it to download {url} again, or pass data.path=<file> to use another copy on purpose."
            )
    return target
