"""One prepared GPU check (issue "Verdicts you can trust I"): the ``standard`` protocol on a
256x256 U-Net with 8 images on one GPU (target <= 60 s on an H100/H200), and the worst-case
search with its starts batched along the batch dimension vs the same starts run one after the
other (target >= 5x).

The U-Net is the reference architecture of ``examples/networks.py`` (32 channels), seeded and
untrained: this times the audit, it does not judge the network. Runs on the CPU too (use a
small ``--size`` there: a smoke test of the script, not the measurement).

Run: ``python -m benchmarks.gpu_standard [--device cuda] [--size 256] [--images 8]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from examples.networks import UNet
from reconstruction import sampling
from reconstruction.attacks import budget_search
from reconstruction.data import LoadedImage, random_ellipses
from reconstruction.instability.common import network_reconstructor
from reconstruction.models import Manifest, from_module
from reconstruction.protocols import load_protocol
from reconstruction.suite import run_suite


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    protocol = load_protocol("standard")
    numbers: dict[str, object] = {"device": args.device, "size": args.size}
    if args.device.startswith("cuda"):
        numbers["gpu"] = torch.cuda.get_device_name()
    with tempfile.TemporaryDirectory() as tmp:
        mask = sampling.variable_density((args.size, args.size), 0.25, seed=0)
        np.save(Path(tmp) / "mask.npy", mask)
        manifest = Manifest.model_validate(
            {
                "name": "unet-256-untrained",
                "modality": "mri",
                "image_size": [args.size, args.size],
                "input": {"domain": "image", "layout": "complex2"},
                "output": {"layout": "complex2"},
                "sampling": {"mask": "mask.npy"},
            }
        )
        model = from_module(UNet(2, width=32), manifest, base_dir=tmp, device=args.device)
        arrays = random_ellipses(args.images, args.size, 5)
        images = [LoadedImage(a, f"ellipses-{i}", {}) for i, a in enumerate(arrays)]

        # batched vs sequential starts: the same starts, one batch or one at a time
        f = network_reconstructor(model)
        op = model.operator
        x = torch.from_numpy(arrays).to(args.device)
        y = op.A(x)
        settings = replace(protocol.perturbation.budget.settings(), both_ways=False)  # type: ignore[union-attr]
        eps = [0.01]
        budget_search(f, op, x, y, threat_model="image", eps=eps, settings=settings, seed=0)
        _sync(args.device)
        start = time.perf_counter()
        batched = budget_search(
            f, op, x, y, threat_model="image", eps=eps, settings=settings, seed=0
        )
        _sync(args.device)
        batched_s = time.perf_counter() - start
        single = replace(settings, restarts=1, keep=1)
        start = time.perf_counter()
        passes = 0
        for k in range(settings.restarts):
            run = budget_search(f, op, x, y, threat_model="image", eps=eps, settings=single, seed=k)
            passes += run.passes
        _sync(args.device)
        sequential_s = time.perf_counter() - start
        # per pass: the batched run may stop its starts at other iterations than the singles
        speedup = (sequential_s / passes) / (batched_s / batched.passes)
        numbers["batched_s"], numbers["sequential_s"] = batched_s, sequential_s
        numbers["batched_passes"], numbers["sequential_passes"] = batched.passes, passes
        numbers["speedup_per_pass"] = speedup
        print(
            f"starts batched: {batched_s:.2f} s for {batched.passes} passes; one at a time: "
            f"{sequential_s:.2f} s for {passes} passes; speed-up per pass {speedup:.1f}x "
            "(target >= 5x)"
        )

        start = time.perf_counter()
        result = run_suite(model, images, protocol, device=args.device)
        _sync(args.device)
        total = time.perf_counter() - start
        numbers["standard_s"] = total
        numbers["timings"] = result.timings
        numbers["verdicts"] = {name: t.verdict for name, t in result.tests.items()}
        print(
            f"standard, {args.images} images at {args.size}x{args.size}: {total:.1f} s "
            f"(target <= 60 s); per test: {result.timings}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
