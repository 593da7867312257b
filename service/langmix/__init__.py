"""Language-mix drift: each language's share of the posts decided over a moving window,
against the baseline the policy declares (`language_mix:`), an alert per language with
hysteresis, and the policy profile decisions use while an alert is raised (`on_drift`).

``drift`` is pure (windows, shares, marks, the alert's transitions, the state's shape);
``store`` counts languages per time bucket in Redis (in the worker's per-batch telemetry
round trip), lets one worker at a time judge the window, moves the state atomically and
reads it for `/v1/stats` and `/metrics`.
"""
