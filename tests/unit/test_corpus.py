"""Replay tests/corpus: each raw request whole, split at every byte, bytewise, and in random
pieces; the parser must give the same events however the bytes arrive, and the ones the
request's JSON file lists (see tests/corpus/README.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from http_events import Seen, bytewise, feed, random_pieces, split_at, two_way_splits

from drover.protocols.http import HttpLimits

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
RANDOM_ROUNDS = 25
LIMIT_FIELDS = {f.name for f in dataclasses.fields(HttpLimits)}


@dataclass(frozen=True)
class Case:
    kind: str  # "valid" or "invalid"
    name: str
    data: bytes
    spec: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def limits(self) -> HttpLimits:
        overrides = self.spec.get("limits", {})
        unknown = set(overrides) - LIMIT_FIELDS
        assert not unknown, f"{self.id}: unknown limits {unknown}"
        return HttpLimits(**overrides)

    @property
    def seed(self) -> int:
        return int.from_bytes(hashlib.sha256(self.id.encode()).digest()[:8], "big")


def load_corpus() -> list[Case]:
    cases = []
    for kind in ("valid", "invalid"):
        for path in sorted((CORPUS / kind).glob("*.http")):
            spec = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            cases.append(Case(kind, path.stem, path.read_bytes(), spec))
    return cases


CASES = load_corpus()
IDS = [case.id for case in CASES]


def check_against_spec(case: Case, seen: list[Seen]) -> None:
    """``seen`` must be, event for event, what the case's JSON lists."""
    expected = case.spec["events"]
    assert [s.kind for s in seen] == [next(iter(e)) for e in expected], seen
    for got, want in zip(seen, expected, strict=True):
        if "error" in want:
            assert got.status == want["error"]
        elif "continue" in want:
            assert got.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        else:
            spec = want["request"]
            environ = got.env()
            assert {k: environ.get(k) for k in spec["environ"]} == spec["environ"]
            assert not set(spec.get("absent", ())) & set(environ)
            body = spec["body"]
            if isinstance(body, str):
                assert got.body == body.encode("latin-1")
            else:
                assert (len(got.body), hashlib.sha256(got.body).hexdigest()) == (
                    body["length"], body["sha256"])
            assert (got.keep_alive, got.chunked_ok, got.head) == (
                spec["keep_alive"], spec["chunked_ok"], spec["head"])


def test_corpus_is_complete() -> None:
    """Every .http has its .json and the other way round, and there is something to replay."""
    for kind in ("valid", "invalid"):
        http = {p.stem for p in (CORPUS / kind).glob("*.http")}
        spec = {p.stem for p in (CORPUS / kind).glob("*.json")}
        assert http == spec, kind
        assert len(http) >= 20, kind


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_files_keep_their_crlfs(case: Case) -> None:
    """No bare LF in a head unless the case is about one ("bare_lf": no editor damage)."""
    head = case.data.split(b"\r\n\r\n", 1)[0]
    assert (b"\n" in head.replace(b"\r\n", b"")) == bool(case.spec.get("bare_lf"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_kind_matches_its_events(case: Case) -> None:
    kinds = [next(iter(event)) for event in case.spec["events"]]
    if case.kind == "valid":
        assert "error" not in kinds and "request" in kinds
    else:
        assert kinds[-1] == "error" and kinds.count("error") == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_request_whole_gives_the_expected_events(case: Case) -> None:
    check_against_spec(case, feed([case.data], case.limits))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_request_split_in_two_anywhere_gives_the_same_events(case: Case) -> None:
    whole = feed([case.data], case.limits)
    differs = [pos for pos in two_way_splits(case.data, random.Random(case.seed))
               if feed(split_at(case.data, [pos]), case.limits) != whole]
    assert not differs, (f"different events when split at {differs[:20]} "
                         f"(e.g. {feed(split_at(case.data, [differs[0]]), case.limits)} "
                         f"instead of {whole})")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_request_fed_byte_by_byte_gives_the_same_events(case: Case) -> None:
    assert feed(bytewise(case.data), case.limits) == feed([case.data], case.limits)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_corpus_request_in_random_pieces_gives_the_same_events(case: Case) -> None:
    whole = feed([case.data], case.limits)
    rng = random.Random(case.seed)
    for round_ in range(RANDOM_ROUNDS):
        pieces = random_pieces(case.data, rng, max_piece=rng.choice([2, 8, 64, 1024]))
        sizes = [len(p) for p in pieces]
        assert feed(pieces, case.limits) == whole, f"round {round_}, piece sizes {sizes[:30]}"
