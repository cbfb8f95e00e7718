"""Downloads: pinned LAReQA commits, sha256 verification, and nothing half-written left in the cache.

Offline: files are served from `file://` URLs or by a stand-in for `urllib.request.urlopen`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from hybatch import downloads
from hybatch.data.hygiene import lareqa_held_out
from hybatch.data.lareqa_benchmarks import MLQA_R, SOURCES, XQUAD_R, lareqa_files, load_lareqa_benchmark
from hybatch.downloads import ChecksumError, DataSourceError, download, resolve_files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Response(io.BytesIO):
    """What `urlopen` returns: a readable body; `fail_after` bytes in, the connection drops."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is None:
            return super().read(size)
        if self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(self.fail_after - self.tell() if size < 0 else min(size, self.fail_after - self.tell()))


def serve(monkeypatch, files: dict[str, bytes], fail_after: int | None = None) -> list[str]:
    """Answer `urlopen(url)` with `files[url]`; returns the list of URLs requested."""
    requested: list[str] = []

    def urlopen(url, timeout=None):
        requested.append(url)
        if url not in files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return Response(files[url], fail_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --- download ----------------------------------------------------------------------------------
def test_download_from_a_file_url_lands_complete_and_verified(tmp_path):
    data = b'{"data": []}\n' * 1000
    remote = tmp_path / "remote.json"
    remote.write_bytes(data)
    dest = tmp_path / "cache" / "en.json"
    assert download(remote.as_uri(), dest, sha256(data)) == dest
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["en.json"]


def test_a_hash_mismatch_names_url_and_both_hashes_and_leaves_nothing(tmp_path):
    remote = tmp_path / "remote.json"
    remote.write_bytes(b"tampered")
    expected = sha256(b"original")
    dest = tmp_path / "cache" / "en.json"
    with pytest.raises(ChecksumError) as err:
        download(remote.as_uri(), dest, expected)
    message = str(err.value)
    assert remote.as_uri() in message and expected in message and sha256(b"tampered") in message
    assert leftovers(dest.parent) == []


def test_an_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    url = "https://example.org/en.json"
    serve(monkeypatch, {url: b"x" * 5000}, fail_after=3000)
    dest = tmp_path / "cache" / "en.json"
    with pytest.raises(ConnectionResetError):
        download(url, dest, sha256(b"x" * 5000))
    assert leftovers(dest.parent) == []
    with pytest.raises(DataSourceError, match=r"could not download https://example.org/en.json"):
        resolve_files(["en.json"], None, "https://example.org/{name}", tmp_path / "c2", "sub", {"en.json": sha256(b"x")})
    assert leftovers(tmp_path / "c2" / "sub") == []


def test_a_file_without_a_recorded_hash_is_downloaded_with_a_warning_giving_its_hash(tmp_path, caplog):
    remote = tmp_path / "remote.json"
    remote.write_bytes(b"abc")
    with caplog.at_level(logging.WARNING, logger="hybatch.downloads"):
        download(remote.as_uri(), tmp_path / "cache" / "x.json")
    assert sha256(b"abc") in caplog.text and "not verified" in caplog.text


# --- the cache ---------------------------------------------------------------------------------
def test_a_verified_cached_file_is_not_fetched_again_and_a_corrupt_one_is_refused(tmp_path, monkeypatch):
    url = "https://example.org/data/en.json"
    requested = serve(monkeypatch, {url: b"good"})
    args = (["en.json"], None, "https://example.org/data/{name}", tmp_path, "bench", {"en.json": sha256(b"good")})
    path = resolve_files(*args)["en.json"]
    resolve_files(*args)
    assert requested == [url] and path.read_bytes() == b"good"
    path.write_bytes(b"goo")  # e.g. a copy truncated outside hybatch
    with pytest.raises(ChecksumError, match=rf"{re.escape(str(path))} \(downloaded from {re.escape(url)}\): sha256 is {sha256(b'goo')}, expected"):
        resolve_files(*args)


# --- the pinned LAReQA sources -----------------------------------------------------------------
def test_lareqa_sources_are_pinned_commits_and_fully_checksummed():
    for source in SOURCES.values():
        assert re.fullmatch(r"[0-9a-f]{40}", source.commit), source
        assert "master" not in source.url_template
        assert set(source.sha256) == {f"{lang}.json" for lang in source.languages}, source.folder
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in source.sha256.values()), source.folder
    assert XQUAD_R.url_template.format(name="en.json") == (
        "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
        "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c/xquad-r/en.json"
    )
    assert MLQA_R.url_template.format(name="ar.json") == (
        "https://raw.githubusercontent.com/google-research-datasets/lareqa/"
        "354d67d1cd066854cdfbf5ad0e6105528976141d/mlqa-r/ar.json"
    )
    assert MLQA_R.sha256["en.json"] == "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4"


