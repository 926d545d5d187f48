"""The SDK's scan paging: limits across pages, short and empty pages, the end."""

from __future__ import annotations

from ringkv.client.requests import KeyEntry, ScanPage, ScanPager


def page(keys: list[str], cursor: bytes) -> ScanPage:
    return ScanPage([KeyEntry(key, b"", 1) for key in keys], cursor)


def test_a_limit_spans_pages_and_stops_inside_one() -> None:
    pager = ScanPager(3)
    assert pager.page_limit == 3 and not pager.done
    assert [e.key for e in pager.take(page(["a", "b"], b"c1"))] == ["a", "b"]
    assert pager.page_limit == 1 and pager.cursor == b"c1"
    assert [e.key for e in pager.take(page(["c", "d"], b"c2"))] == ["c"]
    assert pager.done


def test_without_a_limit_empty_pages_go_on_until_the_cursor_ends() -> None:
    pager = ScanPager(None)
    assert pager.page_limit == 0
    assert pager.take(page([], b"c1")) == []
    assert not pager.done
    assert [e.key for e in pager.take(page(["a"], b""))] == ["a"]
    assert pager.done
    assert ScanPager(0).done
