"""--static-map over the socket: HTTP semantics, safety against hostile paths (raw bytes),
precompressed siblings, the uwsgi protocol, files that shrink while sent, slow readers."""

from __future__ import annotations

import gzip
import os
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DroverLauncher, Server, read_response
from tests.server.rawhttp import http, read_responses, read_to_close
from tests.server.uwsgi_client import get as uwsgi_get

SECRET = b"TOP-SECRET-OUTSIDE-THE-MAP"
CSS = b"body { color: #333; }\n" * 20
BIG = os.urandom(3 * 1024 * 1024 + 7)  # sent with sendfile (above the in-memory size)
BR = b"pretend-brotli-bytes"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("static")
    root = base / "site"
    (root / "css").mkdir(parents=True)
    (root / "css" / "app.css").write_bytes(CSS)
    (root / "css" / "app.css.gz").write_bytes(gzip.compress(CSS))
    (root / "css" / "app.css.br").write_bytes(BR)
    (root / "big.bin").write_bytes(BIG)
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<p>docs</p>")
    (root / "listing").mkdir()
    (root / "listing" / "file.txt").write_bytes(b"in a directory without an index")
    (root / ".env").write_bytes(SECRET)
    (root / "%2e%2e").mkdir()  # a directory literally named "%2e%2e"
    (root / "%2e%2e" / "x.txt").write_bytes(b"literal name")
    (root / "caf\u00e9.txt").write_bytes(b"utf-8 name")
    (base / "secret.txt").write_bytes(SECRET)
    (root / "leak.txt").symlink_to(base / "secret.txt")
    (root / "leakdir").symlink_to(base)
    return root


@pytest.fixture(scope="module")
def server(drover_module: DroverLauncher, tree: Path) -> Server:
    return drover_module.app(
        "probe:hello_app", "--workers", "1", "--static-map", f"/static={tree}",
        "--static-index", "index.html", "--static-expires", r"\.css$ 3600",
        "--uwsgi", "127.0.0.1:0", "--http", "127.0.0.1:0")


def get(server: Server, target: str, *headers: str, method: str = "GET") -> bytes:
    """Raw request bytes for ``target`` (sent exactly as given)."""
    return http(f"{method} {target} HTTP/1.1", "Host: x", *headers)


def one(server: Server, target: str, *headers: str, method: str = "GET") -> tuple[int, dict[
        str, str], bytes]:
    with server.connect(10) as sock:
        sock.sendall(get(server, target, *headers, "Connection: close", method=method))
        response = read_response(sock, head=method == "HEAD", timeout=10)
    return response.status, {k.lower(): v for k, v in response.headers}, response.body


# -- serving --------------------------------------------------------------------------------------


def test_a_small_file_with_its_headers(server: Server) -> None:
    status, headers, body = one(server, "/static/css/app.css")
    assert status == 200 and body == CSS
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert headers["content-length"] == str(len(CSS))
    assert headers["accept-ranges"] == "bytes"
    assert headers["etag"].startswith('"') and not headers["etag"].startswith("W/")
    mtime = int((server_tree(server) / "css" / "app.css").stat().st_mtime)
    assert headers["last-modified"] == time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                     time.gmtime(mtime))
    assert headers["cache-control"] == "max-age=3600"
    assert headers["expires"].endswith(" GMT")
    assert headers["vary"] == "Accept-Encoding"  # it has precompressed siblings


def server_tree(server: Server) -> Path:
    arg = next(a for a in server.args if a.startswith("/static="))
    return Path(arg.split("=", 1)[1])


def test_a_large_file_goes_out_whole_twice_on_one_connection(server: Server) -> None:
    with server.connect(20) as sock:
        sock.sendall(get(server, "/static/big.bin") + get(server, "/static/css/app.css"))
        first, second = read_responses(sock, 2, timeout=20)
        sock.sendall(get(server, "/static/big.bin"))
        third = read_response(sock, timeout=20)
    assert first.status == 200 and first.body == BIG
    assert first.header("Content-Type") == "application/octet-stream"
    assert second.status == 200 and second.body == CSS
    assert third.status == 200 and third.body == BIG
    assert first.header("Cache-Control") is None  # the rule is for .css only


