"""The local feed's history and its ground truth.

Memory design: no document is stored. The change log is a few parallel `array`s indexed by
offset (resource index, kind, version); update operations are kept as compact JSON bytes per
offset; a resource's payload at create time is re-generated from (seed, name, create offset) by
`content.payload`. Any document at any offset is therefore "regenerate, then replay the stored
updates". Only a small LRU of current documents (used to invent valid new patches) holds full
documents.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import tempfile
import threading
import time
import weakref
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from content_sync.testing import content
from content_sync.testing.patch import PatchError, apply_ops, pointer, resolve
from content_sync.testing.snapshot import VARIANTS, build_variant, write_snapshot

__all__ = ["FeedModel", "Snapshot"]

CREATE, UPDATE, DELETE = 0, 1, 2
_KIND = ("create", "update", "delete")
_EPOCH = datetime(2023, 11, 23, 19, 34, 18, tzinfo=UTC)
_CACHE_DOCS = 256  # a parsed 12 KB record costs ~100 KB of Python objects
_CNA = "/containers/cna"
# Keys with '/' and '~' so patch paths need the ~1 / ~0 escapes.
_ESCAPED_KEYS = ("debian/12", "ubuntu/22.04~esm", "rhel~9", "sles/15~sp6", "alpine/3.20")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _stamp(offset: int) -> str:
    """Deterministic insertion time of a change (seconds apart, like a busy feed)."""
    t = _EPOCH + timedelta(seconds=offset * 29, microseconds=(offset * 7919) % 1_000_000)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Snapshot:
    """One published snapshot archive."""

    name: str  # "<offset>_<ts>.zip", the link's last path segment
    member: str  # "<context>_<consumer>_<offset>_<ts>.json"
    path: Path
    offset: int
    ts: int
    published_at: str
    lines: int  # resources in the archive
    member_size: int  # uncompressed bytes of the member


class FeedModel:
    """History, truth and snapshots of one context/consumer of the local feed."""

    def __init__(
        self,
        *,
        resources: int,
        seed: int = 0,
        context: str = "vd_1.0.0",
        consumer: str = "vd_4.8.0",
        history: int = 0,
        non_cve: int = 5,
        avg_size: int = 12_000,
        workdir: str | Path | None = None,
        compress_level: int = 1,
    ) -> None:
        if resources < 0 or history < 0:
            raise ValueError("resources and history must be >= 0")
        self.context = context
        self.consumer = consumer
        self.non_cve = non_cve
        self.avg_size = avg_size
        self.compress_level = compress_level
        self.seed = seed
        self._setup(workdir)
        self._last_ts = 0
        self._bad_count = 0
        self._reset(resources, seed)
        if history:
            self.append_changes(history)
        self.publish_snapshot()

    def _setup(self, workdir: str | Path | None) -> None:
        # Re-entrant: publish_snapshot runs under it and calls helpers that take it too.
        self.lock = threading.RLock()
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="content-sync-feed-"))
            self._cleanup: Callable[[], Any] | None = weakref.finalize(
                self, shutil.rmtree, str(self.workdir), True
            )
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._cleanup = None
        self.snapshots: dict[str, Snapshot] = {}
        self.snapshot: Snapshot | None = None
        self._variants: dict[tuple[str, str], Path] = {}
        self._variant_lock = threading.Lock()

    def clone(self, workdir: str | Path | None = None) -> FeedModel:
        """An independent copy (history, truth, snapshot files) in another workdir.

        Much cheaper than building the same model again: fixtures build a template once per
        session and hand every test its own clone.
        """
        with self.lock:
            new = FeedModel.__new__(FeedModel)
            new.context, new.consumer, new.non_cve = self.context, self.consumer, self.non_cve
            new.avg_size, new.compress_level, new.seed = (
                self.avg_size,
                self.compress_level,
                self.seed,
            )
            new._setup(workdir)
            new._last_ts, new._bad_count = self._last_ts, self._bad_count
            new._names = list(self._names)
            new._index = dict(self._index)
            new._first = array("q", self._first)
            new._more = {k: list(v) for k, v in self._more.items()}
            new._res = array("i", self._res)
            new._kind = array("b", self._kind)
            new._ver = array("i", self._ver)
            new._ops = dict(self._ops)
            new._bad = set(self._bad)
            new._alive = bytearray(self._alive)
            new._deleted = list(self._deleted)
            new._sorted = self._sorted  # never mutated in place, only replaced
            new._cache = OrderedDict()  # cached documents are mutable: never share them
            for name, snap in self.snapshots.items():
                path = new.workdir / name
                shutil.copyfile(snap.path, path)
                new.snapshots[name] = dataclasses.replace(snap, path=path)
            if self.snapshot is not None:
                new.snapshot = new.snapshots[self.snapshot.name]
            return new

    # ------------------------------------------------------------------ history storage

    def _reset(self, resources: int, seed: int) -> None:
        self.seed = seed
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._first = array("q")  # resource -> offset of its first change
        self._more: dict[int, list[int]] = {}  # resource -> offsets of its later changes
        self._res = array("i")  # offset-1 -> resource
        self._kind = array("b")  # offset-1 -> CREATE/UPDATE/DELETE
        self._ver = array("i")  # offset-1 -> resource version after the change
        self._ops: dict[int, bytes] = {}  # offset -> JSON ops of a non-empty update
        self._bad: set[int] = set()  # offsets of updates that do not apply (truth ignores them)
        self._alive = bytearray()
        self._deleted: list[int] = []
        self._sorted: array[int] | None = None
        self._cache: OrderedDict[int, tuple[int, Any]] = OrderedDict()
        rng = random.Random(f"{seed}|names")
        n_other = min(self.non_cve, resources)
        names = content.other_names(n_other) + self._cve_names(rng, resources - n_other)
        rng.shuffle(names)  # so offset order is unrelated to name order, as in the real feed
        for name in names:
            self._record(self._new_resource(name), CREATE)

    def _cve_names(self, rng: random.Random, count: int) -> list[str]:
        years = list(range(1999, 2027))
        weights = [1 + (y - 1999) ** 2 for y in years]
        top = max(60_000, count // 5)
        out: list[str] = []
        seen: set[str] = set()
        while len(out) < count:
            year = rng.choices(years, weights)[0]
            limit = 9_999 if year < 2014 else top
            name = f"CVE-{year}-{rng.randint(1, limit):04d}"
            if name not in seen:
                seen.add(name)
                out.append(name)
        return out

    def _new_resource(self, name: str) -> int:
        idx = len(self._names)
        self._names.append(name)
        self._index[name] = idx
        self._first.append(0)
        self._alive.append(0)
        self._sorted = None
        return idx

    def _offsets(self, idx: int) -> list[int]:
        return [self._first[idx], *self._more.get(idx, ())]

    def _last_offset(self, idx: int) -> int:
        more = self._more.get(idx)
        return more[-1] if more else self._first[idx]

    def _record(self, idx: int, kind: int, ops: list[dict[str, Any]] | None = None) -> int:
        offset = len(self._res) + 1
        prev = self._last_offset(idx)
        self._res.append(idx)
        self._kind.append(kind)
        self._ver.append(self._ver[prev - 1] + 1 if prev else 1)
        if prev:
            self._more.setdefault(idx, []).append(offset)
        else:
            self._first[idx] = offset
        if ops:
            self._ops[offset] = _json(ops)
        if kind == DELETE:
            self._alive[idx] = 0
            self._deleted.append(idx)
            self._cache.pop(idx, None)
        elif kind == CREATE:
            self._alive[idx] = 1
            self._cache.pop(idx, None)
        return offset

    # ------------------------------------------------------------------ public state

    @property
    def head_offset(self) -> int:
        return len(self._res)

    @property
    def snapshot_offset(self) -> int:
        return self.snapshot.offset if self.snapshot else 0

    @property
    def snapshot_path(self) -> Path:
        if self.snapshot is None:
            raise LookupError("no snapshot published")
        return self.snapshot.path

    @property
    def snapshot_name(self) -> str:
        if self.snapshot is None:
            raise LookupError("no snapshot published")
        return self.snapshot.name

    @property
    def snapshot_member(self) -> str:
        if self.snapshot is None:
            raise LookupError("no snapshot published")
        return self.snapshot.member

    @property
    def snapshot_lines(self) -> int:
        return self.snapshot.lines if self.snapshot else 0

    def inserted_at(self, offset: int) -> str:
        return _stamp(offset)

    def names(self) -> list[str]:
        """Every resource name ever created (live or deleted)."""
        return list(self._names)

    def close(self) -> None:
        """Remove the temporary workdir (only when the model created it)."""
        if self._cleanup is not None:
            self._cleanup()

    # ------------------------------------------------------------------ truth

    def _sorted_indices(self) -> array[int]:
        with self.lock:
            if self._sorted is None:
                names = self._names
                self._sorted = array("i", sorted(range(len(names)), key=names.__getitem__))
            return self._sorted

    def _state(self, idx: int, at: int) -> tuple[int, int, int, list[int]] | None:
        """(last offset, version, create offset, update offsets) of a live resource at `at`."""
        offs = self._offsets(idx)
        k = bisect_right(offs, at)
        if k == 0 or self._kind[offs[k - 1] - 1] == DELETE:
            return None
        last = offs[k - 1]
        j = k - 1
        while self._kind[offs[j] - 1] != CREATE:
            j -= 1
        return last, self._ver[last - 1], offs[j], offs[j + 1 : k]

    def _document(self, idx: int, create: int, updates: list[int]) -> Any:
        doc: Any = content.payload(self.seed, self._names[idx], create, self.avg_size)
        for off in updates:
            raw = self._ops.get(off)
            if raw is not None and off not in self._bad:
                doc = apply_ops(doc, json.loads(raw))
        return doc

    def _entry(self, idx: int, at: int) -> dict[str, Any] | None:
        st = self._state(idx, at)
        if st is None:
            return None
        last, version, create, updates = st
        return {
            "offset": last,
            "version": version,
            "document": self._document(idx, create, updates),
        }

    def truth(self, offset: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, {"offset", "version", "document"}) of every live resource at `offset` (default:
        head), sorted by name, generated one at a time (memory stays flat at any size)."""
        at = self.head_offset if offset is None else offset
        names = self._names
        for idx in self._sorted_indices():
            entry = self._entry(idx, at)
            if entry is not None:
                yield names[idx], entry

    def truth_index(self, offset: int | None = None) -> Iterator[tuple[str, int, int]]:
        """(name, offset, version) of every live resource, sorted by name, without documents
        (cheap: no payload is generated)."""
        at = self.head_offset if offset is None else offset
        for idx in self._sorted_indices():
            st = self._state(idx, at)
            if st is not None:
                yield self._names[idx], st[0], st[1]

    def truth_doc(self, name: str, offset: int | None = None) -> dict[str, Any] | None:
        """{"offset", "version", "document"} of `name` at `offset` (default head), None when the
        resource does not exist there. This is exactly the expected OpenSearch `_source`."""
        idx = self._index.get(name)
        if idx is None:
            return None
        return self._entry(idx, self.head_offset if offset is None else offset)

    # ------------------------------------------------------------------ wire format

    def changes(
        self, from_offset: int, to_offset: int, *, with_empties: bool = True
    ) -> list[dict[str, Any]]:
        """Wire-format changes with from < offset <= to, in offset order (no 1000 cap here)."""
        with self.lock:
            out: list[dict[str, Any]] = []
            for off in range(max(from_offset, 0) + 1, min(to_offset, self.head_offset) + 1):
                kind = self._kind[off - 1]
                idx = self._res[off - 1]
                name = self._names[idx]
                change: dict[str, Any] = {
                    "offset": off,
                    "type": _KIND[kind],
                    "version": self._ver[off - 1],
                    "context": self.context,
                    "resource": name,
                }
                if kind == CREATE:
                    change["payload"] = content.payload(self.seed, name, off, self.avg_size)
                elif kind == UPDATE:
                    raw = self._ops.get(off)
                    if raw is None and not with_empties:
                        continue
                    change["operations"] = json.loads(raw) if raw is not None else []
                out.append(change)
            return out

    def kind_of(self, offset: int) -> str:
        """'create', 'update' or 'delete' for the change at `offset`."""
        return _KIND[self._kind[offset - 1]]

    def is_empty(self, offset: int) -> bool:
        return self._kind[offset - 1] == UPDATE and offset not in self._ops

    # ------------------------------------------------------------------ documents for patching

    def _head_doc(self, idx: int) -> Any:
        """The current document of a live resource, from the bounded LRU when possible. The
        returned object IS the cached one: callers patch it in place and re-cache it."""
        last = self._last_offset(idx)
        hit = self._cache.get(idx)
        if hit is not None and hit[0] == last:
            self._cache.move_to_end(idx)
            return hit[1]
        entry = self._entry(idx, self.head_offset)
        if entry is None:
            raise LookupError(f"{self._names[idx]} is not live")
        self._cache_put(idx, last, entry["document"])
        return entry["document"]

    def _cache_put(self, idx: int, offset: int, doc: Any) -> None:
        self._cache[idx] = (offset, doc)
        self._cache.move_to_end(idx)
        while len(self._cache) > _CACHE_DOCS:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ appending history

    def append_changes(
        self,
        n: int,
        *,
        seed: int | None = None,
        empty_ratio: float = 0.05,
        delete_ratio: float = 0.05,
        create_ratio: float = 0.1,
    ) -> int:
        """Append n random changes; return the new head offset.

        When n >= 8 the first eight are a fixed showcase (one patch using every RFC 6902 op with
        indices, '-' and ~0/~1 escapes; three changes to one resource in a row; an empty update;
        a delete; a create and its update; the re-create of the deleted name), so every feature
        is present in any non-trivial history. The rest are drawn at random, about a third of
        them touching a recently touched resource.
        """
        with self.lock:
            rng = random.Random(
                f"{self.seed}|append|{self.head_offset}" if seed is None else f"append|{seed}"
            )
            recent: deque[int] = deque(maxlen=12)
            done = self._showcase(rng, recent) if n >= 8 else 0
            for _ in range(n - done):
                r = rng.random()
                if r < empty_ratio:
                    idx = self._pick(rng, recent)
                    if idx is None:
                        self._create(rng, recent)
                        continue
                    self._record(idx, UPDATE, [])
                    recent.append(idx)
                elif r < empty_ratio + delete_ratio:
                    idx = self._pick(rng, recent, cve_only=True)
                    if idx is None:
                        self._create(rng, recent)
                        continue
                    self._record(idx, DELETE)
                elif r < empty_ratio + delete_ratio + create_ratio:
                    self._create(rng, recent)
                else:
                    idx = self._pick(rng, recent)
                    if idx is None:
                        self._create(rng, recent)
                        continue
                    self._update(rng, idx)
                    recent.append(idx)
            return self.head_offset

    def _pick(
        self, rng: random.Random, recent: deque[int], *, cve_only: bool = False
    ) -> int | None:
        """A live resource: often a recently touched one (several changes per window)."""
        if recent and rng.random() < 0.35:
            idx = recent[int(rng.random() * len(recent))]
            if self._alive[idx] and (not cve_only or content.is_cve(self._names[idx])):
                return idx
        total = len(self._names)
        for _ in range(64):
            idx = int(rng.random() * total) if total else 0
            if total and self._alive[idx] and (not cve_only or content.is_cve(self._names[idx])):
                return idx
        return None

    def _create(self, rng: random.Random, recent: deque[int]) -> int:
        """A create: now and then the re-create of a deleted name, else a brand-new CVE."""
        gone = [i for i in self._deleted[-64:] if not self._alive[i]]
        if gone and rng.random() < 0.3:
            off = self._record(gone[int(rng.random() * len(gone))], CREATE)
        else:
            off = self._create_new(rng)
        recent.append(self._res[off - 1])
        return off

    def _update(
        self,
        rng: random.Random,
        idx: int,
        make: Callable[[random.Random, Any], Iterable[dict[str, Any]]] | None = None,
    ) -> int:
        doc = self._head_doc(idx)
        ops: list[dict[str, Any]] = []
        # Ops are invented against the live document and applied one by one, so every recorded
        # patch is valid in sequence (the truth's own applier is the check).
        for op in (make or self._random_ops)(rng, doc):
            doc = apply_ops(doc, [op])
            ops.append(op)
        off = self._record(idx, UPDATE, ops)
        self._cache_put(idx, off, doc)
        return off

    def _showcase(self, rng: random.Random, recent: deque[int]) -> int:
        start = self.head_offset
        target = None
        for _ in range(400):
            idx = self._pick(rng, recent, cve_only=True)
            if idx is None:
                continue
            doc = self._head_doc(idx)
            # The showcase patches affected[0].versions: some records have none there.
            if _is_full_cve(doc) and isinstance(
                doc["containers"]["cna"]["affected"][0].get("versions"), list
            ):
                target = idx
                break
        victim = self._pick(rng, recent, cve_only=True)
        if target is None or victim is None or victim == target:
            return 0
        self._update(rng, target, _showcase_ops)
        self._update(rng, target)
        self._record(target, UPDATE, [])
        self._record(victim, DELETE)
        self._create_new(rng)
        self._update(rng, self._res[self.head_offset - 1])
        self._record(victim, CREATE)
        self._update(rng, victim)
        recent.extend((target, victim))
        return self.head_offset - start

    def _create_new(self, rng: random.Random) -> int:
        while True:
            name = f"CVE-{rng.choice((2025, 2026))}-{rng.randint(10_000, 99_999)}"
            if name not in self._index:
                return self._record(self._new_resource(name), CREATE)

    def _random_ops(self, rng: random.Random, doc: Any) -> Iterator[dict[str, Any]]:
        """1-6 operations, each valid against `doc` as patched by the previous ones (the caller
        applies each yielded op before asking for the next)."""
        count = 1 + int(rng.random() < 0.5) + int(rng.random() < 0.3) + int(rng.random() < 0.15)
        if isinstance(doc, dict) and "cveMetadata" in doc and rng.random() < 0.6:
            yield {"op": "replace", "path": "/cveMetadata/dateUpdated", "value": _date(rng)}
        recipes = _CVE_RECIPES if _is_full_cve(doc) else _PLAIN_RECIPES
        for _ in range(count):
            for _attempt in range(6):
                ops = rng.choice(recipes)(rng, doc)
                if ops:
                    yield from ops
                    break

    def append_bad_patch(self, name: str | None = None) -> int:
        """Append an update whose operations cannot apply to the true content (alternately a
        failing `test` and a `remove` of a path that does not exist). The truth ignores it but
        offset and version still move. Returns its offset."""
        with self.lock:
            if name is None:
                rng = random.Random(f"{self.seed}|bad|{self.head_offset}")
                idx = self._pick(rng, deque(), cve_only=True)
                if idx is None:
                    raise LookupError("no live CVE to break")
            else:
                found = self._index.get(name)
                if found is None or not self._alive[found]:
                    raise LookupError(f"{name} is not a live resource")
                idx = found
            if self._bad_count % 2 == 0:
                ops: list[dict[str, Any]] = [
                    {"op": "test", "path": "/cveMetadata/state", "value": "NO-SUCH-STATE"},
                    {"op": "replace", "path": "/cveMetadata/state", "value": "REJECTED"},
                ]
            else:
                ops = [{"op": "remove", "path": "/containers/cna/x_noSuchMember/0"}]
            self._bad_count += 1
            probe = json.loads(_json(self._head_doc(idx)))
            try:
                apply_ops(probe, ops)
            except (PatchError, KeyError):
                pass
            else:  # pragma: no cover - the doc happened to match; make it certainly fail
                ops = [{"op": "remove", "path": "/no~1such~0member"}]
            off = self._record(idx, UPDATE, ops)
            self._bad.add(off)
            # Re-key the cached document: the truth did not change but its offset did.
            hit = self._cache.get(idx)
            if hit is not None:
                self._cache_put(idx, off, hit[1])
            return off

    # ------------------------------------------------------------------ snapshots

    def _snapshot_lines(self, at: int) -> Iterator[bytes]:
        # Sorted by name: creation order was shuffled, so this is NOT offset order.
        for name, entry in self.truth(at):
            yield (
                _json(
                    {
                        "name": name,
                        "offset": entry["offset"],
                        "version": entry["version"],
                        "inserted_at": _stamp(entry["offset"]),
                        "payload": entry["document"],
                    }
                )
                + b"\n"
            )

    def publish_snapshot(self) -> int:
        """Build a new snapshot zip at the current head (streaming); return its offset."""
        with self.lock:
            at = self.head_offset
            ts = max(int(time.time()), self._last_ts + 1)
            self._last_ts = ts
            name = f"{at}_{ts}.zip"
            member = f"{self.context}_{self.consumer}_{at}_{ts}.json"
            path = self.workdir / name
            part = self.workdir / (name + ".part")
            lines, size = write_snapshot(
                part, member, self._snapshot_lines(at), level=self.compress_level
            )
            part.replace(path)
            snap = Snapshot(
                name=name,
                member=member,
                path=path,
                offset=at,
                ts=ts,
                published_at=_iso_now(),
                lines=lines,
                member_size=size,
            )
            self.snapshots[name] = snap
            self.snapshot = snap
            return at

    def variant(self, kind: str, name: str | None = None) -> Path:
        """The broken copy `kind` (see snapshot.VARIANTS) of snapshot `name` (default: current),
        built in the workdir on first use and reused after."""
        if kind not in VARIANTS:
            raise ValueError(f"unknown snapshot variant {kind!r}; expected one of {VARIANTS}")
        snap = self.snapshots[name] if name else self.snapshot
        if snap is None:
            raise LookupError("no snapshot published")
        with self._variant_lock:
            path = self._variants.get((kind, snap.name))
            if path is None:
                path = self.workdir / f"{kind}-{snap.name}"
                build_variant(kind, snap.path, path, level=self.compress_level)
                self._variants[(kind, snap.name)] = path
            return path

    def rebuild(self, *, resources: int, seed: int, history: int = 0) -> None:
        """Replace the whole history with a fresh one whose head is LOWER than before (a rebuilt
        feed) and publish a snapshot at its head. ValueError if the new head would not be lower.
        """
        with self.lock:
            if resources + history >= self.head_offset:
                raise ValueError(
                    f"a rebuild must lower the head offset ({self.head_offset}); "
                    f"got resources={resources} + history={history}"
                )
            self._reset(resources, seed)
            if history:
                self.append_changes(history)
            self.publish_snapshot()


