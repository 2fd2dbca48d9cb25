"""The GPU worker: Celery app, batching runtime and the generation engines.

Only ``workers.engine*`` modules import torch; the rest is importable by the
gateway (queue names, Celery factory).
"""
