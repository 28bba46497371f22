"""What the API and the engine must agree on, written once: grader specs and their templates, and the
training-item format (items.py).

Torch-free and service-free (an import-linter contract): the API validates requests with these models and
the engine and the grading runtime read the same ones.
"""
