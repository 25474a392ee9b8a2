#!/usr/bin/env python
"""Train a benchmark model: a plain VGG-style CNN (six dense 3×3 convs) on scikit-learn's digits, exported to ONNX.

Why: random-weight models lack the decaying singular-value spectra of trained weights, so low-rank factorization
benchmarks need a trained plain conv stack. Development only; needs the CPU build of PyTorch and scikit-learn
(neither is a convopt dependency):

    pip install torch==2.13.0 scikit-learn
    python scripts/train_vgg_digits.py         # writes bench/models/vgg-digits.{onnx,json}, vgg-digits-eval.npz

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 grey images, 10 classes; it ships inside scikit-learn, no
download). Preprocessing: pixel / 16 → [0, 1]; bilinear resize 8×8 → 24×24 (half-pixel centres,
``align_corners=False``, no antialias); zero-pad 4 pixels each side → 32×32; float32, NCHW N×1×32×32. The
held-out set is a stratified ``train_test_split`` (``--heldout`` samples, ``random_state=--seed``), never used
for training; it is saved already preprocessed (``input``, ``labels``: the keys of the built-in example's
example_eval.npz), so the model's input needs nothing else. Training augments with random shifts of up to
±2 pixels. Accuracies in vgg-digits.json are measured by running the exported ONNX in ONNX Runtime.

Model (VGG-style, no branches): [conv 48, conv 48, maxpool] [conv 96, conv 96, maxpool] [conv 192, conv 192,
maxpool] → global average pool → flatten → fc 10; every conv is 3×3 pad 1 + BatchNorm + ReLU, and BatchNorm
folds into the convs on export. ONNX opset 13, input ``input`` (batch dimension dynamic) → ``logits``.

Reproducible: seeded split, ``torch.manual_seed``, deterministic algorithms, one torch thread (``--threads``);
the same versions give a byte-identical vgg-digits.onnx (its sha256 is recorded in vgg-digits.json). A few
minutes on one core.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn import __version__ as sklearn_version
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "models"
SIZE = 32


# --------------------------------------------------------------------------- data
def preprocess(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digits in 0..16 → (N, 1, 32, 32) float32 in [0, 1]: scale, bilinear 24×24, centre on 32×32."""
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False, antialias=False)
    x = F.pad(x, (4, 4, 4, 4)).clamp_(0.0, 1.0)
    return x.numpy().astype(np.float32)


def load_split(seed: int, heldout: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = preprocess(digits.images)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=heldout, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ±max_shift pixels per sample (zero fill)."""
    n = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


# --------------------------------------------------------------------------- model
class ConvBNReLU(nn.Module):
    """Conv 3×3 pad 1 (no bias) → BatchNorm → ReLU; on export BN folds into the conv, which gains a bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class DigitsVGG(nn.Module):
    """32×32 → [conv w1, conv w1, pool] → [conv w2, conv w2, pool] → [conv w3, conv w3, pool] → GAP → fc (10)."""

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 192)) -> None:
        super().__init__()
        cin = 1
        for stage, w in enumerate(widths, 1):
            self.add_module(f"conv{stage}_1", ConvBNReLU(cin, w))
            self.add_module(f"conv{stage}_2", ConvBNReLU(w, w))
            self.add_module(f"pool{stage}", nn.MaxPool2d(2))
            cin = w
        self.stages = len(widths)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in range(1, self.stages + 1):
            for name in (f"conv{stage}_1", f"conv{stage}_2", f"pool{stage}"):
                x = getattr(self, name)(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def architecture(widths: tuple[int, int, int]) -> str:
    size, cin, parts = SIZE, 1, []
    for stage, w in enumerate(widths, 1):
        parts.append(f"conv{stage}_1 3x3 {cin}->{w}, conv{stage}_2 3x3 {w}->{w} ({size}x{size}); maxpool 2x2")
        size, cin = size // 2, w
    return ("VGG-style, no branches; every conv is 3x3 pad 1 + BatchNorm + ReLU: " + "; ".join(parts)
            + f" -> {size}x{size}; global average pool; flatten; fc {cin}->10. BatchNorm is folded into the "
            "convs on export.")


# --------------------------------------------------------------------------- export
FUNCTIONAL_OPS = {"GlobalAveragePool": "global_pool", "Flatten": "flatten"}


def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """TorchScript export at opset 13, dynamic batch, then clean names: node ``conv1_1``, weights ``conv1_1/W|B``."""
    model.eval()
    dummy = torch.zeros(1, 1, SIZE, SIZE)
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=True, external_data=False)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 8)
    graph_outputs = {o.name for o in m.graph.output}
    used: set[str] = set()
    renames: dict[str, str] = {}
    for node in m.graph.node:
        # "/conv2_1/conv/Conv" → "conv2_1"; "/conv2_1/relu/Relu" → "conv2_1/relu"; "/GlobalAveragePool" → "global_pool"
        parts = [p for p in node.name.split("/") if p]
        if parts and parts[-1].split("_")[0] == node.op_type:
            parts.pop()
        if node.op_type == "Conv" and parts and parts[-1] == "conv":
            parts.pop()
        if node.op_type in FUNCTIONAL_OPS:
            parts.append(FUNCTIONAL_OPS[node.op_type])
        name = "/".join(parts) or node.op_type.lower()
        if name in used:
            raise RuntimeError(f"duplicate node name {name} after renaming {node.name}")
        used.add(name)
        node.name = name
        for i, t in enumerate(node.output):
            if t not in graph_outputs:
                renames[t] = name if i == 0 else f"{name}:{i}"
        if node.op_type in ("Conv", "Gemm"):
            for idx, suffix in ((1, "W"), (2, "B")):
                if idx < len(node.input):
                    renames[node.input[idx]] = f"{name}/{suffix}"
    for init in m.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in m.graph.node:
        for i, t in enumerate(node.input):
            node.input[i] = renames.get(t, t)
        for i, t in enumerate(node.output):
            node.output[i] = renames.get(t, t)
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    return m


