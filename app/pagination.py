"""Keyset pagination of the list endpoints: ``limit`` and an opaque ``cursor``; a list's body
stays a JSON array, the next page's cursor comes in the ``X-Next-Cursor`` header and as a
``Link: <...>; rel="next"`` (both absent on the last page). The order is stable: each list is
sorted on columns that end with a unique one, and the cursor holds the last row's values.

A list route takes a :data:`Paged` dependency (the query's ``limit`` and ``cursor``) and asks it
for its rows: ``pages.rows(session, query, order)`` also puts the next page's headers on the
response."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Request, Response
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import Invalid

__all__ = ["HEADERS", "MAX_LIMIT", "Order", "Paged", "Pages"]

T = TypeVar("T")
MAX_LIMIT = 200
#: (column, descending); the last column must be unique
Order = Sequence[tuple[InstrumentedAttribute[Any], bool]]
#: OpenAPI headers of a page (for the routes' ``responses``)
HEADERS = {
    "X-Next-Cursor": {
        "description": "The cursor of the next page (absent on the last page).",
        "schema": {"type": "string"},
    },
    "Link": {
        "description": 'The next page\'s URL, rel="next" (absent on the last page).',
        "schema": {"type": "string"},
    },
}


def _encode(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def _decode(cursor: str, order: Order) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(order):
            raise ValueError("wrong shape")
        values: list[Any] = []
        for value, (column, _) in zip(raw, order, strict=True):
            if not isinstance(value, str):
                raise ValueError("not a string")
            if column.type.python_type is datetime:
                parsed = datetime.fromisoformat(value)
                if parsed.tzinfo is None:
                    raise ValueError("naive datetime")
                values.append(parsed)
            else:
                values.append(value)
        return values
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid("invalid cursor: pass a list's X-Next-Cursor as is", field="cursor") from exc


def _after(order: Order, values: list[Any]) -> Any:
    """Rows strictly after ``values`` in ``order`` (lexicographic keyset condition)."""
    clauses = []
    for i, (column, descending) in enumerate(order):
        ahead = column < values[i] if descending else column > values[i]
        same = [order[j][0] == values[j] for j in range(i)]
        clauses.append(and_(*same, ahead))
    return or_(*clauses)


@dataclass(frozen=True)
class Pages:
    """A list request's page: its ``limit`` and ``cursor`` (None: the first page)."""

    request: Request
    response: Response
    limit: int
    cursor: str | None

    @property
    def first(self) -> bool:
        return self.cursor is None

    def rows(self, session: Session, query: Select[T], order: Order) -> list[T]:
        """This page of ``query`` in ``order``; the next page's cursor goes on the response
        (nothing on the last page)."""
        if self.cursor is not None:
            query = query.where(_after(order, _decode(self.cursor, order)))
        query = query.order_by(*(c.desc() if d else c.asc() for c, d in order))
        rows = list(session.scalars(query.limit(self.limit + 1)).all())
        if len(rows) <= self.limit:
            return rows
        rows = rows[: self.limit]
        after = _encode([getattr(rows[-1], column.key) for column, _ in order])
        self.response.headers["X-Next-Cursor"] = after
        url = self.request.url.include_query_params(cursor=after)
        self.response.headers["Link"] = f'<{url}>; rel="next"'
        return rows


def _pages(
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1 to 200).")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=500,
            description="The previous page's X-Next-Cursor (opaque); none: the first.",
        ),
    ] = None,
) -> Pages:
    return Pages(request, response, limit, cursor)


Paged = Annotated[Pages, Depends(_pages)]
