"""Celery workers: the app (``workers.app``), the two tasks (``workers.tasks``), per-process model
holders (``workers.holders``) and the message the producer sends (``workers.messages``, no ML import)."""
