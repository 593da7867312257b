"""The `floodgate` commands, one module per concern; ``service.cli`` assembles them.

``serving`` (serve, api, worker), ``model`` (build, finetune, train, lexicon, eval),
``policy`` (check, shadow-report, backtest, diff, schema), ``replay``, ``keys`` and
``review``; ``common`` holds what several of them need. Each command imports what it runs
inside its body, so that `floodgate --help` and the light commands never load torch.
"""