# ---------------------------------------------------------------------- patch recipes


def _is_full_cve(doc: Any) -> bool:
    """A published CVE record with the lists the CVE recipes work on."""
    if not isinstance(doc, dict) or "cveMetadata" not in doc:
        return False
    cna = doc.get("containers", {}).get("cna", {})
    rem = cna.get("x_remediations", {}).get("windows")
    return (
        isinstance(cna.get("affected"), list)
        and bool(cna["affected"])
        and isinstance(cna.get("references"), list)
        and isinstance(rem, list)
        and bool(rem)
        and isinstance(rem[0].get("anyOf"), list)
    )


def _versions_path(rng: random.Random, doc: Any) -> tuple[str, list[Any]] | None:
    affected = doc["containers"]["cna"]["affected"]
    a = int(rng.random() * len(affected))
    versions = affected[a].get("versions")
    if not isinstance(versions, list):
        return None
    return f"{_CNA}/affected/{a}/versions", versions


_ANYOF = f"{_CNA}/x_remediations/windows/0/anyOf"
_Ops = list[dict[str, Any]] | None


def _r_kb_replace(rng: random.Random, doc: Any) -> _Ops:
    kbs = resolve(doc, _ANYOF)
    if not kbs:
        return None
    return [
        {
            "op": "replace",
            "path": f"{_ANYOF}/{int(rng.random() * len(kbs))}",
            "value": content.kb(rng),
        }
    ]


