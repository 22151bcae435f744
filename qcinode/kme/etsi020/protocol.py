"""The bodies of ETSI GS QKD 020 V1.1.1: parsed strictly into dataclasses, built from them (pure).

Theory of operation:
    * **Three calls and a version query.** ``POST /kmapi/v1/ext_keys`` hands
      keys (ID and base64 value) for an initiator SAE and its target SAEs to
      the KME of another network; ``POST /kmapi/v1/ext_keys/ack`` reports,
      per key, ``relayed``, ``failed``, ``voided``, ``failed to void`` or
      ``key not present``; ``POST /kmapi/v1/ext_keys/void`` asks for keys to
      be discarded; ``GET /kmapi/versions`` lists ``v1`` and the
      capabilities. A body is parsed here into :class:`ExtKeysRequest`,
      :class:`AckContainer` or :class:`VoidRequest`, or refused with a
      :class:`Problem`.
    * **Problems** are RFC 9457 objects (``type``, ``status``, ``title``,
      ``details`` — a map of strings), with the problem types of the
      standard's examples (``…/missing-parameters``, ``…/key-routing-error``,
      ``…/insufficient-key-material``, ``…/unsupported-mandatory-extension``…).
      A 400 or a 401 means the KME kept no association with any key of the
      request (the standard's rule): every check that can refuse that way
      runs before anything is remembered.
    * **Strict, but what the schema says.** Unknown top-level fields are
      refused (400) so that a misspelt ``ack_callback_url`` cannot silently
      turn an asynchronous request into a synchronous one; SAE IDs are 1 to
      64 characters of URI characters; key IDs are UUIDs (normalised to
      lower case); values are base64 whose padding is never key material;
      extension names carry a vendor prefix ``E<PEN>_`` and ETSI's PEN 13019
      is reserved. ``extension_mandatory`` names extensions this KME does not
      implement (it implements none): 503 ``unsupported_mandatory_extension``;
      ``extension_optional`` is accepted and kept unchanged.
    * **No key material** in a :class:`Problem`, a repr or a log field; the
      key bytes of :class:`ExtKey` are kept out of its repr.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "API_VERSION",
    "CAPABILITIES",
    "AckContainer",
    "AckStatus",
    "ExtKey",
    "ExtKeysRequest",
    "MAX_KEYS_PER_REQUEST",
    "Problem",
    "VoidRequest",
    "ack_containers_body",
    "ext_keys_body",
    "group_acks",
    "parse_acks",
    "parse_ext_keys",
    "parse_void",
    "versions_body",
    "void_body",
]

API_VERSION = "v1"
#: What ``GET /kmapi/versions`` reports: this KME also answers without ``ack_callback_url``.
CAPABILITIES = ("synchronous_mode",)
#: Most keys one ``ext_keys``/``void`` call may carry here (the schema caps arrays at 1024).
MAX_KEYS_PER_REQUEST = 1024
#: Key sizes this KME relays (bytes): ETSI 014's 64..8192 bits.
MIN_KEY_BYTES, MAX_KEY_BYTES = 8, 1024
_PROBLEM_BASE = "https://qkd.etsi.org/gs020-interop-kms/"
_MAX_SAE_ID = 64
# RFC 3986 unreserved, gen-delims, sub-delims and pct-encoded (the standard's "SAE IDs" clause).
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_EXTENSION_NAME = re.compile(r"E([0-9]+)_.+")
_ETSI_PEN = "13019"
_HTTPS_URL = re.compile(r"https://[^\s/?#]+(/[^\s]*)?")
_TOP_LEVEL = {
    "ext_keys": ("keys", "initiator_sae_id", "target_sae_ids", "ack_callback_url", "extension_mandatory", "extension_optional"),
    "void": ("key_ids", "initiator_sae_id", "target_sae_ids", "ack_callback_url", "extension", "all_confirmation"),
    "ack": ("key_id_container", "ack_status", "initiator_sae_id", "target_sae_ids", "message", "extension"),
}


class AckStatus(enum.Enum):
    """The ``ack_status`` values (the standard allows no other)."""

    RELAYED = "relayed"
    FAILED = "failed"
    VOIDED = "voided"
    FAILED_TO_VOID = "failed to void"
    KEY_NOT_PRESENT = "key not present"


class Problem(Exception):
    """An answer other than success, as an RFC 9457 problem object. Expected.

    Attributes:
        status: The HTTP status (400, 401, 408 or 503).
        kind: The last segment of the problem ``type`` URI (``missing-parameters``).
        title: A short summary.
        details: Name/message pairs, at least one.
    """

    def __init__(self, status: int, kind: str, title: str, details: Mapping[str, str]) -> None:
        if not details:
            raise ValueError("a problem needs at least one detail")
        super().__init__(f"{status} {title}: " + "; ".join(f"{k}: {v}" for k, v in details.items()))
        self.status = status
        self.kind = kind
        self.title = title
        self.details = dict(details)

    def body(self) -> dict[str, Any]:
        """The JSON object (``problem_details``)."""
        return {"type": _PROBLEM_BASE + self.kind, "status": self.status, "title": self.title, "details": dict(self.details)}

    @classmethod
    def bad_request(cls, details: Mapping[str, str], kind: str = "invalid-parameter", title: str = "invalid parameter") -> Problem:
        return cls(400, kind, title, details)

    @classmethod
    def routing(cls, status: int, name: str, message: str) -> Problem:
        return cls(status, "key-routing-error", "key routing error", {name: message})

    @classmethod
    def server_error(cls, message: str) -> Problem:
        return cls(503, "server-side-general-error", "server side general error", {"server_side_general_error": message})


@dataclass(frozen=True, slots=True)
class ExtKey:
    """One key of an ``ext_keys`` request. The bytes stay out of the repr."""

    key_id: str
    value: bytes = field(repr=False)
    extension: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExtKeysRequest:
    """A parsed ``ext_key_container``.

    Attributes:
        keys: The keys, in request order (distinct IDs).
        initiator_sae_id: The SAE that asked for the keys (in the other network).
        target_sae_ids: The SAEs that may redeem them (at least one, distinct).
        ack_callback_url: Where acknowledgements go (asynchronous mode), or
            None for the synchronous mode.
        extension_optional: Passed on unchanged, never interpreted.
    """

    keys: tuple[ExtKey, ...]
    initiator_sae_id: str
    target_sae_ids: tuple[str, ...]
    ack_callback_url: str | None = None
    extension_optional: Mapping[str, Any] | None = None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self.keys)


@dataclass(frozen=True, slots=True)
class AckContainer:
    """One ``ack_container``: keys sharing a status, an initiator and targets."""

    key_ids: tuple[str, ...]
    status: AckStatus
    initiator_sae_id: str
    target_sae_ids: tuple[str, ...]
    message: str | None = None


@dataclass(frozen=True, slots=True)
class VoidRequest:
    """A parsed ``void_container``.

    Attributes:
        key_ids: The keys to void; empty only with ``all_confirmation``
            (then every key between these SAEs).
        initiator_sae_id: As in the ``ext_keys`` request the keys came with.
        target_sae_ids: As there.
        ack_callback_url: Where the outcome goes (asynchronous mode), or None (synchronous).
        all_confirmation: Voiding every key between the SAEs is intended.
    """

    key_ids: tuple[str, ...]
    initiator_sae_id: str
    target_sae_ids: tuple[str, ...]
    ack_callback_url: str | None = None
    all_confirmation: bool = False


# -- parsing ------------------------------------------------------------------


def parse_ext_keys(body: object) -> ExtKeysRequest:
    """An ``ext_key_container`` body, checked.

    Raises:
        Problem: 400 for a malformed body (every problem found is a detail),
            503 ``unsupported_mandatory_extension`` for a well-formed body
            with mandatory extensions.
    """
    obj = _object(body, "ext_keys")
    details: dict[str, str] = {}
    initiator = _sae_id(obj, "initiator_sae_id", details)
    targets = _sae_ids(obj, "target_sae_ids", details)
    callback = _callback(obj, details)
    raw_keys = obj.get("keys")
    keys: list[ExtKey] = []
    if "keys" not in obj:
        details["missing_parameters"] = "keys is required"
    elif not isinstance(raw_keys, list) or not raw_keys:
        details["malformed_keys"] = "keys must be a non-empty array of {key_id, value} objects"
    elif len(raw_keys) > MAX_KEYS_PER_REQUEST:
        details["too_many_keys"] = f"at most {MAX_KEYS_PER_REQUEST} keys per request, got {len(raw_keys)}"
    else:
        seen: set[str] = set()
        for i, entry in enumerate(raw_keys):
            key = _ext_key(entry, f"keys[{i}]", details)
            if key is None:
                continue
            if key.key_id in seen:
                details[f"keys[{i}].key_id"] = f"key_id {key.key_id} appears twice"
            seen.add(key.key_id)
            keys.append(key)
    optional = _extension(obj, "extension_optional", details)
    mandatory = _extension(obj, "extension_mandatory", details)
    _missing_or_malformed(details)
    if initiator is not None and targets is not None and initiator in targets:
        raise Problem.bad_request({"invalid_routing": "the initiator SAE is also a target"}, "key-routing-error", "key routing error")
    if mandatory:
        names = ", ".join(sorted(mandatory))[:200]
        raise Problem(
            503,
            "unsupported-mandatory-extension",
            "unsupported mandatory extension",
            {"unsupported_mandatory_extension": f"mandatory extension(s) {names} cannot be supported"},
        )
    assert initiator is not None and targets is not None
    return ExtKeysRequest(tuple(keys), initiator, targets, callback, optional)


def parse_acks(body: object) -> list[AckContainer]:
    """An ``ack_containers`` body (an array of ``ack_container``), checked.

    Raises:
        Problem: 400 ``ack-not-understood`` naming every problem found.
    """
    if not isinstance(body, list) or not body or len(body) > 1024:
        raise Problem.bad_request(
            {"ack_not_understood": "the body must be an array of 1 to 1024 ack_container objects"}, "ack-not-understood", "ack not understood"
        )
    out: list[AckContainer] = []
    details: dict[str, str] = {}
    for i, entry in enumerate(body):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            details[where] = "must be an object"
            continue
        unknown = sorted(set(entry) - set(_TOP_LEVEL["ack"]))
        if unknown:
            details[f"{where}.unknown_fields"] = ", ".join(_short(u) for u in unknown[:10])
        sub: dict[str, str] = {}
        initiator = _sae_id(entry, "initiator_sae_id", sub)
        targets = _sae_ids(entry, "target_sae_ids", sub)
        raw_status = entry.get("ack_status")
        status = next((s for s in AckStatus if s.value == raw_status), None)
        if status is None:
            sub["ack_status"] = f"must be one of {', '.join(s.value for s in AckStatus)}, got {_short(raw_status)}"
        message = entry.get("message")
        if message is not None and (not isinstance(message, str) or len(message) > 4096):
            sub["message"] = "must be a string of at most 4096 characters"
        container = entry.get("key_id_container")
        ids: list[str] = []
        if not isinstance(container, list) or not container or len(container) > 1024:
            sub["key_id_container"] = "must be an array of 1 to 1024 {key_id} objects"
        else:
            for j, item in enumerate(container):
                key_id = _uuid(item.get("key_id") if isinstance(item, dict) else None)
                if key_id is None:
                    sub[f"key_id_container[{j}]"] = "must be an object with a UUID key_id"
                else:
                    ids.append(key_id)
        for name in ("extension",):
            _extension(entry, name, sub)
        details.update({f"{where}.{k}": v for k, v in sub.items()})
        if not sub and status is not None and initiator is not None and targets is not None:
            out.append(AckContainer(tuple(ids), status, initiator, targets, message if isinstance(message, str) else None))
    if details:
        raise Problem.bad_request(_cap(details), "ack-not-understood", "ack not understood")
    return out


def parse_void(body: object) -> VoidRequest:
    """A ``void_container`` body, checked.

    Raises:
        Problem: 400 ``void-request-not-understood``; 400
            ``no-key-ids-or-confirmation`` for an empty ``key_ids`` without
            ``all_confirmation: true``.
    """
    obj = _object(body, "void", kind="void-request-not-understood", title="void request not understood")
    details: dict[str, str] = {}
    initiator = _sae_id(obj, "initiator_sae_id", details)
    targets = _sae_ids(obj, "target_sae_ids", details)
    callback = _callback(obj, details)
    raw = obj.get("key_ids")
    ids: list[str] = []
    if "key_ids" not in obj:
        details["missing_parameters"] = "key_ids is required"
    elif not isinstance(raw, list) or len(raw) > MAX_KEYS_PER_REQUEST:
        details["key_ids"] = f"must be an array of at most {MAX_KEYS_PER_REQUEST} UUIDs"
    else:
        for i, item in enumerate(raw):
            key_id = _uuid(item)
            if key_id is None:
                details[f"key_ids[{i}]"] = f"{_short(item)} is not a UUID"
            elif key_id in ids:
                details[f"key_ids[{i}]"] = f"key_id {key_id} appears twice"
            else:
                ids.append(key_id)
    confirm = obj.get("all_confirmation", False)
    if not isinstance(confirm, bool):
        details["all_confirmation"] = "must be true or false"
    _extension(obj, "extension", details)
    if details:
        raise Problem.bad_request(_cap(details), "void-request-not-understood", "void request not understood")
    if not ids and confirm is not True:
        raise Problem.bad_request(
            {"no_all_confirmation": "no key_ids were given: to void every key shared between these SAEs set all_confirmation to true, else name the keys"},
            "no-key-ids-or-confirmation",
            "no key ids or confirmation",
        )
    assert initiator is not None and targets is not None
    return VoidRequest(tuple(ids), initiator, targets, callback, bool(confirm))


# -- building ---------------------------------------------------------------------


def ext_keys_body(request: ExtKeysRequest) -> dict[str, Any]:
    """The ``ext_key_container`` for ``request`` (values base64 with standard padding)."""
    body: dict[str, Any] = {
        "keys": [_key_body(k) for k in request.keys],
        "initiator_sae_id": request.initiator_sae_id,
        "target_sae_ids": list(request.target_sae_ids),
    }
    if request.ack_callback_url is not None:
        body["ack_callback_url"] = request.ack_callback_url
    if request.extension_optional:
        body["extension_optional"] = dict(request.extension_optional)
    return body


def ack_containers_body(acks: Iterable[AckContainer]) -> list[dict[str, Any]]:
    """The ``ack_containers`` array."""
    out = []
    for ack in acks:
        entry: dict[str, Any] = {
            "key_id_container": [{"key_id": key_id} for key_id in ack.key_ids],
            "ack_status": ack.status.value,
            "initiator_sae_id": ack.initiator_sae_id,
            "target_sae_ids": list(ack.target_sae_ids),
        }
        if ack.message:
            entry["message"] = ack.message[:4096]
        out.append(entry)
    return out


def void_body(request: VoidRequest) -> dict[str, Any]:
    """The ``void_container`` for ``request``."""
    body: dict[str, Any] = {
        "key_ids": list(request.key_ids),
        "initiator_sae_id": request.initiator_sae_id,
        "target_sae_ids": list(request.target_sae_ids),
    }
    if request.ack_callback_url is not None:
        body["ack_callback_url"] = request.ack_callback_url
    if request.all_confirmation:
        body["all_confirmation"] = True
    return body


def versions_body() -> dict[str, Any]:
    """The ``version_container`` this KME answers ``GET /kmapi/versions`` with."""
    return {"versions": [API_VERSION], "capabilities": list(CAPABILITIES)}


def group_acks(results: Iterable[tuple[str, AckStatus, str | None]], initiator: str, targets: Sequence[str]) -> list[AckContainer]:
    """Per-key outcomes ``(key_id, status, message)`` grouped into containers (one per status and message)."""
    groups: dict[tuple[AckStatus, str | None], list[str]] = {}
    for key_id, status, message in results:
        groups.setdefault((status, message), []).append(key_id)
    return [AckContainer(tuple(ids), status, initiator, tuple(targets), message) for (status, message), ids in groups.items()]


# -- internals -----------------------------------------------------------------------


def _object(body: object, what: str, *, kind: str = "missing-parameters", title: str = "missing parameters") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Problem.bad_request({"malformed_body": "the body must be a JSON object"}, kind, title)
    unknown = sorted(set(body) - set(_TOP_LEVEL[what]))
    if unknown:
        raise Problem.bad_request(
            {"unknown_parameters": f"unknown field(s) {', '.join(_short(u) for u in unknown[:10])}; allowed: {', '.join(_TOP_LEVEL[what])}"}
        )
    return body


def _missing_or_malformed(details: dict[str, str]) -> None:
    if not details:
        return
    if any(k == "missing_parameters" or v.endswith("is required") for k, v in details.items()):
        raise Problem.bad_request(_cap(details), "missing-parameters", "missing parameters")
    raise Problem.bad_request(_cap(details))


def _sae_id(obj: Mapping[str, Any], name: str, details: dict[str, str]) -> str | None:
    if name not in obj:
        details.setdefault("missing_parameters", f"{name} is required")
        return None
    value = obj[name]
    problem = _sae_id_problem(value)
    if problem:
        details[name] = problem
        return None
    return str(value)


def _sae_ids(obj: Mapping[str, Any], name: str, details: dict[str, str]) -> tuple[str, ...] | None:
    if name not in obj:
        details.setdefault("missing_parameters", f"{name} is required")
        return None
    value = obj[name]
    if not isinstance(value, list) or not value or len(value) > 64:
        details[name] = "must be an array of 1 to 64 SAE IDs"
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        problem = _sae_id_problem(item)
        if problem:
            details[f"{name}[{i}]"] = problem
        elif item in out:
            details[f"{name}[{i}]"] = f"SAE {item!r} is named twice"
        else:
            out.append(item)
    return tuple(out) if len(out) == len(value) else None


def _sae_id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > _MAX_SAE_ID:
        return f"an SAE ID has at most {_MAX_SAE_ID} characters, got {len(value)}"
    if not _URI_CHARS.fullmatch(value):
        return f"{_short(value)} has characters a URI does not allow"
    return None


def _callback(obj: Mapping[str, Any], details: dict[str, str]) -> str | None:
    if "ack_callback_url" not in obj:
        return None
    value = obj["ack_callback_url"]
    if not isinstance(value, str) or len(value) > 1024 or not _HTTPS_URL.fullmatch(value):
        details["ack_callback_url"] = "must be a complete https:// URL of at most 1024 characters"
        return None
    return value


def _uuid(value: object) -> str | None:
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _ext_key(entry: object, where: str, details: dict[str, str]) -> ExtKey | None:
    if not isinstance(entry, dict):
        details[where] = "must be an object with key_id and value"
        return None
    unknown = sorted(set(entry) - {"key_id", "value", "extension"})
    if unknown:
        details[f"{where}.unknown_fields"] = ", ".join(_short(u) for u in unknown[:10])
    key_id = _uuid(entry.get("key_id"))
    if key_id is None:
        details[f"{where}.key_id"] = "must be a UUID"
    raw = entry.get("value")
    value: bytes | None = None
    if not isinstance(raw, str):
        details[f"{where}.value"] = "must be a base64 string"
    else:
        try:
            value = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            details[f"{where}.value"] = "is not valid base64"
        else:
            if not MIN_KEY_BYTES <= len(value) <= MAX_KEY_BYTES:
                details[f"{where}.value"] = f"keys of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes are relayed here, got {len(value)}"
                value = None
    extension = _extension(entry, "extension", details, where)
    if key_id is None or value is None:
        return None
    return ExtKey(key_id, value, extension)


def _extension(obj: Mapping[str, Any], name: str, details: dict[str, str], where: str = "") -> dict[str, Any] | None:
    if name not in obj:
        return None
    label = f"{where}.{name}" if where else name
    value = obj[name]
    if not isinstance(value, dict) or not 1 <= len(value) <= 1024:
        details[label] = "must be an object with 1 to 1024 properties"
        return None
    for prop in value:
        match = _EXTENSION_NAME.fullmatch(prop)
        if match is None:
            details[label] = f"{_short(prop)} lacks a vendor prefix E<PEN>_"
            return None
        if match.group(1) == _ETSI_PEN:
            details[label] = f"{_short(prop)}: ETSI's PEN {_ETSI_PEN} is reserved"
            return None
    return value


def _key_body(key: ExtKey) -> dict[str, Any]:
    entry: dict[str, Any] = {"key_id": key.key_id, "value": base64.b64encode(key.value).decode("ascii")}
    if key.extension:
        entry["extension"] = dict(key.extension)
    return entry


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cap(details: dict[str, str]) -> dict[str, str]:
    """At most 20 details, each at most 300 characters."""
    return {k[:100]: v[:300] for k, v in list(details.items())[:20]}
