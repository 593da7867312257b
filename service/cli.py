"""CLI: `floodgate serve | api | worker | model ... | policy ... | replay | keys ... | review ...`.

The commands live in ``service/commands/``, one module per concern; this module assembles
them into the `floodgate` entry point (pyproject's ``service.cli:app``).
"""

from __future__ import annotations

import typer

from service.commands import keys, model, policy, replay, review, serving

app = typer.Typer(help="Floodgate: content moderation under an influx.", no_args_is_help=True)
for command in (serving.serve, serving.api, serving.worker, replay.replay):
    app.command()(command)
app.add_typer(model.app, name="model")
app.add_typer(policy.app, name="policy")
app.add_typer(keys.app, name="keys")
app.add_typer(review.app, name="review")


if __name__ == "__main__":
    app()
