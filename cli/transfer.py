"""`sppo jobs watch` (live progress from the metrics stream) and `sppo jobs download` (adapter archive)."""

import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from app.schemas.progress import HEADLINE_METRICS
from cli.client import ApiError, ApiKeyOpt, BaseUrlOpt, Client, connect
from cli.output import console, fmt_duration, fmt_number, fmt_status, table

# `sppo jobs watch` exits with the job's outcome, so scripts can branch on it.
EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2, "paused": 3}
POLL_S = 1.0


def _updates(client: Client, job_id: str) -> Iterator[dict[str, Any]]:
    """Step metrics as they arrive: from the SSE stream, or by polling when the server has no stream."""
    try:
        for event in client.events(f"/fine_tuning/jobs/{job_id}/metrics/stream"):
            try:
                payload = event.json()
            except ValueError:
                continue
            if isinstance(payload, dict):
                yield payload
        return
    except ApiError as exc:
        if exc.status != 404:
            raise
    # No stream route on this server: poll the job (its status and step) until it settles.
    while True:
        yield {}
        time.sleep(POLL_S)


def _metric_rows(payload: dict[str, Any]) -> dict[str, Any]:
    metrics = payload.get("metrics")
    if isinstance(metrics, dict):
        return metrics
    return {k: v for k, v in payload.items() if "/" in k}


def _timing(job: dict[str, Any]) -> str:
    """Running time (queue time excluded) and the time left, from the job's own stamps."""
    started, now = job.get("started_at"), time.time()
    end = job.get("finished_at") or now
    parts = [f"elapsed {fmt_duration(end - started if started else None)}"]
    if job.get("estimated_finish") and job["status"] == "running":
        parts.append(f"ETA {fmt_duration(max(0.0, job['estimated_finish'] - now))}")
    return "  ".join(parts)


def _view(job: dict[str, Any], step: int, metrics: dict[str, Any], bar: Progress, task: Any) -> Group:
    total = job.get("total_steps")
    bar.update(
        task, completed=step, total=total or None, description=f"{job['id']} {fmt_status(job['status'])}"
    )
    lines: list[Any] = [bar, Text(_timing(job))]
    if job.get("status_detail"):
        lines.append(Text(job["status_detail"], style="cyan"))
    for alarm in job.get("alarms") or []:
        if alarm["active"]:
            lines.append(
                Text(f"alarm {alarm['code']} (x{alarm['count']}): {alarm['message']}", style="yellow")
            )
    grid = table("metric", "value", title=f"step {step}")
    for name in HEADLINE_METRICS:
        if name in metrics:
            grid.add_row(name, fmt_number(metrics[name]))
    return Group(*lines, grid)


class _Lines:
    """Progress for a pipe or a log file: one line per new step or status, nothing redrawn."""

    def __init__(self) -> None:
        self.shown: tuple[int, str] | None = None

    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, job: dict[str, Any], step: int, metrics: dict[str, Any]) -> None:
        if self.shown == (step, job["status"]):
            return
        self.shown = (step, job["status"])
        total = job.get("total_steps")
        values = "  ".join(
            f"{name} {fmt_number(metrics[name])}" for name in HEADLINE_METRICS if name in metrics
        )
        print(f"{job['status']}  step {step}/{total or '?'}  {_timing(job)}  {values}".rstrip(), flush=True)


class _Screen:
    """Progress for a terminal: a bar, the timing, alarms and a metrics table, redrawn in place."""

    def __init__(self, job_id: str) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        self.task = self.bar.add_task(job_id, total=None)
        self.live = Live(console=console, refresh_per_second=4)

    def __enter__(self) -> "_Screen":
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, job: dict[str, Any], step: int, metrics: dict[str, Any]) -> None:
        self.live.update(_view(job, step, metrics, self.bar, self.task))


