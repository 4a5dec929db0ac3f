from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reconstruction import sampling
from reconstruction.models import (
    ManifestError,
    build_operator,
    load_manifest,
    manifest_json_schema,
    sampling_mask,
)
from reconstruction.operators import MultiCoilMRI, ParallelBeamCT, SingleCoilMRI
from tests.reconstruction.models.conftest import SIZE, write_manifest

DOCS_SCHEMA = Path(__file__).parents[3] / "docs" / "manifest.schema.json"


def test_json_and_yaml_give_the_same_manifest(tmp_path: Path) -> None:
    path = write_manifest(tmp_path)
    data = json.loads(path.read_text())
    (tmp_path / "manifest.yaml").write_text(
        "name: test-net\nmodality: mri\nimage_size: [32, 32]\n"
        "input: {domain: image, layout: complex2}\noutput: {layout: complex2}\n"
        "sampling: {pattern: {kind: variable-density, ratio: 0.3, seed: 0}}\n"
        "intensity_range: [0.0, 1.0]\n"
    )
    assert load_manifest(path) == load_manifest(tmp_path / "manifest.yaml")
    assert load_manifest(path).model_dump(mode="json")["name"] == data["name"]


def test_published_schema_is_current() -> None:
    assert json.loads(DOCS_SCHEMA.read_text()) == manifest_json_schema()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"modality": "pet"}, "modality", "Input should be"),
        ({"image_size": [4, 32]}, "image_size.0", "greater than or equal to 8"),
        ({"intensity_range": [1.0, 0.0]}, None, "lo < hi"),
        ({"sampling": {}}, None, "exactly one of sampling.mask and .pattern"),
        ({"sampling": {"mask": "m.npy", "pattern": {"ratio": 0.2}}}, None, "exactly one"),
        ({"modality": "ct", "input": {"layout": "real1"}}, None, "sampling.angles is required"),
        (
            {"modality": "ct", "sampling": {"angles": 30}},
            None,
            "layout 'real1'",
        ),
        ({"modality": "mri-multicoil"}, None, "sampling.coils is required"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"input": {"domain": "kspace"}}, "input.domain", "Input should be"),
        (
            {"sampling": {"pattern": {"kind": "spiral", "ratio": 0.2}}},
            "sampling.pattern.kind",
            "Input should be",
        ),
        ({"sampling": {"pattern": {"ratio": 1.5}}}, "sampling.pattern.ratio", "less than"),
    ],
)
def test_invalid_manifests_name_the_field(
    tmp_path: Path, overrides: dict[str, Any], field: str | None, message: str
) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        load_manifest(write_manifest(tmp_path, **overrides))
    assert info.value.field == field


def test_unreadable_manifests(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON/YAML"):
        load_manifest(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="mapping of fields"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="cannot read manifest") as info:
        load_manifest(tmp_path / "missing.json")
    assert str(tmp_path) not in str(info.value)


def test_a_non_utf8_manifest_is_named_without_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ManifestError, match=r"^manifest manifest\.yaml is not UTF-8") as info:
        load_manifest(path)
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deeply_nested_manifests_are_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"manifest{suffix}"
    path.write_text('{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ManifestError, match=f"manifest{suffix} nests .* levels deep"):
        load_manifest(path)


def _mask_manifest(tmp_path: Path, name: str = "mask.npy", **sampling_extra: Any) -> Path:
    return write_manifest(tmp_path, sampling={"mask": name, **sampling_extra})


def test_mask_file_is_read_and_checked(tmp_path: Path) -> None:
    mask = sampling.variable_density((SIZE, SIZE), 0.25, 1)
    np.save(tmp_path / "mask.npy", mask)
    manifest = load_manifest(_mask_manifest(tmp_path, ratio=0.25))
    assert np.array_equal(sampling_mask(manifest, tmp_path), mask)
    assert manifest.training_ratio == 0.25
    manifest = load_manifest(_mask_manifest(tmp_path, ratio=0.5))
    with pytest.raises(ManifestError, match=r"not the stated 0\.5") as info:
        sampling_mask(manifest, tmp_path)
    assert info.value.field == "sampling.ratio"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../mask.npy", "relative path inside"),
        ("/etc/passwd", "relative path inside"),
        ("missing.npy", "not found beside the manifest"),
        ("link.npy", "symbolic link"),
        ("small.npy", "differs from image_size"),
        ("float.npy", "boolean"),
        ("empty.npy", "selects no k-space sample"),
        ("pickled.npy", "not a readable .npy"),
        ("zero-bytes.npy", "not a readable .npy"),
    ],
)
def test_bad_mask_files(tmp_path: Path, name: str, message: str) -> None:
    good = np.ones((SIZE, SIZE), bool)
    np.save(tmp_path / "good.npy", good)
    (tmp_path / "link.npy").symlink_to(tmp_path / "good.npy")
    np.save(tmp_path / "small.npy", np.ones((8, 8), bool))
    np.save(tmp_path / "float.npy", np.full((SIZE, SIZE), 0.5))
    np.save(tmp_path / "empty.npy", np.zeros((SIZE, SIZE), bool))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "zero-bytes.npy").write_bytes(b"")
    manifest = load_manifest(_mask_manifest(tmp_path, name))
    with pytest.raises(ManifestError, match=message) as info:
        sampling_mask(manifest, tmp_path)
    assert info.value.field == "sampling.mask"


