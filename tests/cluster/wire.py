"""A minimal client of dqlite's wire protocol, on the standard library only.

The tests use it to send exactly the requests they mean (EXEC or QUERY, one
statement each), which a pooled, retrying client would hide; and
``nodes.Cluster`` uses it to find the leader. The protocol (dqlite's
docs/protocol.md): the client sends its version (uint64 1), then each message
is an 8-byte header (uint32 body length in 8-byte words, uint8 type, uint8
schema, uint16 unused) and a body of little-endian 64-bit words; a text is
NUL-terminated and padded to 8 bytes.
"""

from __future__ import annotations

import socket
import struct

Value = int | float | str | bytes | None

PROTOCOL_VERSION = 1
REQUEST_LEADER = 0
REQUEST_OPEN = 3
REQUEST_EXEC_SQL = 8
REQUEST_QUERY_SQL = 9
REQUEST_CLUSTER = 16
REQUEST_TRANSFER = 17
RESPONSE_FAILURE = 0
RESPONSE_SERVER = 1
RESPONSE_SERVERS = 3
RESPONSE_DB = 4
RESPONSE_RESULT = 6
RESPONSE_ROWS = 7
RESPONSE_EMPTY = 8

T_INTEGER, T_FLOAT, T_TEXT, T_BLOB, T_NULL = 1, 2, 3, 4, 5
T_UNIXTIME, T_ISO8601, T_BOOLEAN = 9, 10, 11
ROWS_DONE = 0xFFFFFFFFFFFFFFFF
ROWS_PART = 0xEEEEEEEEEEEEEEEE

ROLES = {0: "voter", 1: "standby", 2: "spare"}


class DqliteError(Exception):
    """A failure response: dqlite's (or SQLite's) code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


def _text(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return raw + b"\0" * (-len(raw) % 8)


def _params(params: tuple[Value, ...]) -> bytes:
    if len(params) > 255:
        raise ValueError("at most 255 parameters")
    types = bytearray([len(params)])
    values = b""
    for p in params:
        if p is None:
            types.append(T_NULL)
            values += struct.pack("<Q", 0)
        elif isinstance(p, int):  # bool too
            types.append(T_INTEGER)
            values += struct.pack("<q", int(p))
        elif isinstance(p, float):
            types.append(T_FLOAT)
            values += struct.pack("<d", p)
        elif isinstance(p, str):
            types.append(T_TEXT)
            values += _text(p)
        elif isinstance(p, bytes):
            types.append(T_BLOB)
            values += struct.pack("<Q", len(p)) + p + b"\0" * (-len(p) % 8)
        else:
            raise TypeError(f"cannot send a {type(p).__name__}")
    types += b"\0" * (-len(types) % 8)
    return bytes(types) + values


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self.body, self.at)
        self.at += 8
        return int(v)

    def i64(self) -> int:
        (v,) = struct.unpack_from("<q", self.body, self.at)
        self.at += 8
        return int(v)

    def f64(self) -> float:
        (v,) = struct.unpack_from("<d", self.body, self.at)
        self.at += 8
        return float(v)

    def text(self) -> str:
        end = self.body.index(b"\0", self.at)
        s = self.body[self.at : end].decode()
        self.at += (end - self.at + 1 + 7) // 8 * 8
        return s

    def blob(self) -> bytes:
        n = self.u64()
        data = self.body[self.at : self.at + n]
        self.at += (n + 7) // 8 * 8
        return data


class Connection:
    """One connection to one node; every call is one request and its response."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(struct.pack("<Q", PROTOCOL_VERSION))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"{self.address} closed the connection")
            buf += chunk
        return bytes(buf)

    def _response(self) -> tuple[int, _Reader]:
        words, rtype = struct.unpack("<IB3x", self._recv(8))
        r = _Reader(self._recv(words * 8))
        if rtype == RESPONSE_FAILURE:
            code, message = r.u64(), r.text()
            if r.at < len(r.body):
                # libdqlite 1.11 sends a QUERY that fails after its first step
                # with the column count and names it had already written ahead
                # of the failure: the real code and message end the body.
                for _ in range(code - 1):  # the first name was read as the message
                    r.text()
                code, message = r.u64(), r.text()
            raise DqliteError(code, message)
        return rtype, r

    def request(self, rtype: int, body: bytes, expect: int) -> _Reader:
        self.sock.sendall(struct.pack("<IB3x", len(body) // 8, rtype) + body)
        got, r = self._response()
        if got != expect:
            raise DqliteError(0, f"unexpected response type {got}, wanted {expect}")
        return r

    def leader(self) -> tuple[int, str]:
        """The leader as this node knows it: (0, "") when it knows none."""
        r = self.request(REQUEST_LEADER, struct.pack("<Q", 0), RESPONSE_SERVER)
        return r.u64(), r.text()

    def cluster(self) -> list[tuple[int, str, str]]:
        """The members: (id, address, role)."""
        r = self.request(REQUEST_CLUSTER, struct.pack("<Q", 1), RESPONSE_SERVERS)
        return [(r.u64(), r.text(), ROLES.get(r.u64(), "?")) for _ in range(r.u64())]

    def transfer(self, node_id: int = 0) -> None:
        self.request(REQUEST_TRANSFER, struct.pack("<Q", node_id), RESPONSE_EMPTY)

    def open(self, name: str) -> int:
        body = _text(name) + struct.pack("<Q", 0) + _text("")
        return self.request(REQUEST_OPEN, body, RESPONSE_DB).u64() & 0xFFFFFFFF

    def exec(self, db: int, sql: str, *params: Value) -> tuple[int, int]:
        """EXEC_SQL: (last insert id, rows affected)."""
        body = struct.pack("<Q", db) + _text(sql) + _params(params)
        r = self.request(REQUEST_EXEC_SQL, body, RESPONSE_RESULT)
        return r.u64(), r.u64()

    def query(self, db: int, sql: str, *params: Value) -> list[tuple[Value, ...]]:
        """QUERY_SQL: every row."""
        body = struct.pack("<Q", db) + _text(sql) + _params(params)
        r = self.request(REQUEST_QUERY_SQL, body, RESPONSE_ROWS)
        rows: list[tuple[Value, ...]] = []
        n = r.u64()
        for _ in range(n):
            r.text()
        while True:
            marker = struct.unpack_from("<Q", r.body, r.at)[0]
            if marker == ROWS_DONE:
                return rows
            if marker == ROWS_PART:
                rtype, r = self._response()
                if rtype != RESPONSE_ROWS:
                    raise DqliteError(0, f"unexpected response type {rtype} in rows")
                for _ in range(r.u64()):
                    r.text()
                continue
            header_words = (n * 4 + 63) // 64
            header = r.body[r.at : r.at + header_words * 8]
            r.at += header_words * 8
            row: list[Value] = []
            for i in range(n):
                t = (header[i // 2] >> (4 * (i % 2))) & 0xF
                if t in (T_INTEGER, T_UNIXTIME, T_BOOLEAN):
                    row.append(r.i64())
                elif t == T_FLOAT:
                    row.append(r.f64())
                elif t in (T_TEXT, T_ISO8601):
                    row.append(r.text())
                elif t == T_BLOB:
                    row.append(r.blob())
                elif t == T_NULL:
                    r.u64()
                    row.append(None)
                else:
                    raise DqliteError(0, f"unknown column type {t}")
            rows.append(tuple(row))
