"""From benchmarks/memory.py's measurements: the per-token and per-parameter costs, and the check of
docs/multi-device.md's memory arithmetic (`predicted_peak`, with the docs' constants) against every run.

A configuration measured at two or more token counts gives a straight line: its slope is the step's
activation cost per token, its intercept what the step holds whatever its length (weights, gradients,
optimizer moments, transients of the optimizer step). One measured at one token count takes the slope
of the policy-only (GRPO, LoRA) line of its dtype and checkpointing.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

DOCS_COSTS: dict[str, Any] = {
    # bytes per frozen parameter, by dtype: the LoRA policy's base stored in the compute dtype
    "frozen": {"float32": 4.0, "bfloat16": 2.0},
    # bytes per trained parameter between steps: float32 weight, AdamW m and v (the gradient is freed
    # right after each optimizer step: update.py, optim.py)
    "trained": 12.0,
    # the float32 gradient, from a model's first backward of a minibatch to its optimizer step, beside the
    # activations; the SPPO critic is fitted before the policy's update, so their gradients never meet
    "gradient": 4.0,
    # a fully trained model in the rollout, bf16: autocast's bf16 copy of its float32 weights
    "full_rollout_extra": {"float32": 0.0, "bfloat16": 2.0},
    # activations kept per token per layer without checkpointing, bytes per (6h + 2kv + 4i) elements;
    # measured 4.09 and 2.50: under bf16 autocast some of them stay float32 (RMSNorm upcasts its input)
    "activation_units": {"float32": 4.0, "bfloat16": 2.5},
    # with checkpointing: each layer's input kept (h elements per layer) plus one layer's activations
    "checkpoint_input": {"float32": 4.0, "bfloat16": 2.0},
}
"""docs/multi-device.md's constants ("Memory"); `check` compares their arithmetic with the measurements
(the rollout's KV cache and sampling logits are left out: under 1% at the mid-size model)."""


def group_key(run: dict[str, Any]) -> str:
    """A run's configuration without its token count."""
    return str(run["name"]).rsplit("/", 1)[0]


def layer_units(model: dict[str, Any]) -> int:
    """The elements a decoder layer keeps per token for its backward (docs/multi-device.md): the layer
    input, norms, q, attention output and o's input (6h), k and v (2 x KV width), and the SwiGLU's gate,
    up, activation and product (4i)."""
    hidden, intermediate = int(model["hidden_size"]), int(model["intermediate_size"])
    kv = hidden // int(model["num_attention_heads"]) * int(model["num_key_value_heads"])
    return 6 * hidden + 2 * kv + 4 * intermediate


def lines(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Slope (bytes per token) and intercept of the update's peak for each configuration."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        if "error" not in run:
            groups[group_key(run)].append(run)
    fitted: dict[str, dict[str, float]] = {}
    for key, members in groups.items():
        points = sorted({run["tokens"]: run["update_peak_bytes"] for run in members}.items())
        if len(points) >= 2:
            n = len(points)
            mean_x, mean_y = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
            spread = sum((x - mean_x) ** 2 for x, _ in points)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
            fitted[key] = {"slope": slope, "intercept": mean_y - slope * mean_x, "points": n}
    for key, members in groups.items():
        if key not in fitted:
            run = members[0]
            ckpt = "ckpt" if run["gradient_checkpointing"] else "no-ckpt"
            borrowed = fitted.get(f"grpo/{run['dtype']}/{ckpt}/lora/none")
            if borrowed is not None:
                intercept = run["update_peak_bytes"] - borrowed["slope"] * run["tokens"]
                fitted[key] = {"slope": borrowed["slope"], "intercept": intercept, "points": 1}
    return fitted


def costs(
    runs: list[dict[str, Any]], model: dict[str, Any], fitted: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The per-parameter and per-token costs the docs' arithmetic uses, as measured."""
    layers, units = model["num_hidden_layers"], layer_units(model)
    found: dict[str, Any] = {"frozen_bytes_per_param": {}, "activation_units": {},
                             "slope_bytes_per_token": {}, "trained_bytes_per_param": {},
                             "critic_bytes_per_param": {}, "rollout_extra_bytes": {}}  # fmt: skip
    for run in runs:
        if "error" not in run and run["algorithm"] == "grpo" and run.get("use_lora", True):
            trained_bytes = 4 * run["policy_trained_params"]
            frozen = (run["policy_weight_bytes"] - trained_bytes) / run["policy_frozen_params"]
            found["frozen_bytes_per_param"][run["dtype"]] = frozen
    for key, line in fitted.items():
        found["slope_bytes_per_token"][key] = line["slope"]
    # the per-element cost from the lines without checkpointing, whose slope is all activations; a
    # checkpointed line's slope (slope_bytes_per_token) mixes layer inputs and one recomputed layer
    for dtype in ("float32", "bfloat16"):
        plain = fitted.get(f"grpo/{dtype}/no-ckpt/lora/none")
        if plain is not None and plain["points"] >= 2:
            found["activation_units"][dtype] = plain["slope"] / layers / units
    by_key = {group_key(run): run for run in runs if "error" not in run}
    for key, line in fitted.items():
        run = by_key[key]
        if run["algorithm"] == "grpo" and run.get("use_lora") is False:
            params = run["policy_trained_params"]
            found["trained_bytes_per_param"][run["dtype"]] = {
                "between_steps": run["step_start_bytes"] / params,
                "update_intercept": line["intercept"] / params,
            }
        if run.get("critic") in ("separate", "shared_lora"):
            ckpt = "ckpt" if run["gradient_checkpointing"] else "no-ckpt"
            base = fitted.get(f"grpo/{run['dtype']}/{ckpt}/lora/none")
            if base is not None:
                extra = line["intercept"] - base["intercept"]
                name = key.split("/", 1)[0] + "/" + key.rsplit("/", 1)[1]
                found["critic_bytes_per_param"][name] = {
                    "extra_intercept_bytes": extra,
                    "per_critic_param": extra / run["critic_params"],
                    "per_trained_critic_param": extra / run["critic_trained_params"],
                    "extra_slope_bytes_per_token": line["slope"] - base["slope"],
                }
    for run in runs:
        if "error" not in run:
            found["rollout_extra_bytes"][run["name"]] = run["rollout_peak_bytes"] - run["step_start_bytes"]
    return found


def merged_copy_params(run: dict[str, Any], model: dict[str, Any]) -> int:
    """The frozen weights a LoRA rollout copies (policy.lora_merged saves every adapted linear layer's base
    weight before merging, to restore it bit for bit): all frozen ones but embeddings, unembedding, norms."""
    if not run.get("use_lora", True):
        return 0
    hidden, layers = model["hidden_size"], model["num_hidden_layers"]
    return int(run["policy_frozen_params"] - 2 * model["vocab_size"] * hidden - (2 * layers + 1) * hidden)


def predicted(run: dict[str, Any], model: dict[str, Any]) -> dict[str, float]:
    """docs/multi-device.md's arithmetic (DOCS_COSTS) for the rollout's and the update's peaks of `run`."""
    dtype, layers, hidden = run["dtype"], model["num_hidden_layers"], model["hidden_size"]
    frozen_bytes = DOCS_COSTS["frozen"][dtype]
    frozen = run["policy_frozen_params"] * frozen_bytes
    trained = run["policy_trained_params"] + run["critic_trained_params"]
    critic_frozen = (run["critic_params"] - run["critic_trained_params"]) * frozen_bytes
    at_rest = frozen + critic_frozen + trained * DOCS_COSTS["trained"]
    full = 0 if run.get("use_lora", True) else run["policy_trained_params"]
    one_layer = DOCS_COSTS["activation_units"][dtype] * layer_units(model)
    if run["gradient_checkpointing"]:
        per_token = DOCS_COSTS["checkpoint_input"][dtype] * hidden * layers + one_layer
    else:
        per_token = one_layer * layers
    rollout = merged_copy_params(run, model) * frozen_bytes + full * DOCS_COSTS["full_rollout_extra"][dtype]
    activations = per_token * run["tokens"]
    if run["algorithm"] == "ppo":  # the token-level critic runs over the same tokens
        activations *= 1 + (run.get("critic_layers") or layers) / layers
    policy_grads = run["policy_trained_params"]
    if run["algorithm"] == "ppo":  # the token critic's backward runs in the policy's minibatches
        policy_grads += run["critic_trained_params"]
    critic_fit = run["critic_trained_params"] if run["algorithm"] == "sppo" else 0
    gradient = DOCS_COSTS["gradient"]
    update = max(policy_grads * gradient + activations, critic_fit * gradient)  # one after the other
    return {"rollout": at_rest + rollout, "update": at_rest + update}


QWEN_7B = {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "params": 7_615_616_512,
           "lora_params": 40_370_176}  # fmt: skip
"""Qwen2.5-7B's config.json; LoRA r 16 on every linear layer of its decoder (docs/multi-device.md)."""
QWEN_1_5B = {"params": 1_543_714_304}


def extrapolated() -> dict[str, dict[str, float]]:
    """The docs' arithmetic (DOCS_COSTS) for a 7B bf16 policy with a 1.5B critic (SPPO), per GPU,
    checkpointing on (what `auto` does from 300M parameters): GB (1e9 bytes) at rest, at the rollout's peak
    before its KV cache, at the policy update's start (its gradients: activations come on top) and at the
    critic fit's (the critic's gradients), and activation bytes per token of a micro-batch."""
    policy, lora, critic = QWEN_7B["params"], QWEN_7B["lora_params"], QWEN_1_5B["params"]
    run = {"policy_frozen_params": policy, "use_lora": True}
    copy = merged_copy_params(run, QWEN_7B) * DOCS_COSTS["frozen"]["bfloat16"]
    frozen = policy * DOCS_COSTS["frozen"]["bfloat16"]
    trained_bytes, gradient = DOCS_COSTS["trained"], DOCS_COSTS["gradient"]
    autocast_copy = DOCS_COSTS["full_rollout_extra"]["bfloat16"]
    one_layer = DOCS_COSTS["activation_units"]["bfloat16"] * layer_units(QWEN_7B)
    inputs = (
        DOCS_COSTS["checkpoint_input"]["bfloat16"] * QWEN_7B["hidden_size"] * QWEN_7B["num_hidden_layers"]
    )
    setups = {  # frozen bytes, trained policy and critic parameters, the rollout's extra bytes
        "lora+separate": (frozen, lora, critic, copy),
        "lora+shared_lora": (frozen, lora, lora, copy),
        "full+separate": (0.0, policy, critic, policy * autocast_copy),
        # FSDP2 shards the policy, not the critic; generate runs with the whole policy gathered in bf16
        "full+separate/4 devices": (0.0, policy / 4, critic, policy * autocast_copy),
    }
    table = {}
    for name, (frozen_bytes, policy_trained, critic_trained, rollout) in setups.items():
        at_rest = frozen_bytes + (policy_trained + critic_trained) * trained_bytes
        table[name] = {
            "at_rest_gb": at_rest / 1e9,
            "rollout_gb": (at_rest + rollout) / 1e9,
            "policy_update_gb": (at_rest + policy_trained * gradient) / 1e9,
            "critic_fit_gb": (at_rest + critic_trained * gradient) / 1e9,
            "activation_bytes_per_token": inputs + one_layer,
        }
    return table


def fit(runs: list[dict[str, Any]], model: dict[str, Any]) -> dict[str, Any]:
    fitted = lines(runs)
    check = {}
    for run in runs:
        if "error" not in run:
            docs = predicted(run, model)
            step = max(docs.values())
            check[run["name"]] = {
                "rollout_measured_mb": run["rollout_peak_bytes"] / 2**20,
                "rollout_docs_mb": docs["rollout"] / 2**20,
                "update_measured_mb": run["update_peak_bytes"] / 2**20,
                "update_docs_mb": docs["update"] / 2**20,
                "update_docs_over_measured": docs["update"] / run["update_peak_bytes"],
                "step_docs_over_measured": step / run["step_peak_bytes"],
            }
    return {"lines": fitted, "costs": costs(runs, model, fitted), "docs_costs": DOCS_COSTS, "check": check,
            "extrapolated_7b_1_5b": extrapolated()}  # fmt: skip


def plot(runs: list[dict[str, Any]], target: Path) -> None:
    """Update peak against tokens, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run in runs:
        if "error" not in run:
            groups[group_key(run)].append((run["tokens"], run["update_peak_bytes"] / 2**30))
    figure, axes = plt.subplots(figsize=(9, 6))
    for key, points in sorted(groups.items()):
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(xs, ys, marker="o", label=key)
    axes.set_xlabel("tokens in the step (rows x padded width)")
    axes.set_ylabel("peak tensor memory of the update (GiB)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
