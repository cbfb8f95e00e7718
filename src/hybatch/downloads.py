"""Find data files: a local directory, or a one-time download into the cache, verified by sha256."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from hybatch.atomic import atomic_open

log = logging.getLogger(__name__)

_BLOCK = 1 << 20


class DataSourceError(RuntimeError):
    """A data file could not be found locally nor downloaded."""


class ChecksumError(DataSourceError):
    """A downloaded or cached file is not the one whose sha256 is recorded."""


def default_cache_dir() -> Path:
    """`$HYBATCH_CACHE`, else `~/.cache/hybatch`."""
    return Path(os.environ.get("HYBATCH_CACHE", Path.home() / ".cache" / "hybatch")).expanduser()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest`, checking its sha256 when one is given.

    The bytes go to a temporary file in `dest`'s folder, renamed to `dest` only once complete and
    verified: an interrupted or mismatching download never lands in the cache.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Raising inside atomic_open discards the temporary file: dest appears only complete and verified.
    with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
        digest = hashlib.sha256()
        while block := response.read(_BLOCK):
            digest.update(block)
            out.write(block)
        actual = digest.hexdigest()
        if sha256 is None:
            log.warning("%s has no recorded sha256 and is not verified; its sha256 is %s", url, actual)
        elif actual != sha256.lower():
            raise ChecksumError(
                f"{url}: sha256 is {actual}, expected {sha256}. The download was discarded; the file at that "
                "URL is not the pinned one, or the transfer was corrupted"
            )
    return dest


def _check_cached(path: Path, sha256: str, url: str | None) -> None:
    actual = file_sha256(path)
    if actual != sha256.lower():
        origin = f" (downloaded from {url})" if url else ""
        raise ChecksumError(
            f"{path}{origin}: sha256 is {actual}, expected {sha256}; delete it to download the pinned file again"
        )


def resolve_files(
    names: Sequence[str],
    data_dir: str | os.PathLike | None,
    url_template: str | None,
    cache_dir: str | os.PathLike | None,
    cache_subdir: str,
    sha256: Mapping[str, str] | None = None,
    data_dir_key: str = "data_dir",
) -> dict[str, Path]:
    """Map each file name to a readable local path.

    `data_dir_key` is the override that sets `data_dir` as the user types it (e.g. `data.data_dir`):
    the errors name it.

    With `data_dir`, every file must be there (a local copy is used as it is). Without it the files
    are looked up in `<cache_dir>/<cache_subdir>` and the missing ones downloaded from
    `url_template.format(name=...)`; a file with a recorded `sha256[name]` is verified, whether
    downloaded now or found in the cache.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataSourceError(f"{data_dir_key}={str(root)!r} is not a directory")
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise DataSourceError(f"{data_dir_key}={str(root)!r} lacks {missing}; expected files: {list(names)}")
        return {n: root / n for n in names}

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root / cache_subdir
    checksums = sha256 or {}
    paths = {n: root / n for n in names}
    for name, path in paths.items():
        url = url_template.format(name=name) if url_template is not None else None
        if path.is_file():
            if name in checksums:
                _check_cached(path, checksums[name], url)
            continue
        if url is None:
            raise DataSourceError(f"{path} does not exist and no download URL is configured; pass {data_dir_key}=<dir with {list(names)}>")
        log.info("downloading %s -> %s", url, path)
        try:
            if name in checksums:
                download(url, path, checksums[name])
            else:
                download(url, path)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise DataSourceError(
                f"could not download {url} ({err}). Without internet access, put the files {list(names)} "
                f"in {root} or pass {data_dir_key}=<their directory>"
            ) from err
    return paths
