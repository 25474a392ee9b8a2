"""The convopt command line: each command parses its options into typed objects, calls the library, renders.
Errors become exit codes here and nowhere else: 0 success, 1 the CI gate was missed, 2 usage or input error,
3 internal rewrite error."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

import convopt
from convopt.cli_boundary import Group, err, guarded, out, out_path
from convopt.errors import InputError
from convopt.limits import DEFAULT_MAX_MODEL_BYTES
from convopt.text import json_safe, one_line, safe

app = typer.Typer(
    cls=Group,
    name="convopt",
    help="Rewrite the Conv layers of an ONNX model into cheaper factorized forms, measured with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
OUTPUT, STRATEGY, RANK, DATA, BUDGET, MEASURE = (
    "Output", "Strategy and passes", "Rank (uniform mode)", "Data", "Budget and CI gate", "Measurement")


MaxModelBytes = Annotated[int, typer.Option(
    min=1, metavar="N", help="Largest model (with its external data) to read, in bytes.")]


def _shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    from convopt.measure.data import parse_input_shape

    return dict(parse_input_shape(v) for v in values or [])


def _version(value: bool) -> None:
    if value:
        print(f"convopt {convopt.__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Rewrite the Conv layers of an ONNX model into cheaper factorized forms, measured with ONNX Runtime."""
    from convopt.limits import return_freed_memory

    return_freed_memory()


InputShape = Annotated[Optional[list[str]], typer.Option(
    "--input-shape", metavar="NAME:DIMS", help="Shape of a dynamic input, e.g. data:1x3x224x224 (repeatable).",
    rich_help_panel=DATA)]


@app.command()
@guarded
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print JSON instead of a table.")] = False,
    sort: Annotated[str, typer.Option(metavar="graph|macs|time", help="Row order: graph order, or largest "
                                      "MACs / measured time (--latency) first.")] = "graph",
    latency: Annotated[bool, typer.Option("--latency", metavar="", help="Also measure each layer's share of run "
                                          "time (ORT's profiler, a few seconds).")] = False,
    threads: Annotated[int, typer.Option(help="ORT intra-op threads for --latency (0: ORT's default).", min=0,
                                         metavar="N")] = 0,
    input_shape: InputShape = None,
    max_model_bytes: MaxModelBytes = DEFAULT_MAX_MODEL_BYTES,
) -> None:
    """The model's inputs and dynamic dimensions, then one row per Conv: geometry, MACs and their share, params,
    and which passes apply (or why not)."""
    from convopt.inspect import inspect_model, with_latency
    from convopt.io import load_model_report

    if sort not in ("graph", "macs", "time"):
        raise InputError(f"--sort must be graph, macs or time, got {safe(sort)!r}")
    if sort == "time" and not latency:
        raise InputError("--sort time needs --latency (the times are measured)")
    loaded = load_model_report(model, max_bytes=max_model_bytes)
    for w in loaded.warnings:
        err.print(f"warning: {one_line(w)}", markup=False, soft_wrap=True)
    shapes = _shapes(input_shape)
    result = inspect_model(loaded.model, shapes)
    if latency:
        from convopt.limits import cap_threads
        from convopt.measure.ort import OrtSettings

        capped, note = cap_threads(threads)
        if note:
            err.print(f"warning: {one_line(note)}", markup=False, soft_wrap=True)
        result = with_latency(result, loaded.model, OrtSettings(threads=capped), shapes)
    if as_json:
        print(json_safe(json.dumps(result.to_dict(), indent=2, ensure_ascii=False)))
        return
    from convopt.render.inspect_view import render_inspect

    render_inspect(result, model, out, sort)


def _presets() -> str:
    from convopt.measure.data import PRESETS

    return "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())


def _pass_names() -> str:
    from convopt.passes import PASSES

    return ", ".join(PASSES)


