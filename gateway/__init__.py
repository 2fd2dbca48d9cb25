"""The gateway: FastAPI app, publisher and the ``loraq`` CLI. Never imports torch."""
