"""Architectures of the reference networks (see examples/README.md).

They are small on purpose (trained on two CPU cores in minutes) but are the real kinds of
network the audit meets: a post-processing U-Net, an FBPConvNet, an unrolled cascade with
data-consistency layers (FFTs in the graph), and an AUTOMAP-style fully connected network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ReLU(),
    )


class UNet(nn.Module):
    """Residual U-Net (Jin et al.'s FBPConvNet layout, two scales): ``x + U(x)``."""

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()
        self.enc1 = _block(channels, width)
        self.enc2 = _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = _block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = _block(2 * width, width)
        self.head = nn.Conv2d(width, channels, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        out: Tensor = x + self.head(d1)
        return out


def _signs(n: int) -> Tensor:
    return torch.tensor([(-1.0) ** k for k in range(n)])


class CentredFFT(nn.Module):
    """The centred orthonormal 2-D DFT ``fftshift(fft2(ifftshift(x)))`` for even sizes, as
    sign modulations around a plain FFT (no rolls in the exported graph)."""

    checker: Tensor
    out_sign: Tensor

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        if height % 2 or width % 2:
            raise ValueError("CentredFFT needs even image sizes")
        checker = _signs(height)[:, None] * _signs(width)[None, :]
        self.register_buffer("checker", checker)
        # (-1)^(k - N/2) on the output side: the checkerboard times (-1)^(H/2 + W/2)
        self.register_buffer("out_sign", checker * (-1.0) ** ((height + width) // 2))

    def forward(self, z: Tensor, inverse: bool = False) -> Tensor:
        out: Tensor
        if inverse:
            out = torch.fft.ifft2(z * self.out_sign, norm="ortho") * self.checker
        else:
            out = torch.fft.fft2(z * self.checker, norm="ortho") * self.out_sign
        return out


class UnrolledMRI(nn.Module):
    """A small "Deep MRI"-like cascade (Schlemper et al.): CNN denoisers alternating with hard
    data consistency. Input: zero-filled centred k-space ``[B, 2, H, W]``; output: the image
    ``[B, 2, H, W]``. The training mask is part of the network."""

    keep: Tensor

    def __init__(self, mask: Tensor, cascades: int = 3, width: int = 24) -> None:
        super().__init__()
        h, w = mask.shape
        self.fft = CentredFFT(h, w)
        self.register_buffer("keep", 1.0 - mask.float())
        self.denoisers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 2, 3, padding=1),
            )
            for _ in range(cascades)
        )

    def forward(self, k0: Tensor) -> Tensor:
        k_measured = torch.complex(k0[:, 0], k0[:, 1])
        z = self.fft(k_measured, inverse=True)
        for denoise in self.denoisers:
            x = torch.stack([z.real, z.imag], 1)
            x = x + denoise(x)
            k = self.fft(torch.complex(x[:, 0], x[:, 1]))
            z = self.fft(k_measured + self.keep * k, inverse=True)
        return torch.stack([z.real, z.imag], 1)


class Automap(nn.Module):
    """AUTOMAP-style (Zhu et al., Nature 2018): fully connected layers from the measurement
    vector ``[B, 2, M]`` to an image, then a convolutional refinement; output ``[B, 1, N, N]``.
    Its input size is tied to the number of samples."""

    def __init__(self, samples: int, size: int, hidden: int = 512, width: int = 16) -> None:
        super().__init__()
        self.size = size
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * samples, hidden),
            nn.Tanh(),
            nn.Linear(hidden, size * size),
            nn.Tanh(),
        )
        self.refine = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1),
        )

    def forward(self, y: Tensor) -> Tensor:
        image = self.fc(y).reshape(-1, 1, self.size, self.size)
        out: Tensor = image + self.refine(image)
        return out
