"""``featstore encoders list|show|convert``: the registered encoders, whether their weights are here,
how ``--random-init`` initialises them, and converting pickled checkpoints to safetensors.

Nothing is downloaded: a default checkpoint counts as "cached" only when it resolves
offline, exactly as loading it would (:func:`featstore.encoders.base.resolve_checkpoint`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from featstore.cli.errors import user_errors

if TYPE_CHECKING:
    from featstore.encoders import EncoderSpec
    from featstore.encoders.random_init import InitScheme

app = typer.Typer(help="List the encoders and their checkpoints.", no_args_is_help=True)

BUILT_IN = "built-in"
CACHED = "cached"
LOCAL = "local file"
NOT_CACHED = "not cached (use --checkpoint PATH or --random-init)"


def weights_status(spec: EncoderSpec) -> str:
    """``built-in`` (weight-free), ``local file`` (a path, or a file name found in the
    checkpoint directory ``$FEATSTORE_CHECKPOINTS``), ``cached`` (a Hugging Face id in
    the local cache), or not cached; nothing is downloaded."""
    if spec.default_checkpoint is None:
        return BUILT_IN
    from featstore.encoders.base import CheckpointError, resolve_checkpoint
    from featstore.encoders.checkpoints import find_local_checkpoint

    try:
        find_local_checkpoint(spec.default_checkpoint)
    except CheckpointError:
        pass
    else:
        return LOCAL
    try:
        resolve_checkpoint(spec.default_checkpoint)
    except CheckpointError:
        return NOT_CACHED
    return CACHED


def layer_keys(spec: EncoderSpec) -> list[int | str]:
    """Layers the default checkpoint offers: ``0..n_layers`` and ``"last"`` (weight-free: ``"last"``)."""
    return [*range(spec.n_layers + 1), "last"] if spec.n_layers > 0 else ["last"]


def _layers_text(spec: EncoderSpec) -> str:
    return f"0-{spec.n_layers}, last" if spec.n_layers > 0 else "last"


def _scheme_dict(scheme: InitScheme) -> dict[str, Any]:
    return {
        "name": scheme.name,
        "summary": scheme.summary,
        "source": scheme.source,
        "rules": [{"parameters": what, "init": how} for what, how in scheme.rules],
    }


def random_init_dict(spec: EncoderSpec) -> dict[str, Any] | None:
    """How ``--random-init`` initialises ``spec`` (None: weight-free): the loader option,
    its default and each choice's scheme."""
    from featstore.encoders.random_init import BERT, CHOICES, NATIVE, OPTION

    if spec.init_scheme is None:
        return None
    schemes = {NATIVE: spec.init_scheme, "bert": BERT}
    return {
        "option": OPTION,
        "default": NATIVE,
        "schemes": {choice: _scheme_dict(schemes[choice]) for choice in CHOICES},
    }


def _as_dict(spec: EncoderSpec, status: str) -> dict[str, Any]:
    import dataclasses

    out = dataclasses.asdict(spec)
    del out["init_scheme"]  # shown with its alternatives under "random_init"
    return {
        **out,
        "layers": layer_keys(spec),
        "weights": status,
        "random_init": random_init_dict(spec),
    }


@app.command("list")
def list_encoders(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every registered encoder: modality, crop, rate, dim, layers, checkpoint, weights."""
    with user_errors():
        from featstore.encoders import specs

        rows = [(spec, weights_status(spec)) for spec in specs().values()]
    if as_json:
        typer.echo(json.dumps([_as_dict(spec, status) for spec, status in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # pipes and logs: one line per encoder, never wrapped
        console = Console(width=4096)
    table = Table(show_edge=False, pad_edge=False)
    for col in ("name", "modality", "crop", "Hz", "dim", "layers", "default checkpoint", "weights"):
        table.add_column(col, justify="right" if col in ("Hz", "dim") else "left")
    for spec, status in rows:
        table.add_row(
            spec.name,
            spec.modality,
            spec.crop,
            f"{spec.frame_hz:g}",
            str(spec.dim),
            _layers_text(spec),
            spec.default_checkpoint or "-",
            status,
        )
    console.print(table)


@app.command("show")
def show_encoder(
    name: str = typer.Argument(..., help="Encoder name (see `featstore encoders list`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """One encoder's declared facts, the state of its default checkpoint and how
    --random-init initialises it."""
    with user_errors():
        from featstore.encoders import get_spec

        spec = get_spec(name)  # unknown: UnknownEncoderNameError, exit code 2
        status = weights_status(spec)
    if as_json:
        typer.echo(json.dumps(_as_dict(spec, status), indent=2))
        return
    lines = [
        ("name", spec.name),
        ("family", spec.family),
        ("modality", spec.modality),
        ("crop", spec.crop),
        ("frame_hz", f"{spec.frame_hz:g}"),
        ("dim (last)", str(spec.dim)),
        ("layers", _layers_text(spec)),
        ("default checkpoint", spec.default_checkpoint or "- (no weights)"),
        ("weights", status),
        ("preprocessing", f"version {spec.preprocessing_version}"),
    ]
    if spec.init_scheme is not None:
        lines.append(
            (
                "random init",
                f"{spec.init_scheme.name} (default), bert (--option random_init_scheme=bert)",
            )
        )
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        typer.echo(f"{key:<{width}}  {value}")
    if spec.description:
        typer.echo(f"\n{spec.description}")
    if spec.init_scheme is not None:
        _echo_random_init(spec)


def _echo_random_init(spec: EncoderSpec) -> None:
    from featstore.encoders.random_init import BERT, OPTION

    assert spec.init_scheme is not None
    for scheme, how in (
        (spec.init_scheme, "the default"),
        (BERT, f"--random-init --option {OPTION}=bert"),
    ):
        typer.echo(f"\n--random-init: {scheme.name} ({how}): {scheme.summary}")
        typer.echo(f"  source: {scheme.source}")
        for what, init in scheme.rules:
            typer.echo(f"  - {what}: {init}")


@app.command("convert")
def convert_checkpoint(
    name: str = typer.Argument(..., help="Encoder name (e.g. avhubert-av)."),
    checkpoint: str = typer.Option(
        ..., "--checkpoint", help="The original checkpoint file (e.g. a fairseq .pt)."
    ),
    out: str = typer.Option(
        ..., "--out", help="Directory to write model.safetensors + config.json."
    ),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="Unpickle with full torch.load: runs any code in the file; only for files you trust.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the directory written as JSON."),
) -> None:
    """Convert a pickled checkpoint into a safe, fast directory (later: --checkpoint DIR)."""
    with user_errors():
        from featstore.encoders.convert import convert_encoder

        path = convert_encoder(name, checkpoint, out, trust_checkpoint=trust_checkpoint)
    if as_json:
        typer.echo(json.dumps({"encoder": name, "checkpoint": str(path)}, indent=2))
        return
    typer.echo(f"wrote {path} (load it with --checkpoint {path})")
