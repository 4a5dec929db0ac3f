from __future__ import annotations

from pathlib import Path

import torch

from reconstruction.data import LoadedImage
from reconstruction.instability import STABLE_WORDING, run_perturbation
from reconstruction.protocols import Protocol
from tests.reconstruction.conftest import SIZE, Leaky, subject, symmetric_mask, truth_of
from tests.reconstruction.planted import Decoy, SaturatingSwitch, Switch


def test_large_gain_along_one_direction_is_unstable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    model = subject(Leaky(gain=40.0), mask_dir)
    result = run_perturbation(model, truth_of(images), small_protocol)
    assert result.verdict == "unstable", result.reason
    evidence = result.numbers["evidence"][0]
    assert evidence["change_ratio"] >= 2.0
    assert (
        evidence["network_psnr_drop_db"] >= 3.0
        or evidence["network_ssim_drop"] >= 0.05
        or (evidence["network_local_error_increase_db"] >= 6.0)
    )
    assert evidence["baseline_search_plateaued"]
    # the controls: same-norm Gaussian noise does far less than the worst case
    row = result.numbers["threat_models"]["image"]["results"][-1]["network"]
    assert max(row["noise_control_change"]) < 0.5 * max(row["output_change"])
    # the paper's search gives r1 < r2 < r3
    sizes = result.numbers["pnas"]["network"]["sizes"]
    for image in range(len(sizes[0])):
        assert sizes[0][image] <= sizes[1][image] <= sizes[2][image]
    assert "baseline" in result.numbers["pnas"]


def test_harmless_network_is_stable(
    mask_dir: Path,
    images: list[LoadedImage],
    small_protocol: Protocol,
) -> None:
    model = subject(Leaky(gain=0.0), mask_dir)  # the zero-filled reconstruction itself
    result = run_perturbation(model, truth_of(images), small_protocol)
    assert result.verdict == "stable", result.reason
    assert result.reason == STABLE_WORDING
    for threat in ("image", "measurement"):
        for row in result.numbers["threat_models"][threat]["results"]:
            assert max(row["network"]["size"]) <= row["eps"] * (1 + 1e-5)


