"""The worker's services besides the engine, each on its own schedule with a bounded cost per run.

- :mod:`.planner`: which adapter queues this worker consumes (a Celery consumer bootstep,
  on the consumer's timer, because only that thread may add and cancel queues);
- :mod:`.heartbeat`: keeps this worker's messages invisible and announces it (own thread);
- :mod:`.reconciler`: re-publishes accepted jobs whose message was lost (own thread);
- :mod:`.periodic`: the small thread runner the last two share.

``workers.app.create_worker_app`` wires them; see ``docs/architecture.md``.
"""
