"""Operator throughput: a batch of images at once vs the same images one by one, same run.

Run: ``python -m benchmarks.operator_throughput [--size 256] [--batch 8] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from benchmarks._timing import median_seconds
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from reconstruction.sampling import cartesian_lines, variable_density


def operators(size: int) -> dict[str, Callable[[], LinearOperator]]:
    return {
        "SingleCoilMRI (25% VD)": lambda: SingleCoilMRI(variable_density((size, size), 0.25)),
        "MultiCoilMRI (15 coils, 15% lines)": lambda: MultiCoilMRI(
            cartesian_lines((size, size), 0.15), 15
        ),
        "ParallelBeamCT (60 angles)": lambda: ParallelBeamCT(size, 60),
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, b = args.device, args.batch
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {b}, {args.size}^2")
    print(f"{'operator':<36} {'A+A^H batched':>14} {'one by one':>11} {'gain':>6} {'img/s':>8}")
    gen = torch.Generator().manual_seed(0)
    for name, factory in operators(args.size).items():
        op = factory()
        dtype = torch.complex64 if op.in_complex else torch.float32
        x = torch.randn((b, *op.in_shape), generator=gen, dtype=dtype).to(device)

        def batched(op: LinearOperator = op, x: torch.Tensor = x) -> None:
            op.A_adjoint(op.A(x))
            _sync(device)

        def looped(op: LinearOperator = op, x: torch.Tensor = x) -> None:
            for i in range(x.shape[0]):
                op.A_adjoint(op.A(x[i : i + 1]))
            _sync(device)

        t_batch = median_seconds(batched, repeats=args.repeats)
        t_loop = median_seconds(looped, repeats=args.repeats)
        print(
            f"{name:<36} {t_batch * 1e3:>12.1f}ms {t_loop * 1e3:>9.1f}ms "
            f"{t_loop / t_batch:>5.2f}x {b / t_batch:>8.1f}"
        )


if __name__ == "__main__":
    main()
