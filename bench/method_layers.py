"""Layer-level method comparison on real trained models: which factors reproduce a layer's output best, at
matched MACs (the same ranks for every method), on images the fit never saw.

For every dense 3×3 conv of SqueezeNet 1.1 (ImageNet sample, Caffe preprocessing), of vgg-digits (its held-out
digits) and of a few layers of ddddocr-det (ImageNet sample letterboxed to 416×416, BGR 0..255), plus 1×1
convs (and vgg-digits' Gemm) with the low-rank form I→r→O: the layer's input patches are collected with ONNX
Runtime (pixels subsampled as batches arrive), the images are split in two halves (seeded permutation, as
auto mode splits), every method is fitted on the first half and the layer's relative output error
‖ŷ − y‖/‖y‖ (and the error after the ReLU or SiLU the layer feeds) is measured on the second.

Methods (convopt.datafit and convopt.auto.lstsq):
  svd         weight-only factors (convopt.decompose), bias kept
  svd+refit   the same first factors, last factor and bias refit by least squares on activations: what auto
              mode does today (convopt.auto.lstsq, ReLU-aware ``relu_refit`` where the layer feeds a ReLU)
  white       whitened closed form under the uncentered patch moment S, bias kept
  white+bias  whitened closed form under the covariance C, then the mean-shift bias correction
  white+refit the white+bias first factors, then the svd+refit last-factor refit
  datafit     whitened + least-squares refinement under C (``refine=True``), then the bias correction
              (for the 1×1 low rank, datafit = white+bias = Zhang et al.'s output PCA: already the optimum)

    python bench/method_layers.py [squeezenet vgg-digits ddddocr-det] [--fit-rows N] [--test-rows N]

Writes bench/results/method_layers.json (every layer, form, rank and method; models not named keep their last
run) and bench/results/method_layers.md (tables by bench/method_layers_table.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper

from convopt import datafit as df
from convopt import decompose as dc
from convopt.auto import split_eval_data
from convopt.auto.lstsq import ConvGeom, NormalEquations, im2col_at, pixels_at, relu_refit, sample_positions
from convopt.auto.refit import iter_batches
from convopt.graph import attrs
from convopt.measure.data import EvalData, load_eval_data
from convopt.measure.ort import OrtSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_layers_table import render  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED = ROOT.parent.parent / "shared"
IMAGENET = SHARED / "data" / "imagenet-sample"
TARGETS_KXK = (0.6, 0.4, 0.25)  # MACs of the factorized layer / MACs of the original
TARGETS_1X1 = (0.75, 0.5, 0.25)
REFIT_RIDGE = 1e-5  # convopt.auto.refit's ridge
SETTINGS = OrtSettings(threads=1)


@dataclass(frozen=True)
class Layer:
    """One Conv (or Gemm as a 1×1 conv): W (O, I, kh, kw) float64, b (O,), input/output tensors, geometry,
    input and output H×W, and the activation it feeds ("relu", "silu" or None)."""

    name: str
    x: str
    y: str
    W: np.ndarray
    b: np.ndarray
    geom: ConvGeom
    act: str | None

    @property
    def F(self) -> int:
        return int(np.prod(self.W.shape[1:]))


def _activation(model: onnx.ModelProto, tensor: str) -> str | None:
    readers = [n for n in model.graph.node if tensor in n.input]
    kinds = sorted(n.op_type for n in readers)
    if kinds and all(k == "Relu" for k in kinds):
        return "relu"
    if kinds == ["Mul", "Sigmoid"]:
        sig = next(n for n in readers if n.op_type == "Sigmoid")
        mul = next(n for n in readers if n.op_type == "Mul")
        if set(mul.input) == {tensor, sig.output[0]}:
            return "silu"
    return None


def find_layers(model: onnx.ModelProto, keep: Callable[[onnx.NodeProto, tuple[int, ...]], bool]) -> list[Layer]:
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or n.input[1] not in inits:
            continue
        W = inits[n.input[1]]
        a = attrs(n)
        if n.op_type == "Gemm":
            if int(a.get("transB", 0)) != 1 or float(a.get("alpha", 1.0)) != 1.0:
                continue
            W = W[:, :, None, None]
        elif int(a.get("group", 1)) != 1:
            continue
        if not keep(n, W.shape):
            continue
        b = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros(W.shape[0])
        geom = ConvGeom(tuple(W.shape[2:]), tuple(a.get("strides", [1, 1])), tuple(a.get("pads", [0, 0, 0, 0])),
                        tuple(a.get("dilations", [1, 1])))
        out.append(Layer(n.name or n.output[0], n.input[0], n.output[0], W, b, geom, _activation(model, n.output[0])))
    return out


# ----------------------------------------------------------------------------- models and data


def letterbox_folder(folder: Path, n: int, size: int = 416) -> np.ndarray:
    """The first n images scaled to fit size×size, top-left on a 114 canvas, BGR 0..255 float32 NCHW."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    out = np.full((len(files), size, size, 3), 114, np.uint8)
    for k, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            s = size / max(im.size)
            im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
            out[k, : im.size[1], : im.size[0]] = np.asarray(im)
    return np.ascontiguousarray(out[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32))


