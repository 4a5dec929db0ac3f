from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from reconstruction.documents import read_mapping, validation_problem


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
