"""Latency of one ddddocr-det session on convopt's shared CPU arena against the layout it replaced.

The shared arena's 128 MiB region used to be its first (never given back); it is now its second, after a
1 MiB first region (convopt.measure.ort.shared_cpu_arena), so it can be given back between timings. Timed runs
follow warm-up runs either way. An environment allocator is registered once per process, so the two layouts
run in alternating processes: ``new`` then ``old``, PAIRS times; each prints the median of 100 runs after 10
warm-ups at 2 threads; the summary is the median of the per-pair ratios new / old.

Usage:  python bench/arena_latency.py [MODEL.onnx] [PAIRS]     (default: ../shared/models/ddddocr-det.onnx, 6)
"""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ONE = r"""
import sys, time, numpy as np, onnxruntime as ort
layout, path = sys.argv[1], sys.argv[2]
if layout == "old":
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, 128 << 20, -1))
else:
    from convopt.measure.ort import shared_cpu_arena
    assert shared_cpu_arena()
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
so.add_session_config_entry("session.use_env_allocators", "1")
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = {i.name: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape], np.float32)}
for _ in range(10):
    s.run(None, x)
t = []
for _ in range(100):
    t0 = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - t0)
print(f"{np.median(t) * 1e3:.2f}")
"""


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "models" / "ddddocr-det.onnx"
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    ms: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(pairs):
        for layout in ("new", "old"):
            out = subprocess.run([sys.executable, "-c", ONE, layout, str(model)], capture_output=True, text=True,
                                 check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
            ms[layout].append(float(out.stdout.strip()))
    for layout, v in ms.items():
        print(f"{layout}: " + " ".join(f"{x:.2f}" for x in v) + f"   median {statistics.median(v):.2f} ms")
    ratios = [n / o for n, o in zip(ms["new"], ms["old"])]  # each pair ran back to back: the machine's drift cancels
    print("new / old per pair: " + " ".join(f"{r:.3f}" for r in ratios) + f"   median {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
