"""drover.static's decisions, table-driven: ranges, preconditions, codings, path safety, and
the resolution of paths in a real temporary directory (no sockets here)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from drover.httpdate import http_date, parse_http_date
from drover.protocols.request import Request
from drover.static import (
    UNSATISFIABLE,
    StaticFiles,
    choose_coding,
    coding_qualities,
    etag_matches,
    evaluate,
    parse_range,
    safe_segments,
    split_rule,
)

# -- Range (RFC 9110 section 14.1.2) -----------------------------------------------------------

RANGES = [
    ("bytes=0-0", 10, (0, 0)),
    ("bytes=0-9", 10, (0, 9)),
    ("bytes=2-", 10, (2, 9)),
    ("bytes=2-100", 10, (2, 9)),  # last-pos past the end: clipped
    ("bytes=-3", 10, (7, 9)),
    ("bytes=-30", 10, (0, 9)),  # suffix longer than the file: all of it
    ("BYTES = 1-2", 10, (1, 2)),  # the unit is case-insensitive; OWS around "="
    ("bytes=10-", 10, UNSATISFIABLE),
    ("bytes=10-20", 10, UNSATISFIABLE),
    ("bytes=99999999999999999999999-", 10, UNSATISFIABLE),  # huge first-pos
    ("bytes=-0", 10, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),  # nothing to select in an empty file
    ("bytes=-5", 0, UNSATISFIABLE),
    ("bytes=5-2", 10, None),  # last < first: invalid, ignored
    ("bytes=0-1,3-4", 10, None),  # several ranges: the whole file (section 14.2)
    ("bytes=0-1,", 10, None),
    ("items=0-1", 10, None),  # another unit
    ("bytes 0-1", 10, None),
    ("bytes=", 10, None),
    ("bytes=-", 10, None),
    ("bytes=a-b", 10, None),
    ("bytes=+1-2", 10, None),
    ("bytes=1-+2", 10, None),
    ("bytes=\u0661-2", 10, None),  # a non-ASCII digit
    ("bytes=1", 10, None),
    ("bytes=0x1-2", 10, None),
]


@pytest.mark.parametrize(("value", "size", "expected"), RANGES)
def test_parse_range(value: str, size: int, expected: Any) -> None:
    assert parse_range(value, size) == expected


# -- entity tags and dates -------------------------------------------------------------------

TAG = '"abc-1"'
ETAGS = [
    ('"abc-1"', False, True),
    ('"abc-1"', True, True),
    ('W/"abc-1"', True, True),  # the weak comparison ignores W/
    ('W/"abc-1"', False, False),  # the strong one never matches a weak tag
    ('"x", "abc-1"', False, True),
    ('"x" ,W/"abc-1"', True, True),
    ("*", False, True),
    ('"abc-2"', True, False),
    ("abc-1", True, False),  # unquoted: not the tag
    ("", True, False),
]


@pytest.mark.parametrize(("header", "weak", "expected"), ETAGS)
def test_etag_matches(header: str, weak: bool, expected: bool) -> None:
    assert etag_matches(header, TAG, weak=weak) is expected


DATES = [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
    ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # RFC 850
    ("Sun Nov  6 08:49:37 1994", 784111777),  # asctime
    ("Sun, 06 Nov 1994 08:49:37 +0100", None),  # not GMT
    ("Sun, 06 Nov 1994 25:49:37 GMT", None),
    ("Sun, 06 Foo 1994 08:49:37 GMT", None),
    ("yesterday", None),
    ("", None),
]


@pytest.mark.parametrize(("value", "expected"), DATES)
def test_parse_http_date(value: str, expected: int | None) -> None:
    assert parse_http_date(value) == expected


def test_http_date_round_trips() -> None:
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(http_date(1_700_000_000)) == 1_700_000_000


# -- preconditions and ranges together (RFC 9110 section 13.2.2) ------------------------------

MTIME = 1_700_000_000
LM = http_date(MTIME)
BEFORE, AFTER = http_date(MTIME - 10), http_date(MTIME + 10)
EVALUATIONS: list[tuple[dict[str, str], tuple[int, Any]]] = [
    ({}, (200, None)),
    ({"HTTP_IF_NONE_MATCH": TAG}, (304, None)),
    ({"HTTP_IF_NONE_MATCH": 'W/"abc-1"'}, (304, None)),
    ({"HTTP_IF_NONE_MATCH": '"other"'}, (200, None)),
    ({"HTTP_IF_NONE_MATCH": "*"}, (304, None)),
    ({"HTTP_IF_MODIFIED_SINCE": LM}, (304, None)),
    ({"HTTP_IF_MODIFIED_SINCE": AFTER}, (304, None)),
    ({"HTTP_IF_MODIFIED_SINCE": BEFORE}, (200, None)),
    ({"HTTP_IF_MODIFIED_SINCE": "garbage"}, (200, None)),
    # If-None-Match wins over If-Modified-Since (section 13.1.3)
    ({"HTTP_IF_NONE_MATCH": '"other"', "HTTP_IF_MODIFIED_SINCE": AFTER}, (200, None)),
    ({"HTTP_IF_MATCH": TAG}, (200, None)),
    ({"HTTP_IF_MATCH": '"other"'}, (412, None)),
    ({"HTTP_IF_MATCH": 'W/"abc-1"'}, (412, None)),
    ({"HTTP_IF_MATCH": "*"}, (200, None)),
    ({"HTTP_IF_UNMODIFIED_SINCE": BEFORE}, (412, None)),
    ({"HTTP_IF_UNMODIFIED_SINCE": LM}, (200, None)),
    ({"HTTP_IF_UNMODIFIED_SINCE": "garbage"}, (200, None)),
    # If-Match is evaluated first and If-Unmodified-Since then ignored
    ({"HTTP_IF_MATCH": TAG, "HTTP_IF_UNMODIFIED_SINCE": BEFORE}, (200, None)),
    ({"HTTP_IF_MATCH": '"other"', "HTTP_IF_NONE_MATCH": TAG}, (412, None)),
    ({"HTTP_RANGE": "bytes=0-4"}, (206, (0, 4))),
    ({"HTTP_RANGE": "bytes=100-"}, (416, None)),
    ({"HTTP_RANGE": "bytes=0-1,5-6"}, (200, None)),
    ({"HTTP_RANGE": "bytes=0-4", "REQUEST_METHOD": "HEAD"}, (200, None)),  # GET only
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_RANGE": TAG}, (206, (0, 4))),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_RANGE": '"other"'}, (200, None)),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_RANGE": 'W/"abc-1"'}, (200, None)),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_RANGE": LM}, (206, (0, 4))),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_RANGE": BEFORE}, (200, None)),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_NONE_MATCH": TAG}, (304, None)),
    ({"HTTP_RANGE": "bytes=0-4", "HTTP_IF_MATCH": '"other"'}, (412, None)),
]


@pytest.mark.parametrize(("headers", "expected"), EVALUATIONS)
def test_evaluate(headers: dict[str, str], expected: tuple[int, Any]) -> None:
    environ = {"REQUEST_METHOD": "GET", **headers}
    assert evaluate(environ, True, TAG, MTIME, 20) == expected


# -- content codings (RFC 9110 section 12.5.3) ----------------------------------------------------

CODINGS = [
    (None, ("br", "gzip"), ""),
    ("", ("br", "gzip"), ""),
    ("gzip, deflate, br", ("br", "gzip"), "br"),  # a tie: br first
    ("gzip, deflate", ("br", "gzip"), "gzip"),
    ("gzip;q=1.0, br;q=0.5", ("br", "gzip"), "gzip"),
    ("br;q=0, gzip", ("br", "gzip"), "gzip"),  # q=0 refuses
    ("br;q=0, gzip;q=0", ("br", "gzip"), ""),
    ("*", ("br", "gzip"), "br"),
    ("*;q=0.5, br;q=0", ("br", "gzip"), "gzip"),
    ("identity", ("br", "gzip"), ""),
    ("x-gzip", ("gzip",), "gzip"),
    ("GZIP", ("gzip",), "gzip"),
    ("br", ("gzip",), ""),  # not available
    ("br;q=2", ("br", "gzip"), ""),  # malformed q: refused
    ("br;q=0.0001", ("br", "gzip"), ""),
    ("br;q=abc, gzip;q=0.001", ("br", "gzip"), "gzip"),
]


@pytest.mark.parametrize(("header", "available", "expected"), CODINGS)
def test_choose_coding(header: str | None, available: tuple[str, ...], expected: str) -> None:
    assert choose_coding(header, available) == expected


def test_coding_qualities_default_to_star() -> None:
    assert coding_qualities("*;q=0.3") == (0.3, 0.3)
    assert coding_qualities("deflate") == (0.0, 0.0)


# -- path safety --------------------------------------------------------------------------------

SEGMENTS: list[tuple[str, bool, list[str] | None]] = [
    ("/a/b.css", False, ["a", "b.css"]),
    ("/a//b.css", False, ["a", "b.css"]),  # empty segments climb nowhere
    ("/", False, []),
    ("", False, []),
    ("/caf\xc3\xa9.txt", False, ["caf\u00e9.txt"]),  # UTF-8 bytes as latin-1: decoded once
    ("/%2e%2e/x", False, ["%2e%2e", "x"]),  # from %252e%252e: a literal name
    ("/../x", False, None),
    ("/a/..", False, None),
    ("/./x", False, None),
    ("/.env", False, None),
    ("/.env", True, [".env"]),
    ("/..", True, None),  # never, hidden files allowed or not
    ("/a/.git/config", False, None),
    ("/a\\..\\x", False, None),  # backslashes
    ("/a\x00.css", False, None),  # NUL
    ("/a\x1b.css", False, None),
    ("/a\x7f.css", False, None),
    ("/\xc0\xae\xc0\xae/x", False, None),  # overlong UTF-8 for "."
    ("/\xe0\x80\xae", False, None),
    ("/\xed\xa0\x80", False, None),  # a surrogate
    ("/\xff", False, None),  # not UTF-8 at all
]


@pytest.mark.parametrize(("rest", "hidden", "expected"), SEGMENTS)
def test_safe_segments(rest: str, hidden: bool, expected: list[str] | None) -> None:
    assert safe_segments(rest, hidden) == expected


@pytest.mark.parametrize(("text", "expected"), [
    (r"\.css$ 86400", (r"\.css$", 86400)),
    (r"/static/.*\.css 86400", (r"/static/.*\.css", 86400)),
    ("a b c 5", ("a b c", 5)),  # split on the last whitespace
])
def test_split_rule(text: str, expected: tuple[str, int]) -> None:
    assert split_rule(text) == expected


@pytest.mark.parametrize("text", ["86400", r"\.css$", r"\.css$ -1", r"\.css$ 1h", "( 60"])
def test_split_rule_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_rule(text)


# -- resolution in a real directory -----------------------------------------------------------


def request(path: str, method: str = "GET", **headers: str) -> Request:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "REQUEST_URI": path, **headers}
    return Request(environ, io.BytesIO(), True, True, method == "HEAD")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "css").mkdir(parents=True)
    (root / "css" / "a.css").write_text("body{}")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<p>docs</p>")
    (root / "empty").mkdir()
    (root / "big.bin").write_bytes(os.urandom(100_000))
    (tmp_path / "outside.txt").write_text("secret")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "outdir").symlink_to(tmp_path)
    (root / "in").symlink_to(root / "css" / "a.css")
    os.mkfifo(root / "fifo")
    return root


def status(files: StaticFiles, req: Request) -> int:
    answer = files.respond(req, "")
    assert answer is not None
    if answer.fd >= 0:
        os.close(answer.fd)
    return answer.status


@pytest.mark.parametrize(("path", "expected"), [
    ("/s/css/a.css", 200),
    ("/s/in", 200),  # a symlink that stays inside
    ("/s/big.bin", 200),
    ("/s/docs/", 200),
    ("/s/docs", 301),
    ("/s/empty/", 404),  # no index: never a listing
    ("/s/empty", 404),
    ("/s/", 404),
    ("/s", 404),
    ("/s/out", 404),  # a symlink to a file outside
    ("/s/outdir/outside.txt", 404),  # through a symlinked directory outside
    ("/s/fifo", 404),  # not a regular file (and it must not block)
    ("/s/css/a.css/", 404),  # a file is not a directory
    ("/s/missing", 404),
])
def test_resolution(tree: Path, path: str, expected: int) -> None:
    files = StaticFiles([("/s", str(tree))], indexes=["index.html"])
    assert status(files, request(path)) == expected


def test_other_methods_get_405_with_allow(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))])
    answer = files.respond(request("/s/css/a.css", "POST"), "")
    assert answer is not None and answer.status == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in answer.data


def test_fallthrough_hands_missing_paths_to_the_app(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))], fallthrough=True)
    assert files.respond(request("/s/missing"), "") is None
    assert files.respond(request("/s/out"), "") is None
    assert status(files, request("/s/css/a.css")) == 200


def test_fallthrough_hands_other_methods_to_the_app(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))], fallthrough=True)
    assert files.respond(request("/s/css/a.css", "POST"), "") is None


def test_a_map_at_the_root_with_fallthrough(tree: Path) -> None:
    """uWSGI's check-static DIR: files first, the app for the rest."""
    files = StaticFiles([("/", str(tree))], indexes=["index.html"], fallthrough=True)
    assert files.prefixes == ("",)
    assert status(files, request("/css/a.css")) == 200
    assert status(files, request("/docs/")) == 200
    assert files.respond(request("/"), "") is None
    assert files.respond(request("/app/view"), "") is None