def _r_kb_append(rng: random.Random, doc: Any) -> _Ops:
    return [{"op": "add", "path": f"{_ANYOF}/-", "value": content.kb(rng)}]


def _r_kb_remove(rng: random.Random, doc: Any) -> _Ops:
    kbs = resolve(doc, _ANYOF)
    if len(kbs) < 2:
        return None
    return [{"op": "remove", "path": f"{_ANYOF}/{int(rng.random() * len(kbs))}"}]


def _new_version(rng: random.Random) -> dict[str, Any]:
    major, minor = rng.randint(2, 6), rng.randint(0, 19)
    return {
        "version": f"{major}.{minor}.{rng.randint(1, 250)}",
        "lessThanOrEqual": f"{major}.{minor}.*",
        "status": "unaffected",
        "versionType": "semver",
    }


def _r_version_insert(rng: random.Random, doc: Any) -> _Ops:
    found = _versions_path(rng, doc)
    if found is None:
        return None
    path, versions = found
    return [
        {"op": "add", "path": f"{path}/{rng.randint(0, len(versions))}", "value": _new_version(rng)}
    ]


def _r_version_remove(rng: random.Random, doc: Any) -> _Ops:
    found = _versions_path(rng, doc)
    if found is None or len(found[1]) < 2:
        return None
    return [{"op": "remove", "path": f"{found[0]}/{int(rng.random() * len(found[1]))}"}]