def watch(
    job_id: str,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Follow a job live until it finishes; exit code 0 succeeded, 1 failed, 2 cancelled, 3 paused.

    On a terminal the view is redrawn in place; piped or redirected, a line is printed per step."""
    with connect(base_url, api_key) as client:
        job = client.get(f"/fine_tuning/jobs/{job_id}")
        step, metrics = int(job["current_step"]), dict[str, Any]()
        last_poll = time.monotonic()
        with _Screen(job_id) if console.is_terminal else _Lines() as view:
            view.update(job, step, metrics)
            while job["status"] not in EXIT_CODES:
                for payload in _updates(client, job_id):
                    metrics = {**metrics, **_metric_rows(payload)}
                    step = int(payload.get("step", step))
                    if isinstance(payload.get("status"), str):
                        job["status"] = payload["status"]
                    # Status, totals and errors live on the job: refresh it now and then, and at the end.
                    if job["status"] in EXIT_CODES or time.monotonic() - last_poll >= POLL_S:
                        job, last_poll = client.get(f"/fine_tuning/jobs/{job_id}"), time.monotonic()
                        step = max(step, int(job["current_step"]))
                    view.update(job, step, metrics)
                    if job["status"] in EXIT_CODES:
                        break
                else:  # the stream ended: read the job's final state (or reconnect if it is still going)
                    job = client.get(f"/fine_tuning/jobs/{job_id}")
                    view.update(job, max(step, int(job["current_step"])), metrics)
    status = str(job["status"])
    if job.get("error"):
        console.print(f"[red]{job['error']['message']}[/]", highlight=False)
    console.print(f"Job {job_id} {fmt_status(status)} ({_timing(job)})", highlight=False)
    if job.get("fine_tuned_model"):
        step = job.get("fine_tuned_model_step")
        at = f" (the checkpoint at step {step})" if step is not None else ""
        console.print(f"Fine-tuned model: [bold]{job['fine_tuned_model']}[/]{at}", highlight=False)
    raise typer.Exit(EXIT_CODES[status])


def _chosen_checkpoint(client: Client, job_id: str, checkpoint_id: str | None) -> tuple[dict[str, Any], str]:
    """(the checkpoint to download, what it is): `checkpoint_id`, else the job's fine-tuned model (the
    checkpoint at its `fine_tuned_model_step`), else its latest checkpoint."""
    job = client.get(f"/fine_tuning/jobs/{job_id}")
    listing = client.get(f"/fine_tuning/jobs/{job_id}/checkpoints", limit=100)["data"]
    model_step = job.get("fine_tuned_model_step")
    if checkpoint_id is not None:
        found = [c for c in listing if c["id"] == checkpoint_id]
        if not found:
            raise ApiError(f"Job {job_id} has no checkpoint {checkpoint_id}.")
        chosen = found[0]
    elif not listing:
        raise ApiError(f"Job {job_id} has no checkpoints yet.")
    else:
        model = [c for c in listing if c["step_number"] == model_step]
        chosen = model[0] if model else max(listing, key=lambda c: c["step_number"])
    step = chosen["step_number"]
    if step == model_step:
        return chosen, f"the fine-tuned model {job['fine_tuned_model']}"
    if model_step is None:
        return chosen, "the job has no fine-tuned model"
    return chosen, f"not the fine-tuned model, which is the checkpoint at step {model_step}"


def _unpack(archive: Path, target: Path) -> None:
    """Unpack a zip or tar archive, refusing members that would land outside `target`."""
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            root = target.resolve()
            for name in bundle.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise ApiError(f"Refusing to unpack {name!r}: it points outside {target}.")
            bundle.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            bundle.extractall(target, filter="data")  # the "data" filter rejects absolute paths and links out
    else:
        raise ApiError("The server sent an adapter that is neither a zip nor a tar archive.")


def download(
    job_id: str,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint id (ftckpt-...); default: the fine-tuned model's checkpoint, or the latest "
            "while the job has no model."
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Directory to unpack into.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download a checkpoint's LoRA adapter and unpack it (loadable with peft.PeftModel.from_pretrained)."""
    with connect(base_url, api_key) as client:
        chosen, what = _chosen_checkpoint(client, job_id, checkpoint)
        ckpt_id = str(chosen["id"])
        target = output or Path(f"{job_id}-{ckpt_id}")
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ApiError(f"{target} exists and is not an empty folder; choose another --output.")
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn())
        with (
            tempfile.TemporaryDirectory() as tmp,
            Progress(*columns, TransferSpeedColumn(), console=console) as bar,
        ):
            task = bar.add_task(f"adapter {ckpt_id}", total=None)
            archive = Path(tmp) / "adapter.archive"
            client.download(
                f"/fine_tuning/jobs/{job_id}/checkpoints/{ckpt_id}/adapter",
                archive,
                lambda done, total: bar.update(task, completed=done, total=total),
            )
            staging = Path(tmp) / "unpacked"
            _unpack(archive, staging)
            # The archive holds one folder named after the checkpoint: its contents become `target`.
            entries = list(staging.iterdir())
            source = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rmdir()
            shutil.move(source, target)
    step = chosen["step_number"]
    console.print(f"Adapter of checkpoint {ckpt_id} (step {step}: {what}) unpacked into [bold]{target}[/]",
                  highlight=False)  # fmt: skip