@app.command()
@guarded
def optimize(
    model: Annotated[Optional[Path], typer.Argument(
        help="ONNX model file (none: the built-in example, as `convopt demo`).", show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "-o", "--output", help="Output model (default: MODEL.opt.onnx beside the input).", show_default=False,
        rich_help_panel=OUTPUT)] = None,
    report: Annotated[Optional[str], typer.Option(help="Write the JSON report here.", rich_help_panel=OUTPUT)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", metavar="", help="Allow -o to be the input model, and an output to replace a file that is "
        "not convopt's own output of that kind.", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress or tables, errors only.",
                                        rich_help_panel=OUTPUT)] = False,
    strategy: Annotated[Optional[str], typer.Option(
        metavar="auto|uniform", help="auto: per layer, data-aware (default with --data); uniform: one rank rule (default without).",
        show_default=False, rich_help_panel=STRATEGY)] = None,
    passes: Annotated[Optional[str], typer.Option(
        metavar="LIST", help=f"Comma-separated passes ({_pass_names()}). uniform: run in this order (default: "
             "split5x5,factorize); auto: the candidates (default: all).", show_default=False,
        rich_help_panel=STRATEGY)] = None,
    no_fold_bn: Annotated[bool, typer.Option("--no-fold-bn", metavar="", help="Do not fold BatchNormalization into convs.",
                                             rich_help_panel=STRATEGY)] = False,
    latency_cache: Annotated[Optional[str], typer.Option(
        help="auto: JSON file caching per-layer latencies across runs.", rich_help_panel=STRATEGY)] = None,
    quantize: Annotated[str, typer.Option(
        metavar="none|int8", help="Deploy in this precision: with int8 every step is quantized (ORT static, QDQ, "
        "per-channel) before it is judged and timed, and the model written is INT8.",
        rich_help_panel=STRATEGY)] = "none",
    force_quantize: Annotated[bool, typer.Option(
        "--force-quantize", metavar="", help="Write INT8 even where it is not faster on this CPU.",
        rich_help_panel=STRATEGY)] = False,
    time_budget: Annotated[Optional[float], typer.Option(
        metavar="SECONDS", help="auto: stop early with the best plan found so far.", min=0.0,
        rich_help_panel=STRATEGY)] = None,
    seed: Annotated[int, typer.Option(help="Seed for random inputs, data splits and ALS.", min=0, metavar="N",
                                      rich_help_panel=STRATEGY)] = 0,
    full_rank: Annotated[bool, typer.Option("--full-rank", metavar="", help="Exact rewrites (verification: MACs usually grow).",
                                            rich_help_panel=RANK)] = False,
    rank_fraction: Annotated[Optional[float], typer.Option(help="Rank = ceil(F × exact rank).", metavar="F",
                                                           rich_help_panel=RANK)] = None,
    energy: Annotated[Optional[float], typer.Option(
        help="Keep this fraction of squared singular values (default: 0.9).", metavar="E", show_default=False,
        rich_help_panel=RANK)] = None,
    align: Annotated[int, typer.Option(help="Round ranks up to a multiple of this (ORT's NCHWc blocks).", min=1, metavar="N",
                                       rich_help_panel=RANK)] = 8,
    bottleneck_side: Annotated[str, typer.Option(metavar="both|in|out", help="Bottleneck reduces: both, in or out.",
                                                 rich_help_panel=RANK)] = "both",
    data: Annotated[Optional[Path], typer.Option(help=".npz keyed by input name (or NAME/0, NAME/1, ...: one "
                                                 "array per sample), or a folder of images.",
                                                 rich_help_panel=DATA)] = None,
    calib: Annotated[Optional[Path], typer.Option(
        help="auto: calibration data (default: half of --data, kept apart from the evaluation half).",
        show_default=False, rich_help_panel=DATA)] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Labels: CSV (file,label), .npy or .npz (with --metric: "
                                                   "any real array, one row per sample).",
                                                   rich_help_panel=DATA)] = None,
    preprocess: Annotated[Optional[str], typer.Option(
        metavar="PRESET", help=f"Image preset for a folder of images. {_presets()}.", show_default=False,
        rich_help_panel=DATA)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use at most this many samples.", min=1, metavar="N",
                                                 rich_help_panel=DATA)] = None,
    input_shape: InputShape = None,
    resize: Annotated[Optional[str], typer.Option(
        metavar="SIDE=N", help="Folder of images: resize each to height=N (the width follows its aspect ratio) or "
        "width=N, for a model with a dynamic side; samples of different shapes run one at a time.",
        show_default=False, rich_help_panel=DATA)] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(metavar="X", 
        help="Points of top-1 (labelled, else agreement) (default: 1).", show_default=False,
        rich_help_panel=BUDGET)] = None,
    min_agreement: Annotated[Optional[float], typer.Option(metavar="X", help="Minimum top-1 agreement with the original, %.",
                                                           rich_help_panel=BUDGET)] = None,
    max_rel_error: Annotated[Optional[float], typer.Option(metavar="X", 
        help="Maximum relative L2 error of the outputs (default without class scores: 0.05).",
        show_default=False, rich_help_panel=BUDGET)] = None,
    max_metric_drop: Annotated[Optional[float], typer.Option(metavar="X", 
        help="Largest drop of the --metric's mean score, in its own units.", rich_help_panel=BUDGET)] = None,
    metric: Annotated[Optional[str], typer.Option(
        metavar="FILE.py:FN", help="Task metric: fn(outputs, labels, inputs) -> one score per sample, higher is "
        "better (or package.module:FN).", rich_help_panel=BUDGET)] = None,
    confidence: Annotated[float, typer.Option(
        metavar="C", help="Keep a rewrite only when the one-sided upper bound of its loss at this confidence is "
        "within the budget.", rich_help_panel=BUDGET)] = 0.95,
    no_budget: Annotated[bool, typer.Option("--no-budget", metavar="", help="Uniform mode: keep rewrites without "
                                            "an accuracy check.", rich_help_panel=BUDGET)] = False,
    fail_under_speedup: Annotated[Optional[float], typer.Option(metavar="X", 
        help="Exit 1 if the final speedup is below this.", rich_help_panel=BUDGET)] = None,
    require_faster: Annotated[bool, typer.Option(
        "--require-faster/--keep-slower", help="Roll back a pass that does not measure faster.",
        rich_help_panel=BUDGET)] = True,
    no_eval: Annotated[bool, typer.Option("--no-eval", metavar="", help="Rewrite only: no accuracy or latency measurement.",
                                          rich_help_panel=MEASURE)] = False,
    provider: Annotated[str, typer.Option(metavar="NAME", help="ONNX Runtime execution provider.",
                                          rich_help_panel=MEASURE)] = "CPUExecutionProvider",
    threads: Annotated[int, typer.Option(help="ORT intra-op threads (0: ORT's default, all cores).", min=0, metavar="N",
                                         rich_help_panel=MEASURE)] = 0,
    warmup: Annotated[int, typer.Option(help="Latency warm-up runs.", min=0, metavar="N", rich_help_panel=MEASURE)] = 3,
    repeats: Annotated[int, typer.Option(help="Latency timed runs (interleaved).", min=1, metavar="N",
                                         rich_help_panel=MEASURE)] = 20,
    latency_batch: Annotated[int, typer.Option(
        help="Samples per timed run for a dynamic batch (a fixed batch is used as is).", min=1, metavar="N",
        rich_help_panel=MEASURE)] = 1,
    max_model_bytes: MaxModelBytes = DEFAULT_MAX_MODEL_BYTES,
    executor: Annotated[str, typer.Option(
        metavar="local|ray", help="Where accuracy is evaluated: in this process, or sharded over a Ray cluster "
        '(pip install "convopt[ray]"). Latency is always timed here.', rich_help_panel=MEASURE)] = "local",
    ray_address: Annotated[Optional[str], typer.Option(
        metavar="ADDRESS", help="--executor ray: the cluster's head as host:port, or auto (the cluster this "
        "machine joined with `ray start`) (default: start a local Ray instance).", show_default=False,
        rich_help_panel=MEASURE)] = None,
) -> None:
    """Rewrite MODEL's convs, measuring accuracy and latency before and after each step."""
    from convopt.core.budget import Budget
    from convopt.measure.executor import ExecutorOptions
    from convopt.measure.ort import OrtSettings
    from convopt.options import DataOptions, OptimizeOptions, RankOptions

    if model is None:
        from convopt.models.example import example_data_path, example_model_path

        model, data = example_model_path(), data or example_data_path()
        output = output or "example.opt.onnx"
    opts = OptimizeOptions(
        model=model, output=out_path(output, "-o"), report=out_path(report, "--report"), overwrite=overwrite,
        strategy=strategy,  # type: ignore[arg-type]  (checked by the library)
        passes=None if passes is None else tuple(p.strip() for p in passes.split(",")),
        rank=RankOptions(full_rank, rank_fraction, energy, align, bottleneck_side),  # type: ignore[arg-type]
        data=DataOptions(data, calib, labels, preprocess, limit, _shapes(input_shape), resize=resize),
        budget=Budget(max_accuracy_drop, min_agreement, max_rel_error, max_metric_drop, confidence),
        no_budget=no_budget, metric=metric, fail_under_speedup=fail_under_speedup,
        ort=OrtSettings(provider=provider, threads=threads, warmup=warmup, repeats=repeats,
                        latency_batch=latency_batch),
        executor=ExecutorOptions(executor, ray_address),  # type: ignore[arg-type]  (checked by the options)
        require_faster=require_faster, no_eval=no_eval, fold_bn=not no_fold_bn, seed=seed,
        latency_cache=out_path(latency_cache, "--latency-cache"), time_budget=time_budget,
        max_model_bytes=max_model_bytes, quantize=quantize, force_quantize=force_quantize)
    raise typer.Exit(_run_optimize(opts, quiet))


