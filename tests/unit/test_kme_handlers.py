"""ETSI GS QKD 014 request logic, without sockets: validation, authorisation, redemption, error bodies."""

from __future__ import annotations

import ast
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcinode.kme.handlers as handlers_module
from qcinode.errors import (
    AuthenticationFailed,
    ConfigError,
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyStoreError,
    LocalProtocolError,
    PeerTimeout,
    PeerUnavailable,
    RequestError,
    Unauthorized,
)
from qcinode.keys.keystore import SaeKeyStore
from qcinode.keys.linkstore import StorageKey
from qcinode.kme.handlers import DeliveredKey, EncRequest, Kme, KmeLimits, UnsupportedExtension

KME_ID = "alpha"
SAES = {"alice-app": "alpha", "bob-app": "alpha", "carol-app": "alpha", "dave-app": "beta", "erin-app": "beta"}
STATUS_FIELDS = {
    "source_KME_ID",
    "target_KME_ID",
    "master_SAE_ID",
    "slave_SAE_ID",
    "key_size",
    "stored_key_count",
    "max_key_count",
    "max_key_per_request",
    "max_key_size",
    "min_key_size",
    "max_SAE_ID_count",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SaeKeyStore]:
    with SaeKeyStore(tmp_path, KME_ID, StorageKey.load_or_create(tmp_path)) as s:
        yield s


@pytest.fixture
def kme(store: SaeKeyStore) -> Kme:
    return Kme(KME_ID, SAES.get, store)


