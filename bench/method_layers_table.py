"""Markdown tables of bench/method_layers.py's results (bench/results/method_layers.json)."""
from __future__ import annotations

import numpy as np

METHODS = ("svd", "svd+refit", "white", "white+bias", "white+refit", "datafit")


def _mean(vals: list[float]) -> str:
    """Geometric mean (one hard layer, e.g. a 1-channel first conv, does not swamp the others)."""
    return f"{np.exp(np.mean(np.log(np.maximum(vals, 1e-12)))):.3f}" if vals else "–"


WINS = ("white+bias", "white+refit", "datafit")  # each counted against svd+refit, the method of today


def _rows(rec: dict, form: str, target: float, key: str) -> list[dict]:
    return [r for L in rec["layers"] for r in L["forms"].get(form, []) if r["target"] == target
            and key in r["methods"]["svd"]]


def summary_rows(rec: dict, key: str) -> list[str]:
    """Markdown rows (form, target): the geometric mean over layers of ``key`` per method, and win counts."""
    out = []
    for form in ("factorize", "bottleneck", "lowrank"):
        for t in sorted({r["target"] for L in rec["layers"] for r in L["forms"].get(form, [])}, reverse=True):
            rows = _rows(rec, form, t, key)
            if rows:
                means = [_mean([r["methods"][m][key] for r in rows]) for m in METHODS]
                wins = [sum(r["methods"][m][key] < r["methods"]["svd+refit"][key] for r in rows) for m in WINS]
                out.append(f"| {form} | {t:.2f} ({np.mean([r['macs'] for r in rows]):.2f}) | {len(rows)} | "
                           + " | ".join(means) + " | " + " | ".join(f"{w}/{len(rows)}" for w in wins) + " |")
    return out


def exceptions(results: dict, key: str, method: str) -> list[str]:
    """Every (model, layer, form, ranks) where ``method`` is not below svd+refit on ``key``."""
    return [f"{name} {L['name']} {form} {r['ranks']} ({r['methods'][method][key]:.3f} vs "
            f"{r['methods']['svd+refit'][key]:.3f})"
            for name, rec in results["models"].items() for L in rec["layers"] for form, rows in L["forms"].items()
            for r in rows if key in r["methods"][method]
            and r["methods"][method][key] >= r["methods"]["svd+refit"][key]]


def detail_rows(rec: dict) -> list[str]:
    out = []
    for L in rec["layers"]:
        for form, rows in L["forms"].items():
            for r in rows:
                errs = " | ".join(f"{r['methods'][m]['err']:.3f}" + (f" / {r['methods'][m]['act_err']:.3f}"
                                  if "act_err" in r["methods"][m] else "") for m in METHODS)
                out.append(f"| {L['name']} | {'×'.join(map(str, L['W']))} | {L['act'] or '–'} | {form} {r['ranks']} "
                           f"| {r['macs']:.2f} | {errs} |")
    return out


def render(results: dict, command: str, intro: str, ridges: str) -> str:
    """The Markdown page: ``intro`` (what was measured), per model the summary tables, the cases where a
    whitened method is not below svd+refit, and every layer."""
    cols = 5 + len(METHODS) + len(WINS)
    head = ("| form | MACs target (actual) | layers | " + " | ".join(METHODS) + " | "
            + " | ".join(f"{m} < svd+refit" for m in WINS) + " |\n|" + "---|" * (cols - 2) + "\n")
    meta = results["meta"]
    lines = ["# Layer-level method comparison at matched MACs", "", "```bash", command, "```", "", intro, "",
             f"Run {meta['date']} ({meta['machine']}, onnxruntime {meta['onnxruntime']}, numpy {meta['numpy']}), "
             f"{meta['fit_rows']} fit / {meta['test_rows']} held-out patches per layer (fewer where the maps are "
             f"small: see `fit_rows` in the JSON); {ridges}. "
             "Summary errors: geometric mean over the layers of the held-out ‖ŷ − y‖/‖y‖; the last columns count "
             "the layers where a method's held-out error is below svd+refit's.", ""]
    for name, rec in results["models"].items():
        lines += [f"## {name}", "", f"fit: {rec['fit']}; held out: {rec['test']}; {rec['seconds']} s.", "",
                  "Output error (before the activation):", "", head + "\n".join(summary_rows(rec, "err")), ""]
        act_rows = summary_rows(rec, "act_err")
        if act_rows:
            lines += ["After the activation the layer feeds (ReLU / SiLU):", "", head + "\n".join(act_rows), ""]
    lines += ["## Where the whitened fit is not below today's refit (held-out)", ""]
    for key, what in (("err", "output error"), ("act_err", "after the activation")):
        for m in ("white+bias", "white+refit", "datafit"):
            ex = exceptions(results, key, m)
            lines.append(f"- {m}, {what}: {len(ex)} case(s)" + (": " + "; ".join(ex) if len(ex) <= 12 else
                                                                 " (see the table below)"))
    lines += ["", "## Every layer (held-out output error / after the activation)", "",
              "| layer | W | act | form [ranks] | MACs | " + " | ".join(METHODS) + " |", "|" + "---|" * (5 + len(METHODS))]
    for rec in results["models"].values():
        lines += detail_rows(rec)
    return "\n".join(lines) + "\n"
