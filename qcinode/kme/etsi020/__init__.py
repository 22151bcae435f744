"""ETSI GS QKD 020 V1.1.1 (Interoperable Key Management System API): messages, HTTP server and client.

:mod:`.protocol` parses and builds the JSON bodies (pure); :mod:`.server`
serves the API over HTTPS with mutual TLS; :mod:`.client` calls a peer KME.
The interworking driver that gives them a meaning is
:mod:`qcinode.node.interworking`. ``interop-kms.yaml`` is ETSI's OpenAPI
description, unchanged (BSD-3, see ``LICENSE``); the tests validate every
message against it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["OPENAPI_PATH"]

#: ETSI's OpenAPI description of the API (the tests validate messages against it).
OPENAPI_PATH = Path(__file__).with_name("interop-kms.yaml")
