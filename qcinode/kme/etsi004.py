"""ETSI GS QKD 004 V2.1.1 key streams: OPEN_CONNECT, GET_KEY, CLOSE with QoS, as JSON over mutual TLS.

Theory of operation:
    * **The dialect.** One JSON object per request, one per answer (an
      answer ends with a newline; requests may or may not), over TLS with a
      client certificate of the cluster CA whose common name is the SAE ID —
      the JSON command set of the QUBIP project's 004 driver:
      ``{"command": "OPEN_CONNECT", "data": {"source", "destination", "qos":
      {"key_chunk_size", "max_bps", "min_bps", "jitter", "priority",
      "timeout", "ttl", "metadata_mimetype"}, "key_stream_id"?}}`` →
      ``{"status", "key_stream_id", "qos"}``; ``{"command": "GET_KEY",
      "data": {"key_stream_id", "index", "metadata"?: {"size"}}}`` →
      ``{"status", "index", "key_buffer" (hex), "metadata"?}``;
      ``{"command": "CLOSE", "data": {"key_stream_id"}}`` → ``{"status"}``.
      A failure carries ``"error"`` (text). ``source`` and ``destination``
      are SAE IDs or URIs whose host is one (``qkd://alice-app``).
    * **Status codes**: :class:`Status`, the table of V2.1.1 (0 to 8), and
      nothing else. A stream this node does not know (never opened here,
      closed, expired, another SAE's) is 4, "no QKD connection available".
    * **Streams between two SAEs, possibly at two nodes.** Each SAE opens
      the stream at its own node with the same ``key_stream_id`` (the first
      opener may let the node choose one and pass it on). Opening relays a
      small token key to the peer's node, so each node learns when the other
      side has opened: GET_KEY before that is 3, "peer not connected"; if
      the token cannot be relayed the open fails with 4.
    * **Keys.** Of the two SAEs, the one whose ID sorts first is the
      stream's *generator*: its node makes chunk ``i`` when its SAE asks for
      an index ``≥ i`` — a key of ``key_chunk_size`` bytes relayed, through the
      same relay engine and key store as ETSI 014, to the other SAE's node
      under the ID ``uuid5(key_stream_id, i)``. The other SAE's GET_KEY waits
      (up to the QoS ``timeout``) for that key to arrive in its node's store
      and takes it there. Both get the same bytes at the same index, once.
      A key made for a stream is in the store like any other and is taken
      once, so no other interface can hand it out again.
    * **QoS is enforced at OPEN_CONNECT.** ``key_chunk_size`` within the KME
      limits; ``ttl`` at most ``interfaces.stream_ttl_max_s``;
      ``min_bps`` no more than what the path can carry for this stream: the
      first hop's measured secret key rate (wall-clock) times the share of
      pad that is key (``chunk / (chunk + 32)``), less what other open
      streams over that link reserved. If not, 7 with the counter-proposal
      (the QoS that could be granted); if only ``max_bps`` is too high, it
      is lowered and the stream opens. A stream reserves its guaranteed
      ``min_bps`` on that link until it is closed or expires.
    * **TTL.** A stream expires ``ttl`` seconds after it was opened; its
      chunks not yet delivered at the generator are dropped, and a GET_KEY
      then answers 4.
    * **No door held open** (the topology's ``kme:`` limits, as for the
      HTTPS interfaces, :mod:`qcinode.kme.guarded`): the TLS handshake must
      end within ``tls_handshake_timeout_s`` (a failure is logged,
      ``kme.tls_refused``); a request must arrive whole within
      ``header_timeout_s`` of the connection's start or of its first byte
      after an answer (a stream request is one small object: its "headers"
      and "body" at once; bytes dribbled in do not extend the deadline); a
      connection with no request under way is closed after
      ``idle_timeout_s``; and an answer the client does not read within
      ``idle_timeout_s`` ends the connection too. A request being handled
      has no deadline here (GET_KEY waits up to its QoS ``timeout``). A
      dropped connection is logged (``kme.connection_dropped``,
      ``interface="etsi004"``, the caller, the reason) and counted
      (``connections_dropped``); an incomplete request is never handled,
      so it takes no key.
    * **No key material in logs**; key stream IDs and indices only.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog

from qcinode.errors import ConfigError, QcinodeError
from qcinode.kme.guarded import ConnectionCap, GuardTimeouts, tls_accept, transport_identity
from qcinode.pki import common_name_of

__all__ = ["Qos", "Status", "StreamBackend", "StreamService", "chunk_key_id", "sae_of_uri", "serve"]

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024
#: The interface's name in logs (as the HTTPS interfaces name theirs).
INTERFACE = "etsi004"
#: Pad per relayed key beyond the key itself (the one-time MAC key).
MAC_KEY_BYTES = 32
#: Most chunks one GET_KEY may make the generator produce ahead of what it has.
MAX_CHUNKS_AHEAD = 1024
_POLL_S = 0.05
_NULL_KSID = str(uuid.UUID(int=0))


class Status(enum.IntEnum):
    """ETSI GS QKD 004 V2.1.1 status values: the one table."""

    SUCCESSFUL = 0
    """Successful."""
    PEER_NOT_CONNECTED = 1
    """Successful connection, but peer not connected (OPEN_CONNECT)."""
    INSUFFICIENT_KEY = 2
    """GET_KEY failed because insufficient key available."""
    GET_KEY_PEER_NOT_CONNECTED = 3
    """GET_KEY failed because peer application is not yet connected."""
    NO_QKD_CONNECTION = 4
    """No QKD connection available (here also: an unknown, closed or expired key stream)."""
    KSID_IN_USE = 5
    """OPEN_CONNECT failed because the key stream ID is already in use."""
    TIMEOUT = 6
    """The call failed because the specified timeout was exceeded."""
    QOS_NOT_MET = 7
    """OPEN_CONNECT failed because the requested QoS could not be met; a counter-proposal is included."""
    METADATA_TOO_SMALL = 8
    """GET_KEY failed because the metadata field is too small; the required size is returned."""


@dataclass(frozen=True, slots=True)
class Qos:
    """The QoS of a key stream (units as in V2.1.1: bytes, bit/s, milliseconds, seconds)."""

    key_chunk_size: int = 32
    max_bps: int = 0
    min_bps: int = 0
    jitter: int = 0
    priority: int = 0
    timeout: int = 0
    ttl: int = 0
    metadata_mimetype: str = "application/json"

    @classmethod
    def from_json(cls, data: object) -> Qos:
        """Parses the ``qos`` object (absent fields take the defaults).

        Raises:
            ValueError: Not an object, an unknown field, or a value of the wrong type or sign.
        """
        if not isinstance(data, dict):
            raise ValueError("qos must be an object")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown qos field(s): {', '.join(unknown[:5])}")
        values: dict[str, Any] = {}
        for name in names - {"metadata_mimetype"}:
            if name in data:
                value = data[name]
                if type(value) is not int or not 0 <= value < 2**32:
                    raise ValueError(f"qos.{name} must be an unsigned 32-bit integer")
                values[name] = value
        if "metadata_mimetype" in data:
            if not isinstance(data["metadata_mimetype"], str) or len(data["metadata_mimetype"]) > 256:
                raise ValueError("qos.metadata_mimetype must be a string of at most 256 characters")
            values["metadata_mimetype"] = data["metadata_mimetype"]
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def chunk_key_id(key_stream_id: str, index: int) -> str:
    """The key ID of a stream's chunk ``index``: the same at both nodes, never reused by another stream."""
    return str(uuid.uuid5(uuid.UUID(key_stream_id), f"chunk/{index}"))


