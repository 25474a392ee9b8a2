"""Markdown of bench/method_e2e.py's results (bench/results/method_e2e.json): per model the held-out figure of
every method with its 95 % interval, each whitened method paired against refit, and a verdict line."""
from __future__ import annotations

METHODS = ("svd", "refit", "white", "white+bias", "white+bias+refit")
WHITENED = ("white", "white+bias")  # the whitened fits the claim is about (refit added: auto today)


def _iv(v: float | None, iv: list | None, spec: str) -> str:
    if v is None:
        return "–"
    if not iv or iv[0] is None or iv[1] is None:
        return format(v, spec)
    return f"{format(v, spec)} [{format(iv[0], spec)}, {format(iv[1], spec)}]"


def _figure(rec: dict, m: dict) -> tuple[float | None, str]:
    """The judged figure of one method (lower is better) and its cell."""
    if rec["figure"] == "top1":
        return m["top1_drop"], _iv(m["top1_drop"], m["top1_drop_interval"], ".1f")
    return m["rel_l2_error"], _iv(m["rel_l2_error"], m["rel_l2_error_interval"], ".3f")


def _level(lv: dict) -> str:
    return f"| {lv['form']} | {lv['target']:.2f} | {lv['fraction']:.2f} | {lv['layers']} | {lv['macs_layers']:.3f} " \
           f"| {lv['macs_model']:.3f} |"


def figure_rows(rec: dict, key: str) -> list[str]:
    """One row per level: ``key`` ("figure", "rel", "metric") of every method with its interval."""
    out = []
    for lv in rec["levels"]:
        cells = []
        for meth in METHODS:
            m = lv["methods"][meth]
            if key == "figure":
                cells.append(_figure(rec, m)[1])
            elif key == "rel":
                cells.append(_iv(m["rel_l2_error"], m["rel_l2_error_interval"], ".3f"))
            else:
                cells.append(_iv(m["metric_drop"], m["metric_drop_interval"], ".3f"))
        out.append(_level(lv) + " " + " | ".join(cells) + " |")
    return out


def paired_rows(rec: dict) -> list[str]:
    """One row per level: each method against refit on the same samples (error ratio; top-1 or metric gain)."""
    out = []
    for lv in rec["levels"]:
        cells = []
        for meth in ("svd", "white", "white+bias", "white+bias+refit"):
            p = lv["vs_refit"][meth]
            cell = _iv(p.get("err_ratio"), p.get("err_ratio_interval"), ".2f")
            if "top1_gain" in p:
                cell += f"; top-1 {_iv(p['top1_gain'], p['top1_gain_interval'], '+.1f')}"
            if "metric_gain" in p:
                cell += f"; metric {_iv(p['metric_gain'], p['metric_gain_interval'], '+.3f')}"
            cells.append(cell)
        out.append(_level(lv) + " " + " | ".join(cells) + " |")
    return out


def _compare(rec: dict, lv: dict, meth: str) -> tuple[int, float | None, float | None]:
    """(-1 below refit, 0 equal, +1 above refit: on the judged figure, lower is better), the two figures."""
    a, _ = _figure(rec, lv["methods"][meth])
    b, _ = _figure(rec, lv["methods"]["refit"])
    if a is None or b is None:
        return 0, a, b
    return (a > b) - (a < b), a, b


def _ratios(rec: dict, meth: str) -> str:
    """The range of ``meth``'s output error ratio to refit over the levels, and how many paired intervals lie
    wholly below or above 1."""
    ps = [lv["vs_refit"][meth] for lv in rec["levels"] if "err_ratio" in lv["vs_refit"][meth]]
    if not ps:
        return "no output error ratio"
    r = [p["err_ratio"] for p in ps]
    lo = sum(1 for p in ps if p["err_ratio_interval"][1] < 1)
    hi = sum(1 for p in ps if p["err_ratio_interval"][0] > 1)
    return (f"output error {min(r):.2f}–{max(r):.2f}× refit's (paired 95 % interval below 1 at {lo}, above 1 at "
            f"{hi} of {len(ps)} levels)")