def test_operators_from_manifests(tmp_path: Path) -> None:
    mri = load_manifest(write_manifest(tmp_path))
    assert isinstance(build_operator(mri, tmp_path), SingleCoilMRI)
    multi = load_manifest(
        write_manifest(
            tmp_path,
            modality="mri-multicoil",
            sampling={"pattern": {"kind": "lines", "ratio": 0.3}, "coils": 4},
        )
    )
    op = build_operator(multi, tmp_path)
    assert isinstance(op, MultiCoilMRI)
    assert op.out_shape[0] == 4
    ct = load_manifest(
        write_manifest(
            tmp_path,
            modality="ct",
            input={"layout": "real1"},
            output={"layout": "real1"},
            sampling={"angles": 20, "detectors": 40},
        )
    )
    op = build_operator(ct, tmp_path)
    assert isinstance(op, ParallelBeamCT)
    assert op.out_shape == (20, 40)


def _multicoil(tmp_path: Path, maps: np.ndarray | None, **sampling_extra: Any) -> Any:
    if maps is not None:
        np.save(tmp_path / "maps.npy", maps)
    sampling = {"pattern": {"kind": "lines", "ratio": 0.3}, "coils": 4, **sampling_extra}
    return load_manifest(write_manifest(tmp_path, modality="mri-multicoil", sampling=sampling))


def test_shipped_sensitivities_are_used(tmp_path: Path) -> None:
    from reconstruction.operators import birdcage_sensitivities

    maps = 2.0 * birdcage_sensitivities(4, (SIZE, SIZE), coil_radius=2.0)
    manifest = _multicoil(tmp_path, maps, sensitivities="maps.npy")
    op = build_operator(manifest, tmp_path)
    assert isinstance(op, MultiCoilMRI)
    # normalised to sum_c |S_c|^2 = 1, as the operator normalises every map set
    expected = birdcage_sensitivities(4, (SIZE, SIZE), coil_radius=2.0, dtype=np.complex128)
    np.testing.assert_allclose(op.sensitivities.numpy(), expected, atol=1e-6)
    birdcage = build_operator(_multicoil(tmp_path, None), tmp_path)
    assert isinstance(birdcage, MultiCoilMRI)
    assert not np.allclose(birdcage.sensitivities.numpy(), expected)
    # 'espirit' builds on birdcage maps until the audit's measured data give the estimate
    espirit = build_operator(_multicoil(tmp_path, None, sensitivities="espirit"), tmp_path)
    assert isinstance(espirit, MultiCoilMRI)


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (np.ones((3, SIZE, SIZE), np.complex64), r"expected \[C, H, W\] = \[4, 32, 32\]"),
        (np.ones((4, SIZE, 16), np.complex64), r"maps of shape \[4, 32, 16\]"),
        (np.full((4, SIZE, SIZE), np.nan, np.complex64), "NaN or infinite"),
        (np.zeros((4, SIZE, SIZE), np.complex64), "zero everywhere"),
        (np.array(["a"] * 4 * SIZE * SIZE).reshape(4, SIZE, SIZE), "must be numeric"),
    ],
)
def test_bad_shipped_sensitivities_name_the_field(
    tmp_path: Path, maps: np.ndarray, message: str
) -> None:
    manifest = _multicoil(tmp_path, maps, sensitivities="maps.npy")
    with pytest.raises(ManifestError, match=message) as info:
        build_operator(manifest, tmp_path)
    assert info.value.field == "sampling.sensitivities"


def test_sensitivities_need_a_file_and_multicoil(tmp_path: Path) -> None:
    manifest = _multicoil(tmp_path, None, sensitivities="absent.npy")
    with pytest.raises(ManifestError, match="not found beside the manifest") as info:
        build_operator(manifest, tmp_path)
    assert info.value.field == "sampling.sensitivities"
    with pytest.raises(ManifestError, match="coils and sensitivities are for 'mri-multicoil'"):
        load_manifest(
            write_manifest(
                tmp_path, sampling={"pattern": {"ratio": 0.3}, "sensitivities": "espirit"}
            )
        )
