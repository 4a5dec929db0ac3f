"""Clean quality of the reference networks beside A_dagger and the CS baselines.

    python -m examples.evaluate          # prints the README table, writes examples/results.json

Test images were never used in training: Shepp-Logan and random-ellipse phantoms of another
seed (:data:`TEST_SEED`), at each network's size, scaled to its intensity range, noise-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reconstruction import baselines, metrics
from reconstruction.data import random_ellipses, resize_image, scale_to_range, shepp_logan
from reconstruction.models import LoadedModel, load, magnitude

HERE = Path(__file__).resolve().parent
NETWORKS = ("unet-mri", "fbpconvnet-ct", "unrolled-mri", "automap-mri")
TEST_SEED = 1000
TEST_ELLIPSES = 8


def held_out_images(model: LoadedModel) -> torch.Tensor:
    size = model.manifest.image_size
    rng = model.manifest.intensity_range
    phantoms = [resize_image(shepp_logan(size[0]), size)]
    phantoms += list(random_ellipses(TEST_ELLIPSES, size[0], TEST_SEED))
    scaled = [scale_to_range(np.asarray(p), rng) for p in phantoms]
    return torch.from_numpy(np.stack(scaled).astype(np.float32))


def evaluate(name: str, root: Path = HERE) -> dict[str, Any]:
    folder = root / name
    model = load(folder / "model.onnx", folder / "manifest.json")
    truth = held_out_images(model)
    op = model.operator
    y = op.A(truth)
    with torch.no_grad():
        candidates = {
            "network": magnitude(model.reconstructor()(y)),
            "A_dagger": magnitude(op.A_dagger(y)),
            "l1_wavelet": magnitude(baselines.l1_wavelet(y, op)),
            "total_variation": magnitude(baselines.total_variation(y, op)),
        }
    scores: dict[str, Any] = {}
    for method, image in candidates.items():
        psnr = metrics.psnr(image.float(), truth)
        scores[method] = {
            "psnr_db_mean": float(psnr.mean()),
            "psnr_db_shepp_logan": float(psnr[0]),
            "ssim_mean": float(metrics.ssim(image.float(), truth).mean()),
        }
    return {
        "name": name,
        "manifest_name": model.name,
        "modality": model.manifest.modality,
        "image_size": list(model.manifest.image_size),
        "sampling": model.summary()["sampling_ratio"] or model.manifest.sampling.angles,
        "gradient_access": model.gradient_access,
        "parity_error": model.summary()["parity_error"],
        "test_images": f"shepp-logan + random_ellipses({TEST_ELLIPSES}, seed={TEST_SEED})",
        "scores": scores,
    }


def table(results: list[dict[str, Any]]) -> str:
    methods = ("network", "A_dagger", "l1_wavelet", "total_variation")
    lines = [
        "| network | sampling | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for r in results:
        sampling = r["sampling"]
        label = f"{sampling:.0%}" if isinstance(sampling, float) else f"{sampling} angles"
        cells = [
            f"{r['scores'][m]['psnr_db_mean']:.2f} ({r['scores'][m]['psnr_db_shepp_logan']:.2f})"
            for m in methods
        ]
        lines.append(f"| {r['name']} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    results = [evaluate(name) for name in NETWORKS]
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))  # noqa: T201


if __name__ == "__main__":
    main()
