"""The science's commands of ``recon-audit`` (:mod:`app.science_cli`, run through the group):
simulate, selfcheck, inspect, manifest-schema, audit, and exit status 2 with a message on bad
input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from app.cli import main


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "operator", "figure"),
    [
        (["--modality", "mri"], "SingleCoilMRI", "mask.png"),
        (
            ["--modality", "mri-multicoil", "--pattern", "lines", "--coils", "4"],
            "MultiCoilMRI",
            "mask.png",
        ),
        (
            ["--modality", "ct", "--image", "ellipses", "--angles", "30"],
            "ParallelBeamCT",
            "sinogram.png",
        ),
        (
            ["--modality", "mri", "--pattern", "radial", "--image", "mr-small"],
            "SingleCoilMRI",
            "mask.png",
        ),
    ],
)
def test_simulate_writes_summary_and_figures(
    tmp_path: Path, args: list[str], operator: str, figure: str
) -> None:
    code, output = _run("simulate", "--size", "64", "--out", str(tmp_path / "o"), *args)
    assert code == 0, output
    summary = json.loads((tmp_path / "o" / "simulation.json").read_text())
    assert summary["schema"] == "recon-audit/simulation/v1"
    assert summary["operator"] == operator
    assert len(summary["image"]["sha256"]) == 64
    assert 10 < summary["metrics"]["psnr_db"] < 60
    for name in ("l1_wavelet", "total_variation"):
        result = summary["baselines"][name]
        assert result["iterations"] > 0
        if operator != "MultiCoilMRI":  # there A_dagger is the full CGLS pseudo-inverse
            assert result["psnr_db"] > summary["metrics"]["psnr_db"]
    for name in (
        "ground_truth.png",
        "reconstruction.png",
        "error.png",
        "l1_wavelet.png",
        "total_variation.png",
        figure,
    ):
        with Image.open(tmp_path / "o" / name) as im:
            assert im.size == (64, 64) or name == "sinogram.png"
            assert np.asarray(im).std() > 0  # not blank


def test_simulate_is_reproducible(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert (
            _run("simulate", "--size", "48", "--seed", "3", "--out", str(tmp_path / name))[0] == 0
        )
    a = json.loads((tmp_path / "a" / "simulation.json").read_text())
    b = json.loads((tmp_path / "b" / "simulation.json").read_text())
    assert a == b


def test_simulate_noise_is_seeded_and_lowers_quality(tmp_path: Path) -> None:
    runs = {}
    for name, noise in (("clean", "0"), ("noisy", "0.05"), ("again", "0.05")):
        code, output = _run(
            "simulate",
            "--size",
            "48",
            "--noise",
            noise,
            "--no-baselines",
            "--out",
            str(tmp_path / name),
        )
        assert code == 0, output
        runs[name] = json.loads((tmp_path / name / "simulation.json").read_text())
    assert runs["noisy"]["metrics"]["psnr_db"] < runs["clean"]["metrics"]["psnr_db"]
    assert runs["noisy"] == runs["again"]
    assert runs["noisy"]["baselines"] == {}


def test_simulate_reads_user_images(tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((40, 50)))
    code, output = _run(
        "simulate",
        "--image",
        str(tmp_path / "img.npy"),
        "--size",
        "32",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, output
    summary = json.loads((tmp_path / "o" / "simulation.json").read_text())
    assert summary["image"]["source"].endswith("img.npy")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "missing.png"], "missing.png: no such file"),
        (["--ratio", "1.5"], "Invalid value for '--ratio'"),
        (["--modality", "pet"], "Invalid value for '--modality'"),
        (["--size", "8"], "Invalid value for '--size'"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = _run("simulate", "--out", str(tmp_path / "o"), *args)
    assert code == 2
    assert message in output
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_pickled_image_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([object()]), allow_pickle=True)
    code, output = _run("simulate", "--image", str(tmp_path / "obj.npy"), "--out", str(tmp_path))
    assert code == 2
    assert "pickled object arrays are refused" in output


def test_selfcheck_passes_on_cpu() -> None:
    code, output = _run("selfcheck", "--device", "cpu")
    assert code == 0, output
    reports = json.loads(output)
    assert {r["name"] for r in reports} >= {"single-coil-mri", "multi-coil-mri", "parallel-beam-ct"}
    assert all(r["passed"] and r["adjoint_error"] < 1e-5 for r in reports)


def test_selfcheck_fails_when_tolerance_is_impossible() -> None:
    code, _ = _run("selfcheck", "--device", "cpu", "--tol", "0")
    assert code == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.parametrize("command", ["simulate", "selfcheck"])
def test_cuda_requested_without_cuda_exits_2(tmp_path: Path, command: str) -> None:
    extra = ["--out", str(tmp_path / "o")] if command == "simulate" else []
    code, output = _run(command, "--device", "cuda", *extra)
    assert code == 2
    assert "no CUDA device is available" in output


def test_inspect_prints_the_summary(tmp_path: Path) -> None:
    import onnx

    from tests.reconstruction.models.conftest import conv_model, write_manifest

    onnx.save_model(conv_model(), str(tmp_path / "model.onnx"))
    code, output = _run(
        "inspect", str(tmp_path / "model.onnx"), "--manifest", str(write_manifest(tmp_path))
    )
    assert code == 0, output
    summary = json.loads(output)
    assert summary["format"] == "onnx"
    assert summary["gradient_access"] == "white-box"
    assert summary["parity_error"] < 1e-6
    assert summary["fixed_size"] is False
    assert summary["input"] == {
        "domain": "image",
        "layout": "complex2",
        "part": "magnitude",
        "shape": [-1, 2, 32, 32],
    }
    assert len(summary["sha256"]) == 64


def _masked_onnx(path: Path) -> None:
    """An ONNX network taking the zero-filled image and the mask ``[1, 1, H, W]`` (float)."""
    import onnx
    from onnx import TensorProto, helper

    from tests.reconstruction.models.conftest import SIZE

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "mask"], ["y"])],
        "masked",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, SIZE, SIZE]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, SIZE, SIZE]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, SIZE, SIZE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(path))


def test_inspect_prints_what_each_input_receives(tmp_path: Path) -> None:
    from tests.reconstruction.models.conftest import write_manifest

    _masked_onnx(tmp_path / "model.onnx")
    mask = {"role": "mask", "shape": [1, 1, "H", "W"], "dtype": "float32", "name": "mask"}
    manifest = write_manifest(tmp_path, input={"extra": [mask]})
    code, output = _run("inspect", str(tmp_path / "model.onnx"), "--manifest", str(manifest))
    assert code == 0, output
    inputs = json.loads(output)["inputs"]
    assert [(i["position"], i["role"], i["shape"], i["dtype"]) for i in inputs] == [
        (0, "image", [-1, 2, 32, 32], "float32"),
        (1, "mask", [1, 1, 32, 32], "float32"),
    ]
    assert inputs[1]["sampled"] == pytest.approx(0.3, abs=0.01)
    for extra, field in (([], "input.extra"), ([{**mask, "dtype": "bool"}], "input.extra.0.dtype")):
        manifest = write_manifest(tmp_path, input={"extra": extra})
        code, output = _run("inspect", str(tmp_path / "model.onnx"), "--manifest", str(manifest))
        assert code == 2
        assert f"manifest field '{field}'" in output


def test_inspect_bad_inputs_exit_2(tmp_path: Path) -> None:
    from tests.reconstruction.models.conftest import write_manifest

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pth")
    manifest = write_manifest(tmp_path)
    code, output = _run("inspect", str(tmp_path / "model.pth"), "--manifest", str(manifest))
    assert code == 2
    assert "pickled PyTorch file" in output
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    code, output = _run(
        "inspect", str(tmp_path / "model.pth"), "--manifest", str(tmp_path / "bad.json")
    )
    assert code == 2
    assert "manifest field 'modality'" in output


def test_manifest_schema_command() -> None:
    code, output = _run("manifest-schema")
    assert code == 0
    assert json.loads(output)["title"] == "recon-audit model manifest"


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _audit(name: str, out: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    folder = EXAMPLES / name
    code, output = _run(
        "audit",
        str(folder / "model.onnx"),
        "--manifest",
        str(folder / "manifest.json"),
        "--protocol",
        "quick",
        "--out",
        str(out),
        *extra,
    )
    results = json.loads((out / "results.json").read_text()) if code in (0, 1) else {}
    return code, output, results


def test_audit_writes_results_figures_and_reports(tmp_path: Path) -> None:
    code, output, results = _audit("automap-mri", tmp_path / "a")
    assert code == 0, output
    assert results["schema"] == "recon-audit/results/v1"
    assert results["protocol"]["name"] == "quick"
    assert set(results["model"]) >= {"sha256", "format", "gradient_access"}
    assert results["tests"]["sampling"]["verdict"] == "skipped"
    assert "cannot take more samples" in results["tests"]["sampling"]["reason"]
    assert (tmp_path / "a" / "report.html").stat().st_size > 0
    assert (tmp_path / "a" / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert list((tmp_path / "a" / "figures").glob("*.png"))
    for name in ("perturbation", "structural", "sampling"):
        assert name in output


def test_audit_of_the_unrolled_reference_fails_on_more_samples(tmp_path: Path) -> None:
    code, output, results = _audit(
        "unrolled-mri", tmp_path / "u", "--only", "sampling", "--fail-on", "unstable", "--no-pdf"
    )
    assert code == 1, output
    assert results["verdicts"]["sampling"] == "unstable"
    assert results["tests"]["sampling"]["pattern"] == "decay"
    assert not (tmp_path / "u" / "report.pdf").exists()


def test_audit_of_the_ct_reference_finds_perturbation_instability(tmp_path: Path) -> None:
    code, output, results = _audit(
        "fbpconvnet-ct", tmp_path / "c", "--only", "perturbation", "--no-pdf"
    )
    assert code == 0, output
    assert results["verdicts"]["perturbation"] == "unstable"
    evidence = results["tests"]["perturbation"]["evidence"][0]
    assert evidence["change_ratio"] >= 2.0
    assert evidence["network_psnr_drop_db"] >= 3.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--protocol", "fastest"], "unknown protocol 'fastest'"),
        (["--images", "missing.png"], "missing.png"),
    ],
)
def test_audit_bad_input_exits_2(tmp_path: Path, extra: list[str], message: str) -> None:
    folder = EXAMPLES / "automap-mri"
    code, output = _run(
        "audit",
        str(folder / "model.onnx"),
        "--manifest",
        str(folder / "manifest.json"),
        "--out",
        str(tmp_path / "o"),
        *extra,
    )
    assert code == 2
    assert message in output
    assert not (tmp_path / "o").exists()


def _audit_automap_with(tmp_path: Path, protocol_text: str) -> tuple[int, str]:
    """``recon-audit audit`` of the AUTOMAP reference with a protocol file of this text."""
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(protocol_text)
    folder = EXAMPLES / "automap-mri"
    return _run(
        "audit",
        str(folder / "model.onnx"),
        "--manifest",
        str(folder / "manifest.json"),
        "--protocol",
        str(protocol),
        "--out",
        str(tmp_path / "o"),
    )


def test_audit_with_details_taller_than_the_image_exits_2(tmp_path: Path) -> None:
    """The protocol is valid on its own; the model's 32 x 32 images make its heights wrong."""
    from reconstruction.protocols import load_protocol

    text = load_protocol("quick").to_yaml().replace("- 10\n", "- 40\n", 1)
    code, output = _audit_automap_with(tmp_path, text)
    assert code == 2, output
    assert "field 'structural.heights_px'" in output
    assert not (tmp_path / "o").exists()


