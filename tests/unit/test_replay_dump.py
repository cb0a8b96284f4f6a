"""The replay's canonical dump, sorted on disk: the same files and digests as sorting in memory.

`keel replay` dumps the decision, intent and fill streams ordered by (event time, event id), one
event once, and hashes them (issue 7.5: without holding a stream in memory). The definition must
not move: each stream's sha256 is of its events joined by newlines (none after the last), the
`.jsonl` files hold each event and a newline, `digest` is sha256 of the three hex digests in
STREAMS order, and an event id seen twice is kept once, where it was first stored. The reference
below is that definition computed in memory, the way the dump did before it streamed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

from libs.cli import replay
from libs.contracts.codec import encode
from tests.factories import Events, minute
from tests.support.memory import peak_allocation

SEED = 7_506
BATCH = 512  # what one fetch of the stream reader gives at most

Message = tuple[int, str, bytes]


def reference(messages: list[Message]) -> tuple[dict[str, list[bytes]], list[bytes], dict[str, str]]:
    """Return the digest streams, the TCA records and the digests, all held and sorted in memory."""
    kinds = {kind: name for name, kinds in replay.STREAMS.items() for kind in kinds}
    picked: dict[str, list[tuple[int, str, bytes]]] = {name: [] for name in replay.STREAMS}
    tca, seen = [], set()
    for _seq, _subject, data in messages:
        head = json.loads(data)
        kind = head["type"].rsplit(".", 1)[0]
        if kind in replay.TCA_RECORDS:
            tca.append((head["ts_event"], head["event_id"], data))
        name = kinds.get(kind)
        if name is not None and head["event_id"] not in seen:
            seen.add(head["event_id"])
            picked[name].append((head["ts_event"], head["event_id"], data))
    streams = {name: [data for *_key, data in sorted(rows)] for name, rows in picked.items()}
    hashes = {name: hashlib.sha256(b"\n".join(rows)).hexdigest() for name, rows in streams.items()}
    hashes["digest"] = hashlib.sha256("".join(hashes[name] for name in replay.STREAMS).encode()).hexdigest()
    return streams, [data for *_key, data in sorted(tca)], hashes


def tca_record(event_id: str, ts: int, revision: int) -> bytes:
    return json.dumps(
        {"type": "tca.order_recorded.v1", "event_id": event_id, "ts_event": ts, "revision": revision}
    ).encode()


def recorded_run(seed: int = SEED) -> list[Message]:
    """A run's stored events, shuffled, with republished duplicates and noise the dump skips."""
    rng = random.Random(seed)
    f = Events(seed=seed)
    events: list[bytes] = []
    for n in range(1, 41):
        for symbol in ("AAPL", "MSFT", "SPY"):
            intent = f.intent(symbol, "buy", 10, "100", n=n)
            fill = f.fill(intent, last_qty=10, last_px="100.01", cum_qty=10)
            events += [encode(intent), encode(f.decision(intent)), encode(f.submitted(intent)), encode(fill)]
            events += [tca_record(f"tca-{n}-{symbol}-{r}", minute(n + 1), r) for r in range(2)]
        events.append(encode(f.watermark("risk", minute(n))))  # in the streams read, not in the dump
    republished = rng.sample(events, 60)  # a republish past the dedup window: the same bytes again
    intent = json.loads(events[0])
    # an id stored again under another type: the first stored is the one kept, whichever it is
    clash = json.dumps({**intent, "type": "exec.order_filled.v1", "ts_event": minute(0)}).encode()
    # a TCA record stored twice is dumped twice (it always was: records are not deduplicated)
    events += [*republished, clash, events[4]]
    rng.shuffle(events)
    return [(seq, "keel.x", data) for seq, data in enumerate(events, start=1)]


def streamed(messages: list[Message], path: Path, out: Path) -> tuple[dict[str, str], dict[str, int]]:
    with replay.Canon(path) as canon:
        for start in range(0, len(messages), BATCH):
            batch = messages[start : start + BATCH]
            canon.add(batch)
            canon.add_tca(batch)
        return replay.dump(canon, out)


def test_dump_when_stored_shuffled_with_repeats_then_the_same_files_and_digests_as_sorting_in_memory(tmp_path: Path):
    messages = recorded_run()
    streams, tca, expected = reference(messages)

    hashes, counts = streamed(messages, tmp_path / "canon.sqlite", tmp_path)

    assert hashes == expected
    for name, rows in streams.items():
        assert (tmp_path / f"{name}.jsonl").read_bytes() == b"".join(r + b"\n" for r in rows)
    assert (tmp_path / "tca.jsonl").read_bytes() == b"".join(r + b"\n" for r in tca)
    assert counts == {**{name: len(rows) for name, rows in streams.items()}, replay.TCA: len(tca)}
    # 120 orders: an intent, a decision and two reports each; the clash displaces its intent or is dropped
    assert (counts["decisions"], counts["intents"] + counts["fills"]) == (120, 360)
    assert counts[replay.TCA] > 240 and len(set(tca)) == 240  # repeats kept, side by side
    assert replay.digests(replay.canonical(messages)) == expected  # the in-memory form agrees


def test_dump_when_an_id_is_stored_under_two_types_then_only_its_first_is_kept(tmp_path: Path):
    f = Events(seed=SEED)
    intent = f.intent("AAPL", "buy", 10, "100", n=1)
    clash = json.dumps({**json.loads(encode(intent)), "type": "exec.order_filled.v1"}).encode()

    _hashes, first_intent = streamed([(1, "s", encode(intent)), (2, "s", clash)], tmp_path / "a.sqlite", tmp_path)
    _hashes, first_fill = streamed([(1, "s", clash), (2, "s", encode(intent))], tmp_path / "b.sqlite", tmp_path)

    assert (first_intent["intents"], first_intent["fills"]) == (1, 0)
    assert (first_fill["intents"], first_fill["fills"]) == (0, 1)


def messages(n: int) -> Iterator[list[Message]]:
    """Yield n intents as the stream reader would, a batch at a time, in no time order, never all at once."""
    pad = "x" * 200
    for start in range(0, n, BATCH):
        batch = []
        for i in range(start, min(start + BATCH, n)):
            ts = 1_700_000_000_000_000_000 + (i * 7_919 % n) * 60_000_000_000
            data = f'{{"type":"risk.order_intent.v1","event_id":"{i:032x}","ts_event":{ts},"pad":"{pad}"}}'
            batch.append((i, "keel.risk.order_intent", data.encode()))
        yield batch


def test_dump_when_the_streams_grow_fourfold_then_its_peak_allocation_does_not(tmp_path: Path):
    n = 20_000

    def dump(count: int, where: Path) -> None:
        where.mkdir()
        with replay.Canon(where / "canon.sqlite") as canon:
            for batch in messages(count):
                canon.add(batch)
            replay.dump(canon, where)

    def in_memory(count: int) -> None:
        reference([m for batch in messages(count) for m in batch])

    streamed = (
        peak_allocation(lambda: dump(n, tmp_path / "small")),
        peak_allocation(lambda: dump(4 * n, tmp_path / "large")),
    )
    held = peak_allocation(lambda: in_memory(n)), peak_allocation(lambda: in_memory(4 * n))

    assert (tmp_path / "large" / "intents.jsonl").read_bytes().count(b"\n") == 4 * n
    assert streamed[1] < 1.5 * streamed[0], f"peak grew from {streamed[0]:,} to {streamed[1]:,} bytes"
    assert held[1] > 3 * held[0]  # what sorting in memory costs: the contrast that makes the check mean something
