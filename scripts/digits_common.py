"""Shared by the development scripts that train a CNN on scikit-learn's digits and export it to ONNX.

``scripts/train_example.py`` (convopt's built-in example, 28×28) and ``scripts/train_vgg_digits.py`` (the VGG-style
benchmark model, 32×32) differ in their architecture, defaults, output names and input size; everything else
lives here: preprocessing and the stratified split, the shift augmentation, the Conv→BN→ReLU block, the seeded
training loop, the ONNX export with clean node and weight names, ONNX Runtime evaluation and the pieces of the
JSON training record that both write. Not an entry point; the scripts import it from their own directory
(``python scripts/<script>.py`` puts ``scripts/`` on ``sys.path``).

Everything here must keep both scripts' outputs byte-identical: do not change the order in which the torch
random generators are consumed, or anything that reaches the serialized ONNX or the npz.
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
PAD = 4  # zero padding on each side after the resize: 20 → 28 (example), 24 → 32 (vgg-digits)

DATASET = ("scikit-learn digits (sklearn.datasets.load_digits: 1,797 8x8 grey images, 10 classes, "
           "shipped with scikit-learn, no download)")
AUGMENTATION = "random shifts of up to +/-2 px (training only)"


# --------------------------------------------------------------------------- data
def preprocess(images: np.ndarray, resize: int) -> np.ndarray:
    """(N, 8, 8) digits in 0..16 → (N, 1, S, S) float32 in [0, 1], S = resize + 2·PAD: scale, bilinear
    resize×resize, centre on S×S."""
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=False)
    x = F.pad(x, (PAD,) * 4).clamp_(0.0, 1.0)
    return x.numpy().astype(np.float32)


def preprocessing_note(resize: int) -> str:
    """The JSON record's description of :func:`preprocess` (each script appends what its npz holds)."""
    s = resize + 2 * PAD
    return (f"pixel/16 -> [0,1]; bilinear resize 8x8 -> {resize}x{resize} (align_corners=False, no antialias); "
            f"zero-pad {PAD} px each side -> {s}x{s}; float32 NCHW (N,1,{s},{s}).")


def load_split(seed: int, heldout: int, resize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_heldout, y_heldout): preprocessed digits, stratified split of ``heldout`` samples."""
    digits = load_digits()
    x = preprocess(digits.images, resize)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=heldout, stratify=y, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def split_info(seed: int, y_tr: np.ndarray, y_te: np.ndarray) -> dict[str, object]:
    return {"method": "sklearn.model_selection.train_test_split, stratified", "random_state": seed,
            "train": int(len(y_tr)), "heldout": int(len(y_te))}


def save_eval(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """The held-out set, already preprocessed, under the keys ``input`` and ``labels``."""
    np.savez_compressed(path, input=x.astype(np.float32), labels=y.astype(np.int64))


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
    """Conv k×k pad k//2 (no bias) → BatchNorm → ReLU; on export BN folds into the conv, which gains a bias."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


# --------------------------------------------------------------------------- training
def arg_parser(description: str, *, epochs: int, batch_size: int, heldout: int, out: Path) -> argparse.ArgumentParser:
    """The options both scripts share, with the script's own defaults; a script adds its own options after."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--heldout", type=int, default=heldout, help="held-out samples (stratified)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; 1 is reproducible on any machine")
    ap.add_argument("--out", type=Path, default=out)
    return ap


def seed_all(seed: int, threads: int) -> torch.Generator:
    """Seed torch, make it deterministic on ``threads`` threads; returns the generator for shuffles and shifts.
    Call before building the model: its initial weights come from the seeded global generator."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def optimizer_note(lr: float) -> str:
    return f"AdamW lr {lr} (one-cycle), weight decay 1e-4"


def train(model: nn.Module, x_tr: np.ndarray, y_tr: np.ndarray, g: torch.Generator, *, epochs: int,
          batch_size: int, lr: float) -> float:
    """AdamW with a one-cycle schedule, cross-entropy, shuffled by ``g``, shift-augmented; returns the seconds."""
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)

    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = correct = 0
        loss_sum = 0.0
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
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
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {loss_sum / total:.4f}  train acc (augmented) "
              f"{correct / total:.4f}  {time.perf_counter() - t0:.0f}s", flush=True)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- export
FUNCTIONAL_OPS = {"Concat": "concat", "GlobalAveragePool": "global_pool", "Flatten": "flatten"}


def export_onnx(model: nn.Module, path: Path, size: int, *, dynamic_batch: bool, props: dict[str, str],
                doc: str) -> tuple[bytes, int]:
    """TorchScript export at opset 13 (input ``input`` 1×1×size×size, batch dimension dynamic if ``dynamic_batch``,
    else static 1; output ``logits``), then clean names: node ``a/b`` for module ``a.b`` (its conv, if any),
    weights ``a/b/W|B``; metadata ``props`` and ``doc``. Writes ``path``; returns (its bytes, parameter count)."""
    model.eval()
    dummy = torch.zeros(1, 1, size, size)
    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                      output_names=["logits"], dynamic_axes=dynamic_axes, do_constant_folding=True,
                      external_data=False)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, 8)
    graph_outputs = {o.name for o in m.graph.output}
    used: set[str] = set()
    renames: dict[str, str] = {}
    for node in m.graph.node:
        # "/inception_a/branch3x3/conv/Conv" → "inception_a/branch3x3"; "/conv2_1/relu/Relu" → "conv2_1/relu";
        # "/inception_a/Concat" → "inception_a/concat"; "/GlobalAveragePool" → "global_pool"
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

    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    onnx.helper.set_model_props(m, props)
    m.doc_string = doc
    data = m.SerializeToString(deterministic=True)
    path.write_bytes(data)
    return data, n_params


# --------------------------------------------------------------------------- evaluation
def ort_logits(model_bytes: bytes, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits from ONNX Runtime (CPU, one thread) in batches of ``batch``."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The trained model's own logits (eval mode), to compare with the exported ONNX."""
    with torch.no_grad():
        model.eval()
        return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- record
def write_record(path: Path, info: dict[str, object], *, data: bytes, train_seconds: float, threads: int,
                 files: dict[str, str], script: str, argv: list[str] | None) -> None:
    """Write the JSON training record: ``info`` (the script's own keys) followed by the run's timing, threads,
    versions, the ONNX sha256, the file names and the command line that reproduces it (``argv`` None:
    ``sys.argv``)."""
    info = {**info,
            "training_seconds": round(train_seconds, 1),
            "threads": threads,
            "versions": {"torch": torch.__version__, "scikit-learn": sklearn_version, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "python": sys.version.split()[0]},
            "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "files": files,
            "command": shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])}
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def summary(train_acc: float, heldout_acc: float, n_heldout: int, train_seconds: float, data: bytes,
            out: Path) -> str:
    size = f"{len(data) / 1e3:.0f} kB" if len(data) < 1e6 else f"{len(data) / 1e6:.2f} MB"
    return (f"train acc {train_acc:.4f}  held-out acc {heldout_acc:.4f}  ({n_heldout} samples)  "
            f"{train_seconds:.1f}s  {size}  -> {out}")