def test_audit_with_a_protocol_that_runs_no_test_exits_2(tmp_path: Path) -> None:
    import yaml

    from reconstruction.protocols import load_protocol

    data = load_protocol("quick").model_dump(mode="json")
    data.update(perturbation=None, structural=None, sampling=None)
    code, output = _audit_automap_with(tmp_path, yaml.safe_dump(data))
    assert code == 2
    assert "runs no test" in output
    assert not (tmp_path / "o").exists()


def _measured_protocol(tmp_path: Path) -> Path:
    """``quick`` under fastMRI's metric convention (a custom protocol)."""
    from reconstruction.protocols import load_protocol

    data = load_protocol("quick").model_dump(mode="json")
    data.update(name="quick-fastmri", metrics={"convention": "fastmri"}, structural=None)
    path = tmp_path / "protocol.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def test_audit_of_a_fastmri_file(tmp_path: Path) -> None:
    """A fastMRI-style single-coil file (readout oversampled 2x) audits end to end: its truth
    and measurements come from the file, cropped to the network's 32 x 32."""
    from tests.reconstruction.measured_files import write_fastmri

    data = write_fastmri(tmp_path / "knee.h5", size=32, oversample=2, coils=None, slices=4)
    code, output, results = _audit(
        "automap-mri",
        tmp_path / "m",
        "--images",
        str(data),
        "--slices",
        "1:3",
        "--protocol",
        str(_measured_protocol(tmp_path)),
        "--no-pdf",
    )
    assert code == 0, output
    assert results["measurements"] == "measured"
    assert results["metric_convention"]["name"] == "fastmri"
    assert [image["source"].rsplit("#", 1)[1] for image in results["images"]] == [
        "slice=1",
        "slice=2",
    ]
    assert {image["grid"] for image in results["images"]} == {"reconstruction"}
    assert results["sensitivities"] is None
    assert results["verdicts"]["perturbation"] in ("stable", "unstable", "inconclusive")
    html = (tmp_path / "m" / "report.html").read_text()
    assert "Metric convention: <strong>fastmri</strong>" in html


@pytest.mark.parametrize(
    ("what", "extra", "message"),
    [
        ("nokspace", [], "no 'kspace' dataset"),
        ("slices", ["--slices", "7"], "--slices: "),
        ("slices", ["--slices", "2:x"], "use 'all' or non-negative indices"),
        ("size", [], "does not match the network's image_size [32, 32]"),
    ],
)
def test_audit_of_bad_measured_data_exits_2(
    tmp_path: Path, what: str, extra: list[str], message: str
) -> None:
    import h5py

    from tests.reconstruction.measured_files import write_fastmri

    path = tmp_path / "data.h5"
    if what == "nokspace":
        with h5py.File(path, "w") as f:
            f.create_dataset("reconstruction_esc", data=np.zeros((2, 32, 32), np.float32))
    else:
        write_fastmri(path, size=48 if what == "size" else 32, oversample=1, coils=None)
    folder = EXAMPLES / "automap-mri"
    code, output = _run(
        "audit",
        str(folder / "model.onnx"),
        "--manifest",
        str(folder / "manifest.json"),
        "--images",
        str(path),
        "--out",
        str(tmp_path / "o"),
        *extra,
    )
    assert code == 2, output
    assert message in output
    assert not (tmp_path / "o").exists()
