"""The channel layer contract, modelled on what Channels' own layer tests and
channels_redis's core tests check, written for chanlite's layer."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.exceptions import ChannelFull

import chanlite
from chanlite.layer import SQLiteChannelLayer, glob_for_pattern


@pytest.fixture(params=["file", "memory"])
def db_path(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test here runs on a database file and again in test mode, on an
    in-memory database of its own (path=":memory:" is the process's default one)."""
    if request.param == "memory":
        return f"file:chanlite-test-{uuid.uuid4().hex}?mode=memory&cache=shared"
    return str(tmp_path / "layer.sqlite3")


@pytest.fixture
def sql(db_path: str) -> Iterator[sqlite3.Connection]:
    """A plain connection with chanlite to the layer's database (file or memory)."""
    conn = chanlite.connect(db_path, uri=True, isolation_level=None)
    yield conn
    conn.close()


# ---- send and receive ----


async def test_send_receive(layer: SQLiteChannelLayer) -> None:
    await layer.send("test-channel-1", {"type": "test.message", "text": "Ahoy-hoy!"})
    message = await layer.receive("test-channel-1")
    assert message == {"type": "test.message", "text": "Ahoy-hoy!"}


async def test_message_types_round_trip(layer: SQLiteChannelLayer) -> None:
    message = {
        "type": "types",
        "bytes": b"\x00\xff\x00",
        "text": "héllo ✓",
        "int": 2**40,
        "float": 1.5,
        "none": None,
        "list": [1, "two", b"3"],
        "nested": {"a": {"b": [True, False]}},
    }
    await layer.send("types", message)
    received = await layer.receive("types")
    assert received == message
    assert isinstance(received["bytes"], bytes)


async def test_one_megabyte_message(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path)
    body = bytes(range(256)) * 4096  # 1 MiB
    await layer.send("big", {"type": "big", "body": body})
    assert (await layer.receive("big"))["body"] == body
    await layer.close()


async def test_fifo(layer: SQLiteChannelLayer) -> None:
    layer = SQLiteChannelLayer(path=layer.path)
    for i in range(50):
        await layer.send("test-channel-3", {"type": f"message.{i}"})
    for i in range(50):
        assert (await layer.receive("test-channel-3"))["type"] == f"message.{i}"
    await layer.close()


async def test_receive_waits_for_send(layer: SQLiteChannelLayer) -> None:
    waiting = asyncio.create_task(layer.receive("later"))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    await layer.send("later", {"type": "late"})
    assert (await asyncio.wait_for(waiting, 5))["type"] == "late"


async def test_concurrent_receivers_each_get_one(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, capacity=100)
    receivers = [asyncio.create_task(layer.receive("shared")) for _ in range(10)]
    for i in range(10):
        await layer.send("shared", {"type": "m", "i": i})
    results = await asyncio.wait_for(asyncio.gather(*receivers), 10)
    assert sorted(r["i"] for r in results) == list(range(10))
    await layer.close()


def test_double_receive(db_path: str) -> None:
    """Receiving process-specific channels from two event loops (async_to_sync
    runs each call in a loop of its own)."""
    layer = SQLiteChannelLayer(path=db_path, capacity=3)
    channel_1 = async_to_sync(layer.new_channel)()
    channel_2 = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel_1, {"type": "test.message.1"})
    async_to_sync(layer.send)(channel_2, {"type": "test.message.2"})

    async def listen(channel: str) -> str:
        return str((await asyncio.wait_for(layer.receive(channel), 5))["type"])

    assert async_to_sync(listen)(channel_2) == "test.message.2"
    assert async_to_sync(listen)(channel_1) == "test.message.1"
    async_to_sync(layer.flush)()
    async_to_sync(layer.close)()


# ---- capacity ----


