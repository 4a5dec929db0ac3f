"""The small runs the report tests render (also the certificates' tests): a 48x48 MRI network
(identity plus a small convolution) through ``run_suite`` under a tiny protocol."""

from __future__ import annotations

import html
from pathlib import Path

import torch

from reconstruction.models import Manifest, from_module
from reconstruction.protocols import parse_protocol
from reconstruction.suite import SuiteResult, run_suite

PROTOCOL = """
name: report-test
version: "1"
seed: 0
images:
  max_images: 1
baseline:
  method: total_variation
  attack_iterations: 10
perturbation:
  threat_models: [image, measurement]
  budget:
    eps: [0.01, 0.02]
    restarts: 1
    iterations: 3
    step_size: 0.25
  pnas:
    iterations: 4
    max_norm: 0.02
  controls:
    noise_draws: 1
    persistence_noise: 0.25
structural:
  heights_px: [8]
  contrasts: [0.3]
sampling:
  factors: [0.5, 1.0, 2.0]
"""
#: structural only: perturbation and sampling are skipped ("not part of this protocol")
PROTOCOL_SKIPPING = """
name: report-test-skipping
version: "1"
images:
  max_images: 1
perturbation: null
structural:
  heights_px: [8]
  contrasts: [0.3]
sampling: null
"""


class _Net(torch.nn.Module):
    """Identity plus a small convolution (complex2 in and out)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + 0.01 * self.conv(x)
        return out


def suite(protocol_text: str) -> SuiteResult:
    manifest = Manifest.model_validate(
        {
            "name": "t",
            "modality": "mri",
            "image_size": [48, 48],
            "input": {"domain": "image", "layout": "complex2"},
            "output": {"layout": "complex2"},
            "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.3, "seed": 0}},
        }
    )
    model = from_module(_Net(), manifest)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared machine
    try:
        return run_suite(model, None, parse_protocol(protocol_text))
    finally:
        torch.set_num_threads(threads)


def page_text(path: Path) -> str:
    """The HTML as a reader sees it (entities decoded)."""
    return html.unescape(path.read_text(encoding="utf-8"))
