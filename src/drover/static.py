"""Static files under ``--static-map PREFIX=DIR``, answered before the app is called.

Theory of operation
-------------------
A worker builds one ``StaticFiles`` from the config (``StaticFiles.from_config``; None when no
map is configured, so the connection's hook costs one ``is not None`` test). For a request whose
PATH_INFO starts with a mapped prefix, the connection calls ``respond``, which returns an
``Answer`` (bytes to write, and maybe a file range to send with os.sendfile) or None, meaning
"not ours: call the app" (``--static-fallthrough``). ``respond`` runs on a loop thread; it does
filesystem calls (realpath, stat, open, read) but never touches a socket: the worker's
``worker.sendfile.serve_static`` writes the answer. The HTTP decisions (conditional requests,
byte ranges, content codings) are plain functions of strings, tested with tables.

Safety: PATH_INFO is already percent-decoded once by the protocol parser (its bytes carried as
latin-1); nothing here decodes it again, so ``%252e`` names a file literally called ``%2e``.
The bytes must be strict UTF-8 (overlong forms and surrogates are refused by Python's
decoder), and no segment may be ``.`` or ``..``, contain a backslash or a control character
(NUL included), or start with a dot (unless ``--static-allow-hidden``). The path is built from
the checked segments under the realpath of DIR, resolved with os.path.realpath, and served only
if the result is still DIR or under it and still has no hidden segment: a symlink that leads
outside is a 404. The file is opened with O_NOFOLLOW (its last component cannot have become a
symlink since) and O_NONBLOCK (a FIFO cannot block the loop), and fstat must show the same
regular file that was checked.

Speed: each looked-up path gets an ``Entry`` (what it resolved to, the stat of each file, the
header block, and for files up to ``SMALL_FILE`` bytes their content), kept in a bounded dict
(``CACHE_ENTRIES`` entries, ``CACHE_BYTES`` of content) and revalidated by resolving the path
again at most once per ``REVALIDATE`` seconds. The whole answer to a plain GET (head and body)
is kept per entry for the current Date header, so a small file is one dict lookup and one
write. Larger files are opened per request and sent with os.sendfile: one file descriptor per
response in flight, closed when it ends.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from drover.httpdate import http_date, parse_http_date

if TYPE_CHECKING:  # the master reads split_rule from here; it imports no protocol code
    from drover.protocols.request import Request

SMALL_FILE = 64 * 1024  # files up to this size are kept in memory and written with their head
CACHE_ENTRIES = 1024  # looked-up paths remembered per worker
# File contents kept in memory per worker, at most; each is held twice at most (with the
# prebuilt answer of the current second).
CACHE_BYTES = 4 * 1024 * 1024
REVALIDATE = 1.0  # seconds before a remembered path is resolved and stat'ed again

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # controls (NUL included) and backslashes
_REASONS = {200: "OK", 206: "Partial Content", 301: "Moved Permanently", 304: "Not Modified",
            404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed",
            416: "Range Not Satisfiable"}
# Types the standard table lacks or gives an outdated name (RFC 9239 for JavaScript).
_EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".woff": "font/woff",
                ".woff2": "font/woff2", ".webp": "image/webp", ".avif": "image/avif",
                ".map": "application/json", ".webmanifest": "application/manifest+json",
                ".gz": "application/gzip", ".br": "application/octet-stream",
                ".wasm": "application/wasm", ".ico": "image/vnd.microsoft.icon"}
_CHARSET_TYPES = ("text/", "application/javascript", "application/json",
                  "application/manifest+json", "image/svg+xml", "application/xml")
_CODINGS = (("br", ".br"), ("gzip", ".gz"))  # precompressed siblings, preferred first
UNSATISFIABLE = (-1, -1)  # parse_range: answer 416
_LARGE = 1 << 62  # a position with more digits than any file has bytes


# -- the HTTP decisions: plain functions of header values (unit-tested with tables) ------------

def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Does the If-Match / If-None-Match list ``header`` match ``etag`` (RFC 9110 section
    8.8.3.2)? ``weak``: the weak comparison (If-None-Match), else the strong one."""
    header = header.strip()
    if header == "*":
        return True
    for item in header.split(","):
        tag = item.strip()
        if tag.startswith("W/"):
            if not weak:
                continue
            tag = tag[2:]
        if tag == etag:
            return True
    return False


