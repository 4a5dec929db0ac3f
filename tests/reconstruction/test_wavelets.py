"""The torch wavelet transform: PyWavelets agreement, orthonormality, perfect reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from reconstruction.wavelets import Wavelet2D, compile_enabled, max_levels

CASES = [
    ("haar", (32, 48), 3),
    ("db2", (64, 64), 3),
    ("db4", (128, 96), 3),
    ("db4", (256, 256), 4),
    ("sym4", (64, 128), 2),
    ("coif1", (64, 64), 2),
]


@pytest.mark.parametrize(("name", "shape", "levels"), CASES)
def test_matches_pywavelets_periodization(name: str, shape: tuple[int, int], levels: int) -> None:
    x = np.random.default_rng(0).standard_normal(shape)
    ours = Wavelet2D(shape, name, levels).forward(torch.from_numpy(x)[None])[0].numpy()
    reference, _ = pywt.coeffs_to_array(pywt.wavedec2(x, name, mode="periodization", level=levels))
    np.testing.assert_allclose(ours, reference, atol=1e-12)


@pytest.mark.parametrize(("name", "shape", "levels"), CASES)
def test_orthonormal_and_perfect_reconstruction(
    name: str, shape: tuple[int, int], levels: int, device: str
) -> None:
    w = Wavelet2D(shape, name, levels)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, *shape, generator=gen, dtype=torch.float64).to(device)
    c = w.forward(x)
    assert c.shape == x.shape
    torch.testing.assert_close(w.inverse(c), x)
    torch.testing.assert_close(torch.linalg.vector_norm(c), torch.linalg.vector_norm(x))
    # inverse is the adjoint: <W x, c'> = <x, W^T c'>
    c2 = torch.randn(3, *shape, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(torch.sum(c * c2), torch.sum(x * w.inverse(c2)))


def test_complex_and_float32() -> None:
    w = Wavelet2D((64, 64), "db4", 3)
    z = torch.randn(2, 64, 64, dtype=torch.complex64)
    c = w.forward(z)
    assert c.dtype == torch.complex64
    torch.testing.assert_close(c.real, w.forward(z.real))
    torch.testing.assert_close(w.inverse(c), z, atol=1e-5, rtol=1e-5)


def test_differentiable() -> None:
    w = Wavelet2D((32, 32), "db2", 2)
    x = torch.randn(1, 32, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: w.forward(t), (x,))
    assert torch.autograd.gradcheck(lambda t: w.inverse(t), (x,))


def test_approximation_mask_and_levels() -> None:
    w = Wavelet2D((256, 128), "db4")
    assert w.levels == 4
    mask = w.approximation_mask()
    assert int(mask.sum()) == (256 // 16) * (128 // 16)
    assert mask[:16, :8].all()
    assert max_levels(256, "db4") == 5
    assert max_levels(96, "haar") == 5


def test_bad_configurations() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        Wavelet2D((30, 30), "db4", levels=3)
    with pytest.raises(ValueError, match="not orthogonal"):
        Wavelet2D((64, 64), "bior2.2")
    with pytest.raises(ValueError, match="unknown wavelet"):
        Wavelet2D((64, 64), "nope")
    with pytest.raises(ValueError, match=r"expects \[B, 64, 64\]"):
        Wavelet2D((64, 64), "haar").forward(torch.zeros(64, 64))


def test_compiled_kernels_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    w = Wavelet2D((64, 64), "db4", 3)
    x = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(4))
    eager_c, eager_x = w.forward(x), w.inverse(x)
    monkeypatch.setenv("RECON_AUDIT_COMPILE", "1")
    assert compile_enabled()
    torch.testing.assert_close(w.forward(x), eager_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.inverse(x), eager_x, atol=1e-5, rtol=1e-5)
    # recorded gradients take the eager path, which supports double backward
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.sum(w.forward(xg) ** 2), xg, create_graph=True)
    torch.testing.assert_close(g, 2 * x)
