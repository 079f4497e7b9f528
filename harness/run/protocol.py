"""The wire between the parent and its ranks, with no shared filesystem.

- The job spec goes to rank 0 on its standard input (mlx.launch forwards the launcher's
  stdin; over `ssh -tt` that is a terminal, whose lines are limited to MAX_CANON bytes, so
  the spec travels as short base64 lines after a header); rank 0 shares it over the group.
  A streaming job (`"stream": true` in its first spec) keeps reading: after each spec's
  `End` its ranks wait for the next one, until a spec of kind `CLOSE` ends the job.
- Results come back as frames on rank 0's standard output, the only stream that carries
  frames while a job runs: mlx.launch forwards every rank's output in chunks and chunks of
  two ranks may interleave, so the other ranks hand their results to rank 0 over the group
  (`gather_bytes`). A rank that fails writes one short error frame of its own and exits.
- A frame is one line: a marker, a CRC32, and base64 of (JSON header, raw array bytes), so
  a frame that arrives damaged is detected, and lines that are not frames are left alone.
- Two environment variables go from the parent to each rank it starts: `JOB_ENV` (the
  job's id: its ranks' log folder) and `CPUS_ENV` (the cores a local rank keeps to).
- The header is one of the messages below, declared here once: both sides build and read
  them as these types, never as bare dicts.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import IO, ClassVar

import numpy as np

FRAME = "@@harness-frame@@"
SPEC = "@@harness-spec@@"
LINE = 512  # base64 characters per spec line: well under any terminal's MAX_CANON
CLOSE = "close"  # the kind of the spec that ends a streaming job: its ranks exit cleanly
JOB_ENV = "HARNESS_JOB"
CPUS_ENV = "HARNESS_CPUS"


@dataclass
class Hello:
    """Every rank is up, has the spec and says who it is (host, interpreter, versions, log)."""

    kind: ClassVar[str] = "hello"
    ranks: list[dict]


@dataclass
class Start:
    """The ranks begin a unit of work (a case, a reference round, a bench case, a property):
    the watchdog's clock restarts, and a death from here on is blamed on it."""

    kind: ClassVar[str] = "start"
    phase: str  # case | reference | bench | property
    indices: list[int] = field(default_factory=list)
    name: str | None = None  # a property's name
    scale: int = 1  # times the per-unit limit it may take (Case.watchdog_scale: long prompts)


@dataclass
class Reference:
    """One case's single-rank reference (its arrays travel with the frame), or why not."""

    kind: ClassVar[str] = "reference"
    index: int
    status: str  # a ReferenceStatus: ok, or the blamed status of why it could not run (or skip)
    reason: str | None = None
    timings: dict | None = None
    # The `references` job of bisect and diff-impl (harness.run.rank.references) adds the
    # versions that ran and the strategies the architecture has there (tp, pp).
    versions: dict | None = None
    sharding: list[str] | None = None


@dataclass
class Result:
    """One case done on every rank: each rank's part (`rank`, `timings`), with its arrays
    keyed `<rank>:<name>`; or, for a bench case, its trials; or the ranks that failed it
    in step (`failures`: the strategy raised while sharding, every rank still running)."""

    kind: ClassVar[str] = "result"
    index: int
    ranks: list[dict] = field(default_factory=list)
    reference_ranks: list[dict] | None = None  # held against another strategy: its parts
    trials: list[dict] | None = None
    failures: list[dict] | None = None  # each: rank, status, reason, traceback


@dataclass
class Error:
    """A rank that raised outside any in-step failure: its last words before it exits."""

    kind: ClassVar[str] = "error"
    rank: int
    status: str
    reason: str
    indices: list[int] = field(default_factory=list)
    phase: str | None = None
    traceback: str = ""


@dataclass
class End:
    """The job's spec finished on every rank (a streaming job's ranks then wait for the
    next spec)."""

    kind: ClassVar[str] = "end"


@dataclass
class Property:
    """One property's result (`harness.props`), the same on every rank."""

    kind: ClassVar[str] = "property"
    result: dict


Message = Hello | Start | Reference | Result | Error | End | Property
MESSAGES: dict[str, type] = {
    m.kind: m for m in (Hello, Start, Reference, Result, Error, End, Property)
}


def to_wire(message: Message) -> dict:
    return {"type": message.kind, **asdict(message)}


