"""HTTP layer: dependencies and one router per resource (the worker never imports this package)."""