def _r_version_status(rng: random.Random, doc: Any) -> _Ops:
    found = _versions_path(rng, doc)
    if found is None or not found[1]:
        return None
    i = int(rng.random() * len(found[1]))
    old = found[1][i].get("status")
    new = "unaffected" if old == "affected" else "affected"
    return [
        {"op": "test", "path": f"{found[0]}/{i}/status", "value": old},
        {"op": "replace", "path": f"{found[0]}/{i}/status", "value": new},
    ]


def _r_version_copy(rng: random.Random, doc: Any) -> _Ops:
    found = _versions_path(rng, doc)
    if found is None or not found[1]:
        return None
    return [
        {
            "op": "copy",
            "from": f"{found[0]}/{int(rng.random() * len(found[1]))}",
            "path": f"{found[0]}/-",
        }
    ]


def _r_reference_move(rng: random.Random, doc: Any) -> _Ops:
    refs = doc["containers"]["cna"]["references"]
    if len(refs) < 2:
        return None
    i, j = rng.sample(range(len(refs)), 2)
    return [{"op": "move", "from": f"{_CNA}/references/{i}", "path": f"{_CNA}/references/{j}"}]


def _r_reference_append(rng: random.Random, doc: Any) -> _Ops:
    url = f"https://ubuntu.com/security/notices/USN-{rng.randint(1000, 7999)}-1"
    return [
        {
            "op": "add",
            "path": f"{_CNA}/references/-",
            "value": {"url": url, "tags": ["vendor-advisory"]},
        }
    ]


