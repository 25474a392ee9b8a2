#!/usr/bin/env python
"""Train convopt's built-in example: an Inception-style CNN on scikit-learn's digits, exported to ONNX.

Development only; needs the CPU build of PyTorch and scikit-learn (neither is a convopt dependency):

    pip install torch==2.13.0 scikit-learn
    python scripts/train_example.py            # writes convopt/models/data/example.{onnx,json}, example_eval.npz

Data: ``sklearn.datasets.load_digits`` (1,797 8×8 grey images, 10 classes; it ships inside scikit-learn, no
download). Preprocessing, MNIST-style: pixel / 16 → [0, 1]; bilinear resize 8×8 → 20×20 (half-pixel centres,
``align_corners=False``, no antialias); zero-pad 4 pixels each side → 28×28; float32, NCHW 1×1×28×28. The
held-out set is a stratified ``train_test_split`` (``--heldout`` samples, ``random_state=--seed``); it is saved
already preprocessed, so the model's input needs nothing else. Training augments with random shifts of up to
±2 pixels. Accuracies in example.json are measured by running the exported ONNX in ONNX Runtime.

Reproducible: seeded split, ``torch.manual_seed``, deterministic algorithms, one torch thread (``--threads``);
the same versions give a byte-identical example.onnx (its sha256 is recorded in example.json). About a minute
on one core.
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
DEFAULT_OUT = ROOT / "convopt" / "models" / "data"


# --------------------------------------------------------------------------- data
def preprocess(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digits in 0..16 → (N, 1, 28, 28) float32 in [0, 1]: scale, bilinear 20×20, centre on 28×28."""
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=False)
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
    """Conv (no bias) → BatchNorm → ReLU; on export BN folds into the conv, which gains a bias."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Concat(1×1, 1×1→3×3, [1×1→]5×5, 3×3 max-pool→1×1), GoogLeNet-style; r5 = 0 means no 5×5 reduction."""

    def __init__(self, cin: int, n1: int, r3: int, n3: int, r5: int, n5: int, pp: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBNReLU(cin, n1, 1)
        self.branch3x3_reduce = ConvBNReLU(cin, r3, 1)
        self.branch3x3 = ConvBNReLU(r3, n3, 3)
        self.branch5x5_reduce = ConvBNReLU(cin, r5, 1) if r5 else nn.Identity()
        self.branch5x5 = ConvBNReLU(r5 or cin, n5, 5)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.pool_proj = ConvBNReLU(cin, pp, 1)
        self.out_channels = n1 + n3 + n5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3(self.branch3x3_reduce(x)),
                          self.branch5x5(self.branch5x5_reduce(x)), self.pool_proj(self.pool(x))], 1)


