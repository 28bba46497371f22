"""Cursor pagination in a stable order: newest first by (key, id), `after` = the last id seen."""

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import InvalidRequest

T = TypeVar("T")


def page(
    session: Session,
    query: Select[T],
    *,
    key: InstrumentedAttribute[Any],
    ident: InstrumentedAttribute[Any],
    after: str | None,
    limit: int,
) -> tuple[list[T], bool]:
    """One page of `query` (already filtered by tenant) after the cursor row; returns (rows, has_more).

    `key` is the main sort column (usually created_at); `ident` breaks ties, so the order is total.
    """
    if after is not None:
        cursor = session.execute(query.with_only_columns(key, ident).where(ident == after)).one_or_none()
        if cursor is None:
            raise InvalidRequest(f"No object with id '{after}' to page after.", param="after")
        query = query.where(or_(key < cursor[0], and_(key == cursor[0], ident < cursor[1])))
    rows = list(session.scalars(query.order_by(key.desc(), ident.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
