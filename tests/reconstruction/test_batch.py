from __future__ import annotations

import torch

from reconstruction.batch import gaussian, norms, per_item


def test_norms_and_per_item() -> None:
    t = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert norms(t).tolist() == [5.0, 1.0]
    image = torch.ones(2, 3, 4)
    assert (per_item(torch.tensor([1.0, 2.0]), image) * image)[1].sum() == 24.0


def test_gaussian_has_the_norms_asked_and_is_seeded() -> None:
    like = torch.zeros(3, 8, 8, dtype=torch.complex64)
    size = torch.tensor([0.5, 1.0, 2.0])
    first = gaussian(like, size, torch.Generator().manual_seed(4))
    assert first.dtype == torch.complex64
    torch.testing.assert_close(norms(first), size)
    assert torch.equal(first, gaussian(like, size, torch.Generator().manual_seed(4)))
    assert not torch.equal(first, gaussian(like, size, torch.Generator().manual_seed(5)))
