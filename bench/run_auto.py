"""Benchmark: auto mode vs uniform factorize, per model, on held-out data.

For each model: auto_optimize (calibration split) and three uniform baselines (spatial SVD at one rank fraction
for every dense conv, i.e. `--passes factorize --rank-fraction F`):
  * uniform@MACs        — data-free, F chosen so the MACs ratio matches auto's;
  * uniform@MACs+refit  — the same ranks with sequential least-squares refits on the calibration split;
  * uniform@budget      — data-free, the smallest F whose model meets the budget on the calibration split.
Every model is then measured on the held-out split (never used for calibration): accuracy change, and latency
ratio (candidate / original median) with all variants timed interleaved in one run, at 1 and at 2 threads.

    python bench/run_auto.py [squeezenet mnist example vgg-digits candy vgg16 inception-3a resnet50] [--quick]

Writes bench/results/auto_<model>.json and bench/results/auto.md (the table of every model run so far).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import onnx

from convopt.auto import auto_optimize, split_eval_data
from convopt.auto.refit import collect_targets, refit_sequential
from convopt.graph import ConvSpec, read_convs
from convopt.measure.data import EvalData, load_eval_data, random_eval_data, resolve_input_shapes
from convopt.core.budget import Budget
from convopt.measure.evaluator import Evaluator
from convopt.measure.latency import measure_latency
from convopt.measure.ort import OrtSettings, batch_feeds, latency_batch, make_session
from convopt.passes.base import RankPolicy
from convopt.core.driver import conv_shapes
from convopt.uniform import optimize_uniform as optimize

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED = ROOT.parent.parent / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"
IMAGENET = DATA / "imagenet-sample"
FRACTIONS = (0.125, 0.1875, 0.25, 0.3125, 0.375, 0.4375, 0.5, 0.5625, 0.625, 0.75, 0.875)


def _split(d: EvalData, n_cal: int) -> tuple[EvalData, EvalData]:
    """First n_cal samples (by index parity interleave) for calibration, the rest held out."""
    return split_eval_data(d, calib_fraction=n_cal / d.n, seed=0)


def setup_squeezenet(quick: bool) -> dict[str, Any]:
    m = onnx.load(MODELS / "squeezenet1.1.onnx")
    n = 100 if quick else 1000  # all of imagenet-sample: 500 to calibrate, 500 held out (1 point = 5 images)
    d = load_eval_data(m, IMAGENET, preprocess="caffe", labels=IMAGENET / "labels.csv", limit=n)
    cal, ev = _split(d, n // 2)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_accuracy_drop=1.0), metric="labelled top-1")


def setup_mnist(quick: bool) -> dict[str, Any]:
    m = onnx.load(MODELS / "mnist-cntk.onnx")
    d = load_eval_data(m, DATA / "digits28.npz")
    cal, ev = _split(d, 500)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_accuracy_drop=1.0), metric="labelled top-1")


def setup_example(quick: bool) -> dict[str, Any]:
    from convopt.models.example import load_example, load_example_data

    m = load_example()
    x, y = load_example_data()
    name = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}][0]
    d = EvalData({name: x}, y, "bundled digits held-out set")
    cal, ev = _split(d, d.n // 2)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_accuracy_drop=1.0), metric="labelled top-1")


def setup_vgg_digits(quick: bool) -> dict[str, Any]:
    from vgg_digits import load  # bench/vgg_digits.py: the trained VGG-style stack (scripts/train_vgg_digits.py)

    m, x, y = load()
    d = EvalData({"input": x}, y, "vgg-digits held-out set (600, never trained on)")
    cal, ev = _split(d, d.n // 2)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_accuracy_drop=1.0), metric="labelled top-1",
                note="trained VGG-style stack: six dense 3x3 convs (48/96/192) on 32x32 digits")


def setup_candy(quick: bool) -> dict[str, Any]:
    m = onnx.load(MODELS / "candy-style.onnx")
    d = load_eval_data(m, IMAGENET, preprocess="raw", limit=6)
    cal, ev = _split(d, 3)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_rel_error=0.05), metric="output rel. L2 error",
                settings=dict(batch_size=1), auto=dict(max_candidates_per_layer=2))


def setup_vgg16(quick: bool) -> dict[str, Any]:
    from convopt.models.registry import build

    m = build("vgg16", width=0.5, input_size=128, seed=0)
    shapes = resolve_input_shapes(m)
    d = random_eval_data(m, shapes, seed=0, samples=48)
    cal, ev = _split(d, 24)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_rel_error=0.1),
                metric="output rel. L2 error (random weights)", note="vgg16 width 0.5, 128x128, random weights")


def setup_resnet50(quick: bool) -> dict[str, Any]:
    from convopt.models.registry import build

    m = build("resnet50", seed=0)  # full width, 224x224: 98 MiB of weights (the "100 MB model" of the run-time aim)
    shapes = resolve_input_shapes(m)
    d = random_eval_data(m, shapes, seed=0, samples=16 if quick else 32)
    cal, ev = _split(d, d.n // 2)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_rel_error=0.1),
                metric="output rel. L2 error (random weights)", note="resnet50 224x224, random weights")


def setup_inception(quick: bool) -> dict[str, Any]:
    from convopt.models.registry import build

    m = build("inception-3a", seed=0)
    shapes = resolve_input_shapes(m)
    d = random_eval_data(m, shapes, seed=0, samples=48)
    cal, ev = _split(d, 24)
    return dict(model=m, calib=cal, eval=ev, budget=Budget(max_rel_error=0.1),
                metric="output rel. L2 error (random weights)")


SETUPS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "squeezenet": setup_squeezenet, "mnist": setup_mnist, "example": setup_example, "candy": setup_candy,
    "vgg16": setup_vgg16, "inception-3a": setup_inception, "resnet50": setup_resnet50,
    "vgg-digits": setup_vgg_digits,
}


def conv_macs(model: onnx.ModelProto) -> int:
    shapes = conv_shapes(model, None)
    return sum(c.macs or 0 for c in read_convs(model, shapes) if isinstance(c, ConvSpec))


def uniform(model: onnx.ModelProto, f: float) -> onnx.ModelProto:
    return optimize(model, ["factorize"], RankPolicy(mode="fraction", value=f, align=8)).model


def acc_change(ev: Evaluator, m: onnx.ModelProto) -> dict[str, Any]:
    meas = ev.measure(m, "bench")
    a = meas.accuracy
    return {"top1_drop": a.get("top1_drop"), "labelled_top1": a.get("labelled_top1"),
            "top1_agreement": a.get("top1_agreement"), "rel_l2_error": a.get("rel_l2_error")}


def run_one(name: str, quick: bool, auto_1thr: bool = False) -> dict[str, Any]:
    cfg = SETUPS[name](quick)
    model, cal, ev_data, budget = cfg["model"], cfg["calib"], cfg["eval"], cfg["budget"]
    settings = OrtSettings(threads=2, **cfg.get("settings", {}))  # auto times its layers at 2 threads
    print(f"== {name}: calibration {cal.n}, held-out {ev_data.n}, budget {budget}", flush=True)
    evaluator = Evaluator(model, ev_data, settings)  # latency measured at 2 threads inside auto
    macs0 = conv_macs(model)
    variants: dict[str, dict[str, Any]] = {}

    t0 = time.perf_counter()
    res = auto_optimize(model, calib=cal, evaluator=evaluator, budget=budget, settings=settings,
                        latency_cache=RESULTS / "latency_cache.json", on_event=lambda s: print(s, flush=True),
                        **cfg.get("auto", {}))
    t_auto = time.perf_counter() - t0
    models = {"auto": res.model}
    variants["auto"] = {"optimizer_s": t_auto, "chosen": res.report.extra["auto"]["chosen"]}
    auto_ratio = res.report.macs_after / max(res.report.macs_before, 1)
    if auto_1thr:  # auto's choices depend on the threads it times layers with: the same run, tuned for 1 thread
        s1 = replace(settings, threads=1)
        t0 = time.perf_counter()
        r1 = auto_optimize(model, calib=cal, evaluator=Evaluator(model, ev_data, s1), budget=budget, settings=s1,
                           latency_cache=RESULTS / "latency_cache.json", on_event=lambda s: print(s, flush=True),
                           **cfg.get("auto", {}))
        models["auto@1thr"] = r1.model
        variants["auto@1thr"] = {"optimizer_s": time.perf_counter() - t0, "chosen": r1.report.extra["auto"]["chosen"]}

    # uniform at matched MACs (data-free), then the same ranks refit
    t0 = time.perf_counter()
    best = None
    target = auto_ratio if auto_ratio < 0.999 else 0.8
    for f in FRACTIONS:
        um = uniform(model, f)
        r = conv_macs(um) / macs0
        if best is None or abs(r - target) < abs(best[1] - target):
            best = (f, r, um)
    assert best is not None
    variants["uniform@MACs"] = {"optimizer_s": time.perf_counter() - t0, "fraction": best[0]}
    models["uniform@MACs"] = best[2]
    t0 = time.perf_counter()
    um = best[2]
    shapes = conv_shapes(um, None)
    rewritten = [(c.name, c.y) for c in read_convs(um, shapes)
                 if isinstance(c, ConvSpec) and c.node.doc_string.startswith("convopt:") and c.y]
    layer_outputs = [(n, y) for n, y in rewritten if any(o == y for node in model.graph.node for o in node.output)]
    if layer_outputs:
        fit = cal if cal.n <= 64 else EvalData({k: a[:64] for k, a in cal.inputs.items()},
                                               None if cal.labels is None else cal.labels[:64], "fit")
        from convopt.passes.fold_bn import fold_batchnorm

        targets = collect_targets(fold_batchnorm(model).model, dict(layer_outputs), fit, settings)
        models["uniform@MACs+refit"], _ = refit_sequential(um, layer_outputs, targets, fit, settings)
        variants["uniform@MACs+refit"] = {"optimizer_s": time.perf_counter() - t0 + variants["uniform@MACs"]["optimizer_s"],
                                          "fraction": best[0]}

    # uniform at the budget (data-free): the smallest fraction meeting the budget on calibration data
    t0 = time.perf_counter()
    cal_ev = Evaluator(model, cal, settings, measure_latency=False)
    chosen_f = None
    for f in FRACTIONS:
        um = uniform(model, f)
        if cal_ev.check(cal_ev.measure(um, f"uniform {f}"), budget) is None:
            chosen_f = f
            models["uniform@budget"] = um
            break
    variants["uniform@budget"] = {"optimizer_s": time.perf_counter() - t0, "fraction": chosen_f}
    if chosen_f is None:
        models["uniform@budget"] = model
        variants["uniform@budget"]["note"] = "no fraction meets the budget: stays dense"

    # held-out accuracy and interleaved latency at 1 and 2 threads
    acc_ev = Evaluator(model, ev_data, settings, measure_latency=False)
    sess = make_session(model, settings)
    feeds = batch_feeds(sess, ev_data, 0, latency_batch(sess, settings))  # the batch auto timed its layers at
    names = list(models)
    lat: dict[int, list[float]] = {}
    for t in (1, 2):
        st = OrtSettings(threads=t, warmup=5, repeats=60 if not quick else 20)
        stats = measure_latency([model] + [models[k] for k in names], feeds, st)
        lat[t] = [s.median_ms for s in stats]
    for i, k in enumerate(names):
        v = variants.setdefault(k, {})
        v["macs_ratio"] = conv_macs(models[k]) / macs0
        v["latency_ratio_1t"] = lat[1][i + 1] / lat[1][0]
        v["latency_ratio_2t"] = lat[2][i + 1] / lat[2][0]
        v["accuracy"] = acc_change(acc_ev, models[k])
    out = {"model": name, "note": cfg.get("note", ""), "metric": cfg["metric"], "budget": vars(budget),
           "calibration_samples": cal.n, "heldout_samples": ev_data.n,
           "original_ms_1t": lat[1][0], "original_ms_2t": lat[2][0],
           "original_accuracy": acc_ev.original_accuracy, "variants": variants,
           "auto_report": res.report.to_dict()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"auto_{name}.json").write_text(json.dumps(out, indent=1, default=float))
    return out


def _acc_cell(metric: str, a: dict[str, Any]) -> str:
    if "top-1" in metric and a.get("top1_drop") is not None:
        return f"{-a['top1_drop']:+.1f} pt"
    rel = a.get("rel_l2_error")
    return "n/a" if rel is None else f"rel err {rel:.3f}"


def table() -> str:
    rows = ["| model | strategy | MACs ratio | latency ratio 1 thr | latency ratio 2 thr | accuracy change (held-out) | optimizer time |",
            "|---|---|---|---|---|---|---|"]
    for p in sorted(RESULTS.glob("auto_*.json")):
        r = json.loads(p.read_text())
        for k, v in r["variants"].items():
            rows.append(f"| {r['model']} | {k} | {v['macs_ratio']:.2f} | {v['latency_ratio_1t']:.2f} | "
                        f"{v['latency_ratio_2t']:.2f} | {_acc_cell(r['metric'], v['accuracy'])} | "
                        f"{v.get('optimizer_s', 0):.0f} s |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=list(SETUPS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--auto-1thr", action="store_true", help="also run auto tuned for 1 thread (row auto@1thr)")
    args = ap.parse_args(argv)
    if not MODELS.is_dir():
        print(f"shared models not found at {MODELS}", file=sys.stderr)
        return 2
    for name in args.models:
        run_one(name, args.quick, args.auto_1thr)
        md = table()
        (RESULTS / "auto.md").write_text(md + "\n")
        print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
