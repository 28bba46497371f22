"""Print the API image's requirements: the package's dependencies without the training engine's.

The API process never imports the engine (an import-linter contract), so its image leaves out torch and
the libraries only the engine uses; everything else comes from pyproject.toml, so the two never drift.
"""

import re
import sys
import tomllib

ENGINE_ONLY = {"torch", "transformers", "peft", "safetensors", "math-verify", "numpy"}

with open(sys.argv[1], "rb") as handle:
    dependencies = tomllib.load(handle)["project"]["dependencies"]
for requirement in dependencies:
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
    if name not in ENGINE_ONLY:
        sys.stdout.write(requirement + "\n")