def _position(digits: str) -> int | None:
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) if len(digits) <= 18 else _LARGE


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A Range header against a representation of ``size`` bytes (RFC 9110 section 14.1.2).

    Returns (first, last) inclusive for one satisfiable range; ``UNSATISFIABLE`` (answer 416);
    or None: ignore the field and send the whole representation (a syntax error, another
    unit, or several ranges, which a server may answer with the whole, section 14.2)."""
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip(" \t").lower() != "bytes":
        return None
    spec = spec.strip(" \t")
    if "," in spec:
        return None
    first, dash, last = spec.partition("-")
    if not dash:
        return None
    if not first:  # suffix-range: the last N bytes
        length = _position(last)
        if length is None:
            return None
        if length == 0 or size == 0:
            return UNSATISFIABLE
        return (max(0, size - length), size - 1)
    start = _position(first)
    if start is None:
        return None
    if last:
        end = _position(last)
        if end is None or end < start:
            return None
    else:
        end = size - 1
    if start >= size:
        return UNSATISFIABLE
    return (start, min(end, size - 1))


_QUALITIES: dict[str, tuple[float, float]] = {}  # Accept-Encoding value -> (br, gzip), bounded


def coding_qualities(header: str) -> tuple[float, float]:
    """The quality Accept-Encoding gives br and gzip (RFC 9110 section 12.5.3): a listed coding
    its own q, else ``*``'s, else 0. A malformed q counts as 0 (refused)."""
    found = _QUALITIES.get(header)
    if found is not None:
        return found
    values: dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip(" \t").lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, eq, raw = param.partition("=")
            if eq and key.strip(" \t").lower() == "q":
                raw = raw.strip(" \t")
                try:
                    q = float(raw) if re.fullmatch(r"0(\.\d{0,3})?|1(\.0{0,3})?", raw) else 0.0
                except ValueError:  # pragma: no cover - the pattern admits floats only
                    q = 0.0
        values["gzip" if name == "x-gzip" else name] = q
    star = values.get("*", 0.0)
    found = (values.get("br", star), values.get("gzip", star))
    if len(_QUALITIES) >= 256:
        _QUALITIES.clear()
    _QUALITIES[header] = found
    return found


def choose_coding(header: str | None, available: Iterable[str]) -> str:
    """The precompressed coding to send ("" for the file itself): among those available and
    accepted with q > 0, the highest q, br before gzip on a tie."""
    if not header:
        return ""
    br, gzip = coding_qualities(header)
    best, best_q = "", 0.0
    for coding in available:
        if not coding:
            continue  # the file itself
        q = br if coding == "br" else gzip
        if q > best_q:
            best, best_q = coding, q
    return best


def evaluate(environ: dict[str, Any], head_or_get: bool, etag: str, mtime: int,
             size: int) -> tuple[int, tuple[int, int] | None]:
    """The status for a file given the request's preconditions and Range (RFC 9110 section
    13.2.2, in its order), and the byte range for a 206: (200 | 206 | 304 | 412 | 416, range).
    ``head_or_get``: the method is GET or HEAD (Range applies to GET only; HEAD is decided
    like GET here and the caller sends no body)."""
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            return 412, None
    else:
        since = environ.get("HTTP_IF_UNMODIFIED_SINCE")
        if since is not None:
            when = parse_http_date(since)
            if when is not None and mtime > when:
                return 412, None
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            return (304 if head_or_get else 412), None
    elif head_or_get:
        since = environ.get("HTTP_IF_MODIFIED_SINCE")
        if since is not None:
            when = parse_http_date(since)
            if when is not None and mtime <= when:
                return 304, None
    ranges = environ.get("HTTP_RANGE")
    if ranges is None or environ.get("REQUEST_METHOD") != "GET":
        return 200, None
    if_range = environ.get("HTTP_IF_RANGE")
    if if_range is not None:
        if_range = if_range.strip()
        if if_range.startswith(('"', "W/")):
            if if_range != etag:  # a strong match only (section 13.1.5)
                return 200, None
        elif parse_http_date(if_range) != mtime:
            return 200, None
    chosen = parse_range(ranges, size)
    if chosen is None:
        return 200, None
    if chosen is UNSATISFIABLE:
        return 416, None
    return 206, chosen


