"""The field's own architectures, built from their packages and exported as docs/models.md
shows: fastMRI's U-Net (TorchScript) and E2E-VarNet (TorchScript: it takes its mask and number
of low frequencies), deepinv's VarNet (torch.export, ``forward(y, physics)`` behind the wrapper
its users export) and MoDL (TorchScript trace). Each goes through intake and an audit under the
``quick`` protocol. Untrained, small instances: this checks how networks are called, not how
good they are."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import deepinv
import pytest
import torch
from deepinv.models import DnCNN, MoDL
from deepinv.models import VarNet as DeepinvVarNet
from fastmri.models import Unet, VarNet
from torch import Tensor

from reconstruction.data import builtin_images
from reconstruction.instability.common import seeded
from reconstruction.instability.more_samples import sampling_ladder
from reconstruction.models import ModelError, load
from reconstruction.models.extras import low_frequency_count
from reconstruction.operators import MultiCoilMRI
from reconstruction.protocols import Protocol, load_protocol
from reconstruction.suite import prepare_images, run_suite

SIZE = 32
LINES = {"kind": "lines", "ratio": 0.25, "seed": 0, "centre": 0.1}
VARNET_MANIFEST: dict[str, Any] = {
    "name": "e2e-varnet",
    "modality": "mri-multicoil",
    "image_size": [SIZE, SIZE],
    "input": {
        "domain": "measurements",
        "layout": "complex-last",
        "name": "masked_kspace",
        "extra": [
            {"role": "mask", "shape": [1, 1, 1, "W", 1], "dtype": "bool", "name": "mask"},
            {
                "role": "num_low_frequencies",
                "shape": [],
                "dtype": "int64",
                "name": "num_low_frequencies",
            },
        ],
    },
    "output": {"layout": "real0"},
    "sampling": {"pattern": LINES, "coils": 2},
}


def _write(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def _script(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        torch.jit.script(module.eval()).save(str(path))
    return path


def _trimmed_quick() -> Protocol:
    """The quick protocol with a search of a few iterations on one image (the multi-coil
    search is what makes an audit long on a CPU; its budget is not what these tests check)."""
    data = load_protocol("quick").model_dump(mode="json")
    data["name"] = "quick-trimmed"
    data["images"]["max_images"] = 1
    budget = data["perturbation"]["budget"]
    budget.update(eps=[0.01], restarts=1, iterations=3, min_iterations=2, plateau_window=2)
    data["perturbation"]["threat_models"] = ["measurement"]
    return Protocol.model_validate(data)


@pytest.fixture(scope="module")
def varnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("e2e-varnet")
    torch.manual_seed(0)
    net = VarNet(num_cascades=2, sens_chans=4, sens_pools=2, chans=4, pools=2)
    return _script(net, folder / "varnet.ts"), _write(folder, VARNET_MANIFEST)


@pytest.mark.slow
def test_fastmri_unet_torchscript_quick_audit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _script(Unet(in_chans=1, out_chans=1, chans=4, num_pool_layers=2), tmp_path / "u.ts")
    manifest = {
        "name": "fastmri-unet",
        "modality": "mri",
        "image_size": [SIZE, SIZE],
        "input": {"domain": "image", "layout": "real1", "part": "magnitude", "name": "image"},
        "output": {"layout": "real1"},
        "sampling": {"pattern": LINES},
    }
    loaded = load(model, _write(tmp_path, manifest))
    assert loaded.gradient_access == "white-box"
    assert [i["role"] for i in loaded.summary()["inputs"]] == ["image"]
    result = run_suite(loaded, None, load_protocol("quick"))
    assert all(t.verdict != "skipped" for t in result.tests.values()), result.tests


@pytest.mark.slow
def test_e2e_varnet_takes_each_ladder_mask(varnet: tuple[Path, Path]) -> None:
    model_path, manifest_path = varnet
    loaded = load(model_path, manifest_path)
    inputs = loaded.summary()["inputs"]
    assert [(i["role"], i["shape"], i["dtype"]) for i in inputs] == [
        ("measurements", [-1, 2, SIZE, SIZE, 2], "float32"),
        ("mask", [1, 1, 1, SIZE, 1], "bool"),
        ("num_low_frequencies", [], "int64"),
    ]
    assert loaded.gradient_access == "white-box"
    protocol = load_protocol("quick")
    assert protocol.sampling is not None
    ladder = sampling_ladder(
        loaded.operator, list(protocol.sampling.factors), seeded(protocol.seed, 30)
    )
    assert len(ladder) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(model_path))
    truth = torch.from_numpy(prepare_images(builtin_images(SIZE)[:1], (SIZE, SIZE), (0.0, 1.0))[0])
    for _, _, op in ladder:
        assert isinstance(op, MultiCoilMRI)
        y = op.A(truth)
        kspace = torch.view_as_real(op.to_grid(y)).float()
        mask = op.mask[0].reshape(1, 1, 1, SIZE, 1)
        with torch.no_grad():
            direct: Tensor = scripted(kspace, mask, low_frequency_count(op.mask))
            audited = loaded.reconstructor(op, differentiable=False)(y)
        torch.testing.assert_close(audited, direct)
    result = run_suite(loaded, None, protocol, only=("structural", "sampling"))
    sampling = result.tests["sampling"]
    assert sampling.verdict != "skipped", sampling.reason
    assert [row["ratio"] for row in sampling.numbers["ladder"]] == [r for _, r, _ in ladder]


@pytest.mark.slow
def test_e2e_varnet_perturbation_search_through_its_inputs(varnet: tuple[Path, Path]) -> None:
    loaded = load(*varnet)
    result = run_suite(loaded, None, _trimmed_quick(), only=("perturbation",))
    assert result.tests["perturbation"].verdict != "skipped", result.tests["perturbation"].reason


def test_e2e_varnet_manifest_without_its_mask_is_refused(
    varnet: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest = json.loads(json.dumps(VARNET_MANIFEST))
    manifest["input"]["extra"] = manifest["input"]["extra"][1:]
    with pytest.raises(ModelError, match=r"'input.extra.0.name'.*at that position is 'mask'"):
        load(varnet[0], _write(tmp_path, manifest))
    manifest = json.loads(json.dumps(VARNET_MANIFEST))
    manifest["input"]["extra"][1]["shape"] = [1]
    with pytest.raises(ModelError, match=r"'input.extra.1.shape'.*Python Optional\[int\]"):
        load(varnet[0], _write(tmp_path, manifest))


class _DeepinvExport(torch.nn.Module):
    """How deepinv's users export a model: ``forward(y, physics)`` behind a module that takes
    the measurements and the mask, and builds the physics from them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, y: Tensor, mask: Tensor) -> Tensor:
        physics = deepinv.physics.MRI(mask=mask, img_size=tuple(mask.shape), device=y.device)
        out: Tensor = self.model(y, physics)
        return out


