"""The training engine: a pure torch/transformers/peft library usable without the service."""