def ort_logits(model_bytes: bytes, x: np.ndarray, batch: int) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--widths", type=int, nargs=3, default=[48, 96, 192], metavar=("W1", "W2", "W3"),
                    help="channels of the three conv stages")
    ap.add_argument("--heldout", type=int, default=600, help="held-out samples (stratified)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 is reproducible on any machine")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    widths = tuple(args.widths)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)

    x_tr, y_tr, x_te, y_te = load_split(args.seed, args.heldout)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model = DigitsVGG(widths)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * ((len(xt) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = correct = 0
        loss_sum = 0.0
        for i in range(0, len(xt), args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = shift(xt[idx], g), yt[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        print(f"epoch {epoch + 1:2d}/{args.epochs}  loss {loss_sum / total:.4f}  train acc (augmented) "
              f"{correct / total:.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    train_seconds = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "vgg-digits.onnx"
    m = export_onnx(model, onnx_path)
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    onnx.helper.set_model_props(m, {"convopt.bench": "vgg-digits", "dataset": "sklearn digits 8x8 -> 32x32"})
    m.doc_string = "convopt benchmark model: " + architecture(widths)  # type: ignore[arg-type]
    data = m.SerializeToString(deterministic=True)
    onnx_path.write_bytes(data)

    with torch.no_grad():
        model.eval()
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    train_logits = ort_logits(data, x_tr, 100)
    heldout_logits = ort_logits(data, x_te, 100)
    single = ort_logits(data, x_te[:20], 1)  # batch 1 agrees with batched runs
    train_acc = float((train_logits.argmax(1) == y_tr).mean())
    heldout_acc = float((heldout_logits.argmax(1) == y_te).mean())
    np.savez_compressed(args.out / "vgg-digits-eval.npz", input=x_te.astype(np.float32),
                        labels=y_te.astype(np.int64))

    argv_used = sys.argv[1:] if argv is None else argv
    info = {
        "name": "vgg-digits",
        "task": "handwritten digit classification, 10 classes",
        "architecture": architecture(widths),  # type: ignore[arg-type]
        "parameters": n_params,
        "dataset": "scikit-learn digits (sklearn.datasets.load_digits: 1,797 8x8 grey images, 10 classes, "
                   "shipped with scikit-learn, no download)",
        "preprocessing": "pixel/16 -> [0,1]; bilinear resize 8x8 -> 24x24 (align_corners=False, no antialias); "
                         "zero-pad 4 px each side -> 32x32; float32 NCHW (N,1,32,32). vgg-digits-eval.npz holds "
                         "the held-out inputs already preprocessed (keys input, labels).",
        "input": {"name": "input", "shape": ["batch", 1, SIZE, SIZE], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
        "opset": 13,
        "split": {"method": "sklearn.model_selection.train_test_split, stratified", "random_state": args.seed,
                  "train": int(len(y_tr)), "heldout": int(len(y_te))},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "widths": list(widths),
        "optimizer": f"AdamW lr {args.lr} (one-cycle), weight decay 1e-4",
        "augmentation": "random shifts of up to +/-2 px (training only)",
        "train_accuracy": round(train_acc, 6),
        "heldout_accuracy": round(heldout_acc, 6),
        "heldout_correct": int((heldout_logits.argmax(1) == y_te).sum()),
        "accuracy_note": "fractions of 1, top-1, measured by running vgg-digits.onnx in onnxruntime "
                         f"{ort.__version__} (CPUExecutionProvider, batches of 100) on the un-augmented train and "
                         "held-out sets",
        "onnx_vs_torch_max_abs_diff": float(np.abs(heldout_logits - torch_logits).max()),
        "onnx_batch1_vs_batched_max_abs_diff": float(np.abs(single - heldout_logits[:20]).max()),
        "training_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "scikit-learn": sklearn_version, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "files": {"model": "vgg-digits.onnx", "eval": "vgg-digits-eval.npz"},
        "command": shlex.join(["python", "scripts/train_vgg_digits.py", *argv_used]),
    }
    (args.out / "vgg-digits.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"train acc {train_acc:.4f}  held-out acc {heldout_acc:.4f}  ({len(y_te)} samples)  "
          f"{train_seconds:.1f}s  {len(data) / 1e6:.2f} MB  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