class DigitsInception(nn.Module):
    """28×28 → stem 3×3 (1→32) → pool → inception_a (14×14) → pool → inception_b (7×7) → GAP → fc (10)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNReLU(1, 32, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.inception_a = Inception(32, 16, 32, 48, 0, 32, 16)  # 5×5 32→32 with no reduction; 112 out
        self.pool2 = nn.MaxPool2d(2)
        self.inception_b = Inception(112, 32, 48, 64, 32, 48, 32)  # 176 out
        self.fc = nn.Linear(176, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stem(x))
        x = self.pool2(self.inception_a(x))
        x = self.inception_b(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


ARCHITECTURE = (
    "stem conv3x3 1->32 +ReLU (28x28); maxpool 2x2; inception_a (14x14, 32 in): 1x1 16 | 1x1 32 -> 3x3 48 | "
    "5x5 32 | maxpool3x3 -> 1x1 16 = 112; maxpool 2x2; inception_b (7x7, 112 in): 1x1 32 | 1x1 48 -> 3x3 64 | "
    "1x1 32 -> 5x5 48 | maxpool3x3 -> 1x1 32 = 176; global average pool; fc 176->10. BatchNorm is folded into "
    "the convs on export."
)


# --------------------------------------------------------------------------- export
FUNCTIONAL_OPS = {"Concat": "concat", "GlobalAveragePool": "global_pool", "Flatten": "flatten"}

def export_onnx(model: nn.Module, path: Path) -> onnx.ModelProto:
    """TorchScript export at opset 13, static batch 1, then clean names: node ``a/b/conv``, weights ``.../W|B``."""
    model.eval()
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"], do_constant_folding=True, external_data=False)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 8)
    graph_outputs = {o.name for o in m.graph.output}
    used: set[str] = set()
    renames: dict[str, str] = {}
    for node in m.graph.node:
        # "/inception_a/branch3x3/conv/Conv" → "inception_a/branch3x3"; "/inception_a/Concat" → "inception_a/concat"
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


def ort_accuracy(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])
    return float((logits.argmax(1) == y).mean()), logits


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--heldout", type=int, default=360, help="held-out samples (stratified)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 is reproducible on any machine")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)

    x_tr, y_tr, x_te, y_te = load_split(args.seed, args.heldout)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    model = DigitsInception()
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
              f"{correct / total:.4f}", flush=True)
    train_seconds = time.perf_counter() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "example.onnx"
    m = export_onnx(model, onnx_path)
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    helper_props = {"convopt.example": "digits-inception", "dataset": "sklearn digits 8x8 -> 28x28"}
    onnx.helper.set_model_props(m, helper_props)
    m.doc_string = "convopt built-in example: " + ARCHITECTURE
    data = m.SerializeToString(deterministic=True)
    onnx_path.write_bytes(data)

    with torch.no_grad():
        model.eval()
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    train_acc, _ = ort_accuracy(data, x_tr, y_tr)
    heldout_acc, ort_logits = ort_accuracy(data, x_te, y_te)
    np.savez_compressed(args.out / "example_eval.npz", input=x_te.astype(np.float32), labels=y_te.astype(np.int64))

    argv_used = sys.argv[1:] if argv is None else argv
    info = {
        "name": "example",
        "task": "handwritten digit classification, 10 classes",
        "architecture": ARCHITECTURE,
        "parameters": n_params,
        "dataset": "scikit-learn digits (sklearn.datasets.load_digits: 1,797 8x8 grey images, 10 classes, "
                   "shipped with scikit-learn, no download)",
        "preprocessing": "pixel/16 -> [0,1]; bilinear resize 8x8 -> 20x20 (align_corners=False, no antialias); "
                         "zero-pad 4 px each side -> 28x28; float32 NCHW (N,1,28,28). example_eval.npz holds "
                         "inputs already preprocessed.",
        "input": {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32", "range": [0.0, 1.0]},
        "output": {"name": "logits", "shape": [1, 10], "dtype": "float32"},
        "split": {"method": "sklearn.model_selection.train_test_split, stratified", "random_state": args.seed,
                  "train": int(len(y_tr)), "heldout": int(len(y_te))},
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"AdamW lr {args.lr} (one-cycle), weight decay 1e-4",
        "augmentation": "random shifts of up to +/-2 px (training only)",
        "train_accuracy": round(train_acc, 6),
        "heldout_accuracy": round(heldout_acc, 6),
        "accuracy_note": "fractions of 1, top-1, measured by running example.onnx in onnxruntime "
                         f"{ort.__version__} (CPUExecutionProvider) on the un-augmented train and held-out sets",
        "onnx_vs_torch_max_abs_diff": float(np.abs(ort_logits - torch_logits).max()),
        "training_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "versions": {"torch": torch.__version__, "scikit-learn": sklearn_version, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "files": {"model": "example.onnx", "eval": "example_eval.npz"},
        "command": shlex.join(["python", "scripts/train_example.py", *argv_used]),
    }
    (args.out / "example.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"train acc {train_acc:.4f}  held-out acc {heldout_acc:.4f}  ({len(y_te)} samples)  "
          f"{train_seconds:.1f}s  {len(data) / 1e3:.0f} kB  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
