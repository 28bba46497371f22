"""A job's run directory and the artifact store (core/storage.py): inputs fetched before a run, checkpoints
published as they are written, and a run resumed on any host from the checkpoints the store holds.

The engine reads and writes only the run directory on local disk (`<data_dir>/jobs/<id>/run`); this module
keeps the store's copy of it in step. With the default store (the data dir itself) they are one directory
and every function here returns at once.
"""

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from core.storage import ArtifactStore
from jobspec.warmstart import ADAPTER_CONFIG
from worker.engine.checkpoint import ADAPTER_DIR, METRICS_FILE, STEP_DIR, checkpoints_dir, list_checkpoints
from worker.engine.config import RunConfig
from worker.engine.errors import DataFileError, EngineError

# The engine writes a checkpoint's metrics.json last; published last too, it marks a complete checkpoint.
CHECKPOINT_DONE = "metrics.json"


def fetch_inputs(store: ArtifactStore, config: RunConfig) -> None:
    """Download the run's training and validation files, and the adapter it continues, when this host has
    no copy of them."""
    for name, param in ((config.train_file, "training_file"), (config.validation_file, "validation_file")):
        if name is None:
            continue
        try:
            store.fetch(store.key_of(Path(name)))
        except FileNotFoundError:
            raise DataFileError(
                "The file is no longer stored; upload it again and create a new job.", param
            ) from None
    if config.init_adapter is not None:
        try:
            store.fetch(store.key_of(Path(config.init_adapter)))
        except FileNotFoundError:
            raise EngineError(
                "invalid_model", "The adapter this job continues is no longer stored.", "model"
            ) from None


def published_checkpoints(store: ArtifactStore, output_dir: Path) -> dict[int, str]:
    """The run's complete checkpoints in the store, as {step: key}."""
    root = store.key_of(checkpoints_dir(output_dir))
    found = {}
    for name in store.list(root):
        match = STEP_DIR.match(name)
        if match and store.exists(f"{root}/{name}/{CHECKPOINT_DONE}"):
            found[int(match.group(1))] = f"{root}/{name}"
    return found


def restore_run(store: ArtifactStore, output_dir: Path) -> None:
    """Before a run: when the store has a later checkpoint than this host (the job went on elsewhere, or
    this host never ran it), make the local checkpoints and metrics log the store's, so the engine resumes
    from there. A local checkpoint later than the store's is kept, and published by `publish_checkpoints`."""
    if store.is_local:
        return
    published = published_checkpoints(store, output_dir)
    local = dict(list_checkpoints(output_dir))
    if not published or max(published) <= max(local, default=0):
        return
    for step, path in local.items():
        if step not in published:  # from this host's earlier attempt, superseded by the store's run
            shutil.rmtree(path)
    for step, key in published.items():
        if step not in local:
            store.fetch(key)
    metrics = output_dir / METRICS_FILE
    metrics.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):  # a run killed before its first publish has none
        store.fetch(store.key_of(metrics))


def resumed_adapter_config(store: ArtifactStore, output_dir: Path) -> dict[str, Any] | None:
    """The adapter_config.json of the checkpoint the run resumes from (its latest here or in the store,
    which `restore_run` leaves to the engine); None when the run has no checkpoint and starts afresh."""
    local = dict(list_checkpoints(output_dir))
    published = {} if store.is_local else published_checkpoints(store, output_dir)
    if not local and not published:
        return None
    step = max([*local, *published])
    if step in local:
        return dict(json.loads((local[step] / ADAPTER_DIR / ADAPTER_CONFIG).read_text()))
    with store.open(f"{published[step]}/{ADAPTER_DIR}/{ADAPTER_CONFIG}") as handle:
        return dict(json.load(handle))


def publish_checkpoints(store: ArtifactStore, output_dir: Path, written: Path | None = None) -> None:
    """Make the store's checkpoints of the run the local ones: publish `written` (just saved, perhaps
    over an earlier save of its step) and any the store lacks, then remove those the engine pruned."""
    if store.is_local:
        return
    published = published_checkpoints(store, output_dir)
    local = dict(list_checkpoints(output_dir))
    for step, path in local.items():
        if step not in published or path == written:
            store.publish(store.key_of(path), last=CHECKPOINT_DONE)
    if (output_dir / METRICS_FILE).exists():
        store.publish(store.key_of(output_dir / METRICS_FILE))
    for step, key in published.items():
        if step not in local:
            store.delete(key)
