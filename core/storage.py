"""Artifacts (uploads, checkpoints, adapters, result files) behind one store addressed by a URI.

Every artifact has a key: a relative path the service builds from ids (`files/file-….jsonl`,
`jobs/ftjob-…/run/checkpoints/step-000010/adapter`), never from a request string. The DB stores keys.
A key is also the artifact's path under each host's `data_dir`, its local copy there.

`SPPO_ARTIFACT_STORE` unset (or naming `data_dir` itself): the local copy *is* the artifact, as on one
machine or with `data_dir` on a shared mount; publishing and fetching do nothing, so nothing is copied.
Set to an fsspec URL (`s3://bucket/prefix` with the `s3` extra, `file:///srv/artifacts`), the store holds
the artifacts: a writer publishes its local copy, a reader fetches one into its own `data_dir` (or into a
temporary directory, for the API), so workers on other hosts need no shared disk.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO

import fsspec
from fsspec.core import split_protocol, url_to_fs

from core.settings import Settings

# Ids and the names the service gives files: no `..`, no absolute path, nothing a shell or URL would read.
_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not an artifact key: {key!r}")
    return key


def is_local_store(url: str | None, data_dir: Path) -> bool:
    """True when the store is `data_dir` itself (unset, its path, or a file:// URL of it)."""
    if url is None:
        return True
    protocol, path = split_protocol(url)
    return protocol in (None, "file", "local") and Path(path).expanduser().resolve() == data_dir.resolve()


class ArtifactStore:
    """The artifact store of one process; `fs` is None when the store is the local data dir."""

    def __init__(self, url: str | None, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = url or str(data_dir)
        self.fs: fsspec.AbstractFileSystem | None = None
        self.root = ""
        if not is_local_store(url, data_dir):
            self.fs, root = url_to_fs(self.url)
            self.root = root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return self.fs is None

    def local_path(self, key: str) -> Path:
        return self.data_dir / check_key(key)

    def key_of(self, path: Path) -> str:
        """The key of a local copy (a path under data_dir); ValueError for any other path."""
        return check_key(Path(path).resolve().relative_to(self.data_dir.resolve()).as_posix())

    def _remote(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def exists(self, key: str) -> bool:
        if self.fs is None:
            return self.local_path(key).exists()
        return bool(self.fs.exists(self._remote(key)))

    def list(self, key: str) -> list[str]:
        """Names directly under a directory key, in the store (empty when there is none)."""
        if self.fs is None:
            local = self.local_path(key)
            return sorted(p.name for p in local.iterdir()) if local.is_dir() else []
        try:
            found = self.fs.ls(self._remote(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found)

    def publish(self, key: str, *, last: str | None = None, keep_copy: bool = True) -> None:
        """Upload the local copy of `key` (a file or a directory) to the store.

        `last`: a file of the directory uploaded after all others, so its presence in the store says the
        rest arrived (an object store has no rename). `keep_copy=False` removes the local copy after.
        """
        if self.fs is None:
            return
        local, remote = self.local_path(key), self._remote(key)
        if local.is_dir():
            files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == last)
            if last is not None and self.fs.exists(f"{remote}/{last}"):
                self.fs.rm(f"{remote}/{last}")  # a replaced directory is incomplete until its new `last`
            for file in files:
                self._put(file, f"{remote}/{file.relative_to(local).as_posix()}")
        else:
            self._put(local, remote)
        if not keep_copy:
            _remove(local)

    def _put(self, source: Path, remote: str) -> None:
        assert self.fs is not None
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)  # a local or SFTP target needs the folder
        self.fs.put_file(str(source), remote)

    def fetch(self, key: str) -> Path:
        """The local copy of `key`, downloaded first when this host has none (FileNotFoundError if the
        store has none either). Artifacts never change under their key, so a present copy is current."""
        local = self.local_path(key)
        if self.fs is None or local.exists():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-fetch-", dir=local.parent) as staging:
            downloaded = self._download(key, Path(staging))
            os.replace(downloaded, local)  # whole or not at all, for a concurrent reader of the same key
        return local

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """A readable local path of `key` for the duration of the block, leaving no copy behind."""
        if self.fs is None:
            yield self.local_path(key)
            return
        with tempfile.TemporaryDirectory(prefix="sppo-artifact-") as staging:
            yield self._download(key, Path(staging))

    def _download(self, key: str, staging: Path) -> Path:
        assert self.fs is not None
        remote = self._remote(key)
        found = [str(p) for p in self.fs.find(remote)]
        if not found:
            raise FileNotFoundError(f"no artifact stored at {key}")
        target = staging / key.rsplit("/", 1)[-1]
        for path in found:
            relative = path[len(remote) :].lstrip("/")
            destination = target / relative if relative else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(path, str(destination))
        return target

    def open(self, key: str) -> IO[bytes]:
        """The artifact's bytes, streamed from wherever it is stored."""
        if self.fs is None:
            return self.local_path(key).open("rb")
        handle: IO[bytes] = self.fs.open(self._remote(key), "rb")
        return handle

    def delete(self, key: str) -> None:
        """Remove the artifact (a file or a directory) from the store and this host's copy of it."""
        _remove(self.local_path(key))
        if self.fs is not None and self.fs.exists(self._remote(key)):
            self.fs.rm(self._remote(key), recursive=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@lru_cache
def _store(url: str | None, data_dir: Path) -> ArtifactStore:
    return ArtifactStore(url, data_dir)


def artifact_store(settings: Settings) -> ArtifactStore:
    """The process's store for these settings (one fsspec client, reused)."""
    return _store(settings.artifact_store, settings.data_dir)
