"""A run directory kept in step with an artifact store that is not the data dir: published as checkpoints
are written, restored on a host that never ran the job, left alone by the default store."""

from pathlib import Path

from core.storage import ArtifactStore
from worker.artifacts import publish_checkpoints, published_checkpoints, restore_run, resumed_adapter_config
from worker.engine.checkpoint import METRICS_FILE, list_checkpoints

RUN = "jobs/ftjob-1/run"


def _checkpoint(output_dir: Path, step: int) -> Path:
    """What the engine leaves after save_checkpoint: a step folder with metrics.json written last."""
    path = output_dir / "checkpoints" / f"step-{step:06d}"
    (path / "adapter").mkdir(parents=True)
    (path / "adapter" / "adapter_config.json").write_text(f'{{"step": {step}}}')
    (path / "state.pt").write_bytes(f"state {step}".encode())
    (path / "metrics.json").write_text("{}")
    with (output_dir / METRICS_FILE).open("a") as log:
        log.write(f'{{"step": {step}}}\n')
    return path


def test_checkpoints_follow_the_engine_into_the_store(tmp_path: Path) -> None:
    host = ArtifactStore((tmp_path / "store").as_uri(), tmp_path / "host-a")
    output_dir = host.local_path(RUN)
    for step in (2, 4):
        publish_checkpoints(host, output_dir, written=_checkpoint(output_dir, step))
    assert sorted(published_checkpoints(host, output_dir)) == [2, 4]
    (output_dir / "checkpoints" / "step-000002").rename(output_dir / "checkpoints" / ".tmp-pruned")
    publish_checkpoints(host, output_dir, written=_checkpoint(output_dir, 6))  # the engine pruned step 2
    assert sorted(published_checkpoints(host, output_dir)) == [4, 6]


def test_a_host_with_an_empty_data_dir_resumes_from_the_store(tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    first = ArtifactStore(url, tmp_path / "host-a")
    ran = first.local_path(RUN)
    for step in (2, 4):
        publish_checkpoints(first, ran, written=_checkpoint(ran, step))
    (ran / "checkpoints" / "step-000006").mkdir()  # staged by a run killed mid-save: never published

    second = ArtifactStore(url, tmp_path / "host-b")
    output_dir = second.local_path(RUN)
    restore_run(second, output_dir)
    assert [step for step, _ in list_checkpoints(output_dir)] == [2, 4]
    assert (output_dir / "checkpoints" / "step-000004" / "state.pt").read_bytes() == b"state 4"
    assert (output_dir / METRICS_FILE).read_text() == '{"step": 2}\n{"step": 4}\n'

    # host A comes back with its stale copy (steps 2, 4) after B went on to step 8: it takes the store's
    publish_checkpoints(second, output_dir, written=_checkpoint(output_dir, 8))
    restore_run(first, ran)
    assert [step for step, _ in list_checkpoints(ran)] == [2, 4, 8]
    assert (ran / METRICS_FILE).read_text().splitlines()[-1] == '{"step": 8}'


def test_a_local_checkpoint_later_than_the_store_is_kept_and_published(tmp_path: Path) -> None:
    host = ArtifactStore((tmp_path / "store").as_uri(), tmp_path / "host-a")
    output_dir = host.local_path(RUN)
    publish_checkpoints(host, output_dir, written=_checkpoint(output_dir, 2))
    _checkpoint(output_dir, 4)  # renamed into place, then the worker died before publishing it
    restore_run(host, output_dir)
    assert [step for step, _ in list_checkpoints(output_dir)] == [2, 4]
    publish_checkpoints(host, output_dir)  # what the next run's start does
    assert sorted(published_checkpoints(host, output_dir)) == [2, 4]


def test_the_default_store_leaves_the_run_directory_alone(tmp_path: Path) -> None:
    store = ArtifactStore(None, tmp_path)
    output_dir = store.local_path(RUN)
    path = _checkpoint(output_dir, 2)
    publish_checkpoints(store, output_dir, written=path)
    restore_run(store, output_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs"]
    assert [p for _, p in list_checkpoints(output_dir)] == [path]


def test_a_run_resumes_with_the_adapter_config_of_its_latest_checkpoint_here_or_in_the_store(
    tmp_path: Path,
) -> None:
    url = (tmp_path / "store").as_uri()
    first = ArtifactStore(url, tmp_path / "host-a")
    ran = first.local_path(RUN)
    assert resumed_adapter_config(first, ran) is None  # no checkpoint: the run starts afresh
    publish_checkpoints(first, ran, written=_checkpoint(ran, 2))
    assert resumed_adapter_config(first, ran) == {"step": 2}
    _checkpoint(ran, 4)  # saved by a run killed before it published it: this host resumes from it
    assert resumed_adapter_config(first, ran) == {"step": 4}

    second = ArtifactStore(url, tmp_path / "host-b")  # a host that never ran the job: read from the store
    assert resumed_adapter_config(second, second.local_path(RUN)) == {"step": 2}
