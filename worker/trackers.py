"""Experiment trackers a job logs its run to (its `integrations`): one class per backend behind `Tracker`.

Each gets the run's hyperparameters once (`start`), every step's metrics (evaluation scores included: the
engine adds them to their step's metrics), the policy's samples as a table, and the run's end. They are
called from one thread per tracker (worker/tracking.py), never from the training loop, so a slow server
costs the job nothing; any exception turns the tracker off for the rest of the run.

W&B goes through the `wandb` client (the optional `trackers` extra). MLflow goes through its REST API with
httpx: the `mlflow` client would bring pandas, pyarrow, scikit-learn and a databricks SDK into every worker
image for four endpoints.
"""

import functools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from core.models import Job
from core.sealing import unseal
from core.settings import Settings
from jobspec.integrations import Integration, MlflowSettings, WandbSettings, mlflow_tracking_uri

Outcome = Literal["completed", "cancelled", "paused", "failed"]

SAMPLE_COLUMNS = ("step", "prompt", "completion", "reward", "sub_rewards", "truncated")
JOB_TAG = "sppo.job_id"
_MLFLOW_MAX_PARAMS = 100  # params per log-batch request
_MLFLOW_MAX_PARAM_CHARS = 6000
_MLFLOW_BAD_NAME = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class RunInfo:
    job_id: str
    model: str
    hyperparameters: dict[str, Any]
    """The run config a tracker shows: what the worker resolved, plus algorithm and seed."""
    files_dir: Path
    """Where a tracker that keeps local files (W&B) writes them: data_dir/trackers/<job id>."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The job's metadata: W&B config `metadata`, MLflow tags `metadata.<key>`."""


def _sample_rows(step: int, samples: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [step, s["prompt"], s["completion"], s["reward"], json.dumps(s["sub_rewards"]), s["truncated"]]
        for s in samples
    ]


class Tracker:
    """One backend; `type` is the integration's (`wandb`, `mlflow`), `name` how people call it."""

    type: str
    name: str

    def start(self) -> None:
        raise NotImplementedError

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def finish(self, outcome: Outcome) -> None:
        raise NotImplementedError


class WandbTracker(Tracker):
    type = "wandb"
    name = "W&B"

    def __init__(
        self,
        spec: WandbSettings,
        run: RunInfo,
        *,
        api_key: Callable[[], str | None],
        mode: Literal["online", "offline"],
        timeout_s: float,
    ) -> None:
        self.spec, self.run_info, self._api_key = spec, run, api_key
        self._mode, self._timeout_s = mode, timeout_s
        self._run: Any = None
        self._wandb: Any = None

    def start(self) -> None:
        import wandb  # the optional `trackers` extra: without it only this tracker is off

        self._wandb = wandb
        self.run_info.files_dir.mkdir(parents=True, exist_ok=True)
        # OpenAI's default tags, in this service's name; W&B caps a tag at 64 characters.
        defaults = ["sppo/finetune", f"sppo/{self.run_info.model}", f"sppo/{self.run_info.job_id}"]
        self._run = wandb.init(
            project=self.spec.project,
            entity=self.spec.entity,
            name=self.spec.name or self.run_info.job_id,
            tags=[tag[:64] for tag in [*(self.spec.tags or []), *defaults]],
            id=self.run_info.job_id,  # a resumed or requeued job continues its run
            resume="allow",
            config={**self.run_info.hyperparameters, "metadata": self.run_info.metadata},
            dir=str(self.run_info.files_dir),
            mode=self._mode,
            reinit="create_new",  # several jobs in one worker process each have their own run
            settings=wandb.Settings(
                api_key=self._api_key(),
                console="off",
                silent=True,
                x_disable_stats=True,  # the worker's own resources are the operator's, not the tenant's
                x_disable_machine_info=True,
                disable_git=True,
                save_code=False,
                x_save_requirements=False,
                init_timeout=self._timeout_s * 3,
            ),
        )

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=_sample_rows(step, samples))
        self._run.log({"samples": table}, step=step)

    def finish(self, outcome: Outcome) -> None:
        self._run.finish(exit_code=1 if outcome in ("failed", "cancelled") else 0)


def mlflow_name(name: str) -> str:
    """A metric or param name MLflow accepts (`eval/pass@1` → `eval/pass_at_1`)."""
    return _MLFLOW_BAD_NAME.sub("_", name.replace("@", "_at_"))


