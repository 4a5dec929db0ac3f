from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import reconstruction.protocols as protocols
from reconstruction.protocols import (
    BUILTIN,
    ProtocolError,
    load_protocol,
    parse_protocol,
    protocol_json_schema,
)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_protocols_load_and_round_trip(name: str) -> None:
    protocol = load_protocol(name)
    assert protocol.name == name
    again = parse_protocol(protocol.to_yaml())
    assert again == protocol
    assert again.sha256 == protocol.sha256


def test_builtins_differ_and_quick_is_smallest() -> None:
    quick, standard = load_protocol("quick"), load_protocol("standard")
    assert quick.sha256 != standard.sha256
    assert quick.perturbation is not None
    assert standard.perturbation is not None
    assert quick.perturbation.budget.iterations < standard.perturbation.budget.iterations
    pnas = load_protocol("pnas")
    assert pnas.perturbation is not None
    assert pnas.perturbation.pnas is not None
    assert pnas.perturbation.pnas.momentum == 0.9


#: the built-ins' hashes as issued before ``metrics`` existed (a default it keeps them), and
#: ``images.per_unit`` (absent, it keeps them); standard at its version 3, per image
ISSUED = {
    "quick": "6def435123bfeaa896da1dc6675672f7e35ae0137b1f2eb7b440e04b7556f0c0",
    "standard": "4d200e7b9e078b0f344efb7be521e48aa5b18d2f7bef8b8df666d847e7b8447e",
    "pnas": "a93f1ba9bcd03c989efe77ad941ed74be3fe2e2a926a2fa44a936fce3909ff9c",
    "genzel2022": "55be2336d5747b92e5eafb0a0f89e514eda5f5ccfe08df971da949033f0d3f43",
    "darestani2021": "4a436585d5ea3b94b4578cd7f0bcfe58270d0097cdac80839d945b67a652c428",
}


@pytest.mark.parametrize("name", BUILTIN)
def test_metric_convention_defaults_to_the_projects_and_keeps_issued_hashes(name: str) -> None:
    protocol = load_protocol(name)
    assert protocol.metrics.convention == "recon-audit"
    assert protocol.sha256 == ISSUED[name]
    assert "metrics" in protocol.to_yaml()  # the full text states the convention
    data = yaml.safe_load(protocol.to_yaml())
    data["metrics"] = {"convention": "fastmri"}
    fastmri = parse_protocol(yaml.safe_dump(data))
    assert fastmri.metrics.convention == "fastmri"
    assert fastmri.sha256 != protocol.sha256
    assert protocols.shown_name(name, fastmri.sha256) == f"custom:{name}"
    assert set(protocols.METRIC_CONVENTIONS) == {"recon-audit", "fastmri"}
    data["metrics"] = {"convention": "nyu"}
    with pytest.raises(ProtocolError, match=r"field 'metrics\.convention'"):
        parse_protocol(yaml.safe_dump(data))