def _token_key_id(key_stream_id: str, sae: str) -> str:
    return str(uuid.uuid5(uuid.UUID(key_stream_id), f"open/{sae}"))


def sae_of_uri(text: str) -> str:
    """The SAE ID an OPEN_CONNECT address names: the URI's host (after any ``user@``), or the text itself."""
    if "://" not in text:
        return text
    authority = text.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return authority.rsplit("@", 1)[-1]


class StreamBackend(Protocol):
    """What streams need from the node: its relay and key store."""

    def node_of(self, sae: str) -> str | None:
        """The node serving ``sae`` (None if unknown)."""
        ...

    async def relay(self, master_sae: str, slave_sae: str, keys: list[tuple[str, bytes]]) -> None:
        """Relays given keys to the slave's node and stores them there (raises a QcinodeError if not)."""
        ...

    def take(self, slave_sae: str, master_sae: str, key_id: str) -> bytes | None:
        """Takes a key waiting here for ``slave_sae``, or None if it is not (yet) here."""
        ...

    def capacity_bps(self, master_sae: str, slave_sae: str) -> tuple[str, float]:
        """``(link ID, secret key bits per wall second)`` of the first hop towards the slave's node; ``("", inf)`` for the same node."""
        ...


@dataclass(slots=True)
class _Stream:
    ksid: str
    local_sae: str
    peer_sae: str
    qos: Qos
    link_id: str
    expires_at: float
    generator: bool
    peer_connected: bool = False
    next_chunk: int = 0  # the generator's next chunk to make
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)
    delivered: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class StreamService:
    """The 004 logic of one node (all I/O through the backend)."""

    def __init__(
        self,
        node: str,
        backend: StreamBackend,
        *,
        min_chunk_bytes: int = 8,
        max_chunk_bytes: int = 1024,
        ttl_max_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
        new_ksid: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.node = node
        self.backend = backend
        self.min_chunk_bytes = min_chunk_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self.ttl_max_s = ttl_max_s
        self.clock = clock
        self.new_ksid = new_ksid
        self.streams: dict[tuple[str, str], _Stream] = {}
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _expire(self) -> None:
        now = self.clock()
        for key, stream in list(self.streams.items()):
            if stream.expires_at <= now:
                del self.streams[key]
                self._count("streams_expired")
                log.info("etsi004.stream_expired", key_stream_id=stream.ksid, sae=stream.local_sae)

    def reserved_bps(self, link_id: str) -> int:
        return sum(s.qos.min_bps for s in self.streams.values() if s.link_id == link_id and s.generator)

    # -- OPEN_CONNECT -----------------------------------------------------------

    async def open_connect(self, caller: str, data: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        source, destination = data.get("source"), data.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str):
            return _fail(Status.NO_QKD_CONNECTION, "source and destination must be strings")
        local, peer = sae_of_uri(source), sae_of_uri(destination)
        if local != caller:
            return _fail(Status.NO_QKD_CONNECTION, f"source {local!r} is not the caller {caller!r}")
        if self.backend.node_of(peer) is None or peer == local:
            return _fail(Status.NO_QKD_CONNECTION, f"destination {peer!r} is not an SAE this network can reach")
        try:
            qos = Qos.from_json(data.get("qos", {}))
        except ValueError as exc:
            return _fail(Status.QOS_NOT_MET, str(exc), qos=Qos())
        raw_ksid = data.get("key_stream_id")
        if raw_ksid in (None, "", _NULL_KSID):
            ksid = self.new_ksid()
        else:
            try:
                ksid = str(uuid.UUID(str(raw_ksid)))
            except ValueError:
                return _fail(Status.NO_QKD_CONNECTION, "key_stream_id must be a UUID")
        if (ksid, local) in self.streams:
            return _fail(Status.KSID_IN_USE, f"key stream {ksid} is already open for {local}")
        generator = local < peer
        link_id, rate = self.backend.capacity_bps(local, peer) if generator else ("", math.inf)
        granted, ok = self._negotiate(qos, link_id, rate)
        if not ok:
            self._count("qos_refused")
            log.info("etsi004.qos_refused", sae=local, peer_sae=peer, requested=qos.to_json(), counter=granted.to_json())
            return {
                "status": int(Status.QOS_NOT_MET),
                "key_stream_id": ksid,
                "qos": granted.to_json(),
                "error": "the requested QoS cannot be met; see the counter-proposal",
            }
        try:
            await self.backend.relay(local, peer, [(_token_key_id(ksid, local), self._token())])
        except QcinodeError as exc:
            return _fail(Status.NO_QKD_CONNECTION, f"the peer's node cannot be reached: {str(exc)[:200]}")
        ttl = granted.ttl or self.ttl_max_s
        stream = _Stream(ksid, local, peer, granted, link_id, self.clock() + ttl, generator)
        self.streams[(ksid, local)] = stream
        self._count("streams_opened")
        connected = self._peer_connected(stream)
        log.info("etsi004.stream_opened", key_stream_id=ksid, sae=local, peer_sae=peer, generator=generator, peer_connected=connected)
        status = Status.SUCCESSFUL if connected else Status.PEER_NOT_CONNECTED
        return {"status": int(status), "key_stream_id": ksid, "qos": granted.to_json()}

    def _token(self) -> bytes:
        return uuid.uuid4().bytes[:8]

    def _negotiate(self, qos: Qos, link_id: str, rate_bps: float) -> tuple[Qos, bool]:
        """The QoS that can be granted, and whether the request's minimum holds."""
        chunk = min(max(qos.key_chunk_size or 32, self.min_chunk_bytes), self.max_chunk_bytes)
        ttl = min(qos.ttl, int(self.ttl_max_s)) if qos.ttl else 0
        available = rate_bps * chunk / (chunk + MAC_KEY_BYTES) - self.reserved_bps(link_id) if math.isfinite(rate_bps) else math.inf
        available = max(0.0, available)
        limit = int(available) if math.isfinite(available) else 2**32 - 1
        max_bps = min(qos.max_bps or limit, limit)
        granted = replace(qos, key_chunk_size=chunk, ttl=ttl, max_bps=max(max_bps, 0), min_bps=min(qos.min_bps, limit))
        ok = chunk == qos.key_chunk_size and ttl == qos.ttl and qos.min_bps <= limit and (qos.max_bps == 0 or qos.min_bps <= qos.max_bps)
        return granted, ok

    def _peer_connected(self, stream: _Stream) -> bool:
        if not stream.peer_connected:
            token = self.backend.take(stream.local_sae, stream.peer_sae, _token_key_id(stream.ksid, stream.peer_sae))
            stream.peer_connected = token is not None
        return stream.peer_connected

    # -- GET_KEY --------------------------------------------------------------------

    async def get_key(self, caller: str, data: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        stream = self._stream(caller, data.get("key_stream_id"))
        if stream is None:
            return _fail(Status.NO_QKD_CONNECTION, "no such key stream open for this SAE here (never opened, closed or expired)")
        index = data.get("index")
        if type(index) is not int or not 0 <= index < 2**32:
            return _fail(Status.INSUFFICIENT_KEY, "index must be an unsigned 32-bit integer")
        metadata = data.get("metadata")
        wanted_meta = {"key_stream_id": stream.ksid, "index": index, "hops_node": self.node}
        meta_text = json.dumps(wanted_meta, separators=(",", ":"))
        if isinstance(metadata, dict) and type(metadata.get("size")) is int and metadata["size"] < len(meta_text):
            return {"status": int(Status.METADATA_TOO_SMALL), "metadata": {"size": len(meta_text)}, "error": "metadata buffer too small"}
        if index in stream.delivered:
            return _fail(Status.INSUFFICIENT_KEY, f"index {index} was already delivered")
        if not self._peer_connected(stream):
            return _fail(Status.GET_KEY_PEER_NOT_CONNECTED, "the peer application has not opened the stream yet")
        timeout_s = stream.qos.timeout / 1000.0
        try:
            key = await (self._make(stream, index) if stream.generator else self._receive(stream, index, timeout_s))
        except TimeoutError:
            return _fail(Status.TIMEOUT, f"no key at index {index} within {stream.qos.timeout} ms")
        except QcinodeError as exc:
            return _fail(Status.INSUFFICIENT_KEY, f"no key at index {index} now: {str(exc)[:200]}")
        if key is None:
            return _fail(Status.INSUFFICIENT_KEY, f"no key at index {index}")
        stream.delivered.add(index)
        self._count("keys_delivered")
        answer: dict[str, Any] = {"status": int(Status.SUCCESSFUL), "index": index, "key_buffer": key.hex()}
        if metadata is not None:
            answer["metadata"] = {"size": len(meta_text), "buffer": meta_text}
        log.info("etsi004.key_delivered", key_stream_id=stream.ksid, sae=stream.local_sae, index=index)
        return answer

    async def _make(self, stream: _Stream, index: int) -> bytes | None:
        """At the generator: make every chunk up to ``index`` not made yet (relayed to the peer's node), then hand out ``index``."""
        async with stream.lock:
            if index >= stream.next_chunk:
                if index - stream.next_chunk >= MAX_CHUNKS_AHEAD:
                    return None
                chunk = stream.qos.key_chunk_size
                while stream.next_chunk <= index:
                    count = min(128, index + 1 - stream.next_chunk)
                    batch = [(chunk_key_id(stream.ksid, i), _random(chunk)) for i in range(stream.next_chunk, stream.next_chunk + count)]
                    await self.backend.relay(stream.local_sae, stream.peer_sae, batch)
                    for offset, (_, key) in enumerate(batch):
                        stream.chunks[stream.next_chunk + offset] = key
                    stream.next_chunk += count
            return stream.chunks.pop(index, None)

    async def _receive(self, stream: _Stream, index: int, timeout_s: float) -> bytes | None:
        """At the other node: wait for chunk ``index`` to arrive, then take it."""
        key_id = chunk_key_id(stream.ksid, index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s  # the event loop's clock: a wait is real time, the TTL is the injected clock's
        while True:
            key = self.backend.take(stream.local_sae, stream.peer_sae, key_id)
            if key is not None:
                return key
            if loop.time() >= deadline:
                raise TimeoutError
            await asyncio.sleep(_POLL_S)

    # -- CLOSE ------------------------------------------------------------------------

    async def close(self, caller: str, data: dict[str, Any]) -> dict[str, Any]:
        self._expire()
        stream = self._stream(caller, data.get("key_stream_id"))
        if stream is None:
            return _fail(Status.NO_QKD_CONNECTION, "no such key stream open for this SAE here")
        del self.streams[(stream.ksid, stream.local_sae)]
        stream.chunks.clear()
        self._count("streams_closed")
        log.info("etsi004.stream_closed", key_stream_id=stream.ksid, sae=caller)
        return {"status": int(Status.SUCCESSFUL)}

    def _stream(self, caller: str, raw: object) -> _Stream | None:
        try:
            ksid = str(uuid.UUID(str(raw)))
        except ValueError:
            return None
        return self.streams.get((ksid, caller))

    async def handle(self, caller: str, message: object) -> dict[str, Any]:
        """One request of the JSON dialect."""
        if not isinstance(message, dict) or not isinstance(message.get("data", {}), dict):
            return _fail(Status.NO_QKD_CONNECTION, 'a request is {"command": ..., "data": {...}}')
        command, data = message.get("command"), message.get("data", {})
        handler = {"OPEN_CONNECT": self.open_connect, "GET_KEY": self.get_key, "CLOSE": self.close}.get(str(command))
        if handler is None:
            return _fail(Status.NO_QKD_CONNECTION, f"unknown command {str(command)[:40]!r}; OPEN_CONNECT, GET_KEY or CLOSE")
        return await handler(caller, data)

    def status(self) -> dict[str, int]:
        self._expire()
        return {"streams_open": len(self.streams), **self.counters}


def _random(n: int) -> bytes:
    import secrets

    return secrets.token_bytes(n)


def _fail(status: Status, error: str, *, qos: Qos | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"status": int(status), "error": error}
    if qos is not None:
        answer["qos"] = qos.to_json()
    return answer


# -- the wire: JSON objects over TLS ------------------------------------------------


async def serve(service: StreamService, listen: str, context: ssl.SSLContext, timeouts: GuardTimeouts) -> tuple[asyncio.Server, int]:
    """Serves the JSON dialect on ``listen`` (``HOST:PORT``); returns the server and its port.

    Args:
        service: The node's streams.
        listen: ``HOST:PORT``, the host possibly in brackets; port 0 picks a free one.
        context: The server's TLS context (client certificates of the cluster CA).
        timeouts: The TLS handshake, request and idle limits (the topology's ``kme:`` section; module docstring).

    Raises:
        ConfigError: The address cannot be bound.
    """
    host, _, port = listen.rpartition(":")
    loop = asyncio.get_running_loop()
    cap = ConnectionCap(timeouts.max_connections, interface=INTERFACE)

    def accept(release: Callable[[], None]) -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES, loop=loop)
        app = asyncio.StreamReaderProtocol(reader, lambda r, w: _connection(service, timeouts, r, w), loop=loop)
        return tls_accept(loop, app, context, timeouts.tls_handshake_timeout_s, interface=INTERFACE, on_lost=release)

    try:
        server = await loop.create_server(lambda: cap.accept(accept), host.strip("[]") or None, int(port))
    except OSError as exc:
        raise ConfigError(f"--etsi004-listen: cannot serve ETSI 004 on {listen}: {exc.strerror or exc}") from exc
    return server, int(server.sockets[0].getsockname()[1])


class _Dropped(Exception):
    """A connection closed for being slow: the reason and the limit it broke."""

    def __init__(self, reason: str, timeout_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout_s = timeout_s


async def _connection(service: StreamService, timeouts: GuardTimeouts, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client connection: requests in order, each answered before the next is read (module docstring for the deadlines)."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    try:
        caller = common_name_of(der) if der else ""
    except ConfigError:
        caller = ""
    loop = asyncio.get_running_loop()
    decoder = json.JSONDecoder()
    buffer = ""
    # "request": a request is due whole by the deadline; "idle": no byte of one yet since the last answer.
    phase, limit = "request", timeouts.header_timeout_s
    deadline = loop.time() + limit
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(MAX_MESSAGE_BYTES)
            except TimeoutError:
                raise _Dropped("request_timeout" if phase == "request" else "idle_timeout", limit) from None
            if not data:
                return
            if phase == "idle":  # the next request began: it is due whole within the request limit
                phase, limit = "request", timeouts.header_timeout_s
                deadline = loop.time() + limit
            buffer += data.decode("utf-8", "replace")
            answered = False
            while True:
                text = buffer.lstrip()
                if not text:
                    buffer = ""
                    break
                try:
                    message, end = decoder.raw_decode(text)
                except ValueError:
                    if len(text) > MAX_MESSAGE_BYTES:
                        await _send(writer, _fail(Status.NO_QKD_CONNECTION, "request too large or not JSON"), timeouts)
                        return
                    buffer = text
                    break  # an incomplete object: read more (by the same deadline)
                buffer = text[end:]
                if not caller:
                    await _send(writer, _fail(Status.NO_QKD_CONNECTION, "a client certificate is required"), timeouts)
                    return
                await _send(writer, await service.handle(caller, message), timeouts)
                answered = True
            if answered:  # a new deadline from now: for the rest already here, or for the next request's first byte
                phase, limit = ("request", timeouts.header_timeout_s) if buffer.strip() else ("idle", timeouts.idle_timeout_s)
                deadline = loop.time() + limit
    except _Dropped as dropped:
        service._count("connections_dropped")
        log.info(
            "kme.connection_dropped",
            interface=INTERFACE,
            caller=caller or transport_identity(writer.transport),
            reason=dropped.reason,
            timeout_s=dropped.timeout_s,
        )
        writer.transport.abort()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        return
    finally:
        writer.close()


async def _send(writer: asyncio.StreamWriter, answer: dict[str, Any], timeouts: GuardTimeouts) -> None:
    """Writes one answer; a client that does not read it within ``idle_timeout_s`` is dropped."""
    writer.write(json.dumps(answer).encode() + b"\n")
    try:
        async with asyncio.timeout(timeouts.idle_timeout_s):
            await writer.drain()
    except TimeoutError:
        raise _Dropped("write_timeout", timeouts.idle_timeout_s) from None
