"""What runs inside the benchmark's worker processes (started with multiprocessing "spawn").

Every worker opens its layer through ``layers.open_layer`` and then uses only the public channel
layer API: ``new_channel``, ``send``, ``receive``, ``group_add``, ``group_send``, ``flush``.
Side information that must not go through the layer under test (how many messages a consumer
got so far, to bound what is in flight; when a fan-out round is complete) goes through shared
memory counters, each written by one process only.

Times are ``time.monotonic_ns()``: CLOCK_MONOTONIC is one clock for every process on Linux, so
a timestamp taken by the producer can be compared with one taken by the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, MutableSequence
from typing import Any, Protocol

from channels.exceptions import ChannelFull

from layers import WORKER_LOG, LayerSpec, migrate, open_layer

WARM_ROUND = -1
STOP_ROUND = -2
PR_SET_PDEATHSIG = 1
FULL_RETRIES = 20_000  # ChannelFull retries (1 ms apart) before a send gives up


class Outbox(Protocol):
    def put(self, obj: Any) -> None: ...


class Flag(Protocol):
    def is_set(self) -> bool: ...


Counters = MutableSequence[int]


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:300]


async def _send(layer: Any, channel: str, message: dict[str, Any], stats: dict[str, int]) -> None:
    for _ in range(FULL_RETRIES):
        try:
            await layer.send(channel, message)
            return
        except ChannelFull:
            stats["full"] = stats.get("full", 0) + 1
            await asyncio.sleep(0.001)
    raise RuntimeError(f"channel {channel} stayed full for {FULL_RETRIES} retries")


async def _wait_for(check: Callable[[], bool], timeout: float, pause: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(pause)
    return True


def _reached(count: Callable[[], int], target: int) -> bool:
    return count() >= target


def _percentiles(samples: list[int]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        # nearest-rank percentile, in milliseconds
        index = max(0, min(n - 1, int(-(-q * n // 1)) - 1))
        return ordered[index] / 1e6

    return {
        "p50": rank(0.50),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] / 1e6,
        "n": float(n),
    }


# --- point to point ---------------------------------------------------------------------------
# counters[0]: timed messages the consumer got; counters[1]: warm-up messages it got.


async def p2p_consume(
    layer: Any, channel: str, counters: Counters, latency: bool
) -> dict[str, Any]:
    got = 0
    first = last = 0
    lats: list[int] = []
    sent = -1
    while True:
        message = await layer.receive(channel)
        now = time.monotonic_ns()
        seq = message.get("seq", 0)
        if message["type"] == "bench.stop":
            sent = int(message["sent"])
            break
        if seq < 0:
            counters[1] += 1
            continue
        counters[0] += 1
        if got == 0:
            first = now
        last = now
        got += 1
        if latency:
            lats.append(now - int(message["t"]))
    rate = (got - 1) / ((last - first) / 1e9) if got > 1 and last > first else 0.0
    return {"received": got, "sent": sent, "rate": rate, "latency": _percentiles(lats)}


async def p2p_produce(
    layer: Any, channel: str, counters: Counters, params: dict[str, Any]
) -> dict[str, Any]:
    payload = b"x" * int(params["size"])
    duration = float(params["duration"])
    rate: float | None = params.get("rate")
    window = int(params["window"])
    pause = float(params["pause"])
    stats: dict[str, int] = {}
    # Warm-up: repeat until the consumer has received one (a pub/sub layer drops what is sent
    # before the receiver subscribed), so the timed phase starts with both sides connected.
    deadline = time.monotonic() + 60
    while counters[1] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the consumer got no warm-up message within 60 s")
        await _send(layer, channel, {"type": "bench", "payload": payload, "t": 0, "seq": -1}, stats)
        await _wait_for(lambda: counters[1] > 0, 0.05, pause)
    await asyncio.sleep(0.05)
    start = time.monotonic()
    end = start + duration
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            target = start + i / rate
            if target > now:
                await asyncio.sleep(target - now)
        else:
            while i - counters[0] >= window and time.monotonic() < end:
                await asyncio.sleep(pause)
        await _send(
            layer,
            channel,
            {"type": "bench", "payload": payload, "t": time.monotonic_ns(), "seq": i},
            stats,
        )
        i += 1
    elapsed = time.monotonic() - start
    await _send(layer, channel, {"type": "bench.stop", "sent": i}, stats)
    return {"sent": i, "elapsed": elapsed, "full": stats.get("full", 0)}


# --- many producers -----------------------------------------------------------------------
# MANY_PRODUCERS processes x MANY_COROUTINES coroutines send at once to MANY_CONSUMERS consumer
# processes (coroutine j of producer p to consumer (p * coroutines + j) % consumers).
# counters[k]: timed messages consumer k got; counters[consumers + k]: its warm-up messages;
# counters[2 * consumers + p]: messages producer p sent.


async def many_consume(
    layer: Any, channel: str, index: int, consumers: int, producers: int, counters: Counters
) -> dict[str, Any]:
    got = 0
    first = last = 0
    sent = 0
    stops = 0
    while stops < producers:
        message = await layer.receive(channel)
        now = time.monotonic_ns()
        if message["type"] == "bench.stop":
            sent += int(message["sent"])
            stops += 1
            continue
        if message["seq"] < 0:
            counters[consumers + index] += 1
            continue
        counters[index] += 1
        if got == 0:
            first = now
        last = now
        got += 1
    return {"received": got, "sent": sent, "first": first, "last": last}


async def many_produce(
    layer: Any, index: int, channels: list[str], counters: Counters, params: dict[str, Any]
) -> dict[str, Any]:
    payload = b"x" * int(params["size"])
    coroutines = int(params["coroutines"])
    window = int(params["window"])
    pause = float(params["pause"])
    consumers = len(channels)
    stats: dict[str, int] = {}
    deadline = time.monotonic() + 60
    for k, channel in enumerate(channels):  # warm-up, as p2p_produce does
        while counters[consumers + k] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumer {k} got no warm-up message within 60 s")
            await _send(layer, channel, {"type": "bench", "payload": b"", "seq": -1}, stats)
            await _wait_for(lambda k=k: counters[consumers + k] > 0, 0.05, pause)
    await asyncio.sleep(0.05)
    sent_to = [0] * consumers
    end = time.monotonic() + float(params["duration"])

    def in_flight() -> int:
        sent = sum(counters[2 * consumers + p] for p in range(int(params["producers"])))
        return sent - sum(counters[k] for k in range(consumers))

    async def one(j: int) -> None:
        k = (index * coroutines + j) % consumers
        seq = 0
        while time.monotonic() < end:
            while in_flight() >= window and time.monotonic() < end:
                await asyncio.sleep(pause)
            message = {"type": "bench", "payload": payload, "seq": seq}
            await _send(layer, channels[k], message, stats)
            seq += 1
            sent_to[k] += 1
            counters[2 * consumers + index] += 1

    await asyncio.gather(*(one(j) for j in range(coroutines)))
    for k, channel in enumerate(channels):
        await _send(layer, channel, {"type": "bench.stop", "sent": sent_to[k]}, stats)
    return {"sent": sum(sent_to), "full": stats.get("full", 0)}


# --- fan-out ----------------------------------------------------------------------------------
# counters[2*k]: members of consumer process k that got a warm-up message;
# counters[2*k+1]: timed messages consumer process k got.


async def fanout_members(
    layer: Any, group: str, members: int, index: int, counters: Counters
) -> tuple[list[asyncio.Task[None]], dict[int, list[int]]]:
    channels = [await layer.new_channel() for _ in range(members)]
    for channel in channels:
        await layer.group_add(group, channel)
    rounds: dict[int, list[int]] = {}

    async def member(channel: str) -> None:
        warmed = False
        seen: set[int] = set()
        while True:
            message = await layer.receive(channel)
            now = time.monotonic_ns()
            r = int(message["round"])
            if r == STOP_ROUND:
                return
            if r == WARM_ROUND:
                if not warmed:
                    warmed = True
                    counters[2 * index] += 1
                continue
            # [members that got round r, when the last of them got it, duplicate deliveries]
            slot = rounds.setdefault(r, [0, 0, 0])
            if r in seen:
                slot[2] += 1
                continue
            seen.add(r)
            slot[0] += 1
            slot[1] = max(slot[1], now)
            counters[2 * index + 1] += 1

    tasks = [asyncio.create_task(member(channel)) for channel in channels]
    await asyncio.sleep(0.2)  # every receive() has started
    for task in tasks:
        if task.done():
            task.result()  # raises what the member raised
    return tasks, rounds


async def fanout_produce(
    layer: Any,
    group: str,
    total: int,
    procs: int,
    rounds: int,
    counters: Counters,
    pause: float,
    round_timeout: float,
) -> dict[str, Any]:
    def warm() -> int:
        return sum(counters[2 * k] for k in range(procs))

    def timed() -> int:
        return sum(counters[2 * k + 1] for k in range(procs))

    deadline = time.monotonic() + 60
    while warm() < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {warm()}/{total} members got the warm-up group_send")
        await layer.group_send(group, {"type": "bench", "round": WARM_ROUND, "t": 0})
        await _wait_for(lambda: warm() >= total, 1.0, pause)
    await asyncio.sleep(0.2)
    starts: list[int] = []
    incomplete: str | None = None
    for r in range(rounds):
        t0 = time.monotonic_ns()
        await layer.group_send(group, {"type": "bench", "round": r, "t": t0})
        starts.append(t0)
        target = total * (r + 1)
        if not await _wait_for(functools.partial(_reached, timed, target), round_timeout, pause):
            incomplete = (
                f"round {r}: {timed() - total * r}/{total} members got the message "
                f"within {round_timeout:.0f} s"
            )
            break
        await asyncio.sleep(0.02)
    await layer.group_send(group, {"type": "bench", "round": STOP_ROUND, "t": 0})
    return {"starts": starts, "incomplete": incomplete}


# --- process entry points ---------------------------------------------------------------------


async def _probe(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    await layer.flush()
    channel = await layer.new_channel()
    task = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0.2)  # a pub/sub layer subscribes in receive()
    await layer.send(channel, {"type": "bench", "payload": b"probe"})
    message = await asyncio.wait_for(task, 20)
    if message.get("payload") != b"probe":
        raise RuntimeError(f"round trip returned {message!r}")
    return {"class": f"{type(layer).__module__}.{type(layer).__qualname__}"}


async def _flush(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    await layer.flush()
    return {}


async def _p2p_consumer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    channel = await layer.new_channel()
    out.put(("ready", params["id"], channel))
    return await p2p_consume(layer, channel, counters, bool(params["latency"]))


async def _p2p_producer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    return await p2p_produce(layer, str(params["channel"]), counters, params)


async def _p2p_inproc(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    channel = await layer.new_channel()
    consumer = asyncio.create_task(p2p_consume(layer, channel, counters, bool(params["latency"])))
    producer = await p2p_produce(layer, channel, counters, params)
    result = await asyncio.wait_for(consumer, 60)
    result["producer"] = producer
    return result


async def _many_consumer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    channel = await layer.new_channel()
    out.put(("ready", params["id"], channel))
    return await many_consume(
        layer,
        channel,
        int(params["index"]),
        int(params["consumers"]),
        int(params["producers"]),
        counters,
    )


async def _many_producer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    channels = list(params["channels"])
    return await many_produce(layer, int(params["index"]), channels, counters, params)


async def _many_inproc(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    consumers, producers = int(params["consumers"]), int(params["producers"])
    channels = [await layer.new_channel() for _ in range(consumers)]
    receiving = [
        asyncio.create_task(many_consume(layer, ch, k, consumers, producers, counters))
        for k, ch in enumerate(channels)
    ]
    produced = await asyncio.gather(
        *(many_produce(layer, p, channels, counters, params) for p in range(producers))
    )
    results = [await asyncio.wait_for(task, 60) for task in receiving]
    return {"consumers": results, "producers": produced}


async def _fanout_consumer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    tasks, rounds = await fanout_members(
        layer, str(params["group"]), int(params["members"]), int(params["index"]), counters
    )
    out.put(("ready", params["id"], None))
    deadline = time.monotonic() + float(params["timeout"])
    # Until every member got the stop message, or the parent says the producer is done.
    while not all(task.done() for task in tasks) and time.monotonic() < deadline:
        if flag is not None and flag.is_set():
            await asyncio.sleep(0.5)  # grace for the stop message still in flight
            break
        await asyncio.sleep(0.05)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for res in results:
        if isinstance(res, Exception):
            raise res
    return {"rounds": rounds}


async def _fanout_producer(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    return await fanout_produce(
        layer,
        str(params["group"]),
        int(params["total"]),
        int(params["procs"]),
        int(params["rounds"]),
        counters,
        float(params["pause"]),
        float(params["round_timeout"]),
    )


async def _fanout_inproc(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Flag | None
) -> dict[str, Any]:
    group = str(params["group"])
    total = int(params["total"])
    tasks, rounds = await fanout_members(layer, group, total, 0, counters)
    produced = await fanout_produce(
        layer, group, total, 1, int(params["rounds"]), counters, 0.0, float(params["round_timeout"])
    )
    await asyncio.wait(tasks, timeout=5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"rounds": rounds, **produced}


async def _idle(
    layer: Any, params: dict[str, Any], out: Outbox, counters: Counters, flag: Any
) -> dict[str, Any]:
    """Consumers blocked in receive(); this process's CPU between the parent's two events."""
    window_start, window_end = flag
    channels = [await layer.new_channel() for _ in range(int(params["consumers"]))]
    tasks = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await asyncio.sleep(1.0)
    for task in tasks:
        if task.done():
            task.result()
            raise RuntimeError("receive() on an empty channel returned")

    def measure() -> None:
        # A thread blocked on a semaphore costs no CPU; getrusage counts every thread.
        window_start.wait()
        cpu0, t0 = _cpu(), time.monotonic()
        window_end.wait()
        cpu1, t1 = _cpu(), time.monotonic()
        out.put(("result", params["id"], {"cpu": cpu1 - cpu0, "wall": t1 - t0}))

    threading.Thread(target=measure, daemon=True).start()
    out.put(("ready", params["id"], None))
    # The parent reads the result the thread sends, then terminates this process.
    await asyncio.sleep(float(params["hold"]))
    raise RuntimeError("idle consumer was not stopped by the parent")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Role = Callable[[Any, dict[str, Any], Outbox, Counters, Any], Awaitable[dict[str, Any]]]
ROLES: dict[str, Role] = {
    "probe": _probe,
    "flush": _flush,
    "p2p_consumer": _p2p_consumer,
    "p2p_producer": _p2p_producer,
    "p2p_inproc": _p2p_inproc,
    "many_consumer": _many_consumer,
    "many_producer": _many_producer,
    "many_inproc": _many_inproc,
    "fanout_consumer": _fanout_consumer,
    "fanout_producer": _fanout_producer,
    "fanout_inproc": _fanout_inproc,
    "idle": _idle,
}


def _die_with_parent() -> None:
    """A harness killed with SIGKILL leaves no worker behind blocked in receive()."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


def _log_to_file(who: str) -> None:
    """Send this process's stderr (tracebacks, the peers' own logging) to the run's log file."""
    path = os.environ.get(WORKER_LOG)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"--- {who}, pid {os.getpid()}", file=sys.stderr, flush=True)


def child(
    kind: str,
    spec: LayerSpec,
    params: dict[str, Any],
    out: Any,
    counters: Counters,
    flag: Flag | None = None,
) -> None:
    """Entry point of every worker process: report ("result"|"error", id, payload) on ``out``."""
    rid = params.get("id", kind)
    _die_with_parent()
    _log_to_file(f"{rid} ({kind}, {spec.name})")
    try:
        if kind == "probe":
            migrate(spec)
        layer = open_layer(spec)

        async def main() -> None:
            result = await ROLES[kind](layer, params, out, counters, flag)
            out.put(("result", rid, result))

        asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, never lost
        traceback.print_exc()
        with contextlib.suppress(Exception):
            out.put(("error", rid, _error_text(exc), traceback.format_exc()[-2000:]))
    finally:
        with contextlib.suppress(Exception):
            out.close()
            out.join_thread()
