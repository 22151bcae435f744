"""ETSI GS QKD 020 bodies: what this KME sends validates against ETSI's OpenAPI; what it receives is checked strictly."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from qcinode.kme.etsi020 import OPENAPI_PATH
from qcinode.kme.etsi020.protocol import (
    AckContainer,
    AckStatus,
    ExtKey,
    ExtKeysRequest,
    Problem,
    VoidRequest,
    ack_containers_body,
    ext_keys_body,
    group_acks,
    parse_acks,
    parse_ext_keys,
    parse_void,
    versions_body,
    void_body,
)
from tests.etsi020_openapi import OpenApi

K1, K2 = "550e8400-e29b-41d4-a716-446655440000", "373b0b2c-d841-4765-af6f-c6232cda6531"
CALLBACK = "https://127.0.0.1:8020/kmapi/v1/ext_keys/ack"


@pytest.fixture(scope="module")
def openapi() -> OpenApi:
    return OpenApi()


def container(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "keys": [{"key_id": K1, "value": base64.b64encode(bytes(range(32))).decode()}],
        "initiator_sae_id": "alpha-app",
        "target_sae_ids": ["beta-app"],
        "ack_callback_url": CALLBACK,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def test_the_vendored_openapi_is_etsis_unchanged_file() -> None:
    text = OPENAPI_PATH.read_text()
    assert text.startswith("# Copyright 2026 ETSI\n# Licensed under the BSD-3 Clause")
    assert len(text) == 79247
    assert hashlib.sha256(text.encode()).hexdigest() == "300ce31c46452acda4c17542c4e124ec023e975a74ac4f1ddd8cd9f4e71951c6"


def test_every_body_this_kme_builds_validates_against_the_openapi(openapi: OpenApi) -> None:
    request = ExtKeysRequest((ExtKey(K1, bytes(32)), ExtKey(K2, bytes(range(64)))), "alpha-app", ("beta-app", "beta-2"), CALLBACK, {"E99999_note": "kept"})
    assert openapi.schema_errors("ext_key_container", ext_keys_body(request)) == []
    sync = ExtKeysRequest((ExtKey(K1, bytes(8)),), "alpha-app", ("beta-app",))
    assert "ack_callback_url" not in ext_keys_body(sync) and openapi.schema_errors("ext_key_container", ext_keys_body(sync)) == []
    acks = group_acks([(K1, AckStatus.RELAYED, None), (K2, AckStatus.FAILED, "no path")], "alpha-app", ["beta-app"])
    assert openapi.schema_errors("ack_containers", ack_containers_body(acks)) == []
    assert [a.status for a in acks] == [AckStatus.RELAYED, AckStatus.FAILED]
    assert openapi.schema_errors("void_container", void_body(VoidRequest((K1,), "alpha-app", ("beta-app",), CALLBACK))) == []
    assert openapi.schema_errors("version_container", versions_body()) == []
    for problem in (
        Problem.bad_request({"missing_parameters": "keys is required"}, "missing-parameters", "missing parameters"),
        Problem.routing(400, "invalid_routing", "passed back"),
        Problem.server_error("down"),
        Problem(503, "insufficient-key-material", "insufficient key material", {"insufficient_key_material": "none"}),
    ):
        assert openapi.schema_errors("problem_details", problem.body()) == []


def test_the_validator_does_catch_a_malformed_body(openapi: OpenApi) -> None:
    # Not a test that cannot fail: the library flags what the schema forbids.
    bad = container(keys=[{"key_id": "not-a-uuid", "value": 5}], target_sae_ids="beta-app")
    errors = openapi.schema_errors("ext_key_container", bad)
    assert len(errors) == 3, errors
    assert openapi.schema_errors("ack_status", "delivered")


def test_a_valid_container_is_parsed_and_round_trips() -> None:
    parsed = parse_ext_keys(container())
    assert parsed.key_ids == (K1,) and parsed.keys[0].value == bytes(range(32))
    assert parsed.initiator_sae_id == "alpha-app" and parsed.target_sae_ids == ("beta-app",)
    assert parsed.ack_callback_url == CALLBACK
    assert parse_ext_keys(ext_keys_body(parsed)) == parsed
    assert "value" not in repr(parsed.keys[0]) and str(bytes(range(32))) not in repr(parsed)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (container(keys=None), 400, "missing_parameters"),
        (container(initiator_sae_id=None), 400, "missing_parameters"),
        (container(extra=1), 400, "unknown_parameters"),  # a misspelt field is not ignored
        (container(ack_callback=CALLBACK), 400, "unknown_parameters"),
        (container(initiator_sae_id="a" * 65), 400, "initiator_sae_id"),
        (container(target_sae_ids=["has space"]), 400, "target_sae_ids[0]"),
        (container(target_sae_ids=["beta-app", "beta-app"]), 400, "target_sae_ids[1]"),
        (container(target_sae_ids=["alpha-app"]), 400, "invalid_routing"),
        (container(ack_callback_url="http://insecure/ack"), 400, "ack_callback_url"),
        (container(keys=[{"key_id": K1, "value": "%%%"}]), 400, "keys[0].value"),
        (container(keys=[{"key_id": K1, "value": "AAAA"}]), 400, "keys[0].value"),  # 3 bytes: too short to relay
        (container(keys=[{"key_id": K1, "value": "AAAAAAAAAAA="}] * 2), 400, "keys[1].key_id"),
        (container(extension_optional={"vendor_thing": 1}), 400, "extension_optional"),
        (container(extension_optional={"E13019_reserved": 1}), 400, "extension_optional"),
        (container(extension_mandatory={"E32473_route_type": "direct"}), 503, "unsupported_mandatory_extension"),
        ([], 400, "malformed_body"),
    ],
)
def test_a_bad_container_is_refused_with_a_problem(body: object, status: int, detail: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_ext_keys(body)
    assert caught.value.status == status
    assert detail in caught.value.details, caught.value.details
    assert caught.value.body()["type"].startswith("https://qkd.etsi.org/gs020-interop-kms/")


def test_optional_extensions_with_a_vendor_prefix_are_kept_unchanged() -> None:
    extension = {"E32473_module_type": {"vendor": "Company ABC", "min_version": 2.5}}
    parsed = parse_ext_keys(container(extension_optional=extension))
    assert parsed.extension_optional == extension
    assert ext_keys_body(parsed)["extension_optional"] == extension


def test_void_needs_key_ids_or_the_all_confirmation() -> None:
    with pytest.raises(Problem) as caught:
        parse_void({"key_ids": [], "initiator_sae_id": "alpha-app", "target_sae_ids": ["beta-app"]})
    assert caught.value.status == 400 and caught.value.kind == "no-key-ids-or-confirmation"
    assert "no_all_confirmation" in caught.value.details
    every = parse_void({"key_ids": [], "initiator_sae_id": "alpha-app", "target_sae_ids": ["beta-app"], "all_confirmation": True})
    assert every.all_confirmation and every.key_ids == ()
    one = parse_void(void_body(VoidRequest((K1.upper(),), "alpha-app", ("beta-app",), CALLBACK)))
    assert one.key_ids == (K1,) and one.ack_callback_url == CALLBACK


def test_acks_are_parsed_and_a_wrong_status_is_not_understood() -> None:
    acks = [AckContainer((K1, K2), AckStatus.FAILED_TO_VOID, "alpha-app", ("beta-app",), "recalled too late")]
    assert parse_acks(ack_containers_body(acks)) == acks
    bad = ack_containers_body(acks)
    bad[0]["ack_status"] = "delivered"
    with pytest.raises(Problem) as caught:
        parse_acks(bad)
    assert caught.value.kind == "ack-not-understood" and "[0].ack_status" in caught.value.details
