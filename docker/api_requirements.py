"""Print the API image's requirements: the package's dependencies without the training engine's, plus
those of the optional extras named after the file (`s3` for SPPO_ARTIFACT_STORE=s3://...).

The API process never imports the engine (an import-linter contract), so its image leaves out torch and
the libraries only the engine uses; everything else comes from pyproject.toml, so the two never drift.
"""

import re
import sys
import tomllib

# math-verify and numpy stay: the graders API grades `math` in the API process, and numpy is one of the
# packages a Python grader may import in the sandbox
ENGINE_ONLY = {"torch", "transformers", "peft", "safetensors"}

with open(sys.argv[1], "rb") as handle:
    project = tomllib.load(handle)["project"]
dependencies = project["dependencies"] + [
    r for extra in sys.argv[2:] for r in project["optional-dependencies"][extra]
]
for requirement in dependencies:
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
    if name not in ENGINE_ONLY:
        sys.stdout.write(requirement + "\n")
