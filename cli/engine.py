"""`sppo train`, `sppo eval`, `sppo fixture build`: the engine on one machine, no server needed.

Heavy imports (torch, transformers) happen inside the commands so other `sppo` commands stay fast.
"""

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from worker.engine.callbacks import TrainerCallbacks

console = Console()
fixture_app = typer.Typer(
    help="The tiny local models `sppo-tiny`, `sppo-tiny-long` (tests, examples, benchmarks)."
)
SHOWN = [
    "rollout/reward_mean", "rollout/accuracy", "train/policy_loss", "train/critic_loss", "train/value_mean",
    "train/clipfrac", "train/approx_kl", "train/entropy", "perf/tokens_per_s", "eval/pass@1",
]  # fmt: skip


def _metrics_table(title: str, rows: list[tuple[int, dict[str, float]]]) -> Table:
    names = [name for name in SHOWN if any(name in metrics for _, metrics in rows)]
    table = Table(title=title)
    table.add_column("step", justify="right")
    for name in names:
        table.add_column(name.split("/", 1)[1], justify="right")
    for step, metrics in rows:
        table.add_row(str(step), *(f"{metrics[n]:.4g}" if n in metrics else "" for n in names))
    return table


def _quiet_transformers() -> None:
    """Engine warnings only; no per-load progress bars from transformers between our own output."""
    from transformers.utils import logging as hf_logging

    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _rich_callbacks(log_every: int) -> "TrainerCallbacks":
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker.engine.callbacks import Level, StartInfo, TrainerCallbacks

    class RichCallbacks(TrainerCallbacks):
        def __init__(self) -> None:
            self.progress = Progress(
                TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"), console=console,
            )  # fmt: skip
            self.task = self.progress.add_task("train", total=None, status="")

        def on_start(self, info: StartInfo) -> None:
            self.progress.start()
            self.progress.update(self.task, total=info.total_steps, completed=info.start_step)
            if info.start_step:
                console.print(f"resuming at step {info.start_step} of {info.total_steps}")

        def on_step(self, step: int, metrics: dict[str, float]) -> None:
            reward = metrics.get("rollout/reward_mean")  # absent at step 0 (the base model's evaluation)
            status = "" if reward is None else f"reward {reward:.3f}"
            self.progress.update(self.task, completed=step, status=status)
            if step % log_every == 0 or any(name.startswith("eval/") for name in metrics):
                console.print(_metrics_table("", [(step, metrics)]))

        def on_event(self, level: Level, message: str, data: dict[str, Any] | None = None) -> None:
            style = {"warning": "yellow", "error": "red"}.get(level, "dim")
            console.print(f"[{style}]{level}: {message}[/{style}]")

        def on_checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
            console.print(f"[dim]checkpoint {path}[/dim]")

    return RichCallbacks()


def train(
    config_file: Annotated[Path, typer.Argument(help="Run config (YAML); see docs/engine.md.")],
    log_every: Annotated[int, typer.Option(help="Print a metrics row every N steps.")] = 10,
) -> None:
    """Run (or resume) a training job locally; writes checkpoints and metrics.jsonl to output_dir."""
    from worker.engine.config import RunConfig
    from worker.engine.errors import EngineError
    from worker.engine.run import run_training

    _quiet_transformers()
    try:
        config = RunConfig.from_yaml(config_file)
        callbacks = _rich_callbacks(log_every)
        result = run_training(config, callbacks)
    except EngineError as error:
        console.print(f"[red]error: {escape(str(error))}[/red]")  # "[invalid_config]" is not markup
        raise typer.Exit(1) from error
    callbacks.progress.stop()  # type: ignore[attr-defined]
    console.print(_metrics_table("last step", [(result.final_step, result.metrics)]))
    console.print(f"{result.status} at step {result.final_step}/{result.total_steps}; eval: {result.eval}")
    if result.final_adapter_dir:
        scores = f" (eval: {result.model_eval})" if result.model_eval else ""
        console.print(f"model: step {result.model_step}{scores}, in {result.final_adapter_dir}")


def _load_grader(value: str) -> dict[str, Any]:
    """A grader spec given inline as JSON or as a path to a JSON file."""
    text = Path(value).read_text() if Path(value).exists() else value
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise typer.BadParameter("the grader must be a JSON object")
    return spec


def evaluate_command(
    model: Annotated[Path, typer.Option(help="Base model directory.")],
    data: Annotated[Path, typer.Option(help="JSONL file to score.")],
    grader: Annotated[str, typer.Option(help="Grader spec: inline JSON or a JSON file.")],
    adapter: Annotated[Path | None, typer.Option(help="peft adapter directory to apply.")] = None,
    samples: Annotated[int, typer.Option(help="k of avg@k.")] = 4,
    temperature: Annotated[float, typer.Option()] = 1.0,
    max_response_tokens: Annotated[int, typer.Option()] = 256,
    max_items: Annotated[int | None, typer.Option(help="Score only the first N items.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write per-item results here (JSON).")] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (bfloat16 on a GPU that has it, else float32), float32 or bfloat16.")
    ] = "auto",
) -> None:
    """Score a model (optionally with an adapter): pass@1 (greedy) and avg@k (sampled)."""
    from worker.engine.errors import EngineError
    from worker.engine.evaluate import evaluate

    _quiet_transformers()
    try:
        result = evaluate(
            model, adapter, data, _load_grader(grader), samples, temperature, max_response_tokens,
            max_items=max_items, dtype=dtype,
        )  # fmt: skip
    except EngineError as error:
        console.print(f"[red]error: {escape(str(error))}[/red]")  # "[invalid_config]" is not markup
        raise typer.Exit(1) from error
    table = Table(title=f"{data.name} ({len(result.items)} items)")
    for name in result.scores():
        table.add_column(name, justify="right")
    table.add_row(*(f"{value:.4f}" for value in result.scores().values()))
    console.print(table)
    if output:
        output.write_text(json.dumps({"scores": result.scores(), "items": result.items}, indent=2))


@fixture_app.command("build")
def build_fixture_command(
    name: Annotated[str, typer.Option(help="sppo-tiny or sppo-tiny-long.")] = "sppo-tiny",
    rebuild: Annotated[
        bool, typer.Option(help="Build the model from scratch (minutes) instead of using the shipped copy.")
    ] = False,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where --rebuild writes. Default: the shipped copy.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    init_from: Annotated[
        Path | None, typer.Option(help="With --rebuild: start the warm-up from this model directory.")
    ] = None,
) -> None:
    """Show the shipped tiny model and its train/validation files, or rebuild it (--rebuild)."""
    from worker.engine.fixtures import default_fixture_dir, ensure_fixture, load_fixture

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if rebuild:
        from worker.engine.fixture_build import build_fixture
        from worker.engine.fixture_tasks import TASKS

        fixture = load_fixture(
            build_fixture(TASKS[name], directory or default_fixture_dir(name), seed, init_from)
        )
    else:
        fixture = ensure_fixture(name)
    console.print(
        f"model: {fixture.model_dir}\ntrain: {fixture.train_file}\nvalidation: {fixture.validation_file}"
    )
    console.print(f"base greedy accuracy: {fixture.base_accuracy:.3f}")


def register(app: typer.Typer) -> None:
    """Add the engine commands to the `sppo` command."""
    app.command("train")(train)
    app.command("eval")(evaluate_command)
    app.add_typer(fixture_app, name="fixture")