def _run_optimize(opts: Any, quiet: bool) -> int:
    from convopt import api
    from convopt.render import render_table

    def say(msg: str) -> None:  # one event, one line in a pipe or a CI log; wrapped at words on a terminal
        if not quiet:
            err.print(safe(msg), markup=False, soft_wrap=not err.is_terminal)

    def warn(msg: str) -> None:
        if not quiet:
            err.print(f"warning: {safe(msg)}", markup=False, soft_wrap=not err.is_terminal)

    result = api.run(opts, say, warn, progress=not quiet)
    if not quiet:
        render_table(result.report.to_dict(), out)
        out.print(f"wrote {safe(result.output)}" + (f" and {safe(result.report_path)}" if result.report_path else ""),
                  markup=False, soft_wrap=not out.is_terminal)
    if result.gate is not None and not result.gate.passed:
        err.print(f"gate failed: {safe(result.gate.reason)}", markup=False, soft_wrap=True)
    return result.exit_code


@app.command()
@guarded
def demo(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress or tables, errors only.")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="Where to write the optimized example.")] = (
        "example.opt.onnx"),
    report: Annotated[Optional[str], typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Run the whole pipeline on the built-in trained example with its 360 bundled labelled held-out digits
    (auto mode: 90 fit, 135 decide, 135 report). A budget of 3 points of top-1: 135 samples cannot certify
    less than 2 points at 95 % even for a rewrite that changes no prediction."""
    from convopt.core.budget import Budget
    from convopt.models.example import example_data_path, example_model_path
    from convopt.options import DataOptions, OptimizeOptions

    opts = OptimizeOptions(model=example_model_path(), output=out_path(output, "-o"),
                           report=out_path(report, "--report"),
                           data=DataOptions(data=example_data_path()), budget=Budget(max_accuracy_drop=3.0))
    raise typer.Exit(_run_optimize(opts, quiet))


FORMATS = {"table": "text", "md": "md", "html": "html"}
SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}


def _format_of(fmt: str | None, output: str | None) -> str:
    """--format, else the -o file's suffix (.html/.htm, .md/.markdown; anything else: the table), else table."""
    if fmt is None:
        return "table" if output is None else SUFFIX_FORMATS.get(Path(output).suffix.lower(), "table")
    if fmt not in FORMATS:
        raise InputError(f"--format must be table, md or html, got {safe(fmt)!r}")
    return fmt


@app.command("report")
@guarded
def report_cmd(
    reports: Annotated[list[Path], typer.Argument(
        help="A JSON report written by convopt optimize --report; give two to compare the runs side by side.",
        metavar="REPORT")],
    fmt: Annotated[Optional[str], typer.Option(
        "--format", metavar="table|md|html", help="table, md or html (default: from the -o suffix, else table).",
        show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", metavar="", help="Allow -o to replace a file that is not a report rendered by convopt.")] = False,
) -> None:
    """Render a saved report as a terminal table, Markdown, or a self-contained HTML page; with two reports,
    compare the runs (settings that differ, budgets, final figures, per-layer choices)."""
    from convopt import render
    from convopt.outputs import InputFile, OutputTarget, guard_outputs
    from convopt.report_check import read_report
    from convopt.writes import atomic_write_bytes

    if len(reports) > 2:
        raise InputError(f"convopt report takes one report, or two to compare; got {len(reports)}")
    fmt = _format_of(fmt, output)
    target = None if output is None else OutputTarget.of(output, FORMATS[fmt], "-o")  # type: ignore[arg-type]
    if target is not None:
        guard_outputs([InputFile(r, "the report being rendered") for r in reports], [target], overwrite)
        _say_swept([target.path.parent])
    docs = [read_report(r) for r in reports]  # bounded, strict JSON, checked against the schema
    if len(docs) == 2:
        grids = render.comparison(docs[0], docs[1], (str(reports[0]), str(reports[1])))
        if target is None and fmt == "table":
            render.render_comparison(grids, out)
            return
        text = {"table": render.comparison_text, "md": render.render_comparison_markdown,
                "html": render.render_comparison_html}[fmt](grids)
    else:
        if target is None and fmt == "table":
            render.render_table(docs[0], out)
            return
        text = {"table": render.render_text, "md": render.render_markdown, "html": render.render_html}[fmt](docs[0])
    if target is None:
        sys.stdout.write(text)
    else:
        atomic_write_bytes(target.path, text.encode("utf-8"))


def _say_swept(folders: list[Path], quiet: bool = False) -> None:
    """Remove temporary files that killed runs left in these folders, and say so in one line."""
    from convopt.writes import sweep_note

    note = sweep_note(folders)
    if note and not quiet:
        err.print(note, markup=False, soft_wrap=True)


from convopt.models.cli import app as models_app  # noqa: E402  (after the commands it sits beside)

app.add_typer(models_app, name="models", help="Seed networks (Inception, ResNet, VGG, MobileNet) and the trained example.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
