"""Coil sensitivity maps for multi-coil MRI: shipped with the model, estimated by ESPIRiT from
the ACS region of measured k-space, or simulated (birdcage, for simulations).

ESPIRiT (Uecker et al., MRM 2014) is SigPy's maintained implementation,
``sigpy.mri.app.EspiritCalib``; it is calibrated on the centred square of k-space the
training mask samples fully (its ACS region), so the maps use only what the network's
acquisition measures. SigPy's centred orthonormal FFT is the convention of
:mod:`reconstruction.operators.mri`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from reconstruction.data import array_sha256

__all__ = ["Espirit", "acs_width", "espirit_maps", "maps_record"]


@dataclass(frozen=True)
class Espirit:
    """ESPIRiT's parameters (SigPy's defaults but the calibration width, which is the mask's
    ACS width): ``kernel_width`` (k-space kernel), ``thresh`` (singular values kept, relative
    to the largest), ``crop`` (eigenvalue threshold: maps are zero where the largest
    eigenvalue is below it, i.e. outside the object), ``max_iter`` (power iterations)."""

    kernel_width: int = 6
    thresh: float = 0.02
    crop: float = 0.95
    max_iter: int = 100


def acs_width(mask: np.ndarray) -> int:
    """The side of the largest centred square (around ``(H//2, W//2)``) the mask samples fully.

    >>> m = np.zeros((16, 16), dtype=bool); m[:, 6:11] = True
    >>> acs_width(m)
    5
    """
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    side = 0
    for s in range(1, min(h, w) + 1):
        top, left = h // 2 - s // 2, w // 2 - s // 2
        if not m[top : top + s, left : left + s].all():
            break
        side = s
    return side


def espirit_maps(
    kspace: np.ndarray, mask: np.ndarray, params: Espirit = Espirit()
) -> tuple[np.ndarray, dict[str, Any]]:
    """ESPIRiT maps ``[C, H, W]`` (complex64) from the ACS region of the measured ``kspace``
    ``[C, H, W]`` (centred) that ``mask`` samples fully, and how they were made (the
    implementation and its parameters).
    ``ValueError`` when the mask's ACS region is smaller than the kernel."""
    from sigpy import Device
    from sigpy.mri.app import EspiritCalib

    k = np.asarray(kspace)
    if k.ndim != 3:
        raise ValueError(f"ESPIRiT needs multi-coil k-space [C, H, W], got {list(k.shape)}")
    width = acs_width(mask)
    if width <= params.kernel_width:
        raise ValueError(
            f"the sampling mask's fully sampled centre is {width}x{width}: ESPIRiT needs more "
            f"than its kernel width {params.kernel_width} (ship maps with sampling.sensitivities "
            "instead)"
        )
    maps = EspiritCalib(
        k.astype(np.complex128),
        calib_width=width,
        thresh=params.thresh,
        kernel_width=params.kernel_width,
        crop=params.crop,
        max_iter=params.max_iter,
        device=Device(-1),
        show_pbar=False,
    ).run()
    maps = np.asarray(maps, dtype=np.complex64)
    record = {
        "implementation": "sigpy.mri.app.EspiritCalib",
        "sigpy": version("sigpy"),
        "calib_width": width,
        **asdict(params),
    }
    return maps, record


def maps_record(source: str, maps: np.ndarray, **extra: Any) -> dict[str, Any]:
    """What results.json says of the maps in use: their source (``shipped``, ``espirit``,
    ``birdcage``), coil count and the SHA-256 of the normalised maps (complex64)."""
    return {
        "source": source,
        "coils": int(maps.shape[0]),
        "sha256": array_sha256(np.asarray(maps, dtype=np.complex64)),
        **extra,
    }