def _r_escaped_add(rng: random.Random, doc: Any) -> _Ops:
    key = rng.choice(_ESCAPED_KEYS)
    package = f"openssl 3.0.{rng.randint(1, 17)}-1~deb12u{rng.randint(1, 4)}"
    return [
        {
            "op": "add",
            "path": pointer("containers", "cna", "x_remediations", key),
            "value": [{"anyOf": [package]}],
        }
    ]


def _r_escaped_move_or_remove(rng: random.Random, doc: Any) -> _Ops:
    rem = doc["containers"]["cna"]["x_remediations"]
    keys = [k for k in rem if k != "windows"]
    if not keys:
        return None
    key = rng.choice(keys)
    src = pointer("containers", "cna", "x_remediations", key)
    if rng.random() < 0.5:
        return [{"op": "remove", "path": src}]
    dest = rng.choice([k for k in _ESCAPED_KEYS if k != key])
    return [
        {"op": "move", "from": src, "path": pointer("containers", "cna", "x_remediations", dest)}
    ]


def _r_score(rng: random.Random, doc: Any) -> _Ops:
    metrics = doc["containers"]["cna"].get("metrics")
    if not metrics or "cvssV3_1" not in metrics[0]:
        return None
    return [
        {
            "op": "replace",
            "path": f"{_CNA}/metrics/0/cvssV3_1/baseScore",
            "value": round(rng.uniform(2.0, 10.0), 1),
        }
    ]