def _deliver(kme: Kme, store: SaeKeyStore, request: EncRequest) -> list[DeliveredKey]:
    """What a key supplier does: make keys, store the copies of this node's slaves."""
    keys = [DeliveredKey(str(uuid.uuid4()), bytes([i + 1]) * (request.size_bits // 8)) for i in range(request.number)]
    local = [s for s in request.slave_saes if SAES[s] == KME_ID]
    for key in keys:
        store.put(key.key_id, request.master_sae, local, key.key)
    return keys


def _enc(kme: Kme, store: SaeKeyStore, slave: str = "bob-app", **body: Any) -> list[DeliveredKey]:
    return _deliver(kme, store, kme.enc_request("alice-app", slave, {}, body))


def _ids(keys: list[DeliveredKey]) -> dict[str, Any]:
    return {"key_IDs": [{"key_ID": k.key_id} for k in keys]}


def _request_error(exc: BaseException) -> tuple[str, list[dict[str, Any]]]:
    status, body = Kme.error_body(exc)
    assert status == 400
    assert set(body) == {"message", "details"}
    assert isinstance(body["message"], str) and body["message"]
    return body["message"], body["details"]


# -- status ------------------------------------------------------------------------


def test_status_has_exactly_the_standard_fields(kme: Kme) -> None:
    status = kme.status("alice-app", "dave-app", 42)
    assert set(status) == STATUS_FIELDS
    assert status == {
        "source_KME_ID": "alpha",
        "target_KME_ID": "beta",
        "master_SAE_ID": "alice-app",
        "slave_SAE_ID": "dave-app",
        "key_size": 256,
        "stored_key_count": 42,
        "max_key_count": 100_000,
        "max_key_per_request": 128,
        "max_key_size": 8192,
        "min_key_size": 64,
        "max_SAE_ID_count": 8,
    }


def test_status_clamps_stored_key_count(kme: Kme) -> None:
    assert kme.status("alice-app", "bob-app", 10**9)["stored_key_count"] == 100_000
    assert kme.status("alice-app", "bob-app", -3)["stored_key_count"] == 0
    assert kme.status("alice-app", "bob-app", 0)["target_KME_ID"] == "alpha"


@pytest.mark.parametrize("caller", ["dave-app", "alpha", "nobody", ""])
def test_only_saes_attached_to_this_kme_may_call(kme: Kme, caller: str) -> None:
    for call in (
        lambda: kme.status(caller, "bob-app", 1),
        lambda: kme.enc_request(caller, "bob-app", {}, None),
        lambda: kme.dec_keys(caller, "alice-app", {"key_ID": str(uuid.uuid4())}, None),
    ):
        with pytest.raises(Unauthorized) as info:
            call()
        assert Kme.error_body(info.value)[0] == 401


@pytest.mark.parametrize(("slave", "fragment"), [("nobody", "not a known SAE"), ("alice-app", "itself")])
def test_status_for_a_bad_slave_is_400(kme: Kme, slave: str, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        kme.status("alice-app", slave, 1)
    message, details = _request_error(info.value)
    assert fragment in message and details


# -- enc_keys: accepted forms ----------------------------------------------------------


def test_get_form_defaults_and_parameters(kme: Kme) -> None:
    assert kme.enc_request("alice-app", "bob-app", {}, None) == EncRequest("alice-app", ("bob-app",), 1, 256)
    got = kme.enc_request("alice-app", "dave-app", {"number": "3", "size": "0512"}, None)
    assert got == EncRequest("alice-app", ("dave-app",), 3, 512)


def test_post_form_with_every_field(kme: Kme) -> None:
    body = {
        "number": 128,
        "size": 8192,
        "additional_slave_SAE_IDs": ["dave-app", "carol-app"],
        "extension_mandatory": [],
        "extension_optional": [{"abc_max_age": 30000}],
    }
    assert kme.enc_request("alice-app", "bob-app", {}, body) == EncRequest(
        "alice-app", ("bob-app", "dave-app", "carol-app"), 128, 8192
    )
    assert kme.enc_request("alice-app", "bob-app", {}, {}) == EncRequest("alice-app", ("bob-app",), 1, 256)


# -- enc_keys: every validation case -----------------------------------------------------

GET_CASES = [
    ({"number": "0"}, "number must be between 1 and 128"),
    ({"number": "129"}, "number must be between 1 and 128"),
    ({"number": "-1"}, "number must be a non-negative decimal integer"),
    ({"number": "abc"}, "number must be a non-negative decimal integer"),
    ({"number": "1.5"}, "number must be a non-negative decimal integer"),
    ({"number": " 1"}, "number must be a non-negative decimal integer"),
    ({"number": ""}, "number must be a non-negative decimal integer"),
    ({"number": "\u0661"}, "number must be a non-negative decimal integer"),  # an Arabic-Indic digit
    ({"number": "9" * 5000}, "number must be between 1 and 128"),
    ({"size": "56"}, "size must be between 64 and 8192"),
    ({"size": "8200"}, "size must be between 64 and 8192"),
    ({"size": "100"}, "size must be a multiple of 8"),
    ({"size": "0x100"}, "size must be a non-negative decimal integer"),
    ({"count": "1"}, "unknown query parameter(s): 'count'"),
]


@pytest.mark.parametrize(("query", "fragment"), GET_CASES)
def test_get_validation(kme: Kme, query: dict[str, str], fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        kme.enc_request("alice-app", "bob-app", query, None)
    message, details = _request_error(info.value)
    assert fragment in message
    assert any(fragment in d["message"] for d in details)


POST_CASES: list[tuple[Any, str]] = [
    ([], "body must be a JSON object, got array"),
    ("x", "body must be a JSON object, got string"),
    (3, "body must be a JSON object, got integer"),
    ({"number": "1"}, "number must be an integer, got string"),
    ({"number": True}, "number must be an integer, got boolean"),
    ({"number": 1.0}, "number must be an integer, got number"),
    ({"number": None}, "number must be an integer, got null"),
    ({"number": [1]}, "number must be an integer, got array"),
    ({"number": -1}, "number must be between 1 and 128, got -1"),
    ({"number": 0}, "number must be between 1 and 128, got 0"),
    ({"number": 129}, "number must be between 1 and 128, got 129"),
    ({"size": "256"}, "size must be an integer, got string"),
    ({"size": False}, "size must be an integer, got boolean"),
    ({"size": 256.5}, "size must be an integer, got number"),
    ({"size": -256}, "size must be between 64 and 8192 bits, got -256"),
    ({"size": 100}, "size must be a multiple of 8 bits, got 100"),
    ({"size": 8200}, "size must be between 64 and 8192 bits, got 8200"),
    ({"additional_slave_SAE_IDs": "carol-app"}, "additional_slave_SAE_IDs must be an array"),
    ({"additional_slave_SAE_IDs": [1]}, "additional_slave_SAE_IDs[0] must be an SAE ID string, got integer"),
    ({"additional_slave_SAE_IDs": ["zed"]}, "additional_slave_SAE_IDs[0]: 'zed' is not a known SAE"),
    ({"additional_slave_SAE_IDs": ["alice-app"]}, "additional_slave_SAE_IDs[0]: an SAE cannot share keys with itself"),
    ({"additional_slave_SAE_IDs": ["bob-app"]}, "additional_slave_SAE_IDs[0]: SAE 'bob-app' is named twice"),
    ({"additional_slave_SAE_IDs": ["carol-app", "carol-app"]}, "additional_slave_SAE_IDs[1]: SAE 'carol-app' is named twice"),
    ({"additional_slave_SAE_IDs": [f"s{i}" for i in range(9)]}, "may name at most 8 SAE(s), got 9"),
    ({"numbr": 1}, "unknown field(s): 'numbr'"),
    ({"extension_mandatory": "abc"}, "extension_mandatory must be an array of objects, got string"),
    ({"extension_mandatory": ["abc"]}, "extension_mandatory[0] must be an object, got string"),
    ({"extension_mandatory": [{}]}, "extension_mandatory[0] names no extension"),
    ({"extension_optional": {"a": 1}}, "extension_optional must be an array of objects, got object"),
]


@pytest.mark.parametrize(("body", "fragment"), POST_CASES)
def test_post_validation(kme: Kme, body: Any, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        kme.enc_request("alice-app", "bob-app", {}, body)
    assert not isinstance(info.value, UnsupportedExtension)
    message, details = _request_error(info.value)
    assert fragment in message
    assert [d for d in details if fragment in d["message"]]


@pytest.mark.parametrize(("slave", "fragment"), [("zed", "'zed' is not a known SAE"), ("alice-app", "itself")])
def test_bad_path_slave(kme: Kme, slave: str, fragment: str) -> None:
    bodies: tuple[dict[str, Any] | None, ...] = (None, {})
    for body in bodies:
        with pytest.raises(RequestError, match=fragment):
            kme.enc_request("alice-app", slave, {}, body)


def test_query_parameters_with_post_are_refused(kme: Kme) -> None:
    with pytest.raises(RequestError, match="query parameters are not used with POST"):
        kme.enc_request("alice-app", "bob-app", {"number": "2"}, {"number": 2})


def test_every_problem_is_listed(kme: Kme) -> None:
    body = {"number": "2", "size": 7, "extra": 1, "additional_slave_SAE_IDs": ["zed"]}
    with pytest.raises(RequestError) as info:
        kme.enc_request("alice-app", "bob-app", {}, body)
    message, details = _request_error(info.value)
    assert message.startswith("unknown field(s): 'extra'") and "(and 3 more problem(s)" in message
    assert len(details) == 4 and all(set(d) == {"message"} for d in details)


def test_mandatory_extensions_are_refused_naming_them(kme: Kme) -> None:
    body = {"extension_mandatory": [{"abc_route_type": "direct"}, {"abc_transfer_method": "qkd"}]}
    with pytest.raises(UnsupportedExtension) as info:
        kme.enc_request("alice-app", "bob-app", {}, body)
    status, error = Kme.error_body(info.value)
    assert status == 400
    assert error == {
        "message": "not all extension_mandatory parameters are supported",
        "details": [
            {"extension_mandatory_unsupported": "abc_route_type"},
            {"extension_mandatory_unsupported": "abc_transfer_method"},
        ],
    }


def test_custom_limits_apply(store: SaeKeyStore) -> None:
    kme = Kme(KME_ID, SAES.get, store, KmeLimits(max_key_per_request=2, max_sae_id_count=0, min_key_size=128))
    with pytest.raises(RequestError, match="between 1 and 2"):
        kme.enc_request("alice-app", "bob-app", {"number": "3"}, None)
    with pytest.raises(RequestError, match="at most 0"):
        kme.enc_request("alice-app", "bob-app", {}, {"additional_slave_SAE_IDs": ["carol-app"]})
    with pytest.raises(RequestError, match="between 128 and 8192"):
        kme.enc_request("alice-app", "bob-app", {}, {"size": 64})
    assert kme.status("alice-app", "bob-app", 5)["max_SAE_ID_count"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_key_per_request": 0},
        {"default_key_size": 100},
        {"min_key_size": 512},
        {"max_key_size": 128},
        {"max_sae_id_count": -1},
        {"max_key_count": True},
    ],
)
def test_impossible_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        KmeLimits(**kwargs)


# -- enc_keys response ----------------------------------------------------------------


def test_enc_response_is_a_key_container_with_padded_standard_base64(kme: Kme) -> None:
    keys = [DeliveredKey(str(uuid.uuid4()), b"\xfb\xff\xfe" + bytes(2)), DeliveredKey(str(uuid.uuid4()), b"\x00" * 32)]
    container = kme.enc_response(keys)
    assert container == {
        "keys": [
            {"key_ID": keys[0].key_id, "key": "+//+AAA="},
            {"key_ID": keys[1].key_id, "key": base64.b64encode(bytes(32)).decode()},
        ]
    }


def test_enc_response_checks_what_the_supplier_delivered(kme: Kme) -> None:
    request = EncRequest("alice-app", ("bob-app",), 2, 256)
    good = [DeliveredKey(str(uuid.uuid4()), bytes(32)) for _ in range(2)]
    assert len(kme.enc_response(good, request)["keys"]) == 2
    with pytest.raises(LocalProtocolError, match="delivered 1 key"):
        kme.enc_response(good[:1], request)
    with pytest.raises(LocalProtocolError, match="wrong size"):
        kme.enc_response([good[0], DeliveredKey(good[1].key_id, bytes(16))], request)
    assert Kme.error_body(LocalProtocolError("x")) == (503, {"message": "internal error", "details": []})


def test_delivered_key_repr_hides_the_key() -> None:
    key = DeliveredKey("id", b"\x01secret-bytes")
    assert "secret" not in repr(key) and "id" in repr(key)


# -- dec_keys ------------------------------------------------------------------------


def test_get_and_post_forms_return_the_masters_keys(kme: Kme, store: SaeKeyStore) -> None:
    keys = _enc(kme, store, number=3, size=128)
    got = kme.dec_keys("bob-app", "alice-app", {"key_ID": keys[1].key_id}, None)
    assert got == kme.enc_response([keys[1]])
    got = kme.dec_keys("bob-app", "alice-app", {}, {"key_IDs": [{"key_ID": keys[2].key_id.upper()}, {"key_ID": keys[0].key_id}]})
    assert got == kme.enc_response([keys[2], keys[0]])
    assert store.total() == 0


def test_wrong_sae_gets_401_and_the_key_stays_for_the_right_one(kme: Kme, store: SaeKeyStore) -> None:
    keys = _enc(kme, store)
    with pytest.raises(Unauthorized) as info:
        kme.dec_keys("carol-app", "alice-app", {}, _ids(keys))
    assert Kme.error_body(info.value)[0] == 401
    with pytest.raises(Unauthorized):
        kme.dec_keys("bob-app", "carol-app", {}, _ids(keys))  # right slave, wrong master
    assert kme.dec_keys("bob-app", "alice-app", {}, _ids(keys)) == kme.enc_response(keys)


def test_unknown_key_id_is_400(kme: Kme) -> None:
    with pytest.raises(KeyNotFound) as info:
        kme.dec_keys("bob-app", "alice-app", {"key_ID": str(uuid.uuid4())}, None)
    status, body = Kme.error_body(info.value)
    assert status == 400 and "unknown key_ID" in body["message"]


def test_second_redemption_is_400(kme: Kme, store: SaeKeyStore) -> None:
    keys = _enc(kme, store)
    kme.dec_keys("bob-app", "alice-app", {}, _ids(keys))
    with pytest.raises(KeyNotFound) as info:
        kme.dec_keys("bob-app", "alice-app", {}, _ids(keys))
    assert Kme.error_body(info.value)[0] == 400


def test_multi_slave_keys_are_redeemable_once_by_each_slave(kme: Kme, store: SaeKeyStore) -> None:
    keys = _enc(kme, store, number=2, additional_slave_SAE_IDs=["carol-app", "dave-app"])
    assert store.count("alice-app", "bob-app") == store.count("alice-app", "carol-app") == 2
    assert store.count("alice-app", "dave-app") == 0  # dave's copy lives at beta
    for slave in ("bob-app", "carol-app"):
        assert kme.dec_keys(slave, "alice-app", {}, _ids(keys)) == kme.enc_response(keys)
        with pytest.raises(KeyNotFound):
            kme.dec_keys(slave, "alice-app", {}, _ids(keys))
    assert store.total() == 0


DEC_CASES: list[tuple[dict[str, str], Any, str]] = [
    ({}, None, "key_ID query parameter is required"),
    ({"key_ID": "not-a-uuid"}, None, "key_ID 'not-a-uuid' is not a UUID"),
    ({"key_ID": "{" + str(uuid.UUID(int=1)) + "}"}, None, "is not a UUID"),
    ({"key_ID": uuid.UUID(int=1).hex}, None, "is not a UUID"),
    ({"key_ID": str(uuid.UUID(int=1)), "x": "1"}, None, "unknown query parameter(s): 'x'"),
    ({}, [], "body must be a JSON object, got array"),
    ({}, {}, "key_IDs is required"),
    ({}, {"key_IDs": None}, "key_IDs must be an array of objects, got null"),
    ({}, {"key_IDs": []}, "key_IDs must name at least one key"),
    ({}, {"key_IDs": ["abc"]}, "key_IDs[0] must be an object with a key_ID, got string"),
    ({}, {"key_IDs": [{}]}, "key_IDs[0].key_ID is required"),
    ({}, {"key_IDs": [{"key_ID": 5}]}, "key_IDs[0].key_ID must be a UUID string, got integer"),
    ({}, {"key_IDs": [{"key_ID": "abc"}]}, "key_IDs[0].key_ID 'abc' is not a UUID"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1)), "k": 1}]}, "unknown field(s) in key_IDs[0]: 'k'"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1)), "key_ID_extension": 1}]}, "key_ID_extension must be an object"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1))}], "key_IDs_extension": []}, "key_IDs_extension must be an object"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1))}], "ids": []}, "unknown field(s): 'ids'"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1))}, {"key_ID": str(uuid.UUID(int=1)).upper()}]}, "is named twice"),
    ({}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=i + 1))} for i in range(129)]}, "at most 128 keys, got 129"),
    ({"key_ID": str(uuid.UUID(int=1))}, {"key_IDs": [{"key_ID": str(uuid.UUID(int=1))}]}, "not used with POST"),
]


