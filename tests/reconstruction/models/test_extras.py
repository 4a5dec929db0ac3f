"""Extra network inputs: manifest rules, how each is made for the operator, and that the
more-samples test hands the network the mask (and count) of each ladder step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from reconstruction import sampling
from reconstruction.data import builtin_images
from reconstruction.instability.common import seeded
from reconstruction.instability.more_samples import run_more_samples, sampling_ladder
from reconstruction.models import (
    ManifestError,
    ModelError,
    build_operator,
    from_module,
    load_manifest,
)
from reconstruction.models.extras import low_frequency_count, make_extras
from reconstruction.operators import MultiCoilMRI, SingleCoilMRI
from reconstruction.protocols import load_protocol
from reconstruction.suite import prepare_images
from tests.reconstruction.models.conftest import SIZE, write_manifest

LINES = {"pattern": {"kind": "lines", "ratio": 0.25, "seed": 0, "centre": 0.1}}
MASK = {"role": "mask", "shape": [1, 1, 1, "W", 1], "dtype": "bool"}
LOW = {"role": "num_low_frequencies", "shape": [], "dtype": "int64"}


def test_low_frequency_count_follows_fastmri_placement() -> None:
    mask = np.zeros((8, 64), dtype=bool)
    mask[:, 30:35] = True  # fastMRI puts 5 low frequencies at (64 - 5 + 1) // 2 = 30
    assert low_frequency_count(mask) == 5
    mask[:, 36] = True  # not adjacent: not part of the block
    assert low_frequency_count(mask) == 5
    mask[3, 32] = False
    assert low_frequency_count(mask) == 0
    lines = sampling.pattern_mask("lines", (SIZE, 64), 0.25, 0, center_fraction=0.08)
    assert low_frequency_count(lines) >= round(0.08 * 64)


def test_mask_and_count_follow_the_operator(tmp_path: Path) -> None:
    m = load_manifest(write_manifest(tmp_path, sampling=LINES, input={"extra": [MASK, LOW]}))
    op = build_operator(m, tmp_path)
    assert isinstance(op, SingleCoilMRI)
    mask, count = make_extras(m, op)
    assert mask.tensor.shape == (1, 1, 1, SIZE, 1)
    assert mask.tensor.dtype == torch.bool
    assert torch.equal(mask.tensor[0, 0, 0, :, 0], op.mask[0])
    assert count.tensor.shape == ()
    assert int(count.tensor) == low_frequency_count(op.mask)


def test_batch_axis_and_complex_last_sensitivities(tmp_path: Path) -> None:
    maps = {"role": "sensitivities", "shape": ["B", "C", "H", "W", 2], "dtype": "float32"}
    m = load_manifest(
        write_manifest(
            tmp_path,
            modality="mri-multicoil",
            sampling={**LINES, "coils": 3},
            input={"domain": "measurements", "layout": "complex-last", "extra": [maps]},
        )
    )
    op = build_operator(m, tmp_path)
    assert isinstance(op, MultiCoilMRI)
    (extra,) = make_extras(m, op)
    handed = extra.at(4, "cpu")
    assert handed.shape == (4, 3, SIZE, SIZE, 2)
    torch.testing.assert_close(
        torch.view_as_complex(handed[2].contiguous()), op.sensitivities.to(torch.complex64)
    )


def test_a_mask_that_cannot_take_the_shape_names_the_field(tmp_path: Path) -> None:
    m = load_manifest(write_manifest(tmp_path, input={"extra": [MASK]}))  # variable density: 2-D
    with pytest.raises(ModelError, match=r"'input.extra.0.shape'.*masks of whole columns"):
        make_extras(m, build_operator(m, tmp_path))


@pytest.mark.parametrize(
    ("extra", "overrides", "message"),
    [
        ({"role": "constant", "shape": [], "dtype": "float32"}, {}, "only for it"),
        ({**MASK, "dtype": "complex64"}, {}, "not complex64"),
        ({**MASK, "shape": [1, "W", "H"]}, {}, "in the order B, H, W"),
        ({**MASK, "shape": [1, 1, 368, 1]}, {}, "not fixed sizes"),
        ({"role": "sensitivities", "shape": ["C", "H", "W"], "dtype": "float32"}, {}, "end in 2"),
        ({"role": "sensitivities", "shape": ["C", "H", "W"], "dtype": "complex64"}, {}, "coil"),
        ({**LOW, "shape": ["W"]}, {}, "has no axis 'W'"),
        (MASK, {"modality": "ct", "sampling": {"angles": 8}}, "for MRI, not 'ct'"),
    ],
)
def test_bad_extras_are_refused(
    tmp_path: Path, extra: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    layout = {"layout": "real1"} if overrides else {}
    path = write_manifest(
        tmp_path, input={"extra": [extra], **layout}, **({"output": layout} | overrides)
    )
    with pytest.raises(ManifestError, match=message):
        load_manifest(path)


class _Recording(torch.nn.Module):
    """The zero-filled image of the k-space it is given, recording each mask and count."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Tensor, int]] = []

    def forward(self, k: Tensor, mask: Tensor, count: Tensor) -> Tensor:
        self.seen.append((mask[0, 0, 0, :, 0].clone(), int(count)))
        z = torch.complex(k[..., 0], k[..., 1])
        image = torch.fft.fftshift(
            torch.fft.ifft2(torch.fft.ifftshift(z, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
        )
        out: Tensor = image.abs()
        return out


def test_more_samples_hands_the_network_each_ladder_mask(tmp_path: Path) -> None:
    m = load_manifest(
        write_manifest(
            tmp_path,
            sampling=LINES,
            input={"domain": "measurements", "layout": "complex-last", "extra": [MASK, LOW]},
            output={"layout": "real0"},
        )
    )
    network = _Recording()
    model = from_module(network, m, base_dir=tmp_path)
    protocol = load_protocol("quick")
    truth, _ = prepare_images(builtin_images(SIZE)[:2], m.image_size, m.intensity_range)
    network.seen.clear()
    result = run_more_samples(model, torch.from_numpy(truth), protocol)
    assert result.verdict != "skipped", result.reason
    assert protocol.sampling is not None
    ladder = sampling_ladder(
        model.operator, list(protocol.sampling.factors), seeded(protocol.seed, 30)
    )
    handed = {tuple(mask.tolist()): count for mask, count in network.seen}
    assert len(handed) == len(ladder)
    for _, _, op in ladder:
        assert isinstance(op, SingleCoilMRI)
        columns = tuple(op.mask[0].tolist())
        assert handed[columns] == low_frequency_count(op.mask)
