"""The convopt command line: each command parses, calls the library, renders. Errors become exit codes here
and nowhere else: 0 success, 1 the CI gate was missed, 2 usage or input error, 3 internal rewrite error."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from convopt.errors import ConvOptError, GateError, InputError
from convopt.limits import DEFAULT_MAX_MODEL_BYTES, MAX_SEED
from convopt.text import cell, json_safe, one_line, safe
from convopt.writes import Interrupted, signals_handled

app = typer.Typer(
    name="convopt",
    help="Rewrite the Conv layers of an ONNX model into cheaper factorized forms, measured with ONNX Runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)

DEFAULT_PASSES = "split5x5,factorize"


def _fail(exc: ConvOptError) -> typer.Exit:
    err.print(f"error: {one_line(exc)}", markup=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


@contextlib.contextmanager
def _warnings_as_lines(quiet: bool) -> Iterator[None]:
    """Python warnings (numpy's, onnx checker's captured output) as one escaped line each; none under -q."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        else:
            def show(message: Warning | str, *_a: Any, **_k: Any) -> None:
                err.print(f"warning: {one_line(message)}", markup=False, soft_wrap=True)

            warnings.showwarning = show  # type: ignore[assignment]
        yield


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """The CLI boundary: ConvOptError → its exit code; SIGINT, SIGTERM, SIGHUP → 130, 143, 129 with every
    temporary file removed and one line saying what is on disk; any other exception → exit 3 with one line
    (CONVOPT_DEBUG=1 re-raises it for the traceback). Every line is escaped (convopt.text). Typer reads the
    signature through functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with signals_handled() as journal, _warnings_as_lines(bool(kwargs.get("quiet", False))):
            try:
                fn(*args, **kwargs)
            except ConvOptError as exc:
                raise _fail(exc) from None
            except KeyboardInterrupt as exc:
                journal.signum = journal.signum or 2  # later signals must not break the clean-up
                code = exc.exit_code if isinstance(exc, Interrupted) else 130
                name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
                journal.cleanup()
                err.print(f"interrupted by {name}: {journal.on_disk()}", markup=False, soft_wrap=True)
                raise typer.Exit(code) from None
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except Exception as exc:  # the one place convopt catches everything: report a bug in one line
                if os.environ.get("CONVOPT_DEBUG") == "1":
                    raise
                first = safe((str(exc).strip().splitlines() or [""])[0])
                err.print(f"internal error: {type(exc).__name__}: {first} (a convopt bug, please report it; "
                          "CONVOPT_DEBUG=1 shows the traceback)", markup=False, soft_wrap=True)
                raise typer.Exit(3) from None

    return wrapper


def _shapes(values: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not values:
        return None
    from convopt.measure.data import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


def _rank_options(full_rank: bool, rank_fraction: float | None, energy: float | None) -> list[str]:
    """The uniform-rank options the user gave (a value of 0 counts as given: RankPolicy then refuses it)."""
    given = (("--full-rank", full_rank), ("--rank-fraction", rank_fraction is not None), ("--energy", energy is not None))
    return [name for name, is_set in given if is_set]


def _policy(full_rank: bool, rank_fraction: float | None, energy: float | None, align: int, side: str, seed: int):
    from convopt.passes.base import RankPolicy

    chosen = _rank_options(full_rank, rank_fraction, energy)
    if len(chosen) > 1:
        raise InputError(f"choose one rank option, not {' and '.join(chosen)}")
    if side not in ("both", "in", "out"):
        raise InputError("--bottleneck-side must be both, in or out")
    try:
        if full_rank:
            return RankPolicy(mode="full", align=align, bottleneck_side=side, seed=seed)  # type: ignore[arg-type]
        if rank_fraction is not None:
            return RankPolicy(mode="fraction", value=rank_fraction, align=align, bottleneck_side=side, seed=seed)  # type: ignore[arg-type]
        return RankPolicy(mode="energy", value=energy if energy is not None else 0.9, align=align,
                          bottleneck_side=side, seed=seed)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InputError(str(exc)) from exc


@app.command()
@guarded
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME:1x3x224x224 for a dynamic input")] = None,
    max_model_bytes: Annotated[int, typer.Option(help="largest model (with its external data) to read, in bytes")] = DEFAULT_MAX_MODEL_BYTES,
) -> None:
    """One row per Conv: geometry, MACs, params, and which passes apply (or why not)."""
    from convopt.inspect import inspect_model
    from convopt.io import load_model

    result = inspect_model(load_model(model, max_bytes=_positive("--max-model-bytes", max_model_bytes)),
                           _shapes(input_shape))
    if as_json:
        print(json_safe(json.dumps(result.to_dict(), indent=2, ensure_ascii=False)))
        return
    from convopt.passes import PASSES

    short = {"bottleneck": "bneck", "split5x5": "5x5", "factorize": "fact", "depthwise": "dw"}
    table = Table(title=escape(f"{cell(model.name)}: {len(result.rows)} conv layers"), title_justify="left")
    table.add_column("name", overflow="fold", min_width=14)
    table.add_column("in→out", justify="right")
    table.add_column("geometry")
    table.add_column("output", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("params", justify="right")
    for p in PASSES:
        table.add_column(short.get(p, p), justify="center")
    legend: dict[str, int] = {}

    def verdict(v: str) -> str:
        if v == "applies":
            return "[green]yes[/]"
        return f"no \\[{legend.setdefault(safe(v), len(legend) + 1)}]"

    def num(v: int | None) -> str:
        return "?" if v is None else f"{v:,}"

    for r in result.rows:
        geo = "?" if r.kernel is None else " ".join(
            [f"{r.kernel[0]}x{r.kernel[1]}"]
            + ([f"s{'x'.join(map(str, r.stride))}"] if r.stride and set(r.stride) != {1} else [])
            + ([f"d{'x'.join(map(str, r.dilation))}"] if r.dilation and set(r.dilation) != {1} else [])
            + ([f"g{r.groups}"] if r.groups and r.groups > 1 else []))
        io = "?" if r.channels_in is None else f"{r.channels_in}→{r.channels_out}"
        outsz = "?" if r.output_size is None else "x".join(map(str, r.output_size))
        table.add_row(escape(cell(r.name)), io, geo, outsz, num(r.macs), num(r.params), *[verdict(r.passes[p]) for p in PASSES])
    table.add_section()
    table.add_row("total", "", "", "", num(result.total_macs), num(result.total_params),
                  *[str(result.applicable[p]) for p in PASSES])
    out.print(table)
    out.print("  passes: " + ", ".join(f"{short.get(p, p)} = {p}" for p in PASSES), markup=False)
    for reason, k in legend.items():
        out.print(f"  [{k}] {reason}", markup=False)


@app.command()
@guarded
def optimize(
    model: Annotated[Optional[Path], typer.Argument(help="ONNX model file (none: the built-in example, as `convopt demo`)")] = None,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="output model (default MODEL.opt.onnx beside the input)")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="auto (per-layer, data-aware; the default with --data) or uniform (the default without)")] = None,
    passes: Annotated[Optional[str], typer.Option(help="comma-separated passes: bottleneck,split5x5,factorize,depthwise (uniform: run in this order; default split5x5,factorize. auto: the candidates; default all four)")] = None,
    full_rank: Annotated[bool, typer.Option("--full-rank", help="exact rewrites (verification: MACs usually grow)")] = False,
    rank_fraction: Annotated[Optional[float], typer.Option(help="rank = ceil(F × exact rank)")] = None,
    energy: Annotated[Optional[float], typer.Option(help="keep this fraction of squared singular values (default 0.9)")] = None,
    align: Annotated[int, typer.Option(help="round ranks up to a multiple of this (ORT NCHWc blocks)")] = 8,
    bottleneck_side: Annotated[str, typer.Option(help="bottleneck reduces: both, in or out")] = "both",
    report: Annotated[Optional[str], typer.Option(help="write the JSON report here")] = None,
    data: Annotated[Optional[Path], typer.Option(help=".npz keyed by input name, or a folder of images")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="auto: calibration data (default: half of --data, kept apart from the evaluation half)")] = None,
    latency_cache: Annotated[Optional[str], typer.Option(help="auto: JSON file caching per-layer latencies across runs")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="labels: CSV (file,label) or .npy")] = None,
    preprocess: Annotated[Optional[str], typer.Option(help="image preset: imagenet, caffe, unit, raw")] = None,
    limit: Annotated[Optional[int], typer.Option(help="use at most this many samples")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="NAME:1x3x224x224 for a dynamic input")] = None,
    provider: Annotated[str, typer.Option(help="ONNX Runtime execution provider")] = "CPUExecutionProvider",
    threads: Annotated[int, typer.Option(help="ORT intra-op threads (0: ORT default)")] = 0,
    warmup: Annotated[int, typer.Option(help="latency warm-up runs")] = 3,
    repeats: Annotated[int, typer.Option(help="latency timed runs (interleaved)")] = 20,
    latency_batch: Annotated[int, typer.Option(help="samples per timed run when the model's batch is dynamic (a fixed batch is used as is)")] = 1,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="budget: points of top-1 (labelled, else agreement)")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="budget: minimum top-1 agreement with the original, %")] = None,
    max_rel_error: Annotated[Optional[float], typer.Option(help="budget: maximum relative L2 error of the outputs")] = None,
    fail_under_speedup: Annotated[Optional[float], typer.Option(help="CI gate: exit 1 if the final speedup is below this")] = None,
    require_faster: Annotated[bool, typer.Option("--require-faster/--keep-slower", help="roll back a pass that does not measure faster")] = True,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="rewrite only: no accuracy or latency measurement")] = False,
    no_fold_bn: Annotated[bool, typer.Option("--no-fold-bn", help="do not fold BatchNormalization into convs")] = False,
    seed: Annotated[int, typer.Option(help="seed for random inputs and ALS")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="allow -o to be the input model, and any output to replace a file that is not convopt's own output of that kind")] = False,
    max_model_bytes: Annotated[int, typer.Option(help="largest model (with its external data) to read, in bytes")] = DEFAULT_MAX_MODEL_BYTES,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress or tables, errors only")] = False,
) -> None:
    """Rewrite MODEL's convs pass by pass, measuring accuracy and latency before and after each."""
    if model is None:
        from convopt.models.example import example_data_path, example_model_path

        model = example_model_path()
        data = data or example_data_path()
        if output is None:
            output = "example.opt.onnx"
    code = run_optimize(
        model=model, output=output, strategy=strategy, passes=passes, calib=calib, latency_cache=latency_cache,
        full_rank=full_rank, rank_fraction=rank_fraction,
        energy=energy, align=align, bottleneck_side=bottleneck_side, report=report, data=data,
        labels=labels, preprocess=preprocess, limit=limit, input_shape=input_shape, provider=provider,
        threads=threads, warmup=warmup, repeats=repeats, latency_batch=latency_batch, max_accuracy_drop=max_accuracy_drop,
        min_agreement=min_agreement, max_rel_error=max_rel_error, fail_under_speedup=fail_under_speedup,
        require_faster=require_faster, no_eval=no_eval, no_fold_bn=no_fold_bn, seed=seed,
        overwrite=overwrite, quiet=quiet, max_model_bytes=max_model_bytes,
    )
    raise typer.Exit(code)


