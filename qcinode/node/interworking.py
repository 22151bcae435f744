"""Interworking between two independently run networks (ETSI GS QKD 020): the driver at an interworking node.

Theory of operation:
    * **The site.** An interworking site holds one node of each network
      (``interworking:`` in each topology names its own node there, the
      other's KME, its URL and CA, and the SAEs the other network serves).
      The two KMEs exchange keys over ETSI GS QKD 020 with mutual TLS, each
      trusting only the other operator's CA for that interface.
    * **Outgoing (this network's master, the other network's slave).** The
      master's node relays the key inside this network to the interworking
      node as if the slave lived there (``Topology.sae_site``). The relay
      engine's ``StoreKey`` is the hand-off point: the network driver calls
      :meth:`Interworking.hand_off`, which sends ``ext_keys`` (asynchronous
      mode: ``ack_callback_url`` is this KME's own 020 server), expects 202,
      then waits for the peer's ``ext_keys/ack``. Only ``relayed`` answers the
      relay hop delivered, so the master's ``enc_keys`` gets the key only
      once the other network has stored it (the standard's advice: release a
      key only once it is relayed). Everything else refuses the hop, and the
      master gets no key.
    * **Retry or void** (the standard's rule for errors other than 400/401):
      ``ext_keys`` is sent again on no answer, 408 or 503, up to ``retries``
      times; if it never got a 202, or the ack says ``failed`` / ``key not
      present``, or no ack came within ``ack_timeout_s``, the key is voided
      with ``ext_keys/void`` (and this side forgets it). A 400 or 401 means
      the peer kept nothing: no void is needed.
    * **Incoming (the other network's master, this network's slaves).**
      ``ext_keys`` is checked (initiator one of the peer's SAEs, targets
      SAEs of this network — a target the peer serves would pass the key
      back, 400 ``invalid_routing`` —, capacity now) before 202, so a 400
      keeps nothing. Each key is then relayed inside this network from this
      node, under its own ID, with the other network's SAE as master, one
      relay per key so that each key's outcome is known; the outcomes go to
      the ``ack_callback_url`` as ``relayed``/``failed`` (retried; if the
      acks cannot be delivered the keys are voided here and an
      ``ext_keys/void`` goes the opposite way). Without a callback URL (the
      optional synchronous mode) they are the answer.
    * **Void here.** A voided key is recorded (a later ``ext_keys`` for it
      is refused), removed from this node's key store if it waits here, and
      answered ``voided``; a key already relayed to another node of this
      network cannot be recalled from there and is answered ``failed to
      void`` (nobody outside the KMEs knows its ID; it expires after
      ``relay.key_ttl_s``). A key the initiator's side voided is never
      released to its master.
    * **Idempotent by key ID.** A key handed over again (a retried relay
      inside this network) joins the hand-off under way or gets its outcome;
      another key under the same ID is refused.
    * **State** is in memory (a restart forgets hand-offs under way: their
      relays fail and their masters get no key), bounded and pruned after
      ``relay.key_ttl_s``. Logs name key and SAE IDs, never key values.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from ..core.relay.messages import Refusal, RefusalReason
from ..errors import ConfigError, KeyStoreError, PeerTimeout, PeerUnavailable, QcinodeError
from ..keys.keystore import SaeKeyStore
from ..kme.etsi020.client import Etsi020Client, client_tls_context
from ..kme.etsi020.protocol import (
    AckContainer,
    AckStatus,
    ExtKey,
    ExtKeysRequest,
    Problem,
    VoidRequest,
    ack_containers_body,
    ext_keys_body,
    group_acks,
    void_body,
)
from ..kme.etsi020.server import make_app, server_tls_context, start_server
from ..status import GatewayStatus
from ..topology import InterworkingConfig, Topology
from .network import NetworkService

__all__ = ["Gateway", "Interworking"]

log = structlog.get_logger(__name__)

#: Keys of one incoming request relayed at the same time.
RELAY_CONCURRENCY = 8
#: Pause before ``ext_keys`` or an ack is sent again.
RETRY_DELAY_S = 0.5
#: Most hand-offs and incoming keys remembered at once (oldest finished ones go first).
MAX_RECORDS = 100_000
#: How often a gateway started before the other operator's CA file existed looks for it.
CA_POLL_S = 1.0


@dataclass(slots=True)
class _Outgoing:
    """A key this KME handed to the peer."""

    key_id: str
    master_sae: str
    targets: tuple[str, ...]
    key: bytes = field(repr=False)
    created: float
    outcome: asyncio.Future[Refusal | None]
    acked: asyncio.Future[AckContainer]
    voided: bool = False


@dataclass(slots=True)
class _Incoming:
    """A key the peer handed to this KME."""

    key_id: str
    initiator: str
    targets: tuple[str, ...]
    key: bytes = field(repr=False)
    created: float
    status: AckStatus | None = None  # None while the relay runs
    message: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stored_here: bool = False
    voided: bool = False


class Gateway:
    """This node's 020 KME for one interworking site (one peer network)."""

    def __init__(
        self,
        site: InterworkingConfig,
        node_name: str,
        topology: Topology,
        network: NetworkService,
        keystore: SaeKeyStore | None,
        cert: Path,
        key: Path,
    ) -> None:
        self.site = site
        self.peer_kme = site.peer.kme
        self.node_name = node_name
        self.topology = topology
        self.network = network
        self.keystore = keystore
        self._cert, self._key = cert, key
        self._outgoing: dict[str, _Outgoing] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: Etsi020Client | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._next_prune = 0.0
        self.counters: Counter[str] = Counter()
        self.log = log.bind(node_id=node_name, peer_network=site.peer.network, peer_id=site.peer.kme)

    @property
    def callback_url(self) -> str:
        """The ``ack_callback_url`` this KME sends: its own 020 server's ack endpoint."""
        return f"{self.site.callback_base}/kmapi/v1/ext_keys/ack"

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Serves the 020 API on ``listen`` and prepares the client of the peer.

        The other operator's CA may not be there yet (the two networks start
        independently): then the interface waits for the file, checking every
        :data:`CA_POLL_S`, and hand-offs are refused until it is up.

        Raises:
            ConfigError: The peer's CA cannot be read, or the address cannot be bound.
        """
        ca = Path(self.site.peer.ca)
        if not ca.exists():
            self.log.warning(
                "interworking.peer_ca_missing",
                path=str(ca),
                details=f"the 020 interface starts once the CA certificate of network {self.site.peer.network!r} is there",
            )
            self._spawn(self._start_when_ca_exists(ca))
            return
        await self._start(ca)

    async def _start_when_ca_exists(self, ca: Path) -> None:
        while not ca.exists():
            await asyncio.sleep(CA_POLL_S)
        try:
            await self._start(ca)
        except ConfigError as exc:
            self.log.error("interworking.start_failed", details=str(exc)[:300])

    async def _start(self, ca: Path) -> None:
        self._client = Etsi020Client(self.site.peer.url, self.peer_kme, client_tls_context(self._cert, self._key, ca))
        limits = self.topology.kme  # the same connection limits as the node's ETSI 014 server
        app = make_app(self, body_timeout_s=limits.body_timeout_s)
        self._runner, self.port = await start_server(app, self.site.listen, server_tls_context(self._cert, self._key, ca), limits)
        self.log.info("interworking.started", listen=self.site.listen, peer_url=self.site.peer.url, remote_saes=list(self.site.peer.saes))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for record in self._outgoing.values():
            if not record.outcome.done():
                record.outcome.set_result(Refusal(RefusalReason.PEER_UNAVAILABLE, "the interworking KME stopped"))
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- outgoing: a key of this network for the peer network's SAEs -----------

    async def hand_off(self, key_id: str, master_sae: str, targets: tuple[str, ...], key: bytes) -> Refusal | None:
        """Hands ``key`` to the peer network for ``targets``; None once the peer acknowledged it ``relayed``."""
        if self._client is None:
            return Refusal(RefusalReason.PEER_UNAVAILABLE, f"the 020 interface to network {self.site.peer.network} is not up (waiting for its CA certificate)")
        self._prune()
        record = self._outgoing.get(key_id)
        if record is not None:
            if record.master_sae != master_sae or record.targets != targets or not hmac.compare_digest(record.key, key):
                return Refusal(RefusalReason.DUPLICATE, f"key {key_id} was handed to network {self.site.peer.network} with another key")
            return await asyncio.shield(record.outcome)
        loop = asyncio.get_running_loop()
        record = _Outgoing(key_id, master_sae, targets, key, time.time(), loop.create_future(), loop.create_future())
        self._outgoing[key_id] = record
        self._spawn(self._send(record))
        return await asyncio.shield(record.outcome)

    async def _send(self, record: _Outgoing) -> None:
        assert self._client is not None
        body = ext_keys_body(ExtKeysRequest((ExtKey(record.key_id, record.key),), record.master_sae, record.targets, self.callback_url))
        accepted, why = False, ""
        for attempt in range(self.site.retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_DELAY_S)
            try:
                status, answer = await self._client.ext_keys(body)
            except (PeerUnavailable, PeerTimeout) as exc:
                why = str(exc)
                self.counters["ext_keys_errors"] += 1
                continue
            self.counters[f"ext_keys_{status}"] += 1
            self.log.info("interworking.ext_keys_sent", key_id=record.key_id, status=status, attempt=attempt + 1)
            if status in (200, 202):
                accepted = True
                if status == 200 and isinstance(answer, list):  # a peer that answered synchronously after all
                    self._resolve_from_answer(record, answer)
                break
            if status in (400, 401):  # the peer kept nothing: no void needed
                self._finish(
                    record,
                    Refusal(RefusalReason.PEER_REFUSED, f"network {self.site.peer.network} refused key {record.key_id}: {status} {_problem_text(answer)}"),
                )
                return
            why = f"{status} {_problem_text(answer)}"
        if not accepted:
            await self._void(record, f"ext_keys not accepted after {self.site.retries + 1} attempt(s): {why}")
            self._finish(record, Refusal(RefusalReason.PEER_UNAVAILABLE, f"network {self.site.peer.network} did not accept key {record.key_id}: {why}"))
            return
        try:
            async with asyncio.timeout(self.site.ack_timeout_s):
                ack = await asyncio.shield(record.acked)
        except TimeoutError:
            await self._void(record, "no acknowledgement in time")
            self._finish(
                record,
                Refusal(
                    RefusalReason.TIMEOUT, f"network {self.site.peer.network} did not acknowledge key {record.key_id} within {self.site.ack_timeout_s:g} s"
                ),
            )
            return
        if ack.status is AckStatus.RELAYED and not record.voided:
            self.counters["keys_relayed"] += 1
            self._finish(record, None)
            return
        if ack.status is not AckStatus.VOIDED:  # voided: the peer voided it already
            await self._void(record, f"acknowledged {ack.status.value}")
        detail = f"network {self.site.peer.network} could not relay key {record.key_id}: {ack.status.value}" + (f" ({ack.message})" if ack.message else "")
        self._finish(record, Refusal(RefusalReason.PEER_REFUSED, detail))

    def _finish(self, record: _Outgoing, refusal: Refusal | None) -> None:
        if not record.outcome.done():
            record.outcome.set_result(refusal)
        self.log.info("interworking.hand_off_done", key_id=record.key_id, relayed=refusal is None, details=str(refusal or "")[:300])

    def _resolve_from_answer(self, record: _Outgoing, answer: list[Any]) -> None:
        from ..kme.etsi020.protocol import parse_acks  # an answer in the synchronous shape

        with contextlib.suppress(Problem):
            for ack in parse_acks(answer):
                if record.key_id in ack.key_ids and not record.acked.done():
                    record.acked.set_result(ack)

    async def _void(self, record: _Outgoing, reason: str) -> None:
        """Voids a handed-over key at the peer (``ext_keys/void``, asynchronous); it is never released here."""
        assert self._client is not None
        record.voided = True
        body = void_body(VoidRequest((record.key_id,), record.master_sae, record.targets, self.callback_url))
        for attempt in range(self.site.retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_DELAY_S)
            try:
                status, _ = await self._client.void(body)
            except (PeerUnavailable, PeerTimeout):
                self.counters["void_errors"] += 1
                continue
            self.counters[f"void_{status}"] += 1
            self.log.warning("interworking.void_sent", key_id=record.key_id, status=status, reason=reason[:200])
            if status in (200, 202, 400):
                return
        self.log.warning("interworking.void_undelivered", key_id=record.key_id, reason=reason[:200])

    def accept_acks(self, acks: list[AckContainer]) -> None:
        """Acknowledgements of keys this KME handed over (or of voids it asked for)."""
        unknown: list[str] = []
        for ack in acks:
            self.counters[f"acks_received_{ack.status.value.replace(' ', '_')}"] += len(ack.key_ids)
            for key_id in ack.key_ids:
                record = self._outgoing.get(key_id)
                if record is None or record.master_sae != ack.initiator_sae_id or record.targets != ack.target_sae_ids:
                    unknown.append(key_id)
                elif ack.status in (AckStatus.VOIDED, AckStatus.FAILED_TO_VOID):
                    self.log.info("interworking.void_acknowledged", key_id=key_id, status=ack.status.value)
                elif not record.acked.done():
                    record.acked.set_result(ack)
        self.log.info("interworking.acks_received", key_ids=[k for a in acks for k in a.key_ids][:100], statuses=sorted({a.status.value for a in acks}))
        if unknown:
            raise Problem.bad_request(
                {"key_not_present": f"key ID(s) not handed over by this KME: {', '.join(unknown[:20])}"}, "key-not-present", "key not present"
            )

    # -- incoming: the peer network's keys for this network's SAEs -------------

    def start_ext_keys(self, request: ExtKeysRequest) -> Awaitable[list[AckContainer]]:
        """Checks an ``ext_keys`` request (raising :class:`Problem`), then relays its keys in the background."""
        self._prune()
        self.counters["ext_keys_received"] += 1
        if request.initiator_sae_id not in self.site.peer.saes:
            raise Problem.routing(400, "initiator_sae_id_not_recognized", f"SAE {request.initiator_sae_id!r} is not an SAE of network {self.site.peer.network}")
        for target in request.target_sae_ids:
            if target in self.site.peer.saes:
                raise Problem.routing(400, "invalid_routing", f"target {target!r} is served by network {self.site.peer.network}: the key would be passed back")
            if not self.topology.has_sae(target):
                raise Problem.routing(400, "target_sae_id_not_recognized", f"KME associated with target SAE {target!r} is not known")
        fresh: list[ExtKey] = []
        joined: list[_Incoming] = []
        for key in request.keys:
            known = self._incoming.get(key.key_id)
            if known is None:
                fresh.append(key)
            elif (
                known.initiator == request.initiator_sae_id
                and known.targets == request.target_sae_ids
                and hmac.compare_digest(known.key, key.value)
                and not known.voided
            ):
                joined.append(known)  # a retried ext_keys: its outcome is the first one's
            else:
                raise Problem(
                    503, "key-id-conflict", "key ID conflict", {"key_id_conflict": f"key {key.key_id} is known here with another key, other SAEs or as voided"}
                )
        if fresh:
            sizes = {len(k.value) for k in fresh}
            for target in request.target_sae_ids:
                for size in sizes:
                    if self.network.available_keys(request.initiator_sae_id, target, size * 8) < len(fresh):
                        raise Problem(
                            503,
                            "insufficient-key-material",
                            "insufficient key material",
                            {"insufficient_key_material": f"network {self.topology.name} cannot carry {len(fresh)} key(s) to {target} now"},
                        )
        now = time.time()
        records = joined + [
            self._incoming.setdefault(k.key_id, _Incoming(k.key_id, request.initiator_sae_id, request.target_sae_ids, k.value, now)) for k in fresh
        ]
        task = self._spawn(self._relay_in(request, records, [r for r in records if r.key_id in {k.key_id for k in fresh}]))
        return task

    async def _relay_in(self, request: ExtKeysRequest, records: list[_Incoming], fresh: list[_Incoming]) -> list[AckContainer]:
        semaphore = asyncio.Semaphore(RELAY_CONCURRENCY)

        async def one(record: _Incoming) -> None:
            async with semaphore:
                try:
                    await self.network.relay_keys(record.initiator, record.targets, [(record.key_id, record.key)])
                except QcinodeError as exc:
                    record.status, record.message = AckStatus.FAILED, f"relay in network {self.topology.name} failed: {exc}"[:500]
                    self.counters["keys_failed"] += 1
                else:
                    record.stored_here = any(self.topology.sae_node(t).name == self.node_name for t in record.targets)
                    if record.voided:
                        self._discard_here(record)
                    record.status = AckStatus.VOIDED if record.voided else AckStatus.RELAYED
                    self.counters["keys_relayed_in"] += 1
                finally:
                    record.done.set()

        await asyncio.gather(*(one(r) for r in fresh))
        for record in records:
            await record.done.wait()
        acks = group_acks(((r.key_id, r.status or AckStatus.FAILED, r.message) for r in records), request.initiator_sae_id, request.target_sae_ids)
        self.log.info("interworking.keys_relayed_in", key_ids=[r.key_id for r in records][:100], statuses=sorted({a.status.value for a in acks}))
        if request.ack_callback_url is not None:
            await self._post_acks(request.ack_callback_url, acks, records)
        return acks

    async def _post_acks(self, url: str, acks: list[AckContainer], records: list[_Incoming]) -> None:
        assert self._client is not None
        body = ack_containers_body(acks)
        for attempt in range(self.site.retries + 1):
            if attempt:
                await asyncio.sleep(RETRY_DELAY_S)
            try:
                status, _ = await self._client.ack(url, body)
            except (PeerUnavailable, PeerTimeout):
                self.counters["acks_errors"] += 1
                continue
            self.counters[f"acks_sent_{status}"] += 1
            if status == 200:
                return
            if status in (400, 401):
                break
        # The acks did not arrive: void the keys here and tell the initiator's KME (the opposite direction).
        self.log.warning("interworking.acks_undelivered", key_ids=[r.key_id for r in records][:100])
        for record in records:
            self._void_here(record)
        first = records[0]
        with contextlib.suppress(PeerUnavailable, PeerTimeout):
            await self._client.void(void_body(VoidRequest(tuple(r.key_id for r in records), first.initiator, first.targets, self.callback_url)))
            self.counters["void_sent"] += 1

    def start_void(self, request: VoidRequest) -> Awaitable[list[AckContainer]]:
        """Voids keys: ours from the peer (never released to their master), or the peer's that we relayed."""
        self.counters["void_received"] += 1
        return self._spawn(self._void_in(request))

    async def _void_in(self, request: VoidRequest) -> list[AckContainer]:
        ids = list(request.key_ids)
        if not ids and request.all_confirmation:
            ids = [k for k, r in self._incoming.items() if r.initiator == request.initiator_sae_id and r.targets == request.target_sae_ids]
            ids += [k for k, r in self._outgoing.items() if r.master_sae == request.initiator_sae_id and r.targets == request.target_sae_ids]
        results: list[tuple[str, AckStatus, str | None]] = []
        for key_id in ids:
            incoming, outgoing = self._incoming.get(key_id), self._outgoing.get(key_id)
            if incoming is not None:
                if incoming.status is None:
                    incoming.voided = True
                    await incoming.done.wait()
                results.append((key_id, *self._void_here(incoming)))
            elif outgoing is not None:
                outgoing.voided = True
                if outgoing.outcome.done() and outgoing.outcome.result() is None:
                    results.append((key_id, AckStatus.FAILED_TO_VOID, "already released to its master SAE"))
                else:
                    if not outgoing.acked.done():
                        outgoing.acked.set_result(AckContainer((key_id,), AckStatus.VOIDED, outgoing.master_sae, outgoing.targets))
                    results.append((key_id, AckStatus.VOIDED, None))
            else:
                results.append((key_id, AckStatus.KEY_NOT_PRESENT, None))
        acks = group_acks(results, request.initiator_sae_id, request.target_sae_ids) if results else []
        self.log.warning("interworking.voided", key_ids=ids[:100], statuses=sorted({a.status.value for a in acks}))
        if request.ack_callback_url is not None and acks:
            assert self._client is not None
            for attempt in range(self.site.retries + 1):
                if attempt:
                    await asyncio.sleep(RETRY_DELAY_S)
                try:
                    status, _ = await self._client.ack(request.ack_callback_url, ack_containers_body(acks))
                except (PeerUnavailable, PeerTimeout):
                    continue
                if status in (200, 400, 401):
                    break
        return acks

    def _void_here(self, record: _Incoming) -> tuple[AckStatus, str | None]:
        """Voids one incoming key in this network, as far as this node can."""
        record.voided = True
        if record.status is AckStatus.RELAYED:
            if record.stored_here and self._discard_here(record):
                record.status = AckStatus.VOIDED
                return AckStatus.VOIDED, None
            return AckStatus.FAILED_TO_VOID, f"key already relayed to another node of network {self.topology.name}; it cannot be recalled and expires there"
        record.status = AckStatus.VOIDED
        return AckStatus.VOIDED, None

    def _discard_here(self, record: _Incoming) -> bool:
        if self.keystore is None:
            return False
        try:
            return bool(self.keystore.discard([record.key_id]))
        except KeyStoreError as exc:
            self.log.warning("interworking.discard_failed", key_id=record.key_id, details=str(exc)[:200])
            return False

    # -- housekeeping -------------------------------------------------------------

    def _prune(self) -> None:
        now = time.time()
        if now < self._next_prune and len(self._outgoing) + len(self._incoming) < MAX_RECORDS:
            return
        self._next_prune = now + 60.0
        horizon = now - self.topology.relay.key_ttl_s
        tables: tuple[dict[str, Any], ...] = (self._outgoing, self._incoming)
        for table in tables:
            stale = [k for k, r in table.items() if r.created < horizon and _finished(r)]
            for key_id in stale:
                del table[key_id]
            excess = len(table) - MAX_RECORDS
            if excess > 0:
                for key_id in [k for k, r in table.items() if _finished(r)][:excess]:
                    del table[key_id]

    def status(self) -> GatewayStatus:
        return GatewayStatus(
            peer_network=self.site.peer.network,
            peer_kme=self.peer_kme,
            port=self.port,
            handing_off=sum(1 for r in self._outgoing.values() if not r.outcome.done()),
            relaying_in=sum(1 for r in self._incoming.values() if r.status is None),
            counters=dict(sorted(self.counters.items())),
        )