def split_rule(text: str) -> tuple[str, int]:
    """``REGEX SECONDS`` (split on the last whitespace) -> (regex, seconds), for the
    --static-expires settings; ValueError with a short reason."""
    parts = text.strip().rsplit(None, 1)
    if len(parts) != 2 or not parts[1].isdigit():
        raise ValueError(f"{text!r} is not 'REGEX SECONDS' (e.g. '\\.css$ 86400')")
    try:
        re.compile(parts[0])
    except re.error as exc:
        raise ValueError(f"{parts[0]!r} is not a valid regular expression: {exc}") from None
    return parts[0], int(parts[1])


def safe_segments(rest: str, allow_hidden: bool) -> list[str] | None:
    """The path segments of ``rest`` (PATH_INFO after the prefix: latin-1 characters of the
    decoded bytes), or None when it may not be served (see the module's docstring). Empty
    segments (``a//b``) are skipped: they cannot climb anywhere."""
    try:
        text = rest.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8: overlong forms, lone surrogates, stray bytes
        return None
    if _CONTROL.search(text):
        return None
    segments = []
    for segment in text.split("/"):
        if not segment:
            continue
        if segment[0] == "." and (not allow_hidden or segment in (".", "..")):
            return None
        segments.append(segment)
    return segments


# -- what a path resolves to ----------------------------------------------------------------------

MISSING, FILE, REDIRECT = range(3)


class Variant:
    """One file on disk that answers for an entry: the file, or a precompressed sibling."""

    __slots__ = ("body", "coding", "dev", "etag", "hot", "hot_date", "ino", "last_modified",
                 "lines", "mtime", "mtime_ns", "path", "size", "validators")

    def __init__(self, path: str, st: os.stat_result, coding: str) -> None:
        self.path = path
        self.coding = coding
        self.dev, self.ino, self.size = st.st_dev, st.st_ino, st.st_size
        self.mtime_ns = st.st_mtime_ns
        self.mtime = int(st.st_mtime)
        self.last_modified = http_date(self.mtime)
        # Strong: the bytes of a regular file change with its size or mtime (or its inode,
        # when it is replaced by a rename, as deployment tools do).
        self.etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}{coding[:2]}"'
        self.body: bytes | None = None
        self.lines = ""  # header lines of a 200 but Content-Length (Entry.finish)
        self.validators = ""  # header lines of a 304 (RFC 9110 section 15.4.5)
        # The answer to a plain GET on a kept-alive HTTP/1.1 connection (head and body, for
        # files in memory), valid while the Date header is ``hot_date``.
        self.hot: Answer | None = None
        self.hot_date = ""

    def signature(self) -> tuple[Any, ...]:
        return (self.path, self.dev, self.ino, self.size, self.mtime_ns)


class Entry:
    """What one PATH_INFO resolved to, when it was checked, and its prebuilt headers."""

    __slots__ = ("checked", "expires", "kind", "signature", "variants", "weight")

    def __init__(self, kind: int, variants: dict[str, Variant] | None = None) -> None:
        self.kind = kind
        self.variants = variants or {}
        self.signature = tuple(v.signature() for v in self.variants.values())
        self.checked = 0.0
        self.expires: int | None = None
        self.weight = 0  # bytes of file content held


class Answer:
    """What to write for one request: ``data`` (the head, with the body when it is in memory),
    then ``count`` bytes of ``fd`` from ``offset`` (a file the writer must close), if any."""

    __slots__ = ("body", "count", "data", "fd", "offset", "status")

    def __init__(self, status: int, data: bytes, body: int = 0, fd: int = -1, offset: int = 0,
                 count: int = 0) -> None:
        self.status = status
        self.data = data
        self.body = body  # body bytes (for the access log)
        self.fd = fd
        self.offset = offset
        self.count = count


_CHANGED = Answer(500, b"")  # _file_answer: the file is not the one that was checked


