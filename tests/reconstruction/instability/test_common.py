"""What the tests share: measurements from measured data, and the metric conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reconstruction import metrics
from reconstruction.data import random_ellipses
from reconstruction.instability.common import AuditData, Scoring, measure, scores
from reconstruction.measured import simulated_kspace
from reconstruction.operators import MultiCoilMRI
from reconstruction.protocols import load_protocol


def test_measurements_come_from_the_data_when_measured() -> None:
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, ::2] = True
    op = MultiCoilMRI(mask, 3)
    truth = torch.from_numpy(random_ellipses(2, 16, 0))
    assert torch.equal(measure(op, truth, None), op.A(truth))
    assert torch.equal(measure(op, truth, AuditData()), op.A(truth))
    kspace = torch.from_numpy(np.stack([simulated_kspace(t, op) for t in truth.numpy()]))
    np.testing.assert_allclose(measure(op, truth, AuditData(kspace=kspace)), op.A(truth), atol=1e-5)
    # measured data are not the operator's: a different object in the k-space is used
    other = kspace.flip(-1)
    assert torch.equal(measure(op, truth, AuditData(kspace=other)), op.from_grid(other))


def test_metric_conventions() -> None:
    truth = torch.from_numpy(random_ellipses(2, 32, 1))
    image = truth + 0.05 * torch.from_numpy(np.random.default_rng(0).standard_normal((2, 32, 32)))
    quick = load_protocol("quick")
    assert Scoring.of(quick, None)(image, truth) == scores(image, truth)
    peaks = torch.tensor([1.5, 2.0])
    fastmri = Scoring("fastmri", peaks)
    got = fastmri(image, truth)
    assert set(got) == {"psnr_db", "ssim", "nmse"}
    expected = metrics.psnr(image.float(), truth, data_range=peaks)
    assert got["psnr_db"] == pytest.approx([float(v) for v in expected])
    assert got["psnr_db"][1] > scores(image, truth)["psnr_db"][1]  # a larger data range
    assert got["nmse"] == pytest.approx([float(v) for v in metrics.nmse(image, truth)])
    # without the volume's maximum: each image's own maximum
    assert Scoring("fastmri")(image, truth)["psnr_db"] == pytest.approx(
        [float(v) for v in metrics.psnr(image.float(), truth, data_range=torch.ones(2))]
    )