def setup(name: str) -> tuple[onnx.ModelProto, EvalData, list[Layer]]:
    """(model, all samples, layers) for one benchmark model."""
    if name == "squeezenet":
        m = onnx.load(SHARED / "models" / "squeezenet1.1.onnx")
        data = load_eval_data(m, IMAGENET, preprocess="caffe")
        return m, data, find_layers(m, lambda n, s: True)
    if name == "vgg-digits":
        from vgg_digits import load

        m, x, y = load()
        return m, EvalData({"input": x}, y, "bench/models/vgg-digits-eval.npz"), find_layers(m, lambda n, s: True)
    if name == "ddddocr-det":
        m = onnx.load(SHARED / "models" / "ddddocr-det.onnx")
        data = EvalData({"images": letterbox_folder(IMAGENET, 96)}, None, "imagenet-sample letterboxed (96)")
        return m, data, find_layers(m, lambda n, s: n.name in DET_LAYERS)
    raise SystemExit(f"unknown model {name!r}; use squeezenet, vgg-digits or ddddocr-det")


DET_LAYERS = {"Conv_41", "Conv_56", "Conv_76", "Conv_110", "Conv_132", "Conv_154", "Conv_248", "Conv_269",  # 3×3
              "Conv_61", "Conv_129", "Conv_142", "Conv_242"}  # 1×1


# ----------------------------------------------------------------------------- activations