class StaticFiles:
    """The static maps of one worker and its cache of resolved paths, shared by its loop
    threads: reads are single dict operations; changes are made under a lock, and two threads
    building the entry of one path at once is harmless (the second replaces the first)."""

    def __init__(self, maps: Iterable[tuple[str, str]], indexes: Iterable[str] = (),
                 expires: Iterable[tuple[str, int]] = (),
                 expires_uri: Iterable[tuple[str, int]] = (), fallthrough: bool = False,
                 allow_hidden: bool = False) -> None:
        """Runs in the worker at start-up. ``maps``: (URL prefix, directory)."""
        roots: dict[str, list[str]] = {}  # prefix -> its directories, tried in order
        for prefix, directory in maps:
            roots.setdefault(prefix.rstrip("/"), []).append(os.path.realpath(directory))
        self.mounts = [(prefix, prefix + "/", tuple(dirs)) for prefix, dirs in
                       sorted(roots.items(), key=lambda m: len(m[0]), reverse=True)]
        self.prefixes = tuple(m[0] for m in self.mounts)  # for the connection's startswith
        self.indexes = tuple(indexes)
        self.expires = [(re.compile(rx), seconds) for rx, seconds in expires]
        self.expires_uri = [(re.compile(rx), seconds) for rx, seconds in expires_uri]
        self.fallthrough = fallthrough
        self.allow_hidden = allow_hidden
        self.cache: dict[str, Entry] = {}
        self.cached_bytes = 0  # the weight of the entries in the cache
        self._lock = threading.Lock()  # changes to the cache and cached_bytes
        self.types = mimetypes.MimeTypes()  # the built-in table, read once (not /etc files)
        self._expires_date = ""
        self._expires_lines: dict[int, str] = {}

    @classmethod
    def from_config(cls, config: Any) -> StaticFiles | None:
        """The worker's StaticFiles, or None when no --static-map is configured."""
        if not config.static_map:
            return None
        maps = [tuple(item.split("=", 1)) for item in config.static_map]
        return cls(maps, config.static_index, config.static_expires,
                   config.static_expires_uri, config.static_fallthrough,
                   config.static_allow_hidden)

    # -- answering (loop thread) ------------------------------------------------------------

    def respond(self, request: Request, server_date: str) -> Answer | None:
        """The answer to ``request`` (its PATH_INFO starts with a prefix), or None: the app's."""
        path = request.environ["PATH_INFO"]
        entry = self.cache.get(path)
        if entry is None or time.monotonic() - entry.checked >= REVALIDATE:
            entry = self._lookup(path, entry)
            if entry is None:
                return None  # the path is under no mount (a prefix without its slash)
        answer = self._answer(request, server_date, entry)
        if answer is _CHANGED:  # the file changed since it was checked: look again, once
            entry = self._lookup(path, entry)
            assert entry is not None
            answer = self._answer(request, server_date, entry)
            if answer is _CHANGED:  # changing right now
                return self._short(404, request, server_date)
        return answer

    def _answer(self, request: Request, server_date: str, entry: Entry) -> Answer | None:
        environ = request.environ
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            if self.fallthrough:
                return None  # the app may take other methods on these paths
            return self._short(405, request, server_date, "Allow: GET, HEAD\r\n")
        if entry.kind == MISSING:
            return None if self.fallthrough else self._short(404, request, server_date)
        if entry.kind == REDIRECT:
            uri = environ.get("REQUEST_URI") or environ["PATH_INFO"]
            target, sep, query = uri.partition("?")
            location = f"Location: {target}/{sep}{query}\r\n"
            return self._short(301, request, server_date, location)
        variants = entry.variants
        variant = variants[""]
        if len(variants) > 1:
            coding = choose_coding(environ.get("HTTP_ACCEPT_ENCODING"), variants)
            if coding:
                variant = variants[coding]
        plain = not ("HTTP_RANGE" in environ or "HTTP_IF_NONE_MATCH" in environ
                     or "HTTP_IF_MODIFIED_SINCE" in environ or "HTTP_IF_MATCH" in environ
                     or "HTTP_IF_UNMODIFIED_SINCE" in environ)
        if plain:
            hot = variant.hot
            if (hot is not None and variant.hot_date == server_date and request.keep_alive
                    and request.chunked_ok and not request.head):
                return hot  # the usual case
            status, chosen = 200, None
        else:
            status, chosen = evaluate(environ, True, variant.etag, variant.mtime, variant.size)
        return self._file_answer(request, server_date, entry, variant, status, chosen)

    def _file_answer(self, request: Request, server_date: str, entry: Entry, variant: Variant,
                     status: int, chosen: tuple[int, int] | None) -> Answer | None:
        expires = self._expires_line(entry.expires, server_date)
        if status == 304:
            return Answer(304, self._head(304, request, server_date,
                                          variant.validators + expires, None))
        if status == 412 or status == 416:
            extra = f"Content-Range: bytes */{variant.size}\r\n" if status == 416 else ""
            return self._short(status, request, server_date, extra)
        if chosen is None:
            offset, count = 0, variant.size
            lines = variant.lines + expires
        else:
            offset, count = chosen[0], chosen[1] - chosen[0] + 1
            lines = (f"{variant.lines}{expires}Content-Range: bytes {chosen[0]}-{chosen[1]}"
                     f"/{variant.size}\r\n")
        head = self._head(status, request, server_date, lines, count)
        if request.head:
            return Answer(status, head, 0)
        body = variant.body
        if body is not None:
            answer = Answer(status, head + (body if chosen is None
                                            else body[offset:offset + count]), count)
            if status == 200 and request.keep_alive and request.chunked_ok:
                variant.hot, variant.hot_date = answer, server_date
            return answer
        fd = self._open(variant)
        if fd < 0:
            return _CHANGED
        return Answer(status, head, count, fd, offset, count)

    @staticmethod
    def _open(variant: Variant) -> int:
        """The file opened for sendfile, or -1 when it is no longer the file we checked."""
        try:
            fd = os.open(variant.path, _OPEN_FLAGS)
        except OSError:
            return -1
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return -1
        if (not stat.S_ISREG(st.st_mode) or st.st_ino != variant.ino or st.st_dev != variant.dev
                or st.st_size != variant.size or st.st_mtime_ns != variant.mtime_ns):
            os.close(fd)
            return -1
        return fd

    @staticmethod
    def _head(status: int, request: Request, server_date: str, lines: str,
              length: int | None) -> bytes:
        if not request.keep_alive:
            connection = "Connection: close\r\n"
        elif not request.chunked_ok:
            connection = "Connection: keep-alive\r\n"  # HTTP/1.0 keep-alive (opt-in)
        else:
            connection = ""
        size = "" if length is None else f"Content-Length: {length}\r\n"
        return (f"HTTP/1.1 {status} {_REASONS[status]}\r\n{server_date}{lines}{size}"
                f"{connection}\r\n").encode("latin-1")

    def _short(self, status: int, request: Request, server_date: str,
               lines: str = "") -> Answer:
        """An answer with a short plain-text body (none for HEAD)."""
        body = f"{status} {_REASONS[status]}\n".encode()
        head = self._head(status, request, server_date,
                          lines + "Content-Type: text/plain; charset=utf-8\r\n", len(body))
        if request.head:
            return Answer(status, head, 0)
        return Answer(status, head + body, len(body))

    def _expires_line(self, seconds: int | None, server_date: str) -> str:
        """Expires for a rule's seconds, computed once per Date header (once a second)."""
        if seconds is None:
            return ""
        if server_date != self._expires_date:
            self._expires_date = server_date
            self._expires_lines = {}
        line = self._expires_lines.get(seconds)
        if line is None:
            line = self._expires_lines[seconds] = \
                f"Expires: {http_date(time.time() + seconds)}\r\n"
        return line

    # -- resolving (loop thread, at most once a second per path) ------------------------------

    def mount_for(self, path: str) -> tuple[tuple[str, ...], str] | None:
        """(the directories, the rest of the path) of the longest prefix ``path`` is under."""
        for prefix, prefix_slash, roots in self.mounts:
            if path.startswith(prefix_slash):
                return roots, path[len(prefix):]
            if path == prefix:
                return roots, ""
        return None

    def _lookup(self, path: str, old: Entry | None) -> Entry | None:
        found = self.mount_for(path)
        if found is None:
            return None
        roots, rest = found
        for root in roots:  # one prefix mapped to several directories: the first that has it
            entry = self._resolve(root, rest, path)
            if entry.kind != MISSING:
                break
        if old is not None and old.signature == entry.signature and old.kind == entry.kind:
            old.checked = time.monotonic()  # unchanged: keep the content and built heads
            return old
        self._fill(entry)  # reads small files: outside the lock
        entry.checked = time.monotonic()
        with self._lock:  # loop threads of one worker share the cache
            cache = self.cache
            replaced = cache.pop(path, None)
            if replaced is not None:
                self.cached_bytes -= replaced.weight
            while len(cache) >= CACHE_ENTRIES:
                self.cached_bytes -= cache.pop(next(iter(cache))).weight  # the oldest
            cache[path] = entry
            self.cached_bytes += entry.weight
        return entry

    def _inside(self, root: str, path: str) -> str | None:
        """``path`` with symlinks resolved, if it is still ``root`` or under it (and holds no
        hidden segment, unless allowed); else None."""
        real = os.path.realpath(path)
        if real == root:
            return real
        if not real.startswith(root + "/") and root != "/":
            return None
        if not self.allow_hidden and "/." in (real if root == "/" else real[len(root):]):
            return None
        return real

    def _resolve(self, root: str, rest: str, path: str) -> Entry:
        segments = safe_segments(rest, self.allow_hidden)
        if segments is None:
            return Entry(MISSING)
        wants_dir = rest.endswith("/")  # "/static" alone is redirected to "/static/" too
        candidate = os.path.join(root, *segments)  # segments hold no "/" and no ".."
        try:
            real = self._inside(root, candidate)
            if real is None:
                return Entry(MISSING)
            st = os.stat(real)
            if stat.S_ISDIR(st.st_mode):
                for name in self.indexes:
                    index = self._inside(root, os.path.join(real, name))
                    if index is None:
                        continue
                    try:
                        ist = os.stat(index)
                    except OSError:
                        continue
                    if stat.S_ISREG(ist.st_mode):
                        if not wants_dir:  # relative links in the index need the slash
                            return Entry(REDIRECT)
                        return self._file(root, index, ist, path)
                return Entry(MISSING)  # a directory without an index: never a listing
            if not stat.S_ISREG(st.st_mode) or wants_dir:
                return Entry(MISSING)
            return self._file(root, real, st, path)
        except (OSError, ValueError):
            return Entry(MISSING)

    def _file(self, root: str, real: str, st: os.stat_result, path: str) -> Entry:
        variants = {"": Variant(real, st, "")}
        for coding, suffix in _CODINGS:
            sibling = self._inside(root, real + suffix)
            if sibling is None:
                continue
            try:
                sst = os.stat(sibling)
            except OSError:
                continue
            # A sibling older than the file is stale (the file was rebuilt without it).
            if stat.S_ISREG(sst.st_mode) and sst.st_mtime_ns >= st.st_mtime_ns:
                variants[coding] = Variant(sibling, sst, coding)
        entry = Entry(FILE, variants)
        for rules, subject in ((self.expires, real), (self.expires_uri, path)):
            for regex, seconds in rules:
                if regex.search(subject):
                    entry.expires = seconds
                    break
            if entry.expires is not None:
                break
        return entry

    def _fill(self, entry: Entry) -> None:
        """Header lines for each variant, and the content of small files (within budget)."""
        if entry.kind != FILE:
            return
        identity = entry.variants[""]
        content_type = self._content_type(identity.path)
        vary = "Vary: Accept-Encoding\r\n" if len(entry.variants) > 1 else ""
        cache_control = (f"Cache-Control: max-age={entry.expires}\r\n"
                         if entry.expires is not None else "")
        for variant in entry.variants.values():
            coding = f"Content-Encoding: {variant.coding}\r\n" if variant.coding else ""
            validators = f"ETag: {variant.etag}\r\n{vary}{cache_control}"
            variant.validators = validators
            variant.lines = (f"Content-Type: {content_type}\r\n{coding}Last-Modified: "
                             f"{variant.last_modified}\r\nAccept-Ranges: bytes\r\n{validators}")
            if (variant.size <= SMALL_FILE
                    and self.cached_bytes + entry.weight + variant.size <= CACHE_BYTES):
                variant.body = self._read(variant)
                if variant.body is not None:
                    entry.weight += variant.size

    def _read(self, variant: Variant) -> bytes | None:
        """The content of a small file, if it is still the file that was stat'ed."""
        fd = self._open(variant)
        if fd < 0:
            return None
        try:
            data = os.read(fd, variant.size + 1)
            st = os.fstat(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != variant.size or st.st_mtime_ns != variant.mtime_ns:
            return None  # changing right now: sendfile it until it settles
        return data

    def _content_type(self, path: str) -> str:
        ext = os.path.splitext(path)[1].lower()
        kind = _EXTRA_TYPES.get(ext) or self.types.types_map[True].get(ext) \
            or "application/octet-stream"
        if kind.startswith(_CHARSET_TYPES):
            kind += "; charset=utf-8"
        return kind