def _r_description(rng: random.Random, doc: Any) -> _Ops:
    descs = doc["containers"]["cna"].get("descriptions")
    if not descs:
        return None
    note = rng.choice(
        (
            " Fixed in the latest release.",
            " Aktualisiert: Fix verfügbar.",
            " Update: exploitation observed “in the wild”.",
        )
    )
    return [
        {
            "op": "replace",
            "path": f"{_CNA}/descriptions/0/value",
            "value": str(descs[0].get("value", ""))[:2000] + note,
        }
    ]


def _r_plain(rng: random.Random, doc: Any) -> _Ops:
    """Any record: check a top-level member, then set a (possibly escaped) key in an object."""
    if not isinstance(doc, dict) or not doc:
        return None
    ops: list[dict[str, Any]] = []
    scalars = [k for k, v in doc.items() if not isinstance(v, dict | list)]
    if scalars:
        key = rng.choice(scalars)
        ops.append({"op": "test", "path": pointer(key), "value": doc[key]})
    holders = [k for k, v in doc.items() if isinstance(v, dict)]
    if holders:
        holder = rng.choice(holders)
        ops.append(
            {
                "op": "add",
                "path": pointer(holder, rng.choice(("x_note", "a/b", "c~d"))),
                "value": f"rev {rng.randint(1, 999)}",
            }
        )
    return ops