DEEPINV_MANIFEST: dict[str, Any] = {
    "name": "deepinv-net",
    "modality": "mri",
    "image_size": [SIZE, SIZE],
    "input": {
        "domain": "measurements",
        "layout": "complex2",
        "name": "y",
        "extra": [{"role": "mask", "shape": ["H", "W"], "dtype": "float32", "name": "mask"}],
    },
    "output": {"layout": "complex2"},
    "sampling": {"pattern": {"kind": "variable-density", "ratio": 0.3, "seed": 0}},
}


def _deepinv_example() -> tuple[Tensor, Tensor]:
    mask = torch.zeros(SIZE, SIZE)
    mask[:, ::3] = 1.0
    return torch.randn(1, 2, SIZE, SIZE) * mask, mask


@pytest.mark.slow
def test_deepinv_varnet_torch_export_quick_audit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    denoiser = DnCNN(2, 2, pretrained=None, depth=3, nf=8)
    net = _DeepinvExport(DeepinvVarNet(denoiser=denoiser, num_cascades=2)).eval()
    program = torch.export.export(net, _deepinv_example())
    torch.export.save(program, str(tmp_path / "varnet.pt2"))
    loaded = load(tmp_path / "varnet.pt2", _write(tmp_path, DEEPINV_MANIFEST))
    assert (loaded.gradient_access, loaded.max_batch) == ("white-box", 1)
    assert [i["role"] for i in loaded.summary()["inputs"]] == ["measurements", "mask"]
    result = run_suite(loaded, None, load_protocol("quick"))
    assert all(t.verdict != "skipped" for t in result.tests.values()), result.tests


def test_deepinv_modl_torchscript_trace_is_accepted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _DeepinvExport(MoDL(denoiser=DnCNN(2, 2, pretrained=None, depth=3, nf=8), num_iter=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation, the tracer's notes
        torch.jit.trace(net.eval(), _deepinv_example()).save(str(tmp_path / "modl.ts"))
    loaded = load(tmp_path / "modl.ts", _write(tmp_path, DEEPINV_MANIFEST))
    assert (loaded.gradient_access, loaded.max_batch) == ("white-box", None)
    manifest = json.loads(json.dumps(DEEPINV_MANIFEST))
    manifest["input"]["extra"] = []
    with pytest.raises(ModelError, match=r"'input.extra': the TorchScript network takes 2"):
        load(tmp_path / "modl.ts", _write(tmp_path, manifest))
