"""The artifact store: the local default copies nothing; an fsspec store round-trips files and folders."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage import ArtifactStore, artifact_store, is_local_store


@pytest.fixture(params=["file", "memory"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    """A store that is not the data dir: a separate local directory, or fsspec's in-process memory."""
    url = (tmp_path / "store").as_uri() if request.param == "file" else f"memory://sppo-{uuid.uuid4().hex}"
    store = ArtifactStore(url, tmp_path / "data")
    yield store
    assert store.fs is not None
    if store.fs.exists(store.root):
        store.fs.rm(store.root, recursive=True)


def test_the_default_store_is_the_data_dir_and_copies_nothing(tmp_path: Path) -> None:
    for url in (None, str(tmp_path), tmp_path.as_uri()):
        store = ArtifactStore(url, tmp_path)
        assert store.is_local and is_local_store(url, tmp_path)
    store = artifact_store(Settings(data_dir=tmp_path))
    local = store.local_path("files/file-a.jsonl")
    local.parent.mkdir()
    local.write_text("{}\n")
    store.publish("files/file-a.jsonl", keep_copy=False)  # the local file is the artifact: kept
    assert store.fetch("files/file-a.jsonl") == local and local.read_text() == "{}\n"
    with store.local_copy("files/file-a.jsonl") as path:
        assert path == local
    assert store.list("files") == ["file-a.jsonl"]
    store.delete("files/file-a.jsonl")
    assert not local.exists() and not store.exists("files/file-a.jsonl")


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "files/../../x", "a//b", ".hidden", ""])
def test_keys_are_relative_paths_without_parent_segments(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        ArtifactStore(None, tmp_path).local_path(key)


def test_a_file_round_trips_through_a_remote_store(remote: ArtifactStore) -> None:
    local = remote.local_path("files/file-a.jsonl")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"line\n")
    remote.publish("files/file-a.jsonl", keep_copy=False)
    assert not local.exists() and remote.exists("files/file-a.jsonl")
    with remote.open("files/file-a.jsonl") as handle:
        assert handle.read() == b"line\n"
    with remote.local_copy("files/file-a.jsonl") as path:
        assert path.read_bytes() == b"line\n"
    assert not local.exists()  # a temporary copy leaves nothing in the data dir
    assert remote.fetch("files/file-a.jsonl").read_bytes() == b"line\n"
    remote.delete("files/file-a.jsonl")
    assert not local.exists() and not remote.exists("files/file-a.jsonl")
    with pytest.raises(FileNotFoundError):
        remote.fetch("files/file-a.jsonl")


def test_a_folder_round_trips_with_its_marker_last(
    remote: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = remote.local_path("jobs/ftjob-1/run/checkpoints/step-000002")
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "state.pt").write_bytes(b"state")
    (folder / "metrics.json").write_text('{"a": 1}')
    assert remote.fs is not None
    uploaded: list[str] = []
    put_file = remote.fs.put_file

    def recording(lpath: str, rpath: str) -> None:
        uploaded.append(rpath)
        put_file(lpath, rpath)

    with monkeypatch.context() as patch:
        patch.setattr(remote.fs, "put_file", recording)
        remote.publish("jobs/ftjob-1/run/checkpoints/step-000002", last="metrics.json")
    assert len(uploaded) == 3 and uploaded[-1].endswith("/step-000002/metrics.json")
    assert remote.list("jobs/ftjob-1/run/checkpoints") == ["step-000002"]
    assert remote.list("jobs/ftjob-1/run/nothing-here") == []

    other_host = ArtifactStore(remote.url, remote.data_dir.parent / "other-host")
    fetched = other_host.fetch("jobs/ftjob-1/run/checkpoints/step-000002")
    assert (fetched / "adapter" / "adapter_config.json").read_text() == "{}"
    assert (fetched / "state.pt").read_bytes() == b"state"
    assert sorted(p.name for p in fetched.parent.iterdir()) == ["step-000002"]  # no staging left behind
    other_host.delete("jobs/ftjob-1/run/checkpoints/step-000002")
    assert not remote.exists("jobs/ftjob-1/run/checkpoints/step-000002/state.pt")


def test_an_unknown_or_missing_backend_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Protocol not known"):
        Settings(data_dir=tmp_path, artifact_store="nope://bucket")
    assert Settings(data_dir=tmp_path, artifact_store="memory://x").artifact_store == "memory://x"