def from_wire(data: dict) -> Message:
    """The typed message of a decoded header; fields this side does not know are dropped
    (a rank of a newer harness)."""
    cls = MESSAGES[data["type"]]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def pack(message: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """A message (JSON) and its arrays as one byte string: the JSON header names each
    array's dtype and shape, the raw bytes follow in order (no archive, no copy per
    array on the way in: a run's frames are most of what the ranks and parent move)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
    layout = [[k, v.dtype.str, list(v.shape)] for k, v in arrays.items()]
    header = json.dumps({"message": message, "arrays": layout}).encode()
    return b"".join(
        [struct.pack(">I", len(header)), header, *(v.tobytes() for v in arrays.values())]
    )


def unpack(raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    (size,) = struct.unpack(">I", raw[:4])
    header = json.loads(raw[4 : 4 + size])
    body = bytearray(raw[4 + size :])  # one writable copy that every array views
    arrays, offset = {}, 0
    for name, dtype, shape in header["arrays"]:
        kind = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(body, kind, count, offset).reshape(shape)
        offset += count * kind.itemsize
    if offset != len(body):
        raise ValueError(f"payload holds {len(body)} array bytes, its header says {offset}")
    return header["message"], arrays


def encode_frame(message: Message, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    payload = pack(to_wire(message), arrays)
    text = base64.b64encode(payload).decode()
    return f"\n{FRAME} {zlib.crc32(payload):08x} {text}\n".encode()


class DamagedFrame(Exception):
    """A frame whose checksum or encoding does not hold."""


def decode_frame(line: str) -> tuple[Message, dict[str, np.ndarray]] | None:
    """The message and arrays of a frame line; None for a line that is not a frame."""
    line = line.strip()
    if not line.startswith(FRAME):
        return None
    try:
        _, crc, text = line.split(" ", 2)
        payload = base64.b64decode(text, validate=True)
        if zlib.crc32(payload) != int(crc, 16):
            raise DamagedFrame("checksum mismatch")
        header, arrays = unpack(payload)
        return from_wire(header), arrays
    except (ValueError, KeyError, TypeError, zlib.error, struct.error) as exc:
        raise DamagedFrame(str(exc)) from None


def encode_spec(spec: dict) -> bytes:
    text = base64.b64encode(zlib.compress(json.dumps(spec).encode(), 6)).decode()
    lines = [text[i : i + LINE] for i in range(0, len(text), LINE)]
    return (
        f"{SPEC} {len(lines)} {zlib.crc32(text.encode()):08x}\n" + "\n".join(lines) + "\n"
    ).encode()


def read_spec(stream: IO[str]) -> dict:
    """The job spec from a text stream (rank 0's stdin); terminal echo or stray lines
    before the header are skipped."""
    for line in stream:
        if line.strip().startswith(SPEC):
            _, count, crc = line.split()
            break
    else:
        raise EOFError("the job spec never arrived on standard input")
    chunks = []
    while len(chunks) < int(count):
        line = stream.readline()
        if not line:
            raise EOFError("the job spec was cut short")
        chunks.append(line.strip())
    text = "".join(chunks)
    if zlib.crc32(text.encode()) != int(crc, 16):
        raise ValueError("the job spec arrived damaged")
    return json.loads(zlib.decompress(base64.b64decode(text)))


def gather_bytes(payload: bytes, group) -> list[bytes]:
    """Every rank's payload, on every rank (an all_gather of padded uint8 buffers)."""
    import mlx.core as mx

    if group is None or group.size() == 1:
        return [payload]
    sizes = mx.distributed.all_gather(mx.array([len(payload)], dtype=mx.int32), group=group)
    sizes = [int(s) for s in np.array(sizes)]
    buffer = np.zeros(max(max(sizes), 1), np.uint8)
    buffer[: len(payload)] = np.frombuffer(payload, np.uint8)
    gathered = np.array(mx.distributed.all_gather(mx.array(buffer), group=group))
    rows = gathered.reshape(group.size(), -1)
    return [rows[r, : sizes[r]].tobytes() for r in range(group.size())]


def frames(stream: IO[bytes]) -> Iterator[tuple[Message, dict[str, np.ndarray]] | str]:
    """Frames and other lines of a byte stream (a terminal's \\r\\n endings tolerated)."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
        try:
            decoded = decode_frame(line)
        except DamagedFrame as exc:
            yield f"damaged frame: {exc}"
            continue
        yield line if decoded is None else decoded
