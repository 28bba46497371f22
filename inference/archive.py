"""A base model's files as a .tar.gz, so a downloaded adapter can be used off the server."""

import os
import tarfile
import tempfile
from pathlib import Path

from core.settings import Settings
from worker.runconfig import base_model_dir


def base_model_archive(settings: Settings, name: str) -> Path:
    """A temporary `<name>.tar.gz` holding `<name>/config.json, ...`; the caller deletes it once sent.

    The folder is named as the registry names the model, the name adapters record as their base.
    """
    source = base_model_dir(settings, name)  # ModelNotFoundError for a name outside the registry
    fd, path = tempfile.mkstemp(prefix="sppo-model-", suffix=".tar.gz")
    os.close(fd)
    try:
        with tarfile.open(path, "w:gz") as archive:
            for file in sorted(source.iterdir()):
                if file.is_file() and not file.name.startswith("."):
                    archive.add(file, arcname=f"{name}/{file.name}")
    except BaseException:
        os.unlink(path)
        raise
    return Path(path)
