"""Cost of one perturbation-search iteration vs one forward+backward of f(y + A r) alone.

Target (issue "The instability test"): the search's iteration costs at most 1.15x the bare
forward+backward of the network composed with the operator, measured in the same run.

Run: ``python -m benchmarks.attack_overhead [--network unet-mri] [--batch 2] [--iterations 20]``
(the network is one of the reference networks in examples/; torch backend, white-box).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks._timing import median_seconds
from reconstruction.attacks import SearchSettings, budget_search
from reconstruction.data import random_ellipses
from reconstruction.models import load, magnitude

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="unet-mri")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as run_suite does

    folder = EXAMPLES / args.network
    model = load(folder / "model.onnx", folder / "manifest.json")
    f_net = model.reconstructor()
    op = model.operator

    def f(y: torch.Tensor) -> torch.Tensor:
        return magnitude(f_net(y))

    size = model.manifest.image_size[0]
    x = torch.from_numpy(random_ellipses(args.batch, size, 5))
    y = op.A(x)
    r = (0.01 * torch.randn(x.shape, dtype=torch.complex64)).requires_grad_(True)
    if not op.in_complex:
        r = (0.01 * torch.randn(x.shape)).requires_grad_(True)
    with torch.no_grad():
        clean = f(y)

    def bare() -> None:
        r.grad = None
        (f(y + op.A(r)) - clean).square().sum().backward()

    bare_s = median_seconds(bare, repeats=args.iterations)

    def search() -> None:
        budget_search(
            f,
            op,
            x,
            y,
            threat_model="image",
            eps=[0.01],
            # one start, no Jacobian start, no early stop: iterations only
            settings=SearchSettings(
                restarts=1,
                keep=1,
                iterations=args.iterations,
                min_iterations=args.iterations,
                plateau_window=args.iterations,
                jacobian_start=False,
                both_ways=False,
            ),
            seed=0,
        )

    search()  # warm-up
    start = time.perf_counter()
    search()
    # the search also runs one clean forward and one final forward per call
    per_iteration = (time.perf_counter() - start) / args.iterations
    print(f"{args.network}: batch {args.batch}, {size}x{size}, {torch.get_num_threads()} threads")
    print(f"bare forward+backward of f(y + A r): {bare_s * 1e3:.1f} ms")
    print(
        f"one search iteration (incl. per-call overhead / {args.iterations}): "
        f"{per_iteration * 1e3:.1f} ms"
    )
    print(f"ratio: {per_iteration / bare_s:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
