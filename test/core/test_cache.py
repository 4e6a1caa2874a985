"""The derived-model cache: built once, atomic, nothing half-written, safe between processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time

import pytest

from sdcpc_core import cache


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_built_once_then_reused(root):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "model.pt").write_text("weights")

    path, built = cache.build_once("converted", "abc", build)
    assert built and path == root / "converted" / "abc" and (path / "model.pt").read_text() == "weights"
    again, built_again = cache.build_once("converted", "abc", build)
    assert again == path and not built_again and len(calls) == 1


def test_a_failed_build_leaves_nothing_and_the_next_one_runs(root):
    def broken(tmp):
        (tmp / "half.pt").write_text("half")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        cache.build_once("converted", "k", broken)
    assert [p.name for p in (root / "converted").iterdir() if not p.name.endswith(".lock")] == []
    path, built = cache.build_once("converted", "k", lambda tmp: (tmp / "ok").write_text("1"))
    assert built and (path / "ok").is_file()


def test_an_incomplete_leftover_is_rebuilt(root):
    leftover = root / "exports" / "k"
    leftover.mkdir(parents=True)
    (leftover / "encode.onnx").write_text("cut short by a killed process")
    path, built = cache.build_once("exports", "k", lambda tmp: (tmp / "encode.onnx").write_text("whole"))
    assert built and (path / "encode.onnx").read_text() == "whole"


def _build_slowly(args):
    root, marker = args
    os.environ["SDCPC_CACHE_DIR"] = root

    def build(tmp):
        with open(marker, "a") as f:
            f.write("x")
        time.sleep(0.5)
        (tmp / "model.pt").write_text("w")

    path, built = cache.build_once("converted", "shared", build)
    return str(path), built


def test_two_processes_build_it_once(root, tmp_path):
    marker = tmp_path / "builds"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_slowly, [(str(root), str(marker))] * 2)
    assert marker.read_text() == "x"  # one build; the other process waited and reused it
    assert len({p for p, _ in results}) == 1 and sorted(b for _, b in results) == [False, True]


def test_content_digest_follows_content_not_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"1234")
    assert cache.content_digest(a) == cache.content_digest(b)
    (b / "model.safetensors").write_bytes(b"1235")
    assert cache.content_digest(a) != cache.content_digest(b)
    assert cache.content_digest(a / "config.json") != cache.content_digest(a)


def test_file_digest_is_remembered_by_identity_and_follows_a_rewrite(root, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights" * 1000)
    old = time.time() - 60
    os.utime(path, (old, old))
    monkeypatch.setattr(cache, "RACY_S", 0.0)  # ctime is now; treat it as settled
    first = cache.file_sha256(path)
    assert first == hashlib.sha256(b"weights" * 1000).hexdigest()
    memos = list((root / "digests").iterdir())
    assert len(memos) == 1 and memos[0].read_text() == first
    memos[0].write_text("f" * 64)  # proves the second call reads the memo instead of the file
    assert cache.file_sha256(path) == "f" * 64
    path.write_bytes(b"other" * 1000)  # new size and times: a new identity, hashed again
    assert cache.file_sha256(path) == hashlib.sha256(b"other" * 1000).hexdigest()


def test_a_file_written_just_now_is_not_remembered(root, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"1234")
    assert cache.file_sha256(path) == hashlib.sha256(b"1234").hexdigest()
    path.write_bytes(b"1235")  # same size, maybe the same clock tick
    assert cache.file_sha256(path) == hashlib.sha256(b"1235").hexdigest()
    assert not (root / "digests").exists()