def test_a_hidden_switch_is_found_and_unstable(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    """A saturating gate along a direction the decoy hides: a bright blob appears once the input
    moves past a threshold (below the smallest eps) along it."""
    model = subject(Switch(SIZE, threshold=0.003), mask_dir)
    result = run_perturbation(model, truth_of(images), small_protocol)
    assert result.verdict == "unstable", result.reason
    for threat in ("image", "measurement"):
        smallest = result.numbers["threat_models"][threat]["results"][0]
        # the blob is tripped at every image: far beyond the decoy's linear change
        assert min(smallest["network"]["output_change"]) > 5 * smallest["eps"]


def test_a_saturated_switch_off_the_top_singular_direction_is_unstable(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    """A switch on the real part that the Shepp-Logan image holds five temperatures deep in
    saturation (its gradient there 1e-4 of the identity path's, along a direction the flat
    spectrum hides): the larger ball reaches across it, and the verdict is unstable."""
    module = SaturatingSwitch(torch.from_numpy(symmetric_mask()), 0.255 / 5, seed=1)
    result = run_perturbation(subject(module, mask_dir), truth_of(images), small_protocol)
    assert result.verdict == "unstable", result.reason
    largest = result.numbers["threat_models"]["image"]["results"][-1]
    assert largest["network"]["output_change"][0] > 5 * largest["eps"]


def test_a_fake_lesion_is_unstable_though_the_global_psnr_hides_it(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    """A faint blob on a small area: the whole image's PSNR falls by less than the global
    threshold, the worst window's error grows far beyond the local one."""
    model = subject(Switch(SIZE, threshold=0.003, amplitude=0.3), mask_dir)
    result = run_perturbation(model, truth_of(images), small_protocol)
    assert result.verdict == "unstable", result.reason
    th = small_protocol.perturbation.thresholds  # type: ignore[union-attr]
    local_only = [
        e
        for e in result.numbers["evidence"]
        if e["network_psnr_drop_db"] < th.min_psnr_drop_db
        and e["network_ssim_drop"] < th.min_ssim_drop
    ]
    assert local_only, result.numbers["evidence"]
    assert all(
        e["network_local_error_increase_db"] >= th.local_min_psnr_drop_db for e in local_only
    )


def test_identity_like_networks_are_stable(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    model = subject(Decoy(SIZE, gain=1.0), mask_dir)
    result = run_perturbation(model, truth_of(images), small_protocol)
    assert result.verdict == "stable", result.reason
    assert result.numbers["convergence"]["converged"]
    for threat in ("image", "measurement"):
        block = result.numbers["threat_models"][threat]
        # a linear map: its worst change on the ball is its top singular value times eps, so
        # the reported amplification is the gain the search itself reached (a Lanczos estimate
        # below it, or above it, would show here)
        row = block["results"][0]
        gains = zip(block["amplification"]["network"], row["network"]["output_change"], strict=True)
        for a, change in gains:
            assert abs(a - change / row["eps"]) < 0.01 * a, (a, change)
        assert block["amplification"]["baseline"] is not None


def test_no_stable_verdict_from_a_search_stopped_at_its_cap(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    capped = small_protocol.model_copy(
        update={
            "perturbation": small_protocol.perturbation.model_copy(  # type: ignore[union-attr]
                update={
                    "budget": small_protocol.perturbation.budget.model_copy(  # type: ignore[union-attr]
                        update={"iterations": 3, "min_iterations": 1}
                    )
                }
            )
        }
    )
    model = subject(Leaky(gain=0.0), mask_dir)
    result = run_perturbation(model, truth_of(images), capped)
    assert result.verdict == "inconclusive", result.reason
    assert "search still improving at its cap" in result.reason
    assert not result.numbers["convergence"]["converged"]


def test_a_baseline_search_at_its_cap_is_resumed_under_a_case_against_the_network(
    mask_dir: Path, images: list[LoadedImage], small_protocol: Protocol
) -> None:
    """Eight iterations (the plateau window five): the baseline's searches stop at the cap while
    still climbing; where the network's change reaches the margin over them, the baseline's
    search goes on from its best point until it plateaus, so the case is evidence, resting on a
    finished baseline search, and not borderline because of where the cap fell (the
    window-targeted searches are not resumed: their cases may stay borderline)."""
    budget = small_protocol.perturbation.budget  # type: ignore[union-attr]
    capped = small_protocol.model_copy(
        update={
            "perturbation": small_protocol.perturbation.model_copy(  # type: ignore[union-attr]
                update={"budget": budget.model_copy(update={"iterations": 8, "min_iterations": 8})}
            )
        }
    )
    result = run_perturbation(subject(Leaky(gain=40.0), mask_dir), truth_of(images), capped)
    assert result.verdict == "unstable", result.reason
    whole = [e for e in result.numbers["borderline"] if e["objective"] == "whole image"]
    assert whole == [], whole
    resumed = 0
    for block in result.numbers["threat_models"].values():
        for row in block["results"]:
            search = row["baseline"]["search"]
            assert all(search["plateaued"]), (row["eps"], search)
            resumed += sum(n > 8 for n in search["iterations"])
    assert resumed, "the cap must stop some baseline search for this test to mean anything"


def test_units_whose_window_searches_differ_merge_their_records() -> None:
    """A baseline's window search runs for the units whose images need it only (elsewhere its
    record is the whole-image search's): their records still merge, per image."""
    from reconstruction.instability.perturbation import _merged_record

    def record(starts: list[str], targeted: bool, change: float) -> dict[str, object]:
        return {
            "window_change": [change],
            "targeted": targeted,
            "search": {
                "iterations": [5],
                "plateaued": [True],
                "restart_spread": [None],
                "passes": 5,
                "starts": starts,
            },
        }

    merged = _merged_record(
        [record(["given", "warm"], True, 0.1), record(["warm", "jacobian"], False, 0.2)], [1, 1]
    )
    assert merged["window_change"] == [0.1, 0.2]
    assert merged["targeted"] is True
    assert merged["search"]["starts"] == ["given", "warm", "jacobian"]
    assert merged["search"]["passes"] == 10
    same = _merged_record([record(["warm"], True, 0.1), record(["warm"], True, 0.3)], [1, 1])
    assert same["search"]["starts"] == ["warm"]
