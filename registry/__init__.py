"""The registry: SQLAlchemy models and repository functions for loraq's state.

Never imports torch; the gateway loads it in well under a second.
"""
