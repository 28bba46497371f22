"""Algorithm and critic names: the API accepts exactly what the engine runs."""

from typing import Literal

ALGORITHM_NAMES = ("sppo", "grpo", "ppo", "reinforce")
"""sppo (prompt-only critic), grpo (group baseline), ppo (token-level critic + GAE), reinforce (batch-mean
baseline, no critic); ALGORITHMS.md states each."""
CRITIC_KINDS = ("separate", "shared_lora")
"""`separate` (own model + head) or `shared_lora` (the policy's frozen base + own LoRA + head)."""

AlgorithmName = Literal["sppo", "grpo", "ppo", "reinforce"]
CriticKind = Literal["separate", "shared_lora"]
