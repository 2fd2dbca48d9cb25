"""Outbound webhooks: signed, durable, at-least-once deliveries of job and batch events.

Pure parts (signing, the target guard, the retry schedule) are separate from
the sender (HTTP) and the dispatcher (the gateway's delivery loop), so each
is tested without a network or a database.
"""
