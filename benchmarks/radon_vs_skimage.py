"""Parallel-beam CT: our sparse-matrix Radon transform vs scikit-image, same CPU, one run.

Target (issue "Science core I"): forward + adjoint at least 5x faster than
``skimage.transform.radon`` + ``iradon`` at 256x256. Run: ``python -m benchmarks.radon_vs_skimage``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from skimage.transform import iradon, radon

from benchmarks._timing import median_seconds
from reconstruction.data import shepp_logan
from reconstruction.operators import ParallelBeamCT
from reconstruction.operators.ct import _torch_matrices


def run(size: int, n_angles: int, repeats: int) -> dict[str, float]:
    image = shepp_logan(size).astype(np.float64)
    op = ParallelBeamCT(size, n_angles)
    degrees = np.degrees(op.angles)
    _torch_matrices.cache_clear()
    start = time.perf_counter()
    x = torch.from_numpy(image.astype(np.float32))[None]
    y = op.A(x)  # builds and caches the system matrix
    build = time.perf_counter() - start
    sinogram = radon(image, degrees, circle=True)
    row = {
        "size": size,
        "angles": n_angles,
        "build_s": build,
        "ours_forward_s": median_seconds(lambda: op.A(x), repeats=repeats),
        "ours_adjoint_s": median_seconds(lambda: op.A_adjoint(y), repeats=repeats),
        "ours_fbp_s": median_seconds(lambda: op.A_dagger(y), repeats=repeats),
        "skimage_radon_s": median_seconds(
            lambda: radon(image, degrees, circle=True), repeats=repeats
        ),
        "skimage_iradon_s": median_seconds(
            lambda: iradon(sinogram, degrees, circle=True), repeats=repeats
        ),
    }
    row["speedup_forward_adjoint"] = (row["skimage_radon_s"] + row["skimage_iradon_s"]) / (
        row["ours_forward_s"] + row["ours_adjoint_s"]
    )
    row["speedup_forward_fbp"] = (row["skimage_radon_s"] + row["skimage_iradon_s"]) / (
        row["ours_forward_s"] + row["ours_fbp_s"]
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--angles", type=int, nargs="+", default=[50, 60, 180])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    rows = [run(args.size, n, args.repeats) for n in args.angles]
    header = (
        f"{'size':>5} {'angles':>6} {'build':>7} {'A':>8} {'A^H':>8} {'FBP':>8} "
        f"{'sk radon':>9} {'sk iradon':>9} {'x(A+A^H)':>9} {'x(A+FBP)':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['size']:>5} {r['angles']:>6} {r['build_s'] * 1e3:>6.0f}ms "
            f"{r['ours_forward_s'] * 1e3:>6.1f}ms {r['ours_adjoint_s'] * 1e3:>6.1f}ms "
            f"{r['ours_fbp_s'] * 1e3:>6.1f}ms {r['skimage_radon_s'] * 1e3:>7.1f}ms "
            f"{r['skimage_iradon_s'] * 1e3:>7.1f}ms {r['speedup_forward_adjoint']:>8.1f}x "
            f"{r['speedup_forward_fbp']:>7.1f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
