"""The HTTP API (FastAPI): takes posts, serves decisions, the live policy and operations.

`create_app(settings)` builds the app (`app.py`); routes are grouped by concern under
`routes/` (posts, decisions, policy, operations); `errors.py` holds the one error shape and
the request-body guard, `metrics.py` the Prometheus metrics, `publishing.py` how a policy
becomes live or shadow, `state.py` the typed per-app state every route reads.
"""

from service.api.app import create_app

__all__ = ["create_app"]