def _finished(record: _Outgoing | _Incoming) -> bool:
    return record.outcome.done() if isinstance(record, _Outgoing) else record.status is not None


def _problem_text(answer: Any) -> str:
    if isinstance(answer, dict):
        details = answer.get("details")
        return f"{answer.get('title', '')} {details if isinstance(details, dict) else ''}".strip()[:300]
    return ""


class Interworking:
    """Every interworking site of one node; the network driver's hand-off hook."""

    def __init__(self, gateways: list[Gateway]) -> None:
        self.gateways = gateways

    @classmethod
    def for_node(cls, node_name: str, topology: Topology, network: NetworkService, keystore: SaeKeyStore | None, cert: Path, key: Path) -> Interworking | None:
        """The sites at ``node_name``, or None if it is no interworking node."""
        sites = [site for site in topology.interworking if site.node == node_name]
        if not sites:
            return None
        return cls([Gateway(site, node_name, topology, network, keystore, cert, key) for site in sites])

    async def start(self) -> None:
        for gateway in self.gateways:
            await gateway.start()

    async def stop(self) -> None:
        for gateway in self.gateways:
            await gateway.stop()

    async def hand_off(self, key_id: str, master_sae: str, targets: tuple[str, ...], key: bytes) -> Refusal | None:
        """Hands the key to the network(s) serving ``targets`` (all of them must acknowledge it)."""
        by_site: dict[int, list[str]] = {}
        for target in targets:
            for i, gateway in enumerate(self.gateways):
                if target in gateway.site.peer.saes:
                    by_site.setdefault(i, []).append(target)
                    break
            else:
                return Refusal(RefusalReason.STORE_REFUSED, f"no interworking site here serves {target!r}")
        outcomes = await asyncio.gather(*(self.gateways[i].hand_off(key_id, master_sae, tuple(ts), key) for i, ts in by_site.items()))
        return next((o for o in outcomes if o is not None), None)

    def status(self) -> list[GatewayStatus]:
        return [gateway.status() for gateway in self.gateways]
