"""The model server `sppo serve-models`: base models from the registry with tenants' LoRA adapters on top,
behind OpenAI's chat/completions and completions, with a dynamic batcher. A process of its own: the API
authenticates, checks ownership and proxies here, and never imports torch.
"""