def test_a_prefix_matches_whole_segments_only(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))])
    assert files.respond(request("/sx/css/a.css"), "") is None


def test_longest_prefix_wins(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree)), ("/s/css", str(tree / "docs"))],
                        indexes=["index.html"])
    assert status(files, request("/s/css/a.css")) == 404  # looked up in docs/
    assert status(files, request("/s/css/index.html")) == 200


def test_one_prefix_over_several_directories(tree: Path, tmp_path: Path) -> None:
    """Like uWSGI's repeated static-map: the directories are tried in the order given."""
    other = tmp_path / "other"
    (other / "css").mkdir(parents=True)
    (other / "css" / "a.css").write_text("shadowed")
    (other / "only-here.txt").write_text("found")
    files = StaticFiles([("/s", str(tree)), ("/s/", str(other))])
    first = files.respond(request("/s/css/a.css"), "")
    assert first is not None and first.data.endswith(b"body{}")
    second = files.respond(request("/s/only-here.txt"), "")
    assert second is not None and second.data.endswith(b"found")
    assert status(files, request("/s/nowhere")) == 404


def test_small_files_are_answered_from_memory_and_large_ones_by_file(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))])
    small = files.respond(request("/s/css/a.css"), "")
    assert small is not None and small.fd < 0 and small.data.endswith(b"\r\n\r\nbody{}")
    big = files.respond(request("/s/big.bin"), "")
    assert big is not None and big.fd >= 0 and big.count == 100_000
    os.close(big.fd)
    again = files.respond(request("/s/css/a.css"), "")
    assert again is small  # the plain answer is built once per Date header


