"""Strength and cost of the search on a quantized network: an int8 QDQ quantization of
``examples/unet-mri`` (onnxruntime's ``quantize_static``, int8 activations and weights,
calibrated on a few random-ellipse images), searched through its straight-through surrogate
(onnxruntime forward, the float32 shadow's gradient), against the float network searched with
its exact gradient by the same protocol's search.

(a) At every eps of the protocol (``quick``; ``--standard`` adds ``standard``) and each image,
the worst relative output change found on the quantized network (evaluated on the real
network: the surrogate's forward pass is onnxruntime's) over the float network's. Target
(issue "Verdicts you can trust III"): >= 0.9x. The gradient-free search the quantized network
got before (black-box) is shown beside it.

(b) A ``quick`` audit's wall time (``run_suite``, built-in images) of the quantized network
over the float one. Target: <= 1.5x.

Run: ``python -m benchmarks.quantized_strength [--standard] [--images 2] [--no-search]
[--no-audit] [--audit-repeats 2]`` (the audits alternate, the fastest of each counts)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reconstruction.attacks import BudgetSearch, budget_search
from reconstruction.data import random_ellipses
from reconstruction.instability.common import network_reconstructor
from reconstruction.models import LoadedModel, load
from reconstruction.protocols import load_protocol
from reconstruction.suite import run_suite
from tests.reconstruction.models.quantization import quantize

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unet-mri"
CALIBRATION_IMAGES = 4
CALIBRATION_SEED = 21
IMAGE_SEED = 5


def _quantized(folder: Path, float_model: LoadedModel) -> LoadedModel:
    for name in ("manifest.json", "mask.npy"):
        shutil.copy(EXAMPLE / name, folder / name)
    rec = float_model.reconstructor(differentiable=False)
    truth = torch.from_numpy(random_ellipses(CALIBRATION_IMAGES, 128, CALIBRATION_SEED))
    calibration = rec.network_input(float_model.operator.A(truth)).numpy()
    path = quantize(EXAMPLE / "model.onnx", folder / "int8.onnx", calibration, form="QDQ")
    return load(path, folder / "manifest.json")


def _search(model: LoadedModel, x: torch.Tensor, protocol: str, gradients: bool) -> BudgetSearch:
    budget = load_protocol(protocol).perturbation.budget  # type: ignore[union-attr]
    f = network_reconstructor(model, differentiable=gradients)
    op = model.operator
    return budget_search(
        f,
        op,
        x,
        op.A(x),
        threat_model="image",
        eps=budget.eps,
        settings=budget.settings(),
        seed=0,
        gradients=gradients,
    )


def _strength(
    float_model: LoadedModel, quantized: LoadedModel, protocol: str, images: int
) -> float:
    x = torch.from_numpy(random_ellipses(images, 128, IMAGE_SEED))
    runs: dict[str, tuple[BudgetSearch, float]] = {}
    for name, model, gradients in (
        ("float (exact)", float_model, True),
        ("int8 (surrogate)", quantized, True),
        ("int8 (gradient-free)", quantized, False),
    ):
        start = time.perf_counter()
        search = _search(model, x, protocol, gradients)
        runs[name] = (search, time.perf_counter() - start)
    eps = load_protocol(protocol).perturbation.budget.eps  # type: ignore[union-attr]
    print(f"\n{protocol}: " + ", ".join(f"{n} {s:.1f} s" for n, (_, s) in runs.items()))
    print("  eps     image  float    int8 surrogate  ratio   int8 gradient-free  ratio")
    worst = np.inf
    for k, e in enumerate(eps):
        for i in range(images):
            ref = float(runs["float (exact)"][0].results[k].change[i])
            sur = float(runs["int8 (surrogate)"][0].results[k].change[i])
            free = float(runs["int8 (gradient-free)"][0].results[k].change[i])
            ratio = sur / max(ref, 1e-12)
            worst = min(worst, ratio)
            print(
                f"  {e:<7g} {i:<6d} {ref:<8.4f} {sur:<15.4f} {ratio:<7.3f} {free:<19.4f} "
                f"{free / max(ref, 1e-12):.3f}"
            )
    return worst


def _audit_seconds(model: LoadedModel) -> float:
    start = time.perf_counter()
    run_suite(model, None, load_protocol("quick"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--standard", action="store_true", help="also the standard protocol")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--no-audit", action="store_true", help="skip (b), the audit times")
    parser.add_argument("--no-search", action="store_true", help="skip (a), the searches")
    parser.add_argument("--audit-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as run_suite does
    print(f"{torch.get_num_threads()} threads")
    float_model = load(EXAMPLE / "model.onnx", EXAMPLE / "manifest.json")
    with tempfile.TemporaryDirectory() as tmp:
        quantized = _quantized(Path(tmp), float_model)
        s = quantized.summary()
        print(
            f"int8 QDQ: {s['gradient_access']}, {s['gradient_route']}, surrogate parity "
            f"{s['parity_error']:.4f}; forward backend {s['forward_backend']}"
        )
        protocols = ["quick", "standard"] if args.standard else ["quick"]
        if not args.no_search:
            worst = {p: _strength(float_model, quantized, p, args.images) for p in protocols}
            summary = ", ".join(f"{p} {w:.3f}" for p, w in worst.items())
            print(f"\nworst ratio int8 surrogate / float: {summary} (target >= 0.9)")
        if not args.no_audit:
            # alternated, the fastest of each: the machine is shared
            runs: dict[str, list[float]] = {"float": [], "int8": []}
            for _ in range(args.audit_repeats):
                for name, model in (("float", float_model), ("int8", quantized)):
                    runs[name].append(_audit_seconds(model))
                    print(f"  quick audit, {name}: {runs[name][-1]:.1f} s", flush=True)
            times = {name: min(seconds) for name, seconds in runs.items()}
            print(
                f"quick audit: float {times['float']:.1f} s, int8 {times['int8']:.1f} s, "
                f"ratio {times['int8'] / times['float']:.2f} (target <= 1.5)"
            )


if __name__ == "__main__":
    main()