_CVE_RECIPES: tuple[Callable[[random.Random, Any], _Ops], ...] = (
    _r_kb_replace,
    _r_kb_replace,
    _r_kb_append,
    _r_kb_remove,
    _r_version_insert,
    _r_version_remove,
    _r_version_status,
    _r_version_copy,
    _r_reference_move,
    _r_reference_append,
    _r_escaped_add,
    _r_escaped_move_or_remove,
    _r_score,
    _r_description,
)
_PLAIN_RECIPES: tuple[Callable[[random.Random, Any], _Ops], ...] = (_r_plain,)


def _showcase_ops(rng: random.Random, doc: Any) -> Iterator[dict[str, Any]]:
    """One patch with every RFC 6902 op, array indices, '-' appends and ~0/~1 escapes.

    A generator: the caller applies each op before asking for the next, so lengths read here
    already reflect the previous ops of the same patch.
    """
    cna = doc["containers"]["cna"]
    yield {"op": "test", "path": "/cveMetadata/state", "value": doc["cveMetadata"]["state"]}
    yield {"op": "replace", "path": "/cveMetadata/dateUpdated", "value": _date(rng)}
    yield {"op": "add", "path": f"{_ANYOF}/-", "value": content.kb(rng)}
    versions = f"{_CNA}/affected/0/versions"
    yield {"op": "add", "path": f"{versions}/0", "value": _new_version(rng)}
    yield {"op": "copy", "from": f"{versions}/0", "path": f"{versions}/-"}
    yield {"op": "remove", "path": f"{versions}/1"}
    if len(cna["references"]) < 2:
        yield {
            "op": "add",
            "path": f"{_CNA}/references/-",
            "value": {"url": "https://www.openwall.com/lists/oss-security/2026/01/01/1"},
        }
    yield {
        "op": "move",
        "from": f"{_CNA}/references/0",
        "path": f"{_CNA}/references/{len(cna['references']) - 1}",
    }
    key = "ubuntu/22.04~esm"  # -> ubuntu~122.04~0esm
    yield {
        "op": "add",
        "path": pointer("containers", "cna", "x_remediations", key),
        "value": [{"anyOf": ["openssl 3.0.2-0ubuntu1.18+esm1"]}],
    }
    yield {
        "op": "move",
        "from": pointer("containers", "cna", "x_remediations", key),
        "path": pointer("containers", "cna", "x_remediations", "sles/15~sp6"),
    }
    yield {"op": "replace", "path": f"{_ANYOF}/0", "value": content.kb(rng)}


def _date(rng: random.Random) -> str:
    return (
        f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
    )