def test_a_changed_file_is_seen_after_revalidation(tree: Path, monkeypatch: Any) -> None:
    files = StaticFiles([("/s", str(tree))])
    first = files.respond(request("/s/css/a.css"), "")
    assert first is not None
    (tree / "css" / "a.css").write_text("p{}")
    entry = files.cache["/s/css/a.css"]
    entry.checked -= 2  # as if two seconds had passed
    second = files.respond(request("/s/css/a.css"), "")
    assert second is not None and second.data.endswith(b"\r\n\r\np{}")


def test_the_cache_is_bounded(tree: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("drover.static.CACHE_ENTRIES", 8)
    files = StaticFiles([("/s", str(tree))])
    for i in range(50):
        files.respond(request(f"/s/missing-{i}"), "")
    assert len(files.cache) <= 8
    for i in range(50):  # small files: their content is counted and released
        (tree / f"f{i}.txt").write_bytes(b"x" * 1000)
        files.respond(request(f"/s/f{i}.txt"), "")
    assert len(files.cache) <= 8
    assert files.cached_bytes == sum(entry.weight for entry in files.cache.values()) <= 8000


def test_cached_content_stays_within_its_budget(tree: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("drover.static.CACHE_BYTES", 2500)
    files = StaticFiles([("/s", str(tree))])
    for i in range(5):
        (tree / f"g{i}.txt").write_bytes(b"y" * 1000)
        answer = files.respond(request(f"/s/g{i}.txt"), "")
        assert answer is not None and answer.status == 200
        if answer.fd >= 0:  # beyond the budget: served from the file
            os.close(answer.fd)
    assert files.cached_bytes == 2000


def test_content_types_and_charsets(tree: Path) -> None:
    files = StaticFiles([("/s", str(tree))])
    for name, expected in [("a.css", "text/css; charset=utf-8"),
                           ("a.js", "text/javascript; charset=utf-8"),
                           ("a.json", "application/json; charset=utf-8"),
                           ("a.png", "image/png"), ("a.woff2", "font/woff2"),
                           ("a.unknown", "application/octet-stream"),
                           ("A.CSS", "text/css; charset=utf-8")]:
        assert files._content_type(name) == expected