def test_hash_ignores_formatting_but_not_values(tmp_path: Path) -> None:
    text = (protocols.HERE / "quick.yaml").read_text()
    data = yaml.safe_load(text)
    reordered = "# a comment\n" + yaml.safe_dump(dict(reversed(list(data.items()))))
    assert parse_protocol(reordered).sha256 == parse_protocol(text).sha256
    data["perturbation"]["budget"]["eps"] = [0.01, 0.05]
    assert parse_protocol(yaml.safe_dump(data)).sha256 != parse_protocol(text).sha256
    (tmp_path / "mine.yaml").write_text(reordered)
    assert load_protocol(tmp_path / "mine.yaml").sha256 == parse_protocol(text).sha256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"perturbation": {"budget": {"eps": [0.02, 0.01]}}}, "increasing and distinct"),
        ({"sampling": {"factors": [0.5, 2.0]}}, "include 1.0"),
        ({"colour": "red"}, "field 'colour': Extra inputs"),
        ({"structural": {"heights_px": [2], "contrasts": [0.1]}}, "heights_px.0"),
        ({"sampling": {"factors": [1.0, 0.5, 2.0]}}, "field 'sampling.factors': .*increasing"),
        ({"sampling": {"factors": [0.0, 1.0]}}, "field 'sampling.factors.0': .*greater than 0"),
        ({"sampling": {"factors": [1.0, 1.0, 2.0]}}, "field 'sampling.factors'"),
        ({"sampling": {"thresholds": {"decay_db": -1.0}}}, "'sampling.thresholds.decay_db'"),
        ({"sampling": {"thresholds": {"decay_ssim": 2.0}}}, "'sampling.thresholds.decay_ssim'"),
        ({"sampling": {"thresholds": {"confidence": 1.0}}}, "'sampling.thresholds.confidence'"),
        ({"sampling": {"thresholds": {"stagnation_fraction": 1.5}}}, "stagnation_fraction"),
        ({"structural": {"heights_px": [12, 8]}}, "field 'structural.heights_px': .*increasing"),
        ({"structural": {"contrasts": [0.3, 0.3]}}, "field 'structural.contrasts'"),
        ({"structural": {"contrasts": [0.0]}}, "field 'structural.contrasts.0'"),
        ({"structural": {"thresholds": {"margin": 1.5}}}, "'structural.thresholds.margin'"),
        ({"structural": {"thresholds": {"visible_recovery": 2}}}, "visible_recovery"),
        ({"structural": {"thresholds": {"confidence": 0.2}}}, "structural.thresholds.confidence"),
        ({"version": ""}, "field 'version'"),
        ({"perturbation": {"budget": {"restarts": 0}}}, "'perturbation.budget.restarts'"),
        ({"perturbation": {"budget": {"method": "sgd"}}}, "'perturbation.budget.method'"),
        (
            {"perturbation": {"budget": {"plateau_tolerance": 2.0}}},
            "'perturbation.budget.plateau_tolerance'",
        ),
        ({"perturbation": {"local": {"window": 0.9}}}, "'perturbation.local.window'"),
        ({"perturbation": {"thresholds": {"margin": 0.5}}}, "'perturbation.thresholds.margin'"),
        (
            {"perturbation": {"thresholds": {"max_restart_spread": 1.5}}},
            "'perturbation.thresholds.max_restart_spread'",
        ),
        ({"perturbation": {"roi": [10, 0, 5, 5]}}, "perturbation.roi must be"),
    ],
)
def test_invalid_protocols_name_the_field(change: dict[str, object], message: str) -> None:
    data = load_protocol("quick").model_dump(mode="json")
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            for sub, subvalue in value.items():
                if isinstance(subvalue, dict):
                    data[key][sub].update(subvalue)
                else:
                    data[key][sub] = subvalue
        else:
            data[key] = value
    with pytest.raises(ProtocolError, match=message):
        parse_protocol(yaml.safe_dump(data))


def test_unknown_and_unreadable_protocols(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="unknown protocol 'fast'"):
        load_protocol("fast")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ProtocolError, match="not valid JSON/YAML"):
        load_protocol(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ProtocolError, match="mapping of fields"):
        load_protocol(tmp_path / "list.yaml")


def test_unbounded_protocols_are_refused() -> None:
    for text, problem in (
        ("name: " + "[" * 50_000, "levels deep"),
        ("name: &n mine\nversion: *n\n", "aliases are not accepted"),
        ("name: " + "x" * 2**20, "is too large"),
    ):
        with pytest.raises(ProtocolError, match=f"^inline protocol .*{problem}"):
            parse_protocol(text, "inline protocol")


def test_schema() -> None:
    assert protocol_json_schema()["title"] == "recon-audit protocol"


def test_detail_heights_are_checked_against_the_image_size() -> None:
    structural = load_protocol("standard").structural
    assert structural is not None
    structural.check_image_size((64, 64))
    with pytest.raises(ProtocolError, match=r"'structural.heights_px': .*\[12, 16\] px .*larger"):
        structural.check_image_size((10, 32))


def test_the_search_settings_cap_keep_and_min_iterations() -> None:
    data = load_protocol("quick").model_dump(mode="json")
    data["perturbation"]["budget"].update({"restarts": 1, "keep": 3, "iterations": 4})
    settings = parse_protocol(yaml.safe_dump(data)).perturbation.budget.settings()  # type: ignore[union-attr]
    assert (settings.restarts, settings.keep, settings.min_iterations) == (1, 1, 4)


def test_the_replays_state_their_normalisation() -> None:
    genzel, darestani = load_protocol("genzel2022"), load_protocol("darestani2021")
    assert genzel.perturbation is not None
    assert darestani.perturbation is not None
    assert genzel.perturbation.threat_models == ["measurement"]
    assert genzel.perturbation.budget.objective == "error"
    assert (genzel.perturbation.budget.restarts, genzel.perturbation.budget.keep) == (6, 3)
    assert "||e|| / ||y||" in genzel.description
    assert darestani.perturbation.budget.eps[-1] == 0.08
    assert "||e|| / ||k||" in darestani.description


