"""Errors the engine raises, each with a stable code the service maps to a job's `error` field.

Messages are written for the person who submitted the job: they say what is wrong and what to change.
"""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"[{self.code}] {self.message}{where}"


class ConfigError(EngineError):
    """A run configuration value is missing, of the wrong type or out of range."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__("invalid_config", message, param)


class DataFileError(EngineError):
    """A training or validation JSONL file cannot be used; the message names the line."""

    def __init__(self, message: str, param: str | None = "training_file") -> None:
        super().__init__("invalid_training_file", message, param)


class ModelNotFoundError(EngineError):
    """The base model directory does not exist or does not hold a loadable model."""

    def __init__(self, message: str, param: str | None = "model") -> None:
        super().__init__("model_not_found", message, param)


class AdapterLoadError(ModelNotFoundError):
    """The LoRA adapter to load on the base model (what a warm start continues) is missing or unreadable."""


class OutOfMemoryError(EngineError):
    """A step did not fit in accelerator memory even at the smallest micro-batch."""

    def __init__(self, message: str) -> None:
        super().__init__("out_of_memory", message, None)


class TrainingDivergedError(EngineError):
    """The loss became NaN or infinite; training stops instead of updating on garbage."""

    def __init__(self, message: str) -> None:
        super().__init__("training_diverged", message, None)


class CheckpointError(EngineError):
    """A checkpoint cannot be read back (missing files, mismatched run)."""

    def __init__(self, message: str) -> None:
        super().__init__("checkpoint_error", message, None)


class DistributedError(EngineError):
    """A process of a multi-device run stopped unexpectedly; torchrun stopped the others with it."""

    def __init__(self, message: str) -> None:
        super().__init__("distributed_process_failed", message, None)
