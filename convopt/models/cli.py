"""``convopt models``: list the built-in models and export one to an ONNX file (written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from convopt.errors import ConvOptError, OutputError
from convopt.io import save_model
from convopt.models.count import conv_weight_params
from convopt.models.registry import build, list_models

app = typer.Typer(
    help="Built-in models: the literature's Conv architectures with seeded random weights, and the trained example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

def _fail(exc: ConvOptError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


@app.command("list")
def list_command() -> None:
    """List the built-in models: name and one-line description."""
    models = list_models()
    width = max(len(m.name) for m in models)
    for m in models:
        typer.echo(f"{m.name:<{width}}  {m.description}")


@app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="Model name, see `convopt models list`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.", dir_okay=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random weights (default 0).")] = None,
    bias: Annotated[bool, typer.Option("--bias/--no-bias", help="Give the convs a bias.")] = True,
    batch: Annotated[Optional[int], typer.Option(help="Fixed batch size of the input (default 1).", min=1)] = None,
) -> None:
    """Build a built-in model and write it as ONNX (opset 13); never overwrites unless --overwrite."""
    options: dict[str, Any] = {}
    if seed is not None:
        options["seed"] = seed
    if not bias:
        options["bias"] = False
    if batch is not None:
        options["batch"] = batch
    try:
        if output.is_dir():
            raise OutputError(f"{output} is a folder; give a file name such as {output / 'model.onnx'}")
        if output.exists() and not overwrite:  # fail before a long build
            raise OutputError(f"{output} already exists; pass --overwrite to replace it")
        model = build(name, **options)
        save_model(model, output)  # atomic; external data beside the file above 2 GB
    except ConvOptError as exc:
        raise _fail(exc) from None
    size = output.stat().st_size
    typer.echo(f"wrote {output} ({name}, {conv_weight_params(model):,} conv weights, {size / 1e6:.1f} MB)")
