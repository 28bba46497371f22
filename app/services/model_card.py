"""What makes a downloaded adapter self-contained: its base model named as the registry names it (not a
server path) and a README model card saying what it is and how to load it."""

import json
from typing import Any

from core.models import Checkpoint, Job


def portable_adapter_config(raw: bytes, *, base_model: str) -> bytes:
    """adapter_config.json with `base_model_name_or_path` set to the registry name of the base model.

    The model's files (GET /v1/models/{name}/files) extract into a folder of that name, so peft finds
    the base next to the adapter.
    """
    config = json.loads(raw)
    config["base_model_name_or_path"] = base_model
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _table(values: dict[str, Any]) -> str:
    rows = "\n".join(f"| `{key}` | {json.dumps(value)} |" for key, value in sorted(values.items()))
    return f"| name | value |\n|---|---|\n{rows}\n" if values else "(none recorded)\n"


def model_card(job: Job, checkpoint: Checkpoint) -> str:
    reinforcement = job.method.get("reinforcement", {})
    algorithm = reinforcement.get("algorithm", "sppo")
    hyperparameters = job.resolved_hyperparameters or job.hyperparameters
    folder, base = checkpoint.id, job.base_model
    parent = job.parent_model
    continued = f"\n- Continues: `{parent}` (its adapter, trained further)" if parent is not None else ""
    return f"""# {checkpoint.fine_tuned_model_checkpoint}

A LoRA adapter fine-tuned with reinforcement learning ({algorithm.upper()}) by SPPO Service.

- Base model: `{base}` (its files: `GET /v1/models/{base}/files`, a `{base}/` folder){continued}
- Algorithm: `{algorithm}`
- Job: `{job.id}`, checkpoint `{checkpoint.id}` at step {checkpoint.step_number}
- Fine-tuned model: `{job.fine_tuned_model or "(job not finished)"}`
- Grader: `{json.dumps(reinforcement.get("grader", {}))}`

## Hyperparameters

{_table(hyperparameters)}
## Metrics at this checkpoint

{_table(checkpoint.metrics)}
## How to load it

Extract this archive and the base model's archive side by side, so that `./{base}` holds the base
model (`adapter_config.json` names it `{base}`), then:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{base}")
base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{folder}")
text = tokenizer.apply_chat_template([{{"role": "user", "content": "..."}}], add_generation_prompt=True,
                                     tokenize=False)
ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=64, do_sample=False)[0, ids.shape[1]:],
                       skip_special_tokens=True))
```

Or serve it: `chat.completions.create(model="{checkpoint.id}", ...)` against the service.
"""
