"""`convopt inspect` on the terminal: a header (inputs, opset, dynamic dimensions, totals), then one row per
Conv fitted to the console: with a column per pass ("yes" or "no [k]") when it fits, else one column listing
the passes that apply; the reasons a pass does not apply are numbered under the table."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.text import Text

from convopt.inspect import ConvRow, InspectResult
from convopt.render.figures import DASH, UNKNOWN, Cell, Column, Grid, fmt_count
from convopt.render.terminal import column_widths, print_grid, prose
from convopt.text import cell, safe

SHORT = {"bottleneck": "bn", "depthwise": "dw", "factorize": "fa", "lowrank": "lr", "split5x5": "5x5"}


def short(name: str) -> str:
    return SHORT.get(name, name)


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.1f}"


def header_lines(result: InspectResult, model: Path) -> list[str]:
    """The model, its inputs, what is dynamic (and the --input-shape that fixes it), and the totals."""
    info = result.model
    lines = [f"{cell(model.name)}: {len(result.rows)} conv layers"
             + ("" if info is None else f", opset {info.opset}, IR {info.ir_version}"
                + (f", from {safe(info.producer)}" if info.producer else ""))]
    for i in (info.inputs if info else ()):
        declared = "no declared shape" if i.declared is None else "[" + ", ".join(safe(d) for d in i.declared) + "]"
        used = "" if i.shape is None or i.declared == i.shape else f", shapes computed at {'x'.join(map(str, i.shape))}"
        lines.append(f"input {safe(i.name)}: {i.dtype} {declared}{used}")
    unknown = result.unknown_macs
    for d in (info.dynamic if info else ()):
        what = "no declared shape" if d.axis is None else f"axis {d.axis}" + (f" ({safe(d.symbol)})" if d.symbol else "")
        if d.is_batch:
            lines.append(f"dynamic: {safe(d.input)} {what} is the batch: counted as 1")
        else:
            lines.append(f"dynamic: {safe(d.input)} {what}: "
                         + (f"MACs unknown for {len(unknown)} layers; " if unknown else "")
                         + f"give it with {safe(d.suggestion)}")
    return lines + _total_lines(result)


def _total_lines(result: InspectResult) -> list[str]:
    n_rw = sum(r.rewritable for r in result.rows)
    share = result.rewritable_share
    macs = ("conv MACs: unknown (a spatial size is dynamic)" if result.total_macs is None
            else f"conv MACs: {fmt_count(result.total_macs)} per sample")
    lines = [f"{macs}; params {fmt_count(result.total_params)}; some pass can rewrite {n_rw} of {len(result.rows)} "
             f"layers" + ("" if share is None else f", {100 * share:.1f} % of the conv MACs")]
    lat = result.latency
    if lat:
        threads = "ORT's default threads" if not lat["threads"] else f"{lat['threads']} thread(s)"
        lines.append(f"time (ORT profiler, {lat['runs']} runs at {threads}): convs {lat['conv_ms']:.3g} of "
                     f"{lat['total_ms']:.3g} ms of kernel time per run ({100 * lat['conv_ms'] / lat['total_ms']:.0f} %)"
                     if lat["total_ms"] else "time: nothing measured")
    return lines


def _geometry(r: ConvRow) -> tuple[str, str, str]:
    if r.kernel is None:
        return DASH, DASH, DASH
    geo = " ".join([f"{r.kernel[0]}x{r.kernel[1]}"]
                   + ([f"s{'x'.join(map(str, r.stride))}"] if r.stride and set(r.stride) != {1} else [])
                   + ([f"d{'x'.join(map(str, r.dilation))}"] if r.dilation and set(r.dilation) != {1} else [])
                   + ([f"g{r.groups}"] if r.groups and r.groups > 1 else []))
    out = UNKNOWN if r.output_size is None else "x".join(map(str, r.output_size))
    return f"{r.channels_in}→{r.channels_out}", geo, out


def _base(r: ConvRow, latency: bool) -> list[Cell]:
    io, geo, out = _geometry(r)
    cells = [Cell(cell(r.name)), Cell(io), Cell(geo, f"→{out}" if out != DASH else ""),
             Cell(fmt_count(r.macs, UNKNOWN if r.params is not None else DASH)), Cell(_pct(r.macs_share))]
    if latency:
        cells.append(Cell(_pct(r.time_share)))
    return cells + [Cell(fmt_count(r.params))]


def _base_columns(latency: bool) -> list[Column]:
    cols = [Column("layer", False), Column("in→out"), Column("kernel→output"), Column("MACs"),
            Column("MACs %", help="share of the model's conv MACs")]
    if latency:
        cols.append(Column("time %", help="share of the kernel time per run (ORT profiler)"))
    return cols + [Column("params")]


def _total(result: InspectResult, latency: bool) -> list[Cell]:
    cells = [Cell("total"), Cell(""), Cell(""), Cell(fmt_count(result.total_macs, UNKNOWN)),
             Cell("100.0" if result.total_macs else DASH)]
    if latency:
        lat = result.latency or {}
        cells.append(Cell(_pct(lat["conv_ms"] / lat["total_ms"]) if lat.get("total_ms") else DASH))
    return cells + [Cell(fmt_count(result.total_params))]


def _number(legend: dict[str, int], reason: str) -> int:
    return legend.setdefault(safe(reason), len(legend) + 1)


def wide_grid(result: InspectResult, rows: list[ConvRow], legend: dict[str, int]) -> Grid:
    """A column per pass: "yes", or "no [k]" with reason k numbered in ``legend``."""
    latency = result.latency is not None
    names = list(result.applicable)

    def no(reason: str) -> str:
        return f"no [{_number(legend, reason)}]"

    wide_rows = [(*_base(r, latency), *(Cell("yes" if r.passes[p] == "applies" else no(r.passes[p])) for p in names))
                 for r in rows]
    wide_rows.append((*_total(result, latency), *(Cell(str(result.applicable[p])) for p in names)))
    return Grid("", tuple(_base_columns(latency) + [Column(short(p)) for p in names]), tuple(wide_rows),
                kinds=("",) * len(rows) + ("report",))


def compact_grid(result: InspectResult, rows: list[ConvRow], legend: dict[str, int]) -> Grid:
    """One 'passes' column: the short names of the passes that apply, or "none [k]" with the reasons."""
    latency = result.latency is not None
    names = list(result.applicable)

    def which(r: ConvRow) -> str:
        yes = [short(p) for p in names if r.passes[p] == "applies"]
        if yes:
            return " ".join(yes)
        reasons = sorted({safe(v) for v in r.passes.values()})
        return "none " + " ".join(f"[{_number(legend, x)}]" for x in reasons)

    compact_rows = [(*_base(r, latency), Cell(which(r))) for r in rows]
    compact_rows.append((*_total(result, latency), Cell(f"{sum(r.rewritable for r in rows)} of {len(rows)}")))
    return Grid("", tuple(_base_columns(latency) + [Column("passes")]), tuple(compact_rows),
                kinds=("",) * len(rows) + ("report",))


def sort_rows(rows: tuple[ConvRow, ...], by: str) -> list[ConvRow]:
    """graph order, or by MACs / measured time, largest first (unknown last)."""
    if by == "macs":
        return sorted(rows, key=lambda r: -1 if r.macs is None else r.macs, reverse=True)
    if by == "time":
        return sorted(rows, key=lambda r: -1.0 if r.time_ms is None else r.time_ms, reverse=True)
    return list(rows)


def render_inspect(result: InspectResult, model: Path, console: Console, sort: str = "graph") -> None:
    """The header, the fitted table, the pass names and the numbered reasons."""
    for line in header_lines(result, model):
        prose(console, line)
    rows = sort_rows(result.rows, sort)
    legend: dict[str, int] = {}
    grid = wide_grid(result, rows, legend)
    if column_widths(grid, console.width, False) is None:
        legend = {}
        grid = compact_grid(result, rows, legend)
    print_grid(console, grid)
    prose(console, "  passes: " + ", ".join(f"{short(p)} = {p}" for p in result.applicable))
    for reason, k in legend.items():
        console.print(Text(f"  [{k}] {reason}"), soft_wrap=not console.is_terminal)
