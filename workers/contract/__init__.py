"""The contract between the gateway and the workers: the only part of ``workers`` the gateway imports.

Torch-free and small. It holds what both sides must agree on, each in one
module: the names of queues, tasks and Redis keys (:mod:`.names`), the
settings both read (:mod:`.settings`), the Celery app factory
(:mod:`.celery_app`), the one builder and publisher of task messages
(:mod:`.messages`), the heartbeat record (:mod:`.heartbeat`) and the reads of
broker state (:mod:`.broker`). ``tests/test_boundaries.py`` fails when the
gateway imports any other ``workers`` module. See ``docs/architecture.md``.
"""
