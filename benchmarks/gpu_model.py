"""The GPU check's model, built locally (no model hub is reachable), and the FLOPs it is measured against.

`build_model` makes Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 query and 2 KV heads, MLP 4864) with
random weights and the sppo-tiny fixture's tokenizer, the vocabulary sized to it (18 tokens, so about
358M parameters, nearly all in the decoder layers); `tiny` shrinks it to 2 layers of width 64 for a CPU
smoke run. The built directory is a benchmark input, never committed.

A random model samples EOS about once in 18 tokens, so rollout lengths (and the work of a step) would
vary from run to run. The weights are nudged so EOS is never sampled and every response runs to
`max_response_tokens`: every embedding gets a large constant in dimension 0, which the residual stream
carries to the last layer (each layer adds a few tenths at most), so after the final norm that dimension
stays large and positive; the unembedding reads it only for EOS, with a negative weight (measured on
the mid-size model: EOS logit -42 against -0.7 to 1.0 for the others; -32 in the tiny one). Untied
embeddings keep the other logits as initialised.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from worker.engine.fixtures import ensure_fixture

MID_SHAPE: dict[str, Any] = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2}  # fmt: skip
"""Qwen2.5-0.5B's decoder (its config.json)."""
TINY_SHAPE: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
RESIDUAL_OFFSET = 20.0  # dimension 0 of every embedding: far above the random walk the layers add to it
EOS_WEIGHT = -4.0  # the unembedding's weight on dimension 0 for EOS (0 for every other token)

PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))
"""Dense bf16 tensor-core peaks from NVIDIA's datasheets (without sparsity), matched in this order
against the device name: the SXM H100 and the H200 989 TFLOP/s, the PCIe H100 756, the A100 312."""


def build_model(target: Path, *, tiny: bool, device: torch.device, seed: int = 0) -> Path:
    """A save_pretrained directory of the benchmark model (bf16 weights, the fixture's tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(ensure_fixture().model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(TINY_SHAPE if tiny else MID_SHAPE),
    )
    torch.manual_seed(seed)
    with device:  # initialised where it will run: seconds on a GPU for the 0.5B shape
        model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = RESIDUAL_OFFSET
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, 0] = EOS_WEIGHT
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s; None on a CPU or an unlisted GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def parameter_counts(
    model: torch.nn.Module, trained: list[torch.nn.Parameter] | None = None
) -> dict[str, int]:
    """The parameters a forward of `model` runs through and those of them that train: every parameter
    (`trained` None), or the frozen ones plus `trained` (a shared_lora critic's adapter sits in the
    policy's model, trainable, but neither runs nor trains in the policy's forward)."""
    own = {id(p) for p in trained} if trained is not None else None
    used = [p for p in model.parameters() if own is None or not p.requires_grad or id(p) in own]
    return {
        "params": sum(p.numel() for p in used),
        "trainable": sum(p.numel() for p in used if p.requires_grad),
    }


def training_flops_per_token(counts: dict[str, int]) -> int:
    """2N forward + 2N backward to the activations + 2N_trainable to the trainable weights' gradients
    (6N when every weight trains); a gradient-checkpointing recompute is not counted (model FLOPs)."""
    return 4 * counts["params"] + 2 * counts["trainable"]


def utilisation(flops_per_token: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model-FLOPs utilisation: achieved FLOP/s over the device's peak (None without a peak)."""
    return None if peak is None else flops_per_token * tokens_per_s / peak


def describe(model_dir: Path) -> dict[str, Any]:
    """The built model's shape, for the report."""
    config = Qwen2Config.from_pretrained(model_dir)
    keys = ("vocab_size", *MID_SHAPE)
    return {key: getattr(config, key) for key in keys}