def collect(model: onnx.ModelProto, layers: list[Layer], data: EvalData, rows: int,
            seed: int) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """About ``rows`` input patches (P, F) float32 per layer, spread evenly over the samples, and each layer's
    (input H×W, output H×W). The first batch checks that W·patch + b is ORT's output at the sampled pixels."""
    rng = np.random.default_rng(seed)
    names = sorted({t for L in layers for t in (L.x, L.y)})
    got: dict[str, list[np.ndarray]] = {L.name: [] for L in layers}
    hw: dict[str, tuple] = {}
    per = max(1, rows // data.n)
    for start, outs in iter_batches(model, names, data, SETTINGS):
        t = dict(zip(names, outs))
        for L in layers:
            x, y = t[L.x], t[L.y]
            if x.ndim == 2:  # Gemm input rows
                X, Y = x.astype(np.float64), y.astype(np.float64)
            else:
                pos = sample_positions(x.shape[0], y.shape[2], y.shape[3], per, rng)
                X, Y = im2col_at(x, L.geom, pos), pixels_at(y, pos)
            if start == 0:
                hw[L.name] = (tuple(x.shape[2:4]) or (1, 1), tuple(y.shape[2:4]) or (1, 1))
                err = np.linalg.norm(X @ L.W.reshape(len(L.b), -1).T + L.b - Y) / np.linalg.norm(Y)
                assert err < 1e-4, f"{L.name}: im2col·W + b differs from ORT's output by {err:.2e}"
            got[L.name].append(X.astype(np.float32))
    return {k: np.concatenate(v) for k, v in got.items()}, hw


# ----------------------------------------------------------------------------- forms, ranks, MACs


def macs(L: Layer, form: str, ranks: tuple[int, ...], in_hw: tuple[int, int], out_hw: tuple[int, int]) -> float:
    """MACs of the factorized layer relative to the original (per sample)."""
    O, I, kh, kw = L.W.shape
    (ih, iw), (oh, ow) = in_hw, out_hw
    orig = O * I * kh * kw * oh * ow
    if form == "factorize":
        (R,) = ranks
        return (R * I * kh * oh * iw + O * R * kw * oh * ow) / orig
    if form == "bottleneck":
        ri, ro = ranks
        return (ri * I * ih * iw + ro * ri * kh * kw * oh * ow + O * ro * oh * ow) / orig
    (r,) = ranks
    return r * (I + O) / (I * O)


def pick_ranks(L: Layer, form: str, target: float, in_hw, out_hw) -> tuple[int, ...] | None:
    """The largest ranks whose MACs ratio is <= target (None when even rank 1 is above it)."""
    O, I, kh, kw = L.W.shape
    if form == "factorize":
        grid = [(R,) for R in range(1, min(I * kh, O * kw) + 1)]
    elif form == "bottleneck":
        grid = sorted({(max(1, round(f * I)), max(1, round(f * O))) for f in np.linspace(0.0, 1.0, 257)[1:]})
    else:
        grid = [(r,) for r in range(1, min(I, O) + 1)]
    ok = [g for g in grid if macs(L, form, g, in_hw, out_hw) <= target]
    return max(ok, key=lambda g: (macs(L, form, g, in_hw, out_hw), g)) if ok else None


def weight_only(form: str, W: np.ndarray, ranks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(Ŵ (O, F), E (K, F): the map from an input patch to the last factor's input)."""
    O = W.shape[0]
    if form == "factorize":
        V, H = dc.spatial_svd(W, ranks[0])
        return dc.compose_spatial(V, H).reshape(O, -1), spatial_map(V, W.shape[3])
    if form == "bottleneck":
        f, c, la = dc.tucker2(W, *ranks)
        return dc.compose_tucker2(f, c, la).reshape(O, -1), dc.compose_tucker2(f, c, None).reshape(c.shape[0], -1)
    A, B = df.lowrank_svd(W[:, :, 0, 0], ranks[0])
    return B @ A, A


def data_aware(form: str, W: np.ndarray, S: np.ndarray, ranks: tuple[int, ...], refine: bool):
    """Like ``weight_only`` with the convopt.datafit factors under the moment S."""
    O = W.shape[0]
    if form == "factorize":
        V, H = df.spatial_datafit(W, S, ranks[0], refine=refine)
        return dc.compose_spatial(V, H).reshape(O, -1), spatial_map(V, W.shape[3])
    if form == "bottleneck":
        f, c, la = df.tucker2_datafit(W, S, *ranks, refine=refine)
        return dc.compose_tucker2(f, c, la).reshape(O, -1), dc.compose_tucker2(f, c, None).reshape(c.shape[0], -1)
    A, B = df.whitened_lowrank(W[:, :, 0, 0], S, ranks[0])  # already the optimum: refine has nothing to add
    return B @ A, A


def spatial_map(V: np.ndarray, kw: int) -> np.ndarray:
    R, I, kh, _ = V.shape
    return np.einsum("ria,bc->rbiac", V[..., 0].astype(np.float64), np.eye(kw)).reshape(R * kw, I * kh * kw)


# ----------------------------------------------------------------------------- methods and errors


def refit(L: Layer, E: np.ndarray, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """convopt's last-factor refit on the fit rows: least squares (ReLU-aware before a ReLU) of the original
    output on the last factor's input E·patch. Returns (Ŵ = H E, b̂)."""
    E = np.asarray(E, np.float64)
    Z = (X @ E.T.astype(np.float32)).astype(np.float32)
    ne = NormalEquations(E.shape[0], Y.shape[1])
    for lo in range(0, len(Z), 4096):
        ne.add(Z[lo:lo + 4096], Y[lo:lo + 4096])
    if L.act == "relu":
        H, c, _ = relu_refit(ne, Z, Y, REFIT_RIDGE)
    else:
        H, c = ne.solve(REFIT_RIDGE)
    return H @ E, c


def fits(L: Layer, form: str, ranks: tuple[int, ...], m: df.Moments, X: np.ndarray, Y: np.ndarray) -> dict:
    """{method: (Ŵ (O, F), b̂ (O,))} fitted on the rows X (P, F) with original outputs Y."""
    W = L.W
    C = m.covariance
    W0, E0 = weight_only(form, W, ranks)
    Ws, _ = data_aware(form, W, m.second, ranks, refine=False)
    Wc, Ec = data_aware(form, W, C, ranks, refine=False)
    Wd, _ = data_aware(form, W, C, ranks, refine=True)
    corr = lambda Wh: df.bias_correction(W, Wh, L.b, m.mean)  # noqa: E731
    return {"svd": (W0, L.b), "svd+refit": refit(L, E0, X, Y), "white": (Ws, L.b), "white+bias": (Wc, corr(Wc)),
            "white+refit": refit(L, Ec, X, Y), "datafit": (Wd, corr(Wd))}


def act(kind: str | None, y: np.ndarray) -> np.ndarray:
    if kind == "relu":
        return np.maximum(y, 0.0)
    return y / (1.0 + np.exp(-np.clip(y, -60, 60)))  # silu


def errors(L: Layer, W_hat: np.ndarray, b_hat: np.ndarray, X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """Relative output error on rows (X, Y), and after the layer's activation when it has one."""
    P = X.astype(np.float64) @ np.asarray(W_hat, np.float64).T + b_hat
    out = {"err": float(np.linalg.norm(P - Y) / np.linalg.norm(Y))}
    if L.act:
        aY = act(L.act, Y)
        out["act_err"] = float(np.linalg.norm(act(L.act, P) - aY) / np.linalg.norm(aY))
    return out


def run_layer(L: Layer, Xf: np.ndarray, Xt: np.ndarray, in_hw, out_hw) -> dict:
    Wf = L.W.reshape(len(L.b), -1)
    Yf, Yt = Xf.astype(np.float64) @ Wf.T + L.b, Xt.astype(np.float64) @ Wf.T + L.b
    acc = df.MomentAccumulator(L.F)
    for lo in range(0, len(Xf), 4096):
        acc.add(Xf[lo:lo + 4096])
    m = acc.moments()
    is1 = L.W.shape[2:] == (1, 1)
    forms = ("lowrank",) if is1 else ("factorize", "bottleneck")
    rec: dict = {"name": L.name, "W": list(L.W.shape), "strides": list(L.geom.strides), "act": L.act,
                 "in_hw": list(in_hw), "out_hw": list(out_hw), "fit_rows": len(Xf), "test_rows": len(Xt), "forms": {}}
    for form in forms:
        rows = []
        for target in TARGETS_1X1 if is1 else TARGETS_KXK:
            ranks = pick_ranks(L, form, target, in_hw, out_hw)
            if ranks is None or any(list(ranks) == r["ranks"] for r in rows):
                continue  # no rank is that cheap, or the same ranks as a larger target
            res = {}
            for meth, (Wh, bh) in fits(L, form, ranks, m, Xf, Yf).items():
                res[meth] = {**errors(L, Wh, bh, Xt, Yt), "fit_err": errors(L, Wh, bh, Xf, Yf)["err"]}
            rows.append({"target": target, "ranks": list(ranks), "macs": macs(L, form, ranks, in_hw, out_hw),
                         "methods": res})
        rec["forms"][form] = rows
    return rec


# ----------------------------------------------------------------------------- driver


def groups(layers: list[Layer], rows: int, budget: int = 1 << 30) -> list[list[Layer]]:
    """Consecutive layers whose stored float32 rows fit in ``budget`` bytes (one ORT pass per group)."""
    out: list[list[Layer]] = [[]]
    used = 0
    for L in layers:
        b = rows * L.F * 4
        if out[-1] and used + b > budget:
            out.append([])
            used = 0
        out[-1].append(L)
        used += b
    return out


def bench_model(name: str, fit_rows: int, test_rows: int, seed: int) -> dict:
    t0 = time.time()
    model, data, layers = setup(name)
    fit, test = split_eval_data(data, calib_fraction=0.5, seed=seed)
    del data
    recs = []
    for grp in groups(layers, fit_rows + test_rows):
        Xf, hw = collect(model, grp, fit, fit_rows, seed)
        Xt, _ = collect(model, grp, test, test_rows, seed + 1)
        for L in grp:
            t = time.time()
            recs.append(run_layer(L, Xf.pop(L.name), Xt.pop(L.name), *hw[L.name]))
            print(f"  {name} {L.name} {tuple(L.W.shape)} {time.time() - t:.1f} s", flush=True)
    return {"fit": fit.source, "test": test.source, "fit_samples": fit.n, "test_samples": test.n,
            "seconds": round(time.time() - t0, 1), "layers": recs}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["squeezenet", "vgg-digits", "ddddocr-det"])
    ap.add_argument("--fit-rows", type=int, default=16000, help="input patches per layer to fit on")
    ap.add_argument("--test-rows", type=int, default=8000, help="input patches per layer to measure on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = RESULTS / "method_layers.json"
    results = json.loads(path.read_text()) if path.exists() else {"models": {}}  # other models' last run kept
    results["meta"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "onnxruntime": onnxruntime.__version__,
                       "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
                       "numpy": np.__version__, "fit_rows": args.fit_rows, "test_rows": args.test_rows}
    with dc.one_blas_thread():
        for name in args.models:
            results["models"][name] = bench_model(name, args.fit_rows, args.test_rows, args.seed)
            path.write_text(json.dumps(results, indent=1))
    cmd = "python bench/method_layers.py " + " ".join(argv) if argv else "python bench/method_layers.py"
    ridges = f"ridge {df.DEFAULT_RIDGE} (datafit) and {REFIT_RIDGE} (refit)"
    (RESULTS / "method_layers.md").write_text(render(results, cmd, __doc__.split("    python")[0].strip(), ridges))
    print((RESULTS / "method_layers.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
