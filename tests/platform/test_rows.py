"""`fetch_page` counts only when the page cannot tell the total itself."""

from __future__ import annotations

import pytest

from dentalpin.platform._rows import known_total


@pytest.mark.parametrize(
    ("found", "limit", "offset", "total"),
    [
        (3, 20, 0, 3),  # a partial first page is the whole list
        (0, 20, 0, 0),  # nothing matches
        (5, 20, 40, 45),  # a partial page is the last one
        (20, 20, 0, None),  # a full page: more may follow
        (0, 20, 40, None),  # past the end: fewer than 40 rows may match
        (1, 1, 0, None),
    ],
)
def test_known_total(found: int, limit: int, offset: int, total: int | None) -> None:
    assert known_total(found, limit=limit, offset=offset) == total