@pytest.mark.parametrize(("query", "body", "fragment"), DEC_CASES)
def test_dec_keys_validation(kme: Kme, store: SaeKeyStore, query: dict[str, str], body: Any, fragment: str) -> None:
    keys = _enc(kme, store)
    with pytest.raises(RequestError) as info:
        kme.dec_keys("bob-app", "alice-app", query, body)
    message, details = _request_error(info.value)
    assert fragment in message and details
    assert store.count("alice-app", "bob-app") == 1  # nothing consumed
    assert kme.dec_keys("bob-app", "alice-app", {"key_ID": keys[0].key_id}, None) == kme.enc_response(keys)


def test_extensions_in_key_ids_are_accepted_and_ignored(kme: Kme, store: SaeKeyStore) -> None:
    keys = _enc(kme, store)
    body = {"key_IDs": [{"key_ID": keys[0].key_id, "key_ID_extension": {"x": 1}}], "key_IDs_extension": {"y": 2}}
    assert kme.dec_keys("bob-app", "alice-app", {}, body) == kme.enc_response(keys)


@pytest.mark.parametrize(("master", "fragment"), [("zed", "not a known SAE"), ("bob-app", "caller itself")])
def test_dec_keys_bad_master(kme: Kme, master: str, fragment: str) -> None:
    with pytest.raises(RequestError, match=fragment):
        kme.dec_keys("bob-app", master, {"key_ID": str(uuid.uuid4())}, None)