def test_recorded_xquad_r_hashes_are_those_of_the_reference_copy(xquad_r_dir):
    for name, expected in XQUAD_R.sha256.items():
        assert downloads.file_sha256(xquad_r_dir / name) == expected, name


def test_xquad_r_downloads_from_the_pinned_commit_into_the_cache(xquad_r_dir, tmp_path, monkeypatch):
    """The benchmark loader fetches exactly the pinned URLs once, verifies them, then reads the cache."""
    langs = ["en", "de"]
    files = {XQUAD_R.url_template.format(name=f"{lang}.json"): (xquad_r_dir / f"{lang}.json").read_bytes() for lang in langs}
    requested = serve(monkeypatch, files)
    bench = load_lareqa_benchmark("xquad_r", langs, cache_dir=tmp_path)
    again = load_lareqa_benchmark("xquad_r", langs, cache_dir=tmp_path)
    assert sorted(requested) == sorted(files)
    assert leftovers(tmp_path / "xquad-r") == ["de.json", "en.json"]
    assert len(bench.questions) == len(again.questions) == 2 * 1190


@pytest.mark.parametrize("name", ["xquad_r", "mlqa_r"])
def test_a_changed_upstream_lareqa_file_is_refused_before_it_reaches_the_cache(name, tmp_path, monkeypatch):
    source = SOURCES[name]
    url, changed = source.url_template.format(name="en.json"), b'{"data": []}'
    serve(monkeypatch, {url: changed})
    with pytest.raises(ChecksumError, match=rf"{re.escape(url)}: sha256 is {sha256(changed)}, expected {source.sha256['en.json']}"):
        lareqa_files(name, ["en"], cache_dir=tmp_path)
    assert leftovers(tmp_path / source.cache_subdir) == []


def test_data_hygiene_downloads_mlqa_r_from_its_pinned_commit_verified(tmp_path, monkeypatch):
    """MLQA-R is fetched from `mlqa-r/` at 354d67d and checked against MLQA_R's recorded hashes (here those
    of a stand-in body, as no copy of the real files is at hand offline)."""
    para = {"context": "A b.", "sentences": ["A b."], "sentence_breaks": [[0, 4]],
            "qas": [{"id": "q1", "question": "a?", "answers": [{"answer_start": 0, "text": "A"}]}]}
    body = json.dumps({"data": [{"title": "Some_Title", "paragraphs": [para]}]}).encode()
    files = {MLQA_R.url_template.format(name=f"{lang}.json"): body for lang in MLQA_R.languages}
    monkeypatch.setitem(SOURCES, "mlqa_r", replace(MLQA_R, sha256=dict.fromkeys(MLQA_R.sha256, sha256(body))))
    requested = serve(monkeypatch, files)
    held = lareqa_held_out("mlqa_r", cache_dir=tmp_path)
    assert sorted(requested) == sorted(files)
    assert held.ids == {"q1"} and held.articles == {"some title"}


@pytest.mark.network
def test_the_pinned_lareqa_files_download_and_parse(tmp_path):
    """Online: every pinned URL exists and every file matches its recorded sha256."""
    xquad = load_lareqa_benchmark("xquad_r", cache_dir=tmp_path)
    mlqa = load_lareqa_benchmark("mlqa_r", cache_dir=tmp_path)
    assert len(xquad.questions) == 11 * 1190
    assert set(mlqa.languages) == set(MLQA_R.languages) and mlqa.questions
