"""What the API and the engine must agree on, written once: grader specs and their templates, hyperparameters
and their resolution, their limits (limits.py), the training-item format (items.py), the context rule
(context.py: a model's context length; prompt plus response budget must fit it), and the limits of a request
to a model that the API and the model server both check (serving.py).

Torch-free and service-free (an import-linter contract): the API validates requests with these models and
the engine and the grading runtime read the same ones.
"""
