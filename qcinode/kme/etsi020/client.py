"""A client of another KME's ETSI GS QKD 020 API (aiohttp, mutual TLS, TLS 1.3).

The server must present a certificate of the other operator's CA naming the
configured peer KME (checked as the TLS server name), and this KME presents
its own node certificate. Every call returns the HTTP status and the decoded
JSON body (None for an empty one); a transport failure or a timeout raises
:class:`~qcinode.errors.PeerUnavailable` / :class:`~qcinode.errors.PeerTimeout`,
so the caller can apply the standard's retry-or-void rule.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from qcinode.errors import ConfigError, PeerTimeout, PeerUnavailable

__all__ = ["Etsi020Client", "client_tls_context"]


def client_tls_context(cert: Path, key: Path, peer_ca: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context: our certificate, the other operator's CA only.

    Raises:
        ConfigError: A file cannot be read.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        context.load_verify_locations(cafile=str(peer_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"interworking: cannot load the 020 client credentials ({cert}, {peer_ca}): {exc}") from exc
    return context


class Etsi020Client:
    """Calls one peer KME. Create and close it inside the event loop."""

    def __init__(self, base_url: str, peer_kme: str, context: ssl.SSLContext, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.peer_kme = peer_kme
        self._context = context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def versions(self) -> tuple[int, Any]:
        return await self.request("GET", f"{self.base_url}/kmapi/versions")

    async def ext_keys(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", f"{self.base_url}/kmapi/v1/ext_keys", body)

    async def void(self, body: dict[str, Any]) -> tuple[int, Any]:
        return await self.request("POST", f"{self.base_url}/kmapi/v1/ext_keys/void", body)

    async def ack(self, url: str, body: list[dict[str, Any]]) -> tuple[int, Any]:
        """Posts acknowledgements to an ``ack_callback_url`` (any path the peer chose)."""
        return await self.request("POST", url, body)

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """One call; ``(status, JSON body or None)``.

        Raises:
            PeerUnavailable: No connection, a TLS failure, or a body that is not JSON.
            PeerTimeout: No answer within the timeout.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._context), timeout=self._timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(method, url, data=data, headers=headers, server_hostname=self.peer_kme) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError:
            raise PeerTimeout(f"ETSI 020 {method} {url}: no answer in time") from None
        except aiohttp.ClientError as exc:
            raise PeerUnavailable(f"ETSI 020 {method} {url}: {type(exc).__name__}: {exc}") from None
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise PeerUnavailable(f"ETSI 020 {method} {url}: answer {status} is not JSON") from None
