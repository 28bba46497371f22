"""The grading runtime: grader specs (from `jobspec`) → rewards in [0, 1] with OpenAI's metadata.

Torch-free and service-free (an import-linter contract), so the API's graders endpoints and the training
engine grade with the same code. User code (Python graders) runs only in the OS sandbox of
`grading.sandbox`; judges and embeddings are reached over OpenAI-compatible HTTP endpoints.
"""