async def test_send_capacity(layer: SQLiteChannelLayer) -> None:
    for _ in range(3):
        await layer.send("test-channel-1", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("test-channel-1", {"type": "test.message"})
    await layer.receive("test-channel-1")
    await layer.send("test-channel-1", {"type": "test.message"})  # room again


async def test_send_specific_capacity(db_path: str) -> None:
    layer = SQLiteChannelLayer(
        path=db_path,
        capacity=3,
        channel_capacity={"one": 1, "two-*": 2, re.compile(r"^three\..*$"): 4},
    )
    await layer.send("one", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("one", {"type": "test.message"})
    for _ in range(2):
        await layer.send("two-x", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("two-x", {"type": "test.message"})
    for _ in range(4):
        await layer.send("three.abc", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("three.abc", {"type": "test.message"})
    for _ in range(3):  # the default for the rest
        await layer.send("four", {"type": "test.message"})
    with pytest.raises(ChannelFull):
        await layer.send("four", {"type": "test.message"})
    assert layer.get_capacity("two-y") == 2
    assert layer.get_capacity("three.x") == 4
    await layer.flush()
    await layer.close()


async def test_process_local_capacity_is_per_prefix(layer: SQLiteChannelLayer) -> None:
    a = await layer.new_channel()
    b = await layer.new_channel()
    await layer.send(a, {"type": "m"})
    await layer.send(b, {"type": "m"})
    await layer.send(a, {"type": "m"})
    with pytest.raises(ChannelFull):
        await layer.send(b, {"type": "m"})


def test_capacity_regex_to_glob() -> None:
    assert glob_for_pattern("http.response!*") == "http.response!*"
    assert glob_for_pattern(re.compile(r"^one$")) == "one"
    assert glob_for_pattern(re.compile(r"one")) == "one*"
    assert glob_for_pattern(re.compile(r"^http\.response!.*")) == "http.response!*"
    assert glob_for_pattern(re.compile(r"a.c\Z")) == "a?c"
    import fnmatch

    assert glob_for_pattern(re.compile(fnmatch.translate("web.*.x?"))) == "web.*.x?"
    for bad in (r"^(a|b)$", r"^a+$", r"^[ab]$", r"^a{2}$", r"^\d$"):
        with pytest.raises(ValueError, match="no GLOB equivalent"):
            glob_for_pattern(re.compile(bad))


def test_unexpressible_regex_rejected_at_config(db_path: str) -> None:
    with pytest.raises(ValueError, match="no GLOB equivalent"):
        SQLiteChannelLayer(path=db_path, channel_capacity={re.compile(r"^(a|b)$"): 1})


# ---- process-specific channels ----


async def test_process_local_send_receive(layer: SQLiteChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": "Local only please"})
    message = await layer.receive(channel)
    assert message == {"type": "test.message", "text": "Local only please"}


async def test_process_local_messages_reach_their_own_channel(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, capacity=1000)
    channels = [await layer.new_channel() for _ in range(5)]
    for i in range(20):
        for n, channel in enumerate(channels):
            await layer.send(channel, {"type": "m", "n": n, "i": i})
    for n, channel in reversed(list(enumerate(channels))):
        got = [await layer.receive(channel) for _ in range(20)]
        assert got == [{"type": "m", "n": n, "i": i} for i in range(20)]
    await layer.close()


async def test_reject_bad_client_prefix(layer: SQLiteChannelLayer) -> None:
    with pytest.raises(AssertionError):
        await layer.receive("not-client-prefix!local_part")


async def test_new_channel_names(layer: SQLiteChannelLayer) -> None:
    names = {await layer.new_channel() for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        layer.require_valid_channel_name(name)
        assert name.startswith("specific.")
        assert layer.non_local_name(name) == f"specific.{layer.client_prefix}!"
    other = SQLiteChannelLayer(path=layer.path)
    assert other.client_prefix != layer.client_prefix
    custom = await layer.new_channel(prefix="test-gr-chan-1")
    assert custom.startswith("test-gr-chan-1.")


def _drained(layer: SQLiteChannelLayer, queue_name: str, channel: str, sent: int) -> bool:
    queue = layer._queues.get(queue_name)
    if queue is None:
        return False
    with layer._lock:
        return queue.dropped + len(queue.buffers.get(channel, ())) == sent


async def test_slow_consumer_does_not_block_others(db_path: str) -> None:
    """A channel nobody receives from is buffered, bounded (the oldest are
    dropped, as channels_redis does), and does not hold up the others."""
    layer = SQLiteChannelLayer(path=db_path, capacity=50)
    dead = await layer.new_channel()
    alive = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(alive))
    queue_name = layer.non_local_name(alive)
    sent = 0
    for _ in range(2):
        for _ in range(40):
            await layer.send(dead, {"type": "flood", "i": sent})
            sent += 1
        deadline = time.monotonic() + 5
        while not _drained(layer, queue_name, dead, sent):
            assert time.monotonic() < deadline, "the receiver did not drain the flood"
            await asyncio.sleep(0.005)
    queue = layer._queues[queue_name]
    assert len(queue.buffers[dead]) == 50
    assert queue.dropped == 30
    await layer.send(alive, {"type": "ping"})
    assert (await asyncio.wait_for(waiting, 5))["type"] == "ping"
    assert (await layer.receive(dead))["i"] == 30  # the newest 50 kept, in order
    await layer.flush()
    await layer.close()


async def test_receiver_stops_when_nobody_listens(layer: SQLiteChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "one"})
    assert (await layer.receive(channel))["type"] == "one"
    queue = layer._queues[layer.non_local_name(channel)]
    deadline = time.monotonic() + 5
    while queue.task is not None or queue.waiters:
        assert time.monotonic() < deadline, "the receiver did not stop"
        await asyncio.sleep(0.005)
    waiting = asyncio.create_task(layer.receive(channel))
    await layer.send(channel, {"type": "two"})
    assert (await asyncio.wait_for(waiting, 5))["type"] == "two"  # and restarted


# ---- groups ----


async def test_groups_basic(
    layer: SQLiteChannelLayer,
    sql: sqlite3.Connection,
    depth: Callable[[sqlite3.Connection, str], int],
) -> None:
    channel_1 = await layer.new_channel(prefix="test-gr-chan-1")
    channel_2 = await layer.new_channel(prefix="test-gr-chan-2")
    channel_3 = await layer.new_channel(prefix="test-gr-chan-3")
    await layer.group_add("test-group", channel_1)
    await layer.group_add("test-group", channel_2)
    await layer.group_add("test-group", channel_3)
    await layer.group_discard("test-group", channel_2)
    assert await layer.group_send("test-group", {"type": "message.1"}) == 2
    assert (await asyncio.wait_for(layer.receive(channel_1), 5))["type"] == "message.1"
    assert (await asyncio.wait_for(layer.receive(channel_3), 5))["type"] == "message.1"
    assert depth(sql, channel_2) == 0


async def test_group_add_is_idempotent_and_discard_of_non_member_is_noop(
    layer: SQLiteChannelLayer,
) -> None:
    await layer.group_add("g", "member")
    await layer.group_add("g", "member")
    await layer.group_discard("g", "stranger")
    await layer.group_discard("nobody-here", "member")
    assert await layer.group_send("g", {"type": "once"}) == 1
    assert (await layer.receive("member"))["type"] == "once"


async def test_groups_channel_full(layer: SQLiteChannelLayer) -> None:
    await layer.group_add("test-group", "test-gr-chan-1")
    await layer.group_add("test-group", "test-gr-chan-2")
    await layer.send("test-gr-chan-2", {"type": "filler"})
    delivered = [await layer.group_send("test-group", {"type": "message.1"}) for _ in range(5)]
    assert delivered == [2, 2, 1, 0, 0]  # full members skipped, never an error


async def test_group_capacity_by_pattern(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, capacity=5, channel_capacity={"small*": 1})
    await layer.group_add("room", "small-1")
    await layer.group_add("room", "large-1")
    assert await layer.group_send("room", {"type": "m"}) == 2
    assert await layer.group_send("room", {"type": "m"}) == 1
    await layer.flush()
    await layer.close()


async def test_group_send_to_many(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path)
    channels = [await layer.new_channel(prefix=f"channel{i}") for i in range(100)]
    for channel in channels:
        await layer.group_add("test-group", channel)
    assert await layer.group_send("test-group", {"type": "message.1"}) == 100
    for channel in channels:
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "message.1"
    await layer.flush()
    await layer.close()


# ---- expiry, with chanlite_clock instead of sleeping ----


async def test_message_expiry(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=10)
    start = time.time()
    layer.set_clock(start)
    await layer.send("exp", {"type": "old"})
    layer.set_clock(start + 9)
    await layer.send("exp", {"type": "newer"})
    layer.set_clock(start + 10)  # the first is expired now; the second not
    assert (await layer.receive("exp"))["type"] == "newer"
    layer.set_clock(None)
    await layer.close()


async def test_expired_messages_free_capacity(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=10, capacity=2)
    start = time.time()
    layer.set_clock(start)
    await layer.send("exp", {"type": "a"})
    await layer.send("exp", {"type": "b"})
    with pytest.raises(ChannelFull):
        await layer.send("exp", {"type": "c"})
    layer.set_clock(start + 11)
    await layer.send("exp", {"type": "c"})
    assert (await layer.receive("exp"))["type"] == "c"
    await layer.close()


async def test_process_local_expiry(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=10)
    channel = await layer.new_channel()
    start = time.time()
    layer.set_clock(start)
    await layer.send(channel, {"type": "old"})
    layer.set_clock(start + 30)
    await layer.send(channel, {"type": "fresh"})
    assert (await layer.receive(channel))["type"] == "fresh"
    await layer.close()


async def test_group_expiry(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, group_expiry=100)
    start = time.time()
    layer.set_clock(start)
    await layer.group_add("g", "expiring")
    await layer.group_add("g", "refreshed")
    layer.set_clock(start + 60)
    await layer.group_add("g", "refreshed")  # a later add refreshes the membership
    layer.set_clock(start + 101)
    assert await layer.group_send("g", {"type": "m"}) == 1
    assert (await layer.receive("refreshed"))["type"] == "m"
    layer.set_clock(start + 161)
    assert await layer.group_send("g", {"type": "m"}) == 0
    await layer.close()


async def test_group_send_messages_expire(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=5)
    start = time.time()
    layer.set_clock(start)
    await layer.group_add("g", "member")
    assert await layer.group_send("g", {"type": "old"}) == 1
    layer.set_clock(start + 5)
    assert await layer.group_send("g", {"type": "new"}) == 1
    assert (await layer.receive("member"))["type"] == "new"
    await layer.close()


# ---- validation ----


async def test_reject_bad_channel(layer: SQLiteChannelLayer) -> None:
    for bad in ("=+135!", "a" * 100, "", "spaces here", "a!b!c"):
        with pytest.raises(TypeError):
            await layer.send(bad, {"type": "foom"})
        with pytest.raises(TypeError):
            await layer.receive(bad)
    for wrong_type in (None, 1, b"bytes"):
        with pytest.raises(TypeError):
            await layer.send(wrong_type, {"type": "foom"})  # type: ignore[arg-type]


async def test_stricter_than_python_names(layer: SQLiteChannelLayer) -> None:
    """Python's regex accepts these by accident; chanlite does not."""
    for accidental in ("chan\n", "chan\u0663"):  # trailing newline, an Arabic-Indic digit
        with pytest.raises(TypeError):
            await layer.send(accidental, {"type": "foom"})


async def test_reject_bad_group(layer: SQLiteChannelLayer) -> None:
    for bad in ("=+135", "a" * 100, "g!x", ""):
        with pytest.raises(TypeError):
            await layer.group_add(bad, "chan")
        with pytest.raises(TypeError):
            await layer.group_discard(bad, "chan")
        with pytest.raises(TypeError):
            await layer.group_send(bad, {"type": "x"})
    with pytest.raises(TypeError):
        await layer.group_add("good", "=+135!")


async def test_reject_bad_messages(layer: SQLiteChannelLayer) -> None:
    for bad in (None, "text", [("type", "x")], b"bytes"):
        with pytest.raises(TypeError):
            await layer.send("chan", bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await layer.group_send("grp", bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await layer.send("chan", {"type": "x", "obj": object()})


def test_config_errors(db_path: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SQLiteChannelLayer()
    with pytest.raises(ValueError, match="exactly one"):
        SQLiteChannelLayer(path=db_path, database="default")
    with pytest.raises(ValueError, match="':memory:', not ''"):
        SQLiteChannelLayer(path="")
    with pytest.raises(TypeError):
        SQLiteChannelLayer(path=db_path, hosts=[("localhost", 6379)])  # type: ignore[call-arg]


def test_extensions() -> None:
    assert set(SQLiteChannelLayer.extensions) == {"groups", "flush"}


# ---- flush and settings ----


async def test_flush(layer: SQLiteChannelLayer, sql: sqlite3.Connection) -> None:
    await layer.send("a", {"type": "m"})
    local = await layer.new_channel()
    await layer.send(local, {"type": "m"})
    await layer.group_add("g", "a")
    await layer.flush()
    assert sql.execute("SELECT count(*) FROM chanlite_channels").fetchone()[0] == 0
    assert sql.execute("SELECT count(*) FROM chanlite_groups").fetchone()[0] == 0
    assert await layer.group_send("g", {"type": "m"}) == 0


async def test_settings_are_stored_in_the_database(db_path: str, sql: sqlite3.Connection) -> None:
    layer = SQLiteChannelLayer(path=db_path, expiry=7, group_expiry=70, capacity=9)
    await layer.send("x", {"type": "m"})
    config = {
        key: sql.execute("SELECT chanlite_config(?)", (key,)).fetchone()[0]
        for key in ("expiry", "group_expiry", "capacity")
    }
    assert config == {"expiry": 7, "group_expiry": 70, "capacity": 9}
    mode = sql.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == ("memory" if "mode=memory" in db_path else "wal")
    await layer.close()


async def test_text_json_messages_from_other_clients(
    layer: SQLiteChannelLayer, sql: sqlite3.Connection
) -> None:
    sql.execute("SELECT channel_send('from-sql', ?)", ('{"type": "sql.message", "n": 1}',))
    assert await layer.receive("from-sql") == {"type": "sql.message", "n": 1}


async def test_close_and_reuse(db_path: str) -> None:
    layer = SQLiteChannelLayer(path=db_path)
    channel = await layer.new_channel()
    waiting = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.01)
    await layer.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await layer.send(channel, {"type": "after"})
    assert (await layer.receive(channel))["type"] == "after"
    await layer.close()


# ---- encryption ----


async def test_symmetric_encryption(db_path: str, sql: sqlite3.Connection) -> None:
    pytest.importorskip("cryptography")
    from cryptography.fernet import InvalidToken

    keys = ["a secret", "an older secret"]
    sender = SQLiteChannelLayer(path=db_path, symmetric_encryption_keys=keys)
    receiver = SQLiteChannelLayer(path=db_path, symmetric_encryption_keys=keys[1:] + keys[:1])
    await sender.send("enc", {"type": "secret", "text": "plain words"})
    stored = sql.execute("SELECT body FROM chanlite_message").fetchall()
    assert stored and all(b"plain words" not in bytes(row[0]) for row in stored)
    assert await receiver.receive("enc") == {"type": "secret", "text": "plain words"}
    wrong = SQLiteChannelLayer(path=db_path, symmetric_encryption_keys=["wrong"])
    await sender.send("enc", {"type": "secret"})
    with pytest.raises(InvalidToken):
        await wrong.receive("enc")
    for instance in (sender, receiver, wrong):
        await instance.close()


async def test_close_replacing_thread_state_mid_call_is_harmless(db_path: str) -> None:
    """close() replaces the layer's per-thread state while a pool thread may
    be inside _connection(): a call that found its connection in the old
    state must finish on it (it failed with AttributeError on
    'clock_generation', about once in nine closes)."""
    layer = SQLiteChannelLayer(path=db_path)
    await layer.send("race", {"type": "warm"})
    layer.transport._connection()  # this thread's connection, now in _tls
    configure = layer.transport._configure

    def close_meanwhile(conn: sqlite3.Connection) -> None:
        layer.transport._tls = threading.local()  # what close() does, at the worst moment
        configure(conn)

    layer.transport._configure = close_meanwhile  # type: ignore[method-assign]
    try:
        conn = layer.transport._connection()  # found in the old state, which close() replaces
    finally:
        layer.transport._configure = configure  # type: ignore[method-assign]
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert (await layer.receive("race"))["type"] == "warm"
    await layer.close()
