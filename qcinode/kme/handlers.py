"""ETSI GS QKD 014 V1.1.1 key delivery: the pure request logic of one KME.

Theory of operation:
    * **Roles.** A master SAE asks its own KME for keys with ``enc_keys``
      (naming the slave SAE in the URL, more in ``additional_slave_SAE_IDs``)
      and gets them at once. Each slave later redeems the same keys by ID with
      ``dec_keys`` at *its* KME, naming the master in the URL. ``status``
      tells a master what it may ask for. Here nothing moves: the adapter
      (:mod:`qcinode.kme.server`) does the I/O, a key supplier makes the keys
      and stores the slaves' copies, and :class:`Kme` decides what a request
      means and whether it is allowed.
    * **Identity.** The caller is the common name of its TLS client
      certificate, given by the adapter. A caller must be an SAE attached to
      this KME (``sae_node(caller) == kme_id``); anything else, node
      certificates included, is :class:`~qcinode.errors.Unauthorized` (401).
    * **Validate first, spend never on a bad request.** :meth:`Kme.enc_request`
      checks everything (identity, SAE IDs, types, limits, extensions) and
      returns a frozen :class:`EncRequest`; only then may the adapter ask the
      supplier for keys. So a 400 or 401 never consumes key material, and a
      request over the limits is refused with 400 even when no key is
      available (which would be 503).
    * **Strict JSON.** Bodies must be JSON objects with only the fields the
      standard names; numbers must be JSON integers (not strings, floats or
      booleans). Every problem found is listed in the error's ``details``;
      the message is the first one. No extension is supported, so a
      non-empty ``extension_mandatory`` is refused, as clause 6.2 asks, with
      ``extension_mandatory_unsupported`` details; ``extension_optional`` is
      ignored.
    * **Redemption** is :meth:`qcinode.keys.keystore.SaeKeyStore.take`: all
      requested keys or none, each slave once, only the named slave(s) of the
      named master.
    * **Errors** become ETSI bodies ``{"message": ..., "details": [...]}`` in
      one table, :meth:`Kme.error_body`: 400 for bad requests and unknown
      keys, 401 for the wrong caller, 503 for everything else, including
      unexpected errors (as "internal error", hiding internals). ETSI 014 knows
      only 400, 401 and 503. ``details`` follows clause 6.5: objects of
      name/value pairs, ``{"message": ...}`` for each problem found.
    * **What a 503 may say.** A request the network cannot serve now is a
      :class:`DeliveryRefused` with a reason from :class:`RefusalReason` and
      a message the caller can act on (which SAEs, how many keys, which
      limit, "retry later"); what went wrong inside (which node, which
      address, which gRPC error) is its ``internal`` text, for the log only.
    * **Storage faults.** When the key store cannot be written (full or
      read-only disk, I/O error), ``enc_keys`` hands out no key and
      ``dec_keys`` hands out none and keeps every key (a redemption that
      cannot be recorded could otherwise be handed out twice): both answer
      503 with a message naming the fault, never the node's file paths.
    * **Names.** ETSI spellings (``key_ID``, ``master_SAE_ID``) only appear in
      wire dictionaries; Python names are snake_case. No key material is ever
      put into an exception message or a repr.
"""

from __future__ import annotations

import base64
import enum
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from qcinode.errors import (
    ConfigError,
    InsufficientKeyMaterial,
    KeyNotFound,
    LocalProtocolError,
    QcinodeError,
    RequestError,
    StorageFailure,
    TransportError,
    Unauthorized,
)

__all__ = [
    "DeliveredKey",
    "DeliveryRefused",
    "EncRequest",
    "Kme",
    "KeyRedeemer",
    "KmeLimits",
    "RefusalReason",
    "UnsupportedExtension",
]

# Fields of the ETSI 014 JSON objects this KME accepts (clauses 6.2 and 6.4).
_KEY_REQUEST_FIELDS = ("number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional")
_ENC_QUERY_FIELDS = ("number", "size")
_KEY_IDS_FIELDS = ("key_IDs", "key_IDs_extension")
_KEY_ID_FIELDS = ("key_ID", "key_ID_extension")
_DEC_QUERY_FIELDS = ("key_ID",)

