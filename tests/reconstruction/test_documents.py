from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from reconstruction.documents import (
    MAX_DEPTH,
    MAX_DOCUMENT_CHARS,
    read_document,
    read_mapping,
    validation_problem,
)


def test_read_mapping() -> None:
    assert read_mapping("a: 1\nb: [2, 3]\n", "doc") == {"a": 1, "b": [2, 3]}
    assert read_mapping('{"a": 1}', "doc.json", as_json=True) == {"a": 1}
    with pytest.raises(ValueError, match=r"doc\.json is not valid JSON/YAML"):
        read_mapping("a: 1", "doc.json", as_json=True)
    with pytest.raises(ValueError, match="must hold a mapping of fields, got list"):
        read_mapping("- 1\n", "doc")
    # the safe loader refuses Python object tags
    with pytest.raises(ValueError, match="not valid JSON/YAML"):
        read_mapping("!!python/object/apply:os.system ['true']", "doc")


def test_validation_problem_names_the_first_field_and_counts_the_rest() -> None:
    class Inner(BaseModel):
        size: int

    class Outer(BaseModel):
        inner: Inner
        name: str

    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"inner": {"size": "big"}, "name": 3})
    field, message = validation_problem(info.value)
    assert field == "inner.size"
    assert message.endswith("(and 1 more problems)")


def _nested_json(depth: int) -> str:
    return '{"a": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("depth", [50_000, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth: int) -> None:
    for text, as_json in (
        (_nested_json(depth), True),
        (_nested_json(depth), False),  # YAML's flow style: JSON
        ("a: " + "[" * depth, False),  # unclosed: refused as deep before the parser sees the end
    ):
        with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} levels deep"):
            read_mapping(text, "doc", as_json=as_json)
    block = "".join(f"{' ' * level}k{level}:\n" for level in range(MAX_DEPTH + 1)) + " " * 40 + "x"
    with pytest.raises(ValueError, match=f"more than {MAX_DEPTH} levels deep"):
        read_mapping(block, "doc.yaml")


def test_nesting_up_to_the_bound_is_read() -> None:
    for as_json in (True, False):
        assert read_mapping(_nested_json(MAX_DEPTH), "doc", as_json=as_json)["a"]
        with pytest.raises(ValueError, match="levels deep"):
            read_mapping(_nested_json(MAX_DEPTH + 1), "doc", as_json=as_json)
    # brackets inside strings (escaped quotes too) do not nest
    quoted = '{"a": "\\"' + "[" * 1000 + '", "b": ["{"]}'
    assert read_mapping(quoted, "doc", as_json=True)["b"] == ["{"]


def test_yaml_aliases_are_refused() -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(ValueError, match=r"doc uses the alias \*a; aliases are not accepted"):
        read_mapping(laughs, "doc")
    with pytest.raises(ValueError, match=r"alias \*r"):
        read_mapping("r: &r [*r]\n", "doc")  # a list that holds itself
    # an anchor that no alias uses changes nothing
    assert read_mapping("a: &a 1\n", "doc") == {"a": 1}


def test_documents_are_bounded_in_size(tmp_path: Path) -> None:
    long = "a: " + "x" * MAX_DOCUMENT_CHARS
    with pytest.raises(ValueError, match=f"at most {MAX_DOCUMENT_CHARS} characters"):
        read_mapping(long, "doc")
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 4 * MAX_DOCUMENT_CHARS)
    with pytest.raises(ValueError, match=r"^doc big\.yaml is too large \(\d+ bytes\)"):
        read_document(path, "doc big.yaml")


def test_unreadable_documents_are_named_not_their_path(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.yaml is not UTF-8 text") as info:
        read_document(path, "latin.yaml")
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(ValueError, match=r"cannot read gone\.yaml: No such file") as info:
        read_document(tmp_path / "gone.yaml", "gone.yaml")
    assert str(tmp_path) not in str(info.value)


def test_numbers_past_pythons_digit_limit_are_invalid_documents() -> None:
    for as_json in (True, False):
        with pytest.raises(ValueError, match=r"^doc is not valid JSON/YAML: .*digits"):
            read_mapping('{"a": ' + "9" * 5000 + "}", "doc", as_json=as_json)
