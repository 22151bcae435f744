"""Post-quantum preshared keys (RFC 8784) for strongSwan, fetched from qcinode over SKIP.

One side asks its Key Provider for a new key shared with the other side's
system (``GET /key?remoteSystemID=...``); the other side fetches the same key
by its ID (``GET /key/{keyId}?remoteSystemID=...``) from its own Key
Provider. Each writes a swanctl.conf ``secrets.ppk`` section naming the key ID
as PPK_ID, and the IKEv2 connection requires the PPK (``ppk_required = yes``).

    python ppk.py --state-dir .qcinode --local brussels-app --remote rotterdam-app > a-ppk.conf
    python ppk.py --state-dir .qcinode --local rotterdam-app --remote brussels-app --key-id KEYID > b-ppk.conf

Only the standard library: this is what an encryptor's key agent would do.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.request
from pathlib import Path


def skip_get(state_dir: Path, sae: str, path: str) -> dict[str, object]:
    """GET ``path`` from ``sae``'s Key Provider with ``sae``'s client certificate (paths from cluster.json)."""
    cluster = json.loads((state_dir / "cluster.json").read_text())
    info = cluster["saes"][sae]
    context = ssl.create_default_context(cafile=str(state_dir / cluster["ca"]))
    context.load_cert_chain(str(state_dir / info["cert"]), str(state_dir / info["key"]))
    url = cluster["nodes"][info["node"]]["skip"] + path
    with urllib.request.urlopen(url, context=context, timeout=30) as answer:
        body: dict[str, object] = json.loads(answer.read())
    return body


def fetch_ppk(state_dir: Path, local: str, remote: str, key_id: str | None = None, size_bits: int = 256) -> tuple[str, str]:
    """``(ppk_id, key hex)``: a new key shared with ``remote``, or the one with ``key_id``."""
    if key_id is None:
        key = skip_get(state_dir, local, f"/key?remoteSystemID={remote}&size={size_bits}")
    else:
        key = skip_get(state_dir, local, f"/key/{key_id}?remoteSystemID={remote}")
    return str(key["keyId"]), str(key["key"])


def ppk_secret(ppk_id: str, key_hex: str, name: str = "qcinode") -> str:
    """A swanctl.conf ``secrets`` section holding the PPK (swanctl reads 0x-prefixed hex as binary)."""
    return f"secrets {{\n  ppk-{name} {{\n    id = {ppk_id}\n    secret = 0x{key_hex}\n  }}\n}}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=Path(".qcinode"))
    parser.add_argument("--local", required=True, help="this side's SKIP system ID (an SAE of the cluster)")
    parser.add_argument("--remote", required=True, help="the other side's system ID")
    parser.add_argument("--key-id", help="fetch this key (the other side made it) instead of a new one")
    args = parser.parse_args(argv)
    ppk_id, key_hex = fetch_ppk(args.state_dir, args.local, args.remote, args.key_id)
    sys.stdout.write(ppk_secret(ppk_id, key_hex))
    print(f"ppk_id = {ppk_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