# Canonical hyphenated UUID text (RFC 9562 §4); any case, normalised to lower.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A query parameter number: ASCII digits only (no sign, blanks or Unicode digits).
_DECIMAL = re.compile(r"[0-9]+")
# More digits than any limit could need; longer strings are out of range without int().
_MAX_DECIMAL_DIGITS = 12
# At most this many problems are listed in one error's details.
_MAX_DETAILS = 20

_short = reprlib.Repr()
_short.maxstring = 80
_short.maxother = 80
_short.maxlist = 4
_short.maxdict = 4
_short.maxlevel = 2


def _show(value: object) -> str:
    """A short repr of client input for messages (never of key material)."""
    return _short.repr(value)


class KeyRedeemer(Protocol):
    """Where keys wait for their slave SAE: the node's :class:`~qcinode.keys.keystore.SaeKeyStore`, or a test fake."""

    def take(self, requester_sae: str, master_sae: str, key_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """Redeem ``key_ids`` for ``requester_sae``: all of them in order, or none.

        Raises:
            KeyNotFound: Some are unknown or already redeemed; nothing changed.
            Unauthorized: Some are not for ``requester_sae`` or not from ``master_sae``; nothing changed.
            StorageFailure: The redemption cannot be recorded; nothing changed.
        """
        ...


@dataclass(frozen=True, slots=True)
class KmeLimits:
    """What one KME allows; reported by ``status`` (clause 6.1).

    Attributes:
        max_key_per_request: Most keys one ``enc_keys`` or ``dec_keys`` call may carry.
        default_key_size: Key size in bits when a request names none (``key_size``).
        min_key_size: Smallest key size in bits.
        max_key_size: Largest key size in bits.
        max_key_count: Most keys this KME keeps waiting for one SAE pair
            (reported as ``max_key_count``; ``stored_key_count`` never exceeds it).
        max_sae_id_count: Most additional slave SAEs one key may have.

    Raises:
        ConfigError: A limit is not a positive integer, a key size is not a
            multiple of 8, or ``min <= default <= max`` does not hold.
    """

    max_key_per_request: int = 128
    default_key_size: int = 256
    min_key_size: int = 64
    max_key_size: int = 8192
    max_key_count: int = 100_000
    max_sae_id_count: int = 8

    def __post_init__(self) -> None:
        for name in ("max_key_per_request", "default_key_size", "min_key_size", "max_key_size", "max_key_count"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if type(self.max_sae_id_count) is not int or self.max_sae_id_count < 0:
            raise ConfigError(f"max_sae_id_count: must be a non-negative integer, got {self.max_sae_id_count!r}")
        for name in ("default_key_size", "min_key_size", "max_key_size"):
            if getattr(self, name) % 8:
                raise ConfigError(f"{name}: must be a multiple of 8 bits, got {getattr(self, name)}")
        if not self.min_key_size <= self.default_key_size <= self.max_key_size:
            raise ConfigError(
                "default_key_size: must lie within [min_key_size, max_key_size], got "
                f"{self.default_key_size} not in [{self.min_key_size}, {self.max_key_size}]"
            )


@dataclass(frozen=True, slots=True)
class EncRequest:
    """A validated ``enc_keys`` request: what the key supplier must deliver.

    Attributes:
        master_sae: The caller, who gets the keys now.
        slave_saes: The path's ``slave_SAE_ID`` first, then the
            ``additional_slave_SAE_IDs`` in request order; distinct, all known,
            none the master.
        number: How many keys (1 to ``max_key_per_request``).
        size_bits: Size of each key in bits (a multiple of 8 within the limits).
    """

    master_sae: str
    slave_saes: tuple[str, ...]
    number: int
    size_bits: int


@dataclass(frozen=True, slots=True)
class DeliveredKey:
    """One key as handed to an SAE. The bytes are kept out of the repr.

    Attributes:
        key_id: The ETSI ``key_ID`` (a UUID4 string).
        key: The key bytes.
        paths: The node paths the key travelled (one per slave node and
            share), reported in ``key_ID_extension`` so applications and
            ``qcinode keys`` can see the route; empty for a same-node key.
    """

    key_id: str
    key: bytes = field(repr=False)
    paths: tuple[tuple[str, ...], ...] = ()


class UnsupportedExtension(RequestError):
    """``extension_mandatory`` named extensions this KME does not support. Expected; 400.

    Attributes:
        names: The unsupported extension names, as the request gave them.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(
            "not all extension_mandatory parameters are supported",
            [f"extension_mandatory: {_show(name)} is not supported" for name in self.names],
        )


class RefusalReason(enum.Enum):
    """Why ``enc_keys`` was refused with 503: a closed vocabulary (log field and metric label)."""

    RATE_LIMIT = "rate_limit"
    """The master SAE's token bucket (``kme.max_keys_per_sae_per_s``) cannot cover the request."""
    FAIR_SHARE = "fair_share"
    """The path is short of key and the master SAE took more than its share of it (``kme.fair_share``)."""
    NO_KEY = "no_key"
    """No path to a slave's node has enough key on every hop now."""
    UNREACHABLE = "unreachable"
    """A path failed on the way (a node down, a hop refused)."""
    TIMEOUT = "timeout"
    """Delivery took longer than the deadline."""


class DeliveryRefused(QcinodeError):
    """``enc_keys`` cannot be served now. Expected; ETSI 014 answers 503 and nothing is handed out.

    Attributes:
        reason: Why, from :class:`RefusalReason`.
        internal: What went wrong inside the network, for the log only
            (node names, addresses, gRPC errors are never in the message).
    """

    def __init__(self, reason: RefusalReason, message: str, *, internal: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.internal = internal


class _Problems:
    """Collects what is wrong with one request, to report it all at once."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, problem: str) -> None:
        self.items.append(problem)

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        first, count = self.items[0], len(self.items)
        message = first if count == 1 else f"{first} (and {count - 1} more problem(s) with the {what})"
        raise RequestError(message, self.items[:_MAX_DETAILS])


# One table: the ETSI 014 status of every expected error (clause 5). Order
# matters only between a class and its subclasses; the first match wins.
_ERROR_STATUS: tuple[tuple[type[QcinodeError], int], ...] = (
    (RequestError, 400),
    (KeyNotFound, 400),
    (Unauthorized, 401),
    (DeliveryRefused, 503),
    (InsufficientKeyMaterial, 503),
    (TransportError, 503),  # a slave's node unreachable, refusing, or too slow
    (StorageFailure, 503),
)
# Marks a value whose problem is already reported.
_REPORTED = object()

# What every unexpected error is answered with: ETSI 014 has no 500, and
# internals (paths, stack details) are not the client's business.
_INTERNAL_STATUS = 503
_INTERNAL_MESSAGE = "internal error"


class Kme:
    """The ETSI GS QKD 014 logic of one node's KME (no I/O of its own but the key store)."""

    __slots__ = ("_kme_id", "_sae_node", "_store", "_limits")

    def __init__(
        self,
        kme_id: str,
        sae_node: Callable[[str], str | None],
        store: KeyRedeemer,
        limits: KmeLimits = KmeLimits(),
    ) -> None:
        """Create the KME of one node.

        Args:
            kme_id: This KME's ID (the node name).
            sae_node: Maps an SAE ID to the KME ID it is attached to, or None
                for an unknown SAE.
            store: This node's store of keys waiting for its slave SAEs.
            limits: What this KME allows.
        """
        self._kme_id = kme_id
        self._sae_node = sae_node
        self._store = store
        self._limits = limits

    @property
    def kme_id(self) -> str:
        """This KME's ID."""
        return self._kme_id

    @property
    def limits(self) -> KmeLimits:
        """What this KME allows."""
        return self._limits

    def node_of(self, sae_id: str) -> str | None:
        """The KME (node) an SAE is attached to, or None for an unknown SAE."""
        return self._sae_node(sae_id)

    # -- Get status (clause 5.1) --------------------------------------------

    def authorize(self, caller_sae: str, slave_sae: str) -> None:
        """Check that ``caller_sae`` may ask this KME about keys shared with ``slave_sae``.

        The adapter calls this before asking a key supplier anything.

        Raises:
            Unauthorized: The caller is not an SAE attached to this KME.
            RequestError: ``slave_sae`` is unknown or is the caller.
        """
        self._require_local_sae(caller_sae)
        problems = _Problems()
        self._check_slave(caller_sae, slave_sae, "slave_SAE_ID", problems)
        problems.raise_if_any("request")

    def status(self, caller_sae: str, slave_sae: str, available_keys: int) -> dict[str, Any]:
        """The ETSI status of the pair (caller as master, ``slave_sae`` as slave).

        Args:
            caller_sae: The master SAE asking (from its certificate).
            slave_sae: The URL's ``slave_SAE_ID``.
            available_keys: How many ``default_key_size`` keys the network
                could deliver to the pair now; reported as ``stored_key_count``,
                clamped to ``[0, max_key_count]``.

        Returns:
            The clause 6.1 status object, with exactly the standard's fields.

        Raises:
            Unauthorized: The caller is not an SAE attached to this KME.
            RequestError: ``slave_sae`` is unknown or is the caller.
        """
        self.authorize(caller_sae, slave_sae)
        limits = self._limits
        stored = min(max(int(available_keys), 0), limits.max_key_count)
        return {
            "source_KME_ID": self._kme_id,
            "target_KME_ID": self._sae_node(slave_sae),
            "master_SAE_ID": caller_sae,
            "slave_SAE_ID": slave_sae,
            "key_size": limits.default_key_size,
            "stored_key_count": stored,
            "max_key_count": limits.max_key_count,
            "max_key_per_request": limits.max_key_per_request,
            "max_key_size": limits.max_key_size,
            "min_key_size": limits.min_key_size,
            "max_SAE_ID_count": limits.max_sae_id_count,
        }

    # -- Get key (clause 5.2) -----------------------------------------------

    def enc_request(
        self, caller_sae: str, slave_sae: str, query: Mapping[str, str], body: Any | None
    ) -> EncRequest:
        """Validate an ``enc_keys`` request, before any key is touched.

        Args:
            caller_sae: The master SAE asking (from its certificate).
            slave_sae: The URL's ``slave_SAE_ID``.
            query: The URL query parameters (GET form: ``number``, ``size``).
            body: The decoded JSON body (POST form, a clause 6.2 key request
                object), or None for GET.

        Returns:
            The request to hand to the key supplier.

        Raises:
            Unauthorized: The caller is not an SAE attached to this KME.
            UnsupportedExtension: ``extension_mandatory`` is not empty (and
                nothing else is wrong).
            RequestError: Anything else wrong; ``details`` lists every problem.
        """
        self._require_local_sae(caller_sae)
        limits = self._limits
        problems = _Problems()
        self._check_slave(caller_sae, slave_sae, "slave_SAE_ID", problems)
        number: object = 1
        size: object = limits.default_key_size
        additional: object = []
        unsupported: list[str] = []

        if body is None:
            _reject_unknown(query, _ENC_QUERY_FIELDS, "query parameter", problems)
            if "number" in query:
                number = _query_int(query["number"], "number", problems)
            if "size" in query:
                size = _query_int(query["size"], "size", problems)
        elif not isinstance(body, dict):
            problems.add(f"the key request body must be a JSON object, got {_json_type(body)}")
        else:
            if query:
                problems.add(
                    "query parameters are not used with POST; put them in the JSON body: "
                    + ", ".join(sorted(_show(name) for name in query))
                )
            _reject_unknown(body, _KEY_REQUEST_FIELDS, "field", problems)
            number = body.get("number", number)
            size = body.get("size", size)
            additional = body.get("additional_slave_SAE_IDs", additional)
            unsupported = _extension_names(body.get("extension_mandatory", []), "extension_mandatory", problems)
            _extension_names(body.get("extension_optional", []), "extension_optional", problems)

        number_ok = _as_int(number, "number", problems)
        if number_ok is not None and not 1 <= number_ok <= limits.max_key_per_request:
            problems.add(f"number must be between 1 and {limits.max_key_per_request}, got {number_ok}")
        size_ok = _as_int(size, "size", problems)
        if size_ok is not None:
            if not limits.min_key_size <= size_ok <= limits.max_key_size:
                problems.add(
                    f"size must be between {limits.min_key_size} and {limits.max_key_size} bits, got {size_ok}"
                )
            elif size_ok % 8:
                problems.add(f"size must be a multiple of 8 bits, got {size_ok}")

        slaves = [slave_sae]
        if not isinstance(additional, list):
            problems.add(f"additional_slave_SAE_IDs must be an array of SAE IDs, got {_json_type(additional)}")
        else:
            if len(additional) > limits.max_sae_id_count:
                problems.add(
                    f"additional_slave_SAE_IDs may name at most {limits.max_sae_id_count} SAE(s), "
                    f"got {len(additional)}"
                )
            for i, sae in enumerate(additional[: limits.max_sae_id_count + 1]):
                where = f"additional_slave_SAE_IDs[{i}]"
                if not isinstance(sae, str):
                    problems.add(f"{where} must be an SAE ID string, got {_json_type(sae)}")
                elif sae in slaves:
                    problems.add(f"{where}: SAE {_show(sae)} is named twice")
                else:
                    self._check_slave(caller_sae, sae, where, problems)
                    slaves.append(sae)

        if unsupported and not problems.items:
            raise UnsupportedExtension(unsupported)
        problems.raise_if_any("key request")
        if number_ok is None or size_ok is None:  # unreachable: reported above
            raise LocalProtocolError("key request validation let a bad number or size through")
        return EncRequest(master_sae=caller_sae, slave_saes=tuple(slaves), number=number_ok, size_bits=size_ok)

    def enc_response(self, keys: Sequence[DeliveredKey], request: EncRequest | None = None) -> dict[str, Any]:
        """The clause 6.3 key container for keys a supplier delivered.

        Args:
            keys: The delivered keys, in order.
            request: If given, the request they answer: their count and sizes
                are checked against it.

        Returns:
            ``{"keys": [{"key_ID": ..., "key": base64}, ...]}``.

        Raises:
            LocalProtocolError: The keys do not match ``request`` (a supplier
                bug; the adapter answers 503 "internal error").
        """
        if request is not None:
            if len(keys) != request.number:
                raise LocalProtocolError(f"supplier delivered {len(keys)} key(s), {request.number} were requested")
            wrong = [k.key_id for k in keys if len(k.key) * 8 != request.size_bits]
            if wrong:
                raise LocalProtocolError(
                    f"supplier delivered key(s) {', '.join(wrong)} of the wrong size ({request.size_bits} bits requested)"
                )
        container = _key_container((k.key_id, k.key) for k in keys)
        for entry, key in zip(container["keys"], keys):
            if key.paths:
                entry["key_ID_extension"] = {"paths": [list(p) for p in key.paths]}
        return container

    # -- Get key with key IDs (clause 5.3) ----------------------------------

    def dec_keys(
        self, caller_sae: str, master_sae: str, query: Mapping[str, str], body: Any | None
    ) -> dict[str, Any]:
        """Redeem keys by ID for a slave SAE: all or none, each once.

        Args:
            caller_sae: The slave SAE asking (from its certificate).
            master_sae: The URL's ``master_SAE_ID``.
            query: The URL query parameters (GET form: one ``key_ID``).
            body: The decoded JSON body (POST form, a clause 6.4 key IDs
                object), or None for GET.

        Returns:
            The clause 6.3 key container, keys in request order.

        Raises:
            Unauthorized: The caller is not an SAE attached to this KME, or a
                key is not meant for it (nothing is consumed).
            KeyNotFound: A key is unknown or already redeemed by the caller
                (nothing is consumed).
            RequestError: The request is malformed; ``details`` lists every problem.
            StorageFailure: The redemption cannot be recorded (full or
                unwritable disk): no key is handed out and every key stays
                (answered 503).
            KeyStoreError: The store failed otherwise (answered 503).
        """
        self._require_local_sae(caller_sae)
        problems = _Problems()
        if self._sae_node(master_sae) is None:
            problems.add(f"master_SAE_ID {_show(master_sae)} is not a known SAE")
        elif master_sae == caller_sae:
            problems.add("master_SAE_ID is the caller itself")

        raw_ids: list[tuple[str, object]] = []
        if body is None:
            _reject_unknown(query, _DEC_QUERY_FIELDS, "query parameter", problems)
            if "key_ID" not in query:
                problems.add("key_ID query parameter is required")
            else:
                raw_ids.append(("key_ID", query["key_ID"]))
        elif not isinstance(body, dict):
            problems.add(f"the key IDs body must be a JSON object, got {_json_type(body)}")
        else:
            if query:
                problems.add(
                    "query parameters are not used with POST; put them in the JSON body: "
                    + ", ".join(sorted(_show(name) for name in query))
                )
            _reject_unknown(body, _KEY_IDS_FIELDS, "field", problems)
            if "key_IDs_extension" in body and not isinstance(body["key_IDs_extension"], dict):
                problems.add(f"key_IDs_extension must be an object, got {_json_type(body['key_IDs_extension'])}")
            entries = body.get("key_IDs")
            if entries is None and "key_IDs" not in body:
                problems.add("key_IDs is required")
            elif not isinstance(entries, list):
                problems.add(f"key_IDs must be an array of objects, got {_json_type(entries)}")
            else:
                for i, entry in enumerate(entries[: self._limits.max_key_per_request]):
                    where = f"key_IDs[{i}]"
                    if not isinstance(entry, dict):
                        problems.add(f"{where} must be an object with a key_ID, got {_json_type(entry)}")
                        continue
                    _reject_unknown(entry, _KEY_ID_FIELDS, "field", problems, f" in {where}")
                    if "key_ID_extension" in entry and not isinstance(entry["key_ID_extension"], dict):
                        problems.add(
                            f"{where}.key_ID_extension must be an object, got {_json_type(entry['key_ID_extension'])}"
                        )
                    if "key_ID" not in entry:
                        problems.add(f"{where}.key_ID is required")
                    else:
                        raw_ids.append((f"{where}.key_ID", entry["key_ID"]))
                if not entries:
                    problems.add("key_IDs must name at least one key")
                elif len(entries) > self._limits.max_key_per_request:
                    problems.add(
                        f"key_IDs may name at most {self._limits.max_key_per_request} keys, got {len(entries)}"
                    )

        key_ids: list[str] = []
        for where, raw in raw_ids:
            if not isinstance(raw, str):
                problems.add(f"{where} must be a UUID string, got {_json_type(raw)}")
            elif not _UUID.fullmatch(raw):
                problems.add(f"{where} {_show(raw)} is not a UUID")
            elif raw.lower() in key_ids:
                problems.add(f"{where}: key_ID {raw.lower()} is named twice")
            else:
                key_ids.append(raw.lower())
        problems.raise_if_any("key IDs request")
        taken = self._store.take(caller_sae, master_sae, key_ids)
        return _key_container(taken)

    # -- errors (clause 5, 6.5) --------------------------------------------

    @staticmethod
    def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
        """The HTTP status and ETSI error object for an exception.

        Args:
            exc: What a handler raised.

        Returns:
            ``(status, {"message": ..., "details": [...]})`` with status 400,
            401 or 503. Unexpected exceptions give 503 "internal error" and
            reveal nothing of themselves.
        """
        for error_type, status in _ERROR_STATUS:  # noqa: B007 - the loop finds the status
            if isinstance(exc, error_type):
                break
        else:
            return _INTERNAL_STATUS, {"message": _INTERNAL_MESSAGE, "details": []}
        if isinstance(exc, StorageFailure):
            # The store's own message names its files: not the client's business.
            message = (
                f"the key store of this KME cannot be written ({exc.reason}): "
                "no key was handed out and waiting keys are kept; retry later"
            )
            return status, {"message": message, "details": []}
        details: list[dict[str, Any]]
        if isinstance(exc, UnsupportedExtension):
            details = [{"extension_mandatory_unsupported": name} for name in exc.names]
        elif isinstance(exc, RequestError):
            details = [{"message": text} for text in exc.details]
        else:
            details = []
        return status, {"message": str(exc) or type(exc).__name__, "details": details}

    # -- internals -----------------------------------------------------------

    def _require_local_sae(self, caller_sae: str) -> None:
        if not isinstance(caller_sae, str) or self._sae_node(caller_sae) != self._kme_id:
            raise Unauthorized(f"{_show(caller_sae)} is not an SAE attached to KME {self._kme_id!r}")

    def _check_slave(self, caller_sae: str, slave_sae: str, where: str, problems: _Problems) -> None:
        if slave_sae == caller_sae:
            problems.add(f"{where}: an SAE cannot share keys with itself ({_show(slave_sae)})")
        elif self._sae_node(slave_sae) is None:
            problems.add(f"{where}: {_show(slave_sae)} is not a known SAE")


def _key_container(pairs: Any) -> dict[str, Any]:
    return {
        "keys": [
            {"key_ID": key_id, "key": base64.b64encode(key).decode("ascii")} for key_id, key in pairs
        ]
    }


def _reject_unknown(
    fields: Mapping[str, Any], allowed: Sequence[str], what: str, problems: _Problems, where: str = ""
) -> None:
    unknown = [name for name in fields if name not in allowed]
    if unknown:
        problems.add(
            f"unknown {what}(s){where}: {', '.join(_show(name) for name in unknown[:_MAX_DETAILS])}; "
            f"allowed: {', '.join(allowed)}"
        )


def _query_int(text: str, name: str, problems: _Problems) -> object:
    """A query parameter as an int, or ``_REPORTED`` after reporting why it is not one."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        problems.add(f"{name} must be a non-negative decimal integer, got {_show(text)}")
        return _REPORTED
    if len(text.lstrip("0")) > _MAX_DECIMAL_DIGITS:
        return 10**_MAX_DECIMAL_DIGITS  # out of every range; reported as such
    return int(text)


def _as_int(value: object, name: str, problems: _Problems) -> int | None:
    """``value`` if it is a JSON integer (a bool is not); else None, reported."""
    if value is _REPORTED:
        return None
    if type(value) is not int:
        shown = "" if value is None or isinstance(value, (list, dict)) else f" {_show(value)}"
        problems.add(f"{name} must be an integer, got {_json_type(value)}{shown}")
        return None
    return value


def _extension_names(value: object, name: str, problems: _Problems) -> list[str]:
    """The extension names in an ``extension_*`` array (clause 6.2: objects of name/value pairs)."""
    if not isinstance(value, list):
        problems.add(f"{name} must be an array of objects, got {_json_type(value)}")
        return []
    names: list[str] = []
    for i, entry in enumerate(value[:_MAX_DETAILS]):
        if not isinstance(entry, dict):
            problems.add(f"{name}[{i}] must be an object, got {_json_type(entry)}")
        else:
            if not entry:
                problems.add(f"{name}[{i}] names no extension")
            names.extend(entry)
    if len(value) > _MAX_DETAILS:
        problems.add(f"{name} has {len(value)} entries; at most {_MAX_DETAILS} are accepted")
    return names


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