# -- error bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RequestError("bad", ["one", "two"]), 400),
        (KeyNotFound("gone"), 400),
        (Unauthorized("no"), 401),
        (InsufficientKeyMaterial("dry"), 503),
        (PeerUnavailable("down"), 503),
        (PeerTimeout("slow"), 503),
    ],
)
def test_error_table(exc: Exception, status: int) -> None:
    got_status, body = Kme.error_body(exc)
    assert got_status == status and body["message"] == str(exc)
    expected = [{"message": d} for d in exc.details] if isinstance(exc, RequestError) else []
    assert body["details"] == expected


@pytest.mark.parametrize("exc", [KeyStoreError("/data/sae_keys.sqlite3 full"), AuthenticationFailed("x"), ValueError("secret"), KeyError()])
def test_unexpected_errors_are_503_and_reveal_nothing(exc: Exception) -> None:
    assert Kme.error_body(exc) == (503, {"message": "internal error", "details": []})


# -- fuzz ----------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
_uuid_text = st.uuids().map(str)
_sae = st.sampled_from([*SAES, "alpha", "zed", ""]) | st.text(max_size=10)
_enc_body = st.fixed_dictionaries(
    {},
    optional={
        "number": _json | st.integers(-5, 200),
        "size": _json | st.integers(-8, 9000),
        "additional_slave_SAE_IDs": _json | st.lists(_sae, max_size=10),
        "extension_mandatory": _json | st.lists(st.dictionaries(st.text(max_size=8), _json, max_size=2), max_size=2),
        "extension_optional": _json,
    },
) | _json
_dec_body = st.fixed_dictionaries(
    {},
    optional={
        "key_IDs": _json
        | st.lists(st.fixed_dictionaries({"key_ID": _uuid_text | _json}, optional={"key_ID_extension": _json}), max_size=5),
        "key_IDs_extension": _json,
    },
) | _json
_query = st.dictionaries(st.sampled_from(["number", "size", "key_ID", "x"]) | st.text(max_size=6), st.text(max_size=12), max_size=3)
_EXPECTED = (RequestError, Unauthorized, KeyNotFound)
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(caller=_sae, slave=_sae, query=_query, body=st.none() | _enc_body)
def test_fuzz_enc_request_raises_only_request_errors(kme: Kme, caller: str, slave: str, query: dict[str, str], body: Any) -> None:
    try:
        request = kme.enc_request(caller, slave, query, body)
    except _EXPECTED as exc:
        status, error = Kme.error_body(exc)
        assert status in (400, 401) and error["message"]
    else:
        assert 1 <= request.number <= 128 and request.size_bits % 8 == 0
        assert request.master_sae == caller and caller not in request.slave_saes
        assert all(SAES.get(s) for s in request.slave_saes)


@_FUZZ
@given(caller=_sae, master=_sae, query=_query, body=st.none() | _dec_body)
def test_fuzz_dec_keys_raises_only_request_errors(kme: Kme, caller: str, master: str, query: dict[str, str], body: Any) -> None:
    try:
        kme.dec_keys(caller, master, query, body)
    except _EXPECTED as exc:
        status, error = Kme.error_body(exc)
        assert status in (400, 401) and error["message"]
    else:
        pytest.fail("no key was stored, so nothing can be redeemed")


# -- layering ---------------------------------------------------------------------------


def test_handlers_are_pure() -> None:
    tree = ast.parse(Path(handlers_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"aiohttp", "asyncio", "socket", "ssl", "structlog", "logging"}