def test_the_roi_is_checked_against_the_image_size() -> None:
    data = load_protocol("quick").model_dump(mode="json")
    data["perturbation"]["roi"] = [0, 0, 40, 20]
    protocol = parse_protocol(yaml.safe_dump(data))
    protocol.check_image_size((64, 64))
    with pytest.raises(ProtocolError, match=r"'perturbation.roi': \[0, 0, 40, 20\] does not fit"):
        protocol.check_image_size((32, 32))


@pytest.mark.parametrize("name", BUILTIN)
def test_a_builtin_is_shown_under_its_name_even_when_submitted_as_text(name: str) -> None:
    builtin = load_protocol(name)
    resubmitted = parse_protocol(yaml.safe_dump(builtin.model_dump(mode="json")))
    for protocol in (builtin, resubmitted):
        assert protocol.shown_name == name
        assert protocol.identity() == {
            "name": name,
            "version": builtin.version,
            "sha256": builtin.sha256,
            "builtin": True,
        }


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1"},  # another version of the name
        {"perturbation": {"budget": {"eps": [1e-6], "iterations": 1}}},  # a weaker search
        {"description": "the standard audit"},  # any other value changes the hash
    ],
)
def test_a_builtin_name_taken_by_another_protocol_reads_custom(change: dict[str, object]) -> None:
    data = load_protocol("standard").model_dump(mode="json")
    for key, value in change.items():
        if isinstance(value, dict):
            data[key]["budget"].update(value["budget"])
        else:
            data[key] = value
    spoofed = parse_protocol(yaml.safe_dump(data))
    assert spoofed.name == "standard"  # as written, and hashed
    assert spoofed.shown_name == "custom:standard"
    assert spoofed.identity()["name"] == "custom:standard"
    assert spoofed.identity()["builtin"] is False
    assert protocols.shown_name("standard", spoofed.sha256) == "custom:standard"


@pytest.mark.parametrize("name", ["mine", "standard-v3", "quick2"])
def test_every_other_protocol_is_shown_as_custom(name: str) -> None:
    data = load_protocol("quick").model_dump(mode="json") | {"name": name}
    other = parse_protocol(yaml.safe_dump(data))
    assert other.shown_name == f"custom:{name}"
    assert other.identity()["name"] == f"custom:{name}"
    assert other.identity()["builtin"] is False
    assert protocols.shown_name(name, other.sha256) == f"custom:{name}"
    with pytest.raises(ProtocolError, match="field 'name'"):  # a name cannot pose as custom:
        parse_protocol(yaml.safe_dump(data | {"name": "custom:x"}))


@pytest.mark.parametrize(
    ("name", "builtin"),
    [("Standard", "standard"), ("QUICK", "quick"), ("s.t.a.n.d.a.r.d", "standard"),
     ("quick_", "quick"), ("Genzel-2022", "genzel2022"), ("pnas.", "pnas")],
)  # fmt: skip
def test_names_that_only_look_like_a_builtin_are_reserved(name: str, builtin: str) -> None:
    data = load_protocol("quick").model_dump(mode="json") | {"name": name}
    with pytest.raises(ProtocolError, match=f"differs from the built-in protocol '{builtin}'"):
        parse_protocol(yaml.safe_dump(data))


def test_a_protocol_that_runs_no_test_is_refused() -> None:
    data = load_protocol("quick").model_dump(mode="json")
    data.update(perturbation=None, structural=None, sampling=None)
    with pytest.raises(ProtocolError, match="runs no test"):
        parse_protocol(yaml.safe_dump(data))
    data["sampling"] = load_protocol("quick").model_dump(mode="json")["sampling"]
    assert parse_protocol(yaml.safe_dump(data)).perturbation is None  # one test is enough


def test_a_retired_version_of_a_builtin_is_still_that_builtin() -> None:
    standard = load_protocol("standard")
    assert standard.version == "3"
    assert standard.images.per_unit == 1
    data = yaml.safe_load(standard.to_yaml())
    data["version"] = "2"
    del data["images"]["per_unit"]
    before = parse_protocol(yaml.safe_dump(data))
    assert before.sha256 == protocols.RETIRED["standard"]["2"]
    assert before.identity() == {
        "name": "standard",
        "version": "2",
        "sha256": before.sha256,
        "builtin": True,
    }
    data["images"]["per_unit"] = 2  # neither version
    assert parse_protocol(yaml.safe_dump(data)).identity()["name"] == "custom:standard"