def verdict(name: str, rec: dict) -> list[str]:
    """Per whitened method: on the judged figure, at how many levels it is strictly below refit, equal, above
    (those listed with both figures), whether it is strictly better at every level, and its output error ratio."""
    what = "top-1 drop" if rec["figure"] == "top1" else "relative output error"
    n = len(rec["levels"])
    out = []
    for meth in WHITENED + ("white+bias+refit",):
        cmp = [(lv, *_compare(rec, lv, meth)) for lv in rec["levels"]]
        worse = [f"{lv['form']} {lv['target']:.2f}: {a:.3g} vs {b:.3g}" for lv, c, a, b in cmp if c > 0]
        better, ties = sum(1 for _, c, _, _ in cmp if c < 0), sum(1 for _, c, _, _ in cmp if c == 0)
        yes = better == n
        out.append(f"- **{name}**, {meth} vs refit, {what}: strictly better at every level: **{'yes' if yes else 'no'}**"
                   f" (better at {better}, equal at {ties}, worse at {len(worse)} of {n}"
                   + (": " + "; ".join(worse) if worse else "") + f"); {_ratios(rec, meth)}.")
    return out


def model_section(name: str, rec: dict) -> list[str]:
    orig = rec["original"]
    head = [f"## {name}", "",
            f"fit: {rec['fit']} ({rec['fit_samples']} samples); held out: {rec['test']} ({rec['test_samples']} "
            f"samples); original conv MACs {rec['macs_model'] / 1e6:,.0f} M per sample; {rec['seconds']:.0f} s.",
            f"Command: `{rec['command'].strip()}`.", ""]
    if orig["labelled_top1"] is not None:
        head[2] += f" Original labelled top-1 on the held-out samples: {orig['labelled_top1']:.1f} %."
    if orig["metric"]:
        head[2] += f" Original {orig['metric']} on the held-out samples: {orig['metric_score']:.3f}."
    cols = "| form | target | fraction | layers | MACs (layers) | MACs (model) | " + " | ".join(METHODS) + " |"
    sep = "|" + "---|" * (6 + len(METHODS))
    fig = "Top-1 drop in points" if rec["figure"] == "top1" else "Relative output error"
    out = head + [f"{fig} on the held-out samples [95 % interval]:", "", cols, sep] + figure_rows(rec, "figure")
    if rec["figure"] == "top1":
        out += ["", "Relative output error on the held-out samples [95 % interval]:", "", cols, sep]
        out += figure_rows(rec, "rel")
    if orig["metric"]:
        out += ["", f"{orig['metric']} drop (original − rewritten, mean per sample) [95 % interval]:", "", cols, sep]
        out += figure_rows(rec, "metric")
    pcols = "| form | target | fraction | layers | MACs (layers) | MACs (model) | svd | white | white+bias | " \
            "white+bias+refit |"
    out += ["", "Against refit, paired on the same samples: output error ratio (method / refit, < 1 is better)"
            + ("; top-1 gain in points (> 0 is better)" if rec["figure"] == "top1" else "")
            + ("; metric gain (> 0 is better)" if orig["metric"] else "") + " [95 % intervals]:", "", pcols,
            "|" + "---|" * 10] + paired_rows(rec)
    return out + [""] + verdict(name, rec) + [""]


def render(results: dict, intro: str) -> str:
    meta = results["meta"]
    commands = list(dict.fromkeys(rec["command"] for rec in results["models"].values()))  # in run order
    out = ["# End-to-end method comparison at matched MACs", "", "```bash", *commands, "```", "",
           intro, "",
           f"Last run {meta['date']} ({meta['machine']}, onnxruntime {meta['onnxruntime']}, numpy {meta['numpy']}, "
           f"{meta['threads']} ORT thread; accuracy only, nothing timed). Each model's own command and run time are "
           "in its section. MACs (layers): the rewritten form's layers (all dense k×k convs, or all dense 1×1 "
           "convs) after / before; MACs (model): all convs of the model. Intervals: 95 %, two-sided (top-1: "
           "Tango's paired score interval; relative error: delta method; metric: Student's t).", "",
           "## Verdicts", ""]
    for name, rec in results["models"].items():
        out += verdict(name, rec)
    out.append("")
    for name, rec in results["models"].items():
        out += model_section(name, rec)
    return "\n".join(out)
