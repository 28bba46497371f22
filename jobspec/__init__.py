"""What the API and the engine must agree on, written once: grader specs and their templates, algorithm
names, and the context rule (a model's context length; prompt plus response budget must fit it).

Torch-free and service-free (an import-linter contract): the API validates requests with these models and
the engine and the grading runtime read the same ones.
"""
