"""Measure the baselines' default parameters: grid over lam (and TV's step balance) per modality.

For each modality the built-in images (Shepp-Logan, two ellipse phantoms, the two bundled
DICOMs; 256x256 by default) are measured with 1 % Gaussian noise (relative to ||A x||) and
reconstructed; the table gives the mean PSNR for every setting and marks the best. The defaults
in ``reconstruction.baselines.DEFAULTS`` were chosen from this output.
Run: ``python -m benchmarks.tune_baselines [--size 256]``.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from reconstruction import baselines
from reconstruction.data import builtin_images
from reconstruction.metrics import psnr
from reconstruction.operators import LinearOperator, MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from reconstruction.sampling import cartesian_lines, variable_density

TV_LAMS = (0.0005, 0.001, 0.002, 0.005)
TV_BALANCES = (0.0003, 0.001, 0.01, 0.1)


def _measure(op: LinearOperator, x: torch.Tensor, noise: float, seed: int) -> torch.Tensor:
    """``A x`` plus Gaussian noise of ``noise * ||A x||`` per image."""
    y = op.A(x)
    e = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    flat = (y.shape[0], -1)
    ratio = (
        noise
        * torch.linalg.vector_norm(y.reshape(flat), dim=1)
        / torch.linalg.vector_norm(e.reshape(flat), dim=1)
    )
    noisy: torch.Tensor = y + e * ratio.reshape(-1, *[1] * (y.ndim - 1))
    return noisy


def _score(r: torch.Tensor, x: torch.Tensor) -> float:
    return float(psnr(r.abs() if r.is_complex() else r, x).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--noise", type=float, default=0.01)
    args = parser.parse_args()
    n = args.size
    x = torch.from_numpy(np.stack([i.array for i in builtin_images(n)]))
    ops: dict[str, LinearOperator] = {
        "SingleCoilMRI 25% VD": SingleCoilMRI(variable_density((n, n), 0.25, 0)),
        "MultiCoilMRI 15 coils 15% lines": MultiCoilMRI(cartesian_lines((n, n), 0.15, 0), 15),
        "ParallelBeamCT 50 angles": ParallelBeamCT(n, 50),
    }
    for name, op in ops.items():
        y = _measure(op, x, args.noise, seed=0)
        start = op.A_dagger(y) if op.dagger_is_direct else op.A_adjoint(y)
        print(f"\n{name}: A_dagger/adjoint {_score(start, x):.2f} dB")
        l1 = {
            lam: _score(baselines.l1_wavelet(y, op, lam=lam), x)
            for lam in (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)
        }
        best = max(l1, key=lambda k: l1[k])
        print(
            "  l1-wavelet lam: "
            + "  ".join(f"{lam:g}={v:.2f}{'*' if lam == best else ''}" for lam, v in l1.items())
        )
        tv = {
            (lam, bal): _score(baselines.total_variation(y, op, lam=lam, balance=bal), x)
            for lam, bal in itertools.product(TV_LAMS, TV_BALANCES)
        }
        best_tv = max(tv, key=lambda k: tv[k])
        for bal in TV_BALANCES:
            print(
                f"  TV balance {bal:g}: "
                + "  ".join(
                    f"lam {lam:g}={tv[(lam, bal)]:.2f}{'*' if (lam, bal) == best_tv else ''}"
                    for lam in TV_LAMS
                )
            )


if __name__ == "__main__":
    main()
