"""Train and export the reference networks, seeded, on the CPU, with no downloads.

    python -m examples.train                 # all four, into examples/<name>/ (minutes)
    python -m examples.train unet-mri --out /tmp/nets --steps 20   # a quick smoke run

Each network folder gets ``model.onnx`` (dynamic batch, weights embedded), ``manifest.json``
and, for MRI, ``mask.npy``; ``unet-mri`` also ``model.pt2`` (torch.export) and
``model.torchscript`` (legacy TorchScript). Training inputs are made by the audit's own adapter
(:class:`reconstruction.models.Reconstructor`), so training and audit see the same conventions.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from examples.networks import Automap, UNet, UnrolledMRI
from reconstruction import sampling
from reconstruction.data import random_ellipses
from reconstruction.models import Manifest, Reconstructor, build_operator, sampling_mask
from reconstruction.operators import LinearOperator

HERE = Path(__file__).resolve().parent
TRAIN_SEED = 1
TORCH_SEED = 0


@dataclass(frozen=True)
class Spec:
    manifest: dict[str, Any]
    network: Callable[[LinearOperator, np.ndarray | None], nn.Module]
    steps: int
    batch: int = 8
    images: int = 1024
    lr: float = 1e-3
    extra_formats: bool = False
    #: (pattern, ratio, seed) of the mask shipped as mask.npy, for manifests that name one
    mask: tuple[sampling.Pattern, float, int] | None = None


SPECS: dict[str, Spec] = {
    "unet-mri": Spec(
        manifest={
            "name": "unet-mri-25",
            "modality": "mri",
            "image_size": [128, 128],
            "input": {"domain": "image", "layout": "complex2"},
            "output": {"layout": "complex2"},
            "sampling": {"mask": "mask.npy", "ratio": 0.25},
            "intensity_range": [0.0, 1.0],
            "description": "Post-processing U-Net on the zero-filled image; 25 % variable "
            "density; trained on random-ellipse phantoms.",
            "statement": "Trained on random-ellipse phantoms (seed 1); audited on Shepp-Logan, "
            "other ellipse seeds and bundled DICOMs, none of which were used in training.",
        },
        network=lambda _op, _mask: UNet(2),
        steps=800,
        mask=("variable-density", 0.25, 0),
        extra_formats=True,
    ),
    "fbpconvnet-ct": Spec(
        manifest={
            "name": "fbpconvnet-ell50",
            "modality": "ct",
            "image_size": [128, 128],
            "input": {"domain": "image", "layout": "real1"},
            "output": {"layout": "real1", "part": "real"},
            "sampling": {"angles": 50},
            "intensity_range": [0.0, 1.0],
            "description": "FBPConvNet-style U-Net on the filtered backprojection from 50 "
            "angles, trained on ellipses only (the paper's 'Ell 50' analogue).",
        },
        network=lambda _op, _mask: UNet(1),
        steps=800,
    ),
    "unrolled-mri": Spec(
        manifest={
            "name": "unrolled-mri-lines-33",
            "modality": "mri",
            "image_size": [96, 96],
            "input": {"domain": "measurements", "layout": "complex2"},
            "output": {"layout": "complex2"},
            "sampling": {"mask": "mask.npy", "ratio": 0.3333},
            "intensity_range": [0.0, 1.0],
            "description": "Three-cascade unrolled network with hard data consistency (FFT "
            "layers); zero-filled k-space in; random Cartesian lines, 1/3 of k-space.",
        },
        network=lambda _op, mask: UnrolledMRI(torch.as_tensor(mask)),
        steps=600,
        mask=("lines", 0.3333, 2),
    ),
    "automap-mri": Spec(
        manifest={
            "name": "automap-mri-32",
            "modality": "mri",
            "image_size": [32, 32],
            "input": {"domain": "samples", "layout": "complex2"},
            "output": {"layout": "real1", "part": "magnitude"},
            "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.4, "seed": 3}},
            "intensity_range": [0.0, 1.0],
            "description": "AUTOMAP-style fully connected network on 32x32 images; its input "
            "is the measurement vector (fixed size).",
        },
        network=lambda op, _mask: Automap(int(op.out_shape[0]), 32),
        steps=3000,
        batch=32,
        images=4096,
    ),
}


def _pairs(rec: Reconstructor, images: Tensor) -> tuple[Tensor, Tensor]:
    """Network inputs from simulated measurements, and targets in the output layout."""
    with torch.no_grad():
        inputs = rec.network_input(rec.op.A(images))
    if rec.manifest.output.layout == "complex2":
        targets = torch.stack([images, torch.zeros_like(images)], 1)
    else:
        targets = images[:, None]
    return inputs, targets


def train(name: str, out_dir: Path, steps: int | None = None) -> dict[str, Any]:
    spec = SPECS[name]
    raw = spec.manifest
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    if spec.mask is not None:
        kind, ratio, seed = spec.mask
        np.save(
            folder / "mask.npy", sampling.pattern_mask(kind, tuple(raw["image_size"]), ratio, seed)
        )
    manifest = Manifest.model_validate(raw)
    mask = None if manifest.modality == "ct" else sampling_mask(manifest, folder)
    op = build_operator(manifest, folder, mask=mask)
    torch.manual_seed(TORCH_SEED)
    network = spec.network(op, mask)
    rec = Reconstructor(nn.Identity(), op, manifest)
    size = manifest.image_size[0]
    images = torch.from_numpy(random_ellipses(spec.images, size, TRAIN_SEED))
    inputs, targets = _pairs(rec, images)

    total = steps if steps is not None else spec.steps
    optimiser = torch.optim.Adam(network.parameters(), lr=spec.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda i: 0.5 * (1 + math.cos(math.pi * i / total))
    )
    gen = torch.Generator().manual_seed(TORCH_SEED)
    start = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(total):
        index = torch.randint(0, spec.images, (spec.batch,), generator=gen)
        loss = nn.functional.mse_loss(network(inputs[index]), targets[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    seconds = time.perf_counter() - start
    network.eval()
    # clone: a view would make torch.export store the whole training set as its sample input
    _export(network, inputs[:2].clone(), folder, spec.extra_formats)
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2) + "\n")
    record = {
        "name": name,
        "steps": total,
        "batch": spec.batch,
        "train_images": f"random_ellipses({spec.images}, {size}, seed={TRAIN_SEED})",
        "torch_seed": TORCH_SEED,
        "final_loss": float(loss.detach()),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _export(network: nn.Module, example: Tensor, folder: Path, extra: bool) -> None:
    batch = torch.export.Dim("batch", min=1)
    dynamic = {"x": {0: batch}}

    class Wrapped(nn.Module):  # a fixed argument name for dynamic_shapes
        def __init__(self) -> None:
            super().__init__()
            self.net = network

        def forward(self, x: Tensor) -> Tensor:
            out: Tensor = self.net(x)
            return out

    wrapped = Wrapped().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (example,),
            str(folder / "model.onnx"),
            dynamo=True,
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
        if extra:
            program = torch.export.export(wrapped, (example,), dynamic_shapes=dynamic)
            torch.export.save(program, str(folder / "model.pt2"))
            torch.jit.trace(wrapped, example).save(str(folder / "model.torchscript"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(SPECS)} (default: all)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--steps", type=int, default=None, help="override (smoke runs)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(SPECS))
    if unknown:
        parser.error(f"unknown network(s) {', '.join(unknown)}: choose from {', '.join(SPECS)}")
    for name in args.names or list(SPECS):
        record = train(name, args.out, args.steps)
        print(json.dumps(record))  # noqa: T201


if __name__ == "__main__":
    main()
