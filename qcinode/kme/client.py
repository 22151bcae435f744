"""A minimal ETSI GS QKD 014 client (standard library only) for the CLI and the pytest plugin."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class EtsiClient:
    """Talks to KMEs as one SAE: its client certificate, the cluster CA."""

    def __init__(self, ca: Path, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(cert), str(key))

    def request(self, method: str, url: str, body: Any | None = None, timeout_s: float = 30.0) -> tuple[int, Any]:
        """Returns (HTTP status, decoded JSON body); HTTP errors are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=timeout_s) as response:
                return int(response.status), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return int(err.code), json.loads(raw or b"null")
            except ValueError:
                return int(err.code), {"message": raw.decode(errors="replace")}

    def enc_keys(self, kme_url: str, slave_sae: str, number: int = 1, size_bits: int = 256, **extra: Any) -> tuple[int, Any]:
        body = {"number": number, "size": size_bits, **extra}
        return self.request("POST", f"{kme_url}/api/v1/keys/{slave_sae}/enc_keys", body)

    def dec_keys(self, kme_url: str, master_sae: str, key_ids: list[str]) -> tuple[int, Any]:
        body = {"key_IDs": [{"key_ID": key_id} for key_id in key_ids]}
        return self.request("POST", f"{kme_url}/api/v1/keys/{master_sae}/dec_keys", body)

    def status(self, kme_url: str, slave_sae: str) -> tuple[int, Any]:
        return self.request("GET", f"{kme_url}/api/v1/keys/{slave_sae}/status")
