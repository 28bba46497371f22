"""`run_training(config, callbacks)`: the one entry point of a training run; the Celery worker and
`sppo train` both call it. It resumes from the latest complete checkpoint under `config.output_dir`, so a
restarted job continues exactly where the last checkpoint left it.

With n_devices > 1 the run goes to torchrun's processes (launch.py), each of which builds its own
`Trainer`; rank 0 relays the callbacks back here.
"""

from pathlib import Path

from worker.engine.callbacks import TrainerCallbacks, TrainingResult
from worker.engine.config import RunConfig
from worker.engine.distributed import in_launched_rank
from worker.engine.launch import launch
from worker.engine.memory import reset_peak_memory
from worker.engine.trainer import Trainer


def run_training(config: RunConfig, callbacks: TrainerCallbacks | None = None) -> TrainingResult:
    """Train (or resume) the run described by `config`; see TrainerCallbacks for reporting and control.
    With n_devices > 1 the run goes to torchrun's processes, whose rank 0 relays the callbacks here."""
    if config.n_devices > 1 and not in_launched_rank():
        return launch(config, callbacks or TrainerCallbacks())
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    config.to_yaml(Path(config.output_dir) / "config.yaml")
    reset_peak_memory()
    trainer = Trainer(config, callbacks or TrainerCallbacks())
    try:
        return trainer.run()
    finally:
        trainer.grader.close()
        if trainer.vllm is not None:
            trainer.vllm.close()