def test_requests_sees_the_same_bytes(server: Server) -> None:
    response = requests.get(server.url + "/static/big.bin", timeout=20)
    assert response.status_code == 200 and response.content == BIG


def test_head_sends_the_headers_of_get_and_no_body(server: Server) -> None:
    with server.connect(10) as sock:
        sock.sendall(get(server, "/static/big.bin", method="HEAD")
                     + get(server, "/static/css/app.css", method="HEAD")
                     + get(server, "/static/docs/"))
        big, css, docs = read_responses(sock, 3, heads=(True, True, False), timeout=10)
    assert big.status == 200 and big.header("Content-Length") == str(len(BIG))
    assert css.status == 200 and css.header("Content-Length") == str(len(CSS))
    assert docs.status == 200 and docs.body == b"<p>docs</p>" and docs.rest == b""


def test_paths_are_decoded_once(server: Server) -> None:
    assert one(server, "/static/caf%C3%A9.txt")[2] == b"utf-8 name"
    # %252e%252e is the literal name "%2e%2e", never decoded a second time
    assert one(server, "/static/%252e%252e/x.txt")[2] == b"literal name"


def test_directories(server: Server) -> None:
    assert one(server, "/static/docs/")[0] == 200
    status, headers, _ = one(server, "/static/docs?x=1")
    assert status == 301 and headers["location"] == "/static/docs/?x=1"
    assert one(server, "/static/listing/")[0] == 404  # no index: never a listing
    assert one(server, "/static/listing")[0] == 404
    assert one(server, "/static/")[0] == 404


def test_other_methods_get_405_with_allow(server: Server) -> None:
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        with server.connect(10) as sock:
            sock.sendall(http(f"{method} /static/css/app.css HTTP/1.1", "Host: x",
                              "Content-Length: 3", body=b"abc")
                         + get(server, "/static/css/app.css"))
            refused, served = read_responses(sock, 2, timeout=10)
        assert refused.status == 405 and refused.header("Allow") == "GET, HEAD"
        assert served.status == 200 and served.body == CSS


def test_paths_outside_the_prefix_go_to_the_app(server: Server) -> None:
    assert one(server, "/")[2] == b"Hello, World!"
    assert one(server, "/staticfoo/css/app.css")[2] == b"Hello, World!"


# -- conditional requests and ranges --------------------------------------------------------------


def test_conditional_requests(server: Server) -> None:
    _, headers, _ = one(server, "/static/big.bin")
    etag, modified = headers["etag"], headers["last-modified"]
    status, h304, body = one(server, "/static/big.bin", f"If-None-Match: {etag}")
    assert status == 304 and body == b"" and h304["etag"] == etag
    assert "content-length" not in h304
    assert one(server, "/static/big.bin", f"If-Modified-Since: {modified}")[0] == 304
    assert one(server, "/static/big.bin", 'If-None-Match: "other"')[0] == 200
    assert one(server, "/static/big.bin", 'If-Match: "other"')[0] == 412
    assert one(server, "/static/big.bin", f"If-Match: {etag}")[0] == 200
    assert one(server, "/static/big.bin",
               "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT")[0] == 412


def test_a_304_on_a_kept_alive_connection_carries_no_body(server: Server) -> None:
    _, headers, _ = one(server, "/static/css/app.css")
    with server.connect(10) as sock:
        sock.sendall(get(server, "/static/css/app.css", f"If-None-Match: {headers['etag']}")
                     + get(server, "/static/css/app.css"))
        not_modified, full = read_responses(sock, 2, timeout=10)
    assert not_modified.status == 304 and full.status == 200 and full.body == CSS


