"""The shipped reference networks: formats, gradients, parity, quality beside the baselines,
and the training script itself (a short smoke run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.evaluate import NETWORKS, held_out_images
from examples.train import train
from reconstruction.metrics import psnr
from reconstruction.models import load, magnitude

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MAX_BYTES = 20 * 2**20


def test_reference_networks_fit_the_size_budget() -> None:
    shipped = [p for name in NETWORKS for p in (EXAMPLES / name).iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) <= MAX_BYTES


@pytest.mark.parametrize("name", NETWORKS)
def test_reference_network_loads_white_box_and_beats_zero_filling(name: str) -> None:
    folder = EXAMPLES / name
    model = load(folder / "model.onnx", folder / "manifest.json")
    summary = model.summary()
    assert summary["gradient_access"] == "white-box"
    assert summary["parity_error"] <= 1e-4
    assert summary["fixed_size"] == (name == "automap-mri")
    truth = held_out_images(model)[:3]
    y = model.operator.A(truth)
    with torch.no_grad():
        network = psnr(magnitude(model.reconstructor()(y)), truth)
        direct = psnr(magnitude(model.operator.A_dagger(y)).float(), truth)
    assert float(network.mean()) > float(direct.mean()) + 2.0


def test_unet_formats_agree() -> None:
    folder = EXAMPLES / "unet-mri"
    models = {
        path: load(folder / path, folder / "manifest.json")
        for path in ("model.onnx", "model.pt2", "model.torchscript")
    }
    assert {m.format for m in models.values()} == {"onnx", "torch.export", "torchscript"}
    y = models["model.onnx"].operator.A(held_out_images(models["model.onnx"])[:2])
    with torch.no_grad():
        outputs = [m.reconstructor()(y) for m in models.values()]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-4, atol=1e-5)


def test_training_script_smoke_run(tmp_path: Path) -> None:
    record = train("automap-mri", tmp_path, steps=2)
    assert record["steps"] == 2
    folder = tmp_path / "automap-mri"
    assert json.loads((folder / "manifest.json").read_text())["input"]["domain"] == "samples"
    model = load(folder / "model.onnx", folder / "manifest.json")
    assert model.fixed_size