def _positive(option: str, value: int) -> int:
    if value < 1:
        raise InputError(f"{option} must be at least 1, got {value}")
    return value


def _check_ranges(kw: dict[str, Any]) -> None:
    """Out-of-range numeric options: InputError (exit 2) before any work, never a crash later."""
    if not 0 <= kw["seed"] <= MAX_SEED:
        raise InputError(f"--seed must be between 0 and {MAX_SEED}, got {kw['seed']}")
    for name, low in (("threads", 0), ("warmup", 0), ("repeats", 1), ("latency_batch", 1), ("align", 1),
                      ("limit", 1), ("max_model_bytes", 1)):
        v = kw.get(name)
        if v is not None and v < low:
            raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {v}")
    v = kw["fail_under_speedup"]
    if v is not None and not (math.isfinite(v) and v > 0):
        raise InputError(f"--fail-under-speedup must be a positive number, got {v}")
    from convopt.measure.evaluator import Budget

    Budget(max_accuracy_drop=kw["max_accuracy_drop"], min_agreement=kw["min_agreement"],
           max_rel_error=kw["max_rel_error"])  # InputError for a negative, non-finite or >100 % limit


def _optimize_files(model_path: Path, kw: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(what optimize reads, what it writes) for the write guard (convopt.outputs)."""
    from convopt.outputs import InputFile, OutputTarget, model_data_target

    default = (model_path.name[:-5] if model_path.name.endswith(".onnx") else model_path.name) + ".opt.onnx"
    model_out = OutputTarget.of(kw["output"] or model_path.with_name(default), "model", "-o")
    targets = [model_out, model_data_target(model_out)]
    if kw["report"] is not None:
        targets.append(OutputTarget.of(kw["report"], "report", "--report"))
    if kw.get("latency_cache") is not None:
        targets.append(OutputTarget.of(kw["latency_cache"], "cache", "--latency-cache"))
    inputs = [InputFile(model_path, "the input model", replaceable=True)]
    for option in ("data", "labels", "calib"):
        if isinstance(kw.get(option), (str, Path)):
            inputs.append(InputFile(Path(kw[option]), f"the --{option} input"))
    return inputs, targets


def _sweep(targets: list[Any], quiet: bool) -> None:
    """Remove temporary files that killed runs left in the output folders, and say so in one line."""
    from convopt.writes import sweep_stale

    removed = [p for folder in dict.fromkeys(t.path.parent for t in targets) for p in sweep_stale(folder)]
    if removed and not quiet:
        err.print(f"removed {len(removed)} temporary file(s) left by a stopped convopt run: "
                  + ", ".join(safe(p) for p in removed), markup=False, soft_wrap=True)


def run_optimize(**kw: Any) -> int:
    """The body of `convopt optimize` (kept apart from typer so it can be called and tested directly).

    Every output is checked by the write guard before any work and again just before the commit; the
    model (and its .data file) and the report are staged, then renamed together (convopt.writes.commit)."""
    from convopt.auto import AUTO_PASSES
    from convopt.io import read_model
    from convopt.limits import cap_threads
    from convopt.outputs import InputFile, guard_outputs
    from convopt.passes import parse_passes
    from convopt.pipeline import optimize as run_pipeline

    quiet: bool = kw["quiet"]
    model_path = Path(kw["model"])
    _check_ranges(kw)
    inputs, targets = _optimize_files(model_path, kw)
    guard_outputs(inputs, targets, kw["overwrite"], kinds=False)  # the rest once the model is read
    output: Path = targets[0].path
    report_path: Path | None = None if kw["report"] is None else Path(kw["report"])
    threads, threads_warning = cap_threads(kw["threads"])
    if threads_warning and not quiet:
        err.print(f"warning: {threads_warning}", markup=False, soft_wrap=True)
    rank_opts = _rank_options(kw["full_rank"], kw["rank_fraction"], kw["energy"])
    strategy = kw.get("strategy") or ("auto" if kw["data"] is not None and not rank_opts and not kw["no_eval"] else "uniform")
    if strategy not in ("auto", "uniform"):
        raise InputError("--strategy must be auto or uniform")
    if strategy == "auto":
        if rank_opts:
            raise InputError(f"{rank_opts[0]} sets uniform ranks; use it with --strategy uniform (auto picks ranks per layer)")
        if kw["no_eval"] or kw["data"] is None:
            raise InputError("--strategy auto needs --data (it calibrates and measures on it); use --strategy uniform")
    elif kw.get("calib") is not None:
        raise InputError("--calib is for --strategy auto")
    passes = parse_passes(kw["passes"] or (",".join(AUTO_PASSES) if strategy == "auto" else DEFAULT_PASSES))
    policy = _policy(kw["full_rank"], kw["rank_fraction"], kw["energy"], kw["align"], kw["bottleneck_side"], kw["seed"])
    shapes = _shapes(kw["input_shape"])
    loaded = read_model(model_path, max_bytes=kw.get("max_model_bytes") or DEFAULT_MAX_MODEL_BYTES)
    inputs += [InputFile(f, "an external-data file of the input model") for f in loaded.data_files]
    guard_outputs(inputs, targets, kw["overwrite"])
    _sweep(targets, quiet)
    model = loaded.model
    cache = None
    if strategy == "auto" and kw.get("latency_cache") is not None:
        from convopt.auto import LayerLatencyCache

        cache = LayerLatencyCache(Path(kw["latency_cache"]), replace_invalid=kw["overwrite"])

    evaluator = budget = None
    ort_settings: dict[str, Any] = {}
    if not kw["no_eval"]:
        from convopt.measure.data import load_eval_data
        from convopt.measure.evaluator import Budget, Evaluator
        from convopt.measure.ort import OrtSettings

        data = load_eval_data(model, kw["data"], preprocess=kw["preprocess"], labels=kw["labels"],
                              input_shapes=shapes, limit=kw["limit"], seed=kw["seed"])
        if data.warning and not quiet:
            err.print(f"warning: {safe(data.warning)}", markup=False, soft_wrap=True)
        calib_data = None
        if strategy == "auto":
            from convopt.auto import split_eval_data

            if kw.get("calib") is not None:
                calib_data = load_eval_data(model, kw["calib"], preprocess=kw["preprocess"], input_shapes=shapes,
                                            limit=kw["limit"], seed=kw["seed"])
            else:
                calib_data, data = split_eval_data(data, 0.5, seed=kw["seed"])
        settings = OrtSettings(provider=kw["provider"], threads=threads, warmup=kw["warmup"], repeats=kw["repeats"],
                               latency_batch=kw.get("latency_batch", 1))
        ort_settings = {"ort": settings.to_dict(), "data": data.source, "samples": data.n, "strategy": strategy}
        if calib_data is not None:
            ort_settings.update(calib=calib_data.source, calib_samples=calib_data.n)
        evaluator = Evaluator(model, data, settings, measure_latency=True, progress=not quiet)
        budget = Budget(max_accuracy_drop=kw["max_accuracy_drop"], min_agreement=kw["min_agreement"],
                        max_rel_error=kw["max_rel_error"])
        if strategy == "auto" and budget.is_empty:
            budget = None  # auto's default: 1 point of top-1 (labelled, else agreement)
    elif kw["fail_under_speedup"] is not None:
        raise InputError("--fail-under-speedup needs measurement; drop --no-eval")

    def say(msg: str) -> None:
        if not quiet:
            err.print(safe(msg), markup=False, soft_wrap=True)

    budget_settings = {"max_accuracy_drop": kw["max_accuracy_drop"], "min_agreement": kw["min_agreement"],
                       "max_rel_error": kw["max_rel_error"], "fail_under_speedup": kw["fail_under_speedup"]}
    if strategy == "auto":
        from convopt.auto import auto_optimize

        assert evaluator is not None and calib_data is not None
        result = auto_optimize(
            model, passes=passes, calib=calib_data, evaluator=evaluator, budget=budget, settings=settings,
            align=kw["align"], seed=kw["seed"], input_shapes=shapes, latency_cache=cache,
            model_name=str(model_path), output_name=str(output), on_event=say,
        )
        from dataclasses import replace

        result.report = replace(result.report, settings={**result.report.settings, **ort_settings,
                                                         "seed": kw["seed"], "budget": budget_settings})
    else:
        result = run_pipeline(
            model, passes, policy, fold_bn=not kw["no_fold_bn"], input_shapes=shapes, evaluator=evaluator,
            budget=budget, require_faster=bool(kw["require_faster"]) and evaluator is not None,
            model_name=str(model_path), output_name=str(output),
            settings={**ort_settings, "seed": kw["seed"], "budget": budget_settings},
            on_event=say,
        )
    rep = result.report
    gate_reason = _gate(rep.final, kw["fail_under_speedup"])
    if gate_reason is not None or kw["fail_under_speedup"] is not None:
        from dataclasses import replace

        rep = replace(rep, gate={"fail_under_speedup": kw["fail_under_speedup"], "passed": gate_reason is None,
                                 "reason": gate_reason})
    guard_outputs(inputs, targets, kw["overwrite"])  # again: files may have changed during the run
    _save_outputs(result.model, output, None if report_path is None else (report_path, rep.to_json() + "\n"))
    if not quiet:
        from convopt.render import render_table

        render_table(rep.to_dict(), out)
        out.print(f"wrote {safe(output)}" + (f" and {safe(report_path)}" if report_path else ""), markup=False)
    if gate_reason is not None:
        err.print(f"gate failed: {safe(gate_reason)}", markup=False, soft_wrap=True)
        return GateError.exit_code
    return 0


def _save_outputs(model: Any, output: Path, report: tuple[Path, str] | None) -> None:
    """Stage the model (and its .data file) and the report, then rename them together: a report never
    describes a model that is not there, and no model stands without its report (see convopt.writes)."""
    from convopt.io import stage_model
    from convopt.writes import commit, discard, stage

    staged = stage_model(model, output)
    try:
        if report is not None:
            staged.append(stage(report[0], [report[1].encode("utf-8")]))
        commit(staged)
    except BaseException:
        discard(staged)
        raise


def _gate(final: dict[str, Any] | None, fail_under_speedup: float | None) -> str | None:
    from convopt.pipeline import measured_speedup

    if fail_under_speedup is None:
        return None
    sp = measured_speedup(final)
    if sp is None:
        return "no latency was measured"
    if sp < fail_under_speedup:
        return f"speedup {sp:.3f}x is below --fail-under-speedup {fail_under_speedup}"
    return None


@app.command()
@guarded
def demo(
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    output: Annotated[str, typer.Option("-o", "--output", help="where to write the optimized example")] = "example.opt.onnx",
    report: Annotated[Optional[str], typer.Option(help="write the JSON report here")] = None,
) -> None:
    """Run the whole pipeline on the built-in trained example with its bundled labelled data (auto mode:
    one half of the bundled held-out set calibrates, the other is the reported evaluation)."""
    optimize(model=None, output=output, report=report, quiet=quiet)


@app.command("report")
@guarded
def report_cmd(
    report: Annotated[Path, typer.Argument(help="a JSON report written by convopt optimize --report")],
    fmt: Annotated[str, typer.Option("--format", help="table, md or html")] = "table",
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="write here instead of stdout")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="allow -o to replace a file that is not a report rendered by convopt")] = False,
) -> None:
    """Render a saved report as a terminal table, Markdown, or a self-contained HTML page."""
    from convopt import render
    from convopt.outputs import InputFile, OutputTarget, guard_outputs
    from convopt.report_check import read_report

    kinds = {"table": "text", "md": "md", "html": "html"}
    if fmt not in kinds:
        raise InputError("--format must be table, md or html")
    target = None if output is None else OutputTarget.of(output, kinds[fmt], "-o")  # type: ignore[arg-type]
    if target is not None:
        guard_outputs([InputFile(report, "the report being rendered")], [target], overwrite)
        _sweep([target], quiet=False)
    data = read_report(report)
    if target is None and fmt == "table":
        render.render_table(data, out)
        return
    text = {"table": render.render_text, "md": render.render_markdown, "html": render.render_html}[fmt](data)
    if target is None:
        sys.stdout.write(text)
        return
    from convopt.writes import atomic_write_bytes

    atomic_write_bytes(target.path, text.encode("utf-8"))


from convopt.models.cli import app as models_app  # noqa: E402  (after the commands it sits beside)

app.add_typer(models_app, name="models", help="Seed networks (Inception, ResNet, VGG, MobileNet) and the trained example.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
