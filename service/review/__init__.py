"""Human review: per-language queues that reviewers claim and resolve, appeals, feedback.

``rules`` is pure (queue names, priority, capacity, the overflow fallback, the sums of
verdicts); ``store`` holds the queues in Redis. A decision enters its queue in the worker's
commit script (``service.store.COMMIT_LUA``), in the same atomic write as the decision.
The API side is ``service.api.routes.review``.
"""