@pytest.mark.parametrize("name", ["big.bin", "css/app.css"])  # sendfile and in memory
def test_byte_ranges(server: Server, name: str) -> None:
    content = BIG if name == "big.bin" else CSS
    size = len(content)
    cases = [("bytes=0-0", 0, 0), ("bytes=100-", 100, size - 1), ("bytes=-10", size - 10,
                                                                   size - 1),
             (f"bytes={size - 5}-{size + 100}", size - 5, size - 1)]
    for spec, first, last in cases:
        status, headers, body = one(server, f"/static/{name}", f"Range: {spec}",
                                    "Accept-Encoding: identity")
        assert status == 206, spec
        assert headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert body == content[first:last + 1]
        assert headers["content-length"] == str(last - first + 1)
    status, headers, body = one(server, f"/static/{name}", f"Range: bytes={size}-")
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    assert one(server, f"/static/{name}", "Range: bytes=0-1,5-6")[2] == content
    etag = one(server, f"/static/{name}")[1]["etag"]
    assert one(server, f"/static/{name}", "Range: bytes=0-1", f"If-Range: {etag}")[0] == 206
    status, _, body = one(server, f"/static/{name}", "Range: bytes=0-1", 'If-Range: "old"')
    assert status == 200 and body == content


def test_a_range_of_a_large_file_on_a_kept_alive_connection(server: Server) -> None:
    with server.connect(10) as sock:
        sock.sendall(get(server, "/static/big.bin", "Range: bytes=1000000-1999999")
                     + get(server, "/static/css/app.css"))
        part, after = read_responses(sock, 2, timeout=10)
    assert part.status == 206 and part.body == BIG[1000000:2000000]
    assert after.status == 200 and after.body == CSS


# -- precompressed siblings -----------------------------------------------------------------------


@pytest.mark.parametrize(("accept", "coding", "content"), [
    ("gzip, deflate, br", "br", BR),
    ("gzip", "gzip", gzip.compress(CSS)),
    ("br;q=0, gzip;q=0.5", "gzip", gzip.compress(CSS)),
    ("br;q=0, gzip;q=0", None, CSS),
    ("identity", None, CSS),
    (None, None, CSS),
])
def test_precompressed_siblings(server: Server, accept: str | None, coding: str | None,
                                content: bytes) -> None:
    extra = [f"Accept-Encoding: {accept}"] if accept is not None else []
    status, headers, body = one(server, "/static/css/app.css", *extra)
    assert status == 200
    assert headers.get("content-encoding") == coding
    assert headers["content-type"] == "text/css; charset=utf-8"
    assert headers["vary"] == "Accept-Encoding"
    if coding == "gzip":
        assert gzip.decompress(body) == CSS
    else:
        assert body == content


def test_each_coding_has_its_own_etag(server: Server) -> None:
    plain = one(server, "/static/css/app.css")[1]["etag"]
    br = one(server, "/static/css/app.css", "Accept-Encoding: br")[1]["etag"]
    assert plain != br
    assert one(server, "/static/css/app.css", "Accept-Encoding: br",
               f"If-None-Match: {br}")[0] == 304
    assert one(server, "/static/css/app.css", f"If-None-Match: {br}")[0] == 200


# -- safety: raw targets --------------------------------------------------------------------------

