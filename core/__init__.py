"""The service core the API, the workers and the model server share: settings, the database and its models,
the job lifecycle, queues and Redis streams, worker presence, the artifact store, the model registry,
webhook outbox rows, API-key hashing, logs. No HTTP here (an import-linter contract): the HTTP layer is `app`.
"""
