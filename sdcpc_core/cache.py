"""The on-disk cache for derived models: converted checkpoints and exported graphs.

Everything derived from a source (a Hub model converted to our format, a checkpoint exported for a
runtime) is built once into ``cache_root()/KIND/KEY`` and reused; KEY names the source's content
hash and whatever else shapes the result. A build runs in a temporary directory beside its final
place and is renamed into it only when complete, under a lock, so a crash, a Ctrl-C or two
processes starting at once never leave (or read) a half-written entry.

``SDCPC_CACHE_DIR`` moves the cache; otherwise ``$XDG_CACHE_HOME/sdcpc`` or ``~/.cache/sdcpc``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

COMPLETE = ".complete"  # written last inside an entry: its presence means the entry is whole
RACY_S = 2.0  # a file changed this recently is hashed, not remembered (see file_sha256)


def cache_root() -> Path:
    explicit = os.environ.get("SDCPC_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sdcpc"


def content_digest(path, length: int = 16) -> str:
    """SHA-256 of a file, or of a directory's files (relative names and contents, sorted), as hex."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:length]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()[:length]


def file_sha256(path) -> str:
    """The SHA-256 of a file's contents, remembered in ``cache_root()/digests`` under the file's
    identity (real path, device, inode, size, modification time in ns), so a large checkpoint is
    hashed once, not at every start; a file written again gets a new identity and is hashed again.
    A file changed in the last RACY_S seconds is not remembered: the kernel's file times advance in
    ticks of milliseconds, so a rewrite within one tick could keep the same identity."""
    path = Path(path).resolve()
    st = path.stat()
    identity = f"{path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    memo = cache_root() / "digests" / hashlib.sha256(identity.encode()).hexdigest()[:32]
    try:
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    if time.time() - max(st.st_mtime, st.st_ctime) < RACY_S:
        return hexdigest  # written just now: a second write in the same clock tick keeps its times
    try:  # a read-only or full cache only costs the next start a re-hash
        memo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=memo.parent, prefix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(hexdigest)
        os.replace(tmp, memo)
    except OSError:
        pass
    return hexdigest


def entry(kind: str, key: str) -> Path:
    """Where the entry ``kind/key`` lives (whether or not it exists yet)."""
    return cache_root() / kind / key


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE).is_file()


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(kind: str, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The directory of entry ``kind/key``, calling ``build(tmp_dir)`` to fill it if it is absent.

    Returns ``(path, built)``; ``built`` is False when the entry was already there. If ``build``
    raises, nothing is left behind and the exception propagates.
    """
    final = entry(kind, key)
    if is_complete(final):
        return final, False
    with _locked(final):
        if is_complete(final):  # another process built it while we waited for the lock
            return final, False
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            build(tmp)
            (tmp / COMPLETE).write_text("")
            if final.exists():  # an incomplete leftover of an older, killed build
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True
