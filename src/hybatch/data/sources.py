"""Find data files: a local directory, or a one-time download into the cache."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class DataSourceError(RuntimeError):
    """A data file could not be found locally nor downloaded."""


def default_cache_dir() -> Path:
    """`$HYBATCH_CACHE`, else `~/.cache/hybatch`."""
    return Path(os.environ.get("HYBATCH_CACHE", Path.home() / ".cache" / "hybatch")).expanduser()


def download(url: str, dest: Path) -> Path:
    """Download `url` to `dest` atomically (a partial download never looks complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def resolve_files(
    names: Sequence[str],
    data_dir: str | os.PathLike | None,
    url_template: str | None,
    cache_dir: str | os.PathLike | None,
    cache_subdir: str,
) -> dict[str, Path]:
    """Map each file name to a readable local path.

    With `data_dir`, every file must be there. Without it the files are looked up in
    `<cache_dir>/<cache_subdir>` and the missing ones downloaded from `url_template.format(name=...)`.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataSourceError(f"data_dir {str(root)!r} is not a directory")
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise DataSourceError(f"data_dir {str(root)!r} lacks {missing}; expected files: {list(names)}")
        return {n: root / n for n in names}

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = root / cache_subdir
    paths = {n: root / n for n in names}
    for name, path in paths.items():
        if path.is_file():
            continue
        if url_template is None:
            raise DataSourceError(f"{path} does not exist and no download URL is configured; pass data_dir=<dir with {list(names)}>")
        url = url_template.format(name=name)
        log.info("downloading %s -> %s", url, path)
        try:
            download(url, path)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            raise DataSourceError(
                f"could not download {url} ({err}). Without internet access, put the files {list(names)} "
                f"in {root} or pass data_dir=<their directory>"
            ) from err
    return paths