class MlflowTracker(Tracker):
    type = "mlflow"
    name = "MLflow"

    def __init__(
        self, spec: MlflowSettings, run: RunInfo, *, allowed: list[str], token: str | None, timeout_s: float
    ) -> None:
        self.spec, self.run_info, self._allowed, self._token = spec, run, allowed, token
        self._timeout_s = timeout_s
        self._client: httpx.Client | None = None
        self.run_id = ""
        self._artifacts = ""  # the run's artifact path behind the server's proxy; "" when not proxied

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        assert self._client is not None
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return dict(response.json()) if response.content else {}

    def start(self) -> None:
        # The operator's list may have changed since the job was created: check the server again.
        uri = mlflow_tracking_uri(self.spec, allowed=self._allowed, param="integrations")
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._client = httpx.Client(base_url=uri, headers=headers, timeout=self._timeout_s)
        experiment_id = self._experiment_id()
        job_filter = f"tags.`{JOB_TAG}` = '{self.run_info.job_id}'"  # job ids are [a-z0-9-] only
        found = self._call(
            "POST", "/api/2.0/mlflow/runs/search",
            json={"experiment_ids": [experiment_id], "filter": job_filter, "max_results": 1},
        ).get("runs", [])  # fmt: skip
        if found:  # a resumed or requeued job continues its run
            info = found[0]["info"]
        else:
            tags = {JOB_TAG: self.run_info.job_id, "sppo.model": self.run_info.model}
            tags |= {f"metadata.{key}": value for key, value in self.run_info.metadata.items()}
            info = self._call(
                "POST", "/api/2.0/mlflow/runs/create",
                json={
                    "experiment_id": experiment_id,
                    "run_name": self.spec.run_name or self.run_info.job_id,
                    "start_time": int(time.time() * 1000),
                    "tags": [{"key": key, "value": value} for key, value in tags.items()],
                },
            )["run"]["info"]  # fmt: skip
        self.run_id = info["run_id"]
        artifact_uri = str(info.get("artifact_uri", ""))
        if artifact_uri.startswith("mlflow-artifacts:/"):
            self._artifacts = artifact_uri.removeprefix("mlflow-artifacts:").strip("/")
        params = [
            {"key": mlflow_name(key), "value": json.dumps(value)[:_MLFLOW_MAX_PARAM_CHARS]}
            for key, value in sorted(self.run_info.hyperparameters.items())
        ]
        for first in range(0, len(params), _MLFLOW_MAX_PARAMS):
            batch = params[first : first + _MLFLOW_MAX_PARAMS]
            self._log_batch(params=batch)

    def _log_batch(self, **values: list[dict[str, Any]]) -> None:
        self._call("POST", "/api/2.0/mlflow/runs/log-batch", json={"run_id": self.run_id, **values})

    def _experiment_id(self) -> str:
        name = self.spec.experiment
        assert self._client is not None
        path = "/api/2.0/mlflow/experiments/get-by-name"
        response = self._client.get(path, params={"experiment_name": name})
        if response.status_code != 404:
            response.raise_for_status()
            return str(response.json()["experiment"]["experiment_id"])
        created = self._client.post("/api/2.0/mlflow/experiments/create", json={"name": name})
        if created.status_code == 400 and "ALREADY_EXISTS" in created.text:  # another job created it first
            return self._experiment_id()
        created.raise_for_status()
        return str(created.json()["experiment_id"])

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        values = [
            {"key": mlflow_name(name), "value": value, "timestamp": stamp, "step": step}
            for name, value in metrics.items()
            if math.isfinite(value)  # JSON has no NaN; MLflow's REST API refuses it
        ]
        self._log_batch(metrics=values)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        if not self._artifacts:  # the server stores artifacts where only its clients' hosts write
            return
        table = {"columns": list(SAMPLE_COLUMNS), "data": _sample_rows(step, samples)}
        path = f"/api/2.0/mlflow-artifacts/artifacts/{self._artifacts}/samples/step-{step:06d}.json"
        self._call("PUT", path, content=json.dumps(table).encode())

    def finish(self, outcome: Outcome) -> None:
        state = {"completed": "FINISHED", "cancelled": "KILLED", "failed": "FAILED"}.get(outcome)
        if state is not None:  # a paused job's run stays RUNNING: the resumed job continues it
            body = {"run_id": self.run_id, "status": state, "end_time": int(time.time() * 1000)}
            self._call("POST", "/api/2.0/mlflow/runs/update", json=body)
        assert self._client is not None
        self._client.close()


def _wandb_key(settings: Settings, sealed: str | None) -> str | None:
    """The tenant's own key (opened only now, on the tracker's thread), else the operator's."""
    if sealed is not None:
        return unseal(settings, sealed)
    return None if settings.wandb_api_key is None else settings.wandb_api_key.get_secret_value()


def job_trackers(job: Job, *, settings: Settings, hyperparameters: dict[str, Any]) -> list[Tracker]:
    """The trackers of a job's stored integrations (none for most jobs); no I/O until `start`."""
    reinforcement = job.method.get("reinforcement", {})
    run = RunInfo(
        job_id=job.id,
        model=job.model,
        hyperparameters={"algorithm": reinforcement.get("algorithm"), "seed": job.seed, **hyperparameters},
        files_dir=settings.data_dir / "trackers" / job.id,
        metadata=dict(job.metadata_ or {}),
    )
    sealed = job.sealed_secrets or {}
    trackers: list[Tracker] = []
    for stored in job.integrations or []:
        integration = Integration.model_validate(stored)
        if integration.mlflow is not None:
            token = settings.mlflow_tracking_token
            tracker: Tracker = MlflowTracker(
                integration.mlflow,
                run,
                allowed=list(settings.mlflow_tracking_uris),
                token=None if token is None else token.get_secret_value(),
                timeout_s=settings.tracker_timeout_s,
            )
        else:
            assert integration.wandb is not None  # the model holds the settings of its type
            tracker = WandbTracker(
                integration.wandb,
                run,
                api_key=functools.partial(_wandb_key, settings, sealed.get("wandb")),
                mode=settings.wandb_mode,
                timeout_s=settings.tracker_timeout_s,
            )
        trackers.append(tracker)
    return trackers