HOSTILE = [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/.%2e/secret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%5csecret.txt",
    "/static/..\\secret.txt",
    "/static/%5c..%5csecret.txt",
    "/static/css/../../secret.txt",
    "/static/css/%2e%2e/%2e%2e/secret.txt",
    "/static/%252e%252e/secret.txt",
    "/static/%25252e%25252e/secret.txt",
    "/static/%c0%ae%c0%ae/secret.txt",
    "/static/%c0%af..%c0%afsecret.txt",
    "/static/%e0%80%ae%e0%80%ae/secret.txt",
    "/static/leak.txt",
    "/static/leakdir/secret.txt",
    "/static/.env",
    "/static/%2eenv",
    "/static/css/app.css%00.txt",
    "/static/%00",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/%2F..%2F..%2Fsecret.txt",
    "/static/./.env",
    "/static/css/./app.css",
    "/static/ /../secret.txt",
    "/static/%ff%fe",
    "/static/.",
    "/static/..",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_nothing_outside_the_directory_is_served(server: Server, target: str) -> None:
    with server.connect(10) as sock:
        sock.sendall(target.join([b"GET ".decode(), " HTTP/1.1\r\nHost: x\r\n"
                                  "Connection: close\r\n\r\n"]).encode("latin-1"))
        data, closed, _ = read_to_close(sock, 10)
    assert closed
    assert SECRET not in data
    assert data.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 400 ")), data[:200]
    server.assert_clean_log()


def test_absolute_form_targets_are_checked_too(server: Server) -> None:
    status, _, body = one(server, "http://x/static/%2e%2e/secret.txt")
    assert status == 404 and SECRET not in body
    assert one(server, "http://x/static/css/app.css")[2] == CSS


def test_hidden_files_can_be_allowed(drover: DroverLauncher, tree: Path) -> None:
    hidden = drover.app("probe:hello_app", "--workers", "1", "--static-map", f"/s={tree}",
                        "--static-allow-hidden")
    assert one(hidden, "/s/.env")[2] == SECRET
    assert one(hidden, "/s/../secret.txt")[0] == 404
    assert one(hidden, "/s/leak.txt")[0] == 404


def test_fallthrough_sends_missing_files_to_the_app(drover: DroverLauncher, tree: Path) -> None:
    fall = drover.app("probe:hello_app", "--workers", "1", "--static-map", f"/s={tree}",
                      "--static-fallthrough")
    assert one(fall, "/s/missing.css")[2] == b"Hello, World!"
    assert one(fall, "/s/listing/")[2] == b"Hello, World!"
    assert one(fall, "/s/css/app.css")[2] == CSS


# -- the uwsgi protocol ---------------------------------------------------------------------------


def test_static_files_over_uwsgi(server: Server) -> None:
    address = server.address("uwsgi")
    answer = uwsgi_get(address, "/static/css/app.css")
    assert answer.status == 200 and answer.body == CSS
    assert answer.header("Content-Type") == "text/css; charset=utf-8"
    big = uwsgi_get(address, "/static/big.bin", timeout=20)
    assert big.status == 200 and big.body == BIG
    assert uwsgi_get(address, "/static/leak.txt").status == 404
    assert uwsgi_get(address, "/").body == b"Hello, World!"


# -- files that change, slow readers --------------------------------------------------------------


def test_a_file_that_shrinks_while_sent_ends_the_connection(drover: DroverLauncher,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    victim = root / "victim.bin"
    size = 64 * 1024 * 1024
    with open(victim, "wb") as f:
        f.truncate(size)  # sparse: cheap to create and to read
    srv = drover.app("probe:hello_app", "--workers", "1", "--static-map", f"/s={root}")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", srv.port or 0))
    with sock:
        sock.sendall(get(srv, "/s/victim.bin"))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ") and f"Content-Length: {size}".encode() in first
        os.truncate(victim, 1024 * 1024)
        rest, closed, _ = read_to_close(sock, 20)
    received = len(first.partition(b"\r\n\r\n")[2]) + len(rest)
    assert closed and received < size
    assert b"HTTP/1.1" not in rest  # nothing framed as another response
    assert one(srv, "/s/victim.bin")[1]["content-length"] == str(1024 * 1024)  # serves on
    assert "file shorter than announced" in srv.log()


def test_a_slow_reader_of_a_huge_file_holds_no_memory_and_blocks_no_one(
        drover: DroverLauncher, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with open(root / "huge.bin", "wb") as f:
        f.truncate(1024**3)  # 1 GiB, sparse
    (root / "small.txt").write_bytes(b"small")
    srv = drover.app("probe:hello_app", "--workers", "1", "--static-map", f"/s={root}")
    worker = int(srv.wait_for_log(r"worker 1 \(pid (\d+), generation \d+\) ready").group(1))
    before = _rss_kib(worker)
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    slow.settimeout(10)
    slow.connect(("127.0.0.1", srv.port or 0))
    with slow:
        slow.sendall(get(srv, "/s/huge.bin"))
        assert slow.recv(4096).startswith(b"HTTP/1.1 200 ")
        for _ in range(5):  # the huge response is stuck on a reader that does not read
            assert one(srv, "/s/small.txt")[2] == b"small"
            assert one(srv, "/")[2] == b"Hello, World!"
        assert _rss_kib(worker) - before < 16 * 1024
    assert one(srv, "/s/small.txt")[2] == b"small"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_several_threads_share_the_files(drover: DroverLauncher, tree: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    srv = drover.app("probe:hello_app", "--workers", "1", "--threads", "3",
                     "--static-map", f"/s={tree}")
    names = ["big.bin", "css/app.css", "docs/index.html", "nope"] * 6

    def fetch(name: str) -> tuple[int, bytes]:
        response = requests.get(f"{srv.url}/s/{name}", timeout=20)
        return response.status_code, response.content

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fetch, names))
    expected = {"big.bin": (200, BIG), "css/app.css": (200, CSS),
                "docs/index.html": (200, b"<p>docs</p>"), "nope": (404, b"404 Not Found\n")}
    assert results == [expected[name] for name in names]
    srv.assert_clean_log()


def test_the_access_log_has_static_answers(drover: DroverLauncher, tree: Path) -> None:
    srv = drover.app("probe:hello_app", "--workers", "1", "--access-log",
                     "--static-map", f"/s={tree}")
    one(srv, "/s/css/app.css")
    one(srv, "/s/big.bin")
    one(srv, "/s/nope")
    srv.wait_for_log(rf'"GET /s/css/app.css HTTP/1.1" 200 {len(CSS)} ')
    srv.wait_for_log(rf'"GET /s/big.bin HTTP/1.1" 200 {len(BIG)} ')
    srv.wait_for_log(r'"GET /s/nope HTTP/1.1" 404 ')


# -- wsgi.file_wrapper goes the same way ----------------------------------------------------------


def test_file_wrapper_sends_a_part_of_a_file(drover: DroverLauncher, tree: Path) -> None:
    srv = drover.app("probe:file_app", "--workers", "1", ready_path=None)
    path = tree / "big.bin"
    with srv.connect(20) as sock:
        sock.sendall(get(srv, f"/?path={path}&offset=1000&length=500000")
                     + get(srv, f"/?path={path}&offset={len(BIG) - 10}"))
        part, tail = read_responses(sock, 2, timeout=20)
    assert part.status == 200 and part.body == BIG[1000:501000]
    assert tail.status == 200 and tail.body == BIG[-10:]


# -- configuration --------------------------------------------------------------------------------


def test_a_missing_directory_is_a_config_error(drover: DroverLauncher, tmp_path: Path) -> None:
    srv = drover("--static-map", f"/s={tmp_path / 'nope'}", wait=False)
    assert srv.proc.wait(15) == 2
    assert "--static-map" in srv.log() and "not a directory" in srv.log()


def test_a_bad_expires_rule_is_a_config_error(drover: DroverLauncher, tmp_path: Path) -> None:
    srv = drover("--static-map", f"/s={tmp_path}", "--static-expires", r"\.css$", wait=False)
    assert srv.proc.wait(15) == 2
    assert "--static-expires" in srv.log()


def test_settings_from_the_environment(drover: DroverLauncher, tree: Path) -> None:
    srv = drover("--pythonpath", str(Path(__file__).parent.parent / "apps"), "probe:hello_app",
                 "--workers", "1", env={"DROVER_STATIC_MAP": f"/a={tree},/b={tree / 'css'}",
                                        "DROVER_STATIC_EXPIRES_URI": "^/b/ 60"})
    assert one(srv, "/a/css/app.css")[2] == CSS
    _status, headers, body = one(srv, "/b/app.css")
    assert body == CSS and headers["cache-control"] == "max-age=60"
