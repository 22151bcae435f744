"""The rendered Kubernetes overlay keeps each node's storage key in a Secret, off the data volume."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from qcinode.cluster import k8s
from qcinode.keys.linkstore import StorageKey
from tests.unit.test_k8s import _compose, _container, _find, render


def test_each_node_reads_its_storage_key_from_the_secret_not_the_data_volume(tmp_path: Path) -> None:
    directory, topology = render(tmp_path, "chain5")
    keys = {node.name: directory / "certs" / "storage" / f"{node.name}.key" for node in topology.nodes}
    for path in keys.values():
        assert len(path.read_bytes()) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len({path.read_bytes() for path in keys.values()}) == len(keys)  # one key per node
    before = {name: path.read_bytes() for name, path in keys.items()}
    render(tmp_path, "chain5")  # re-rendering keeps them: a new key could not read the volume
    assert {name: path.read_bytes() for name, path in keys.items()} == before

    docs = _compose(directory)
    secret = _find(docs, "Secret", k8s.STORAGE_KEYS_SECRET)
    assert {name: base64.b64decode(value) for name, value in secret["data"].items()} == {f"{n}.key": k for n, k in before.items()}
    container = _container(docs)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _find(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert mounts["storage-key"]["readOnly"] is True
    assert volumes["storage-key"]["projected"]["sources"] == [{"secret": {"name": k8s.STORAGE_KEYS_SECRET}}]
    key_template = env["QCINODE_STORAGE_KEY_FILE"]
    assert key_template == f"{mounts['storage-key']['mountPath']}/{{name}}.key"
    assert not key_template.startswith(mounts["data"]["mountPath"])

    # What pod N reads, once the kubelet has materialised the Secret.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for name, value in secret["data"].items():
        (mounted / name).write_bytes(base64.b64decode(value))
    for node in topology.nodes:
        path = Path(key_template.replace(mounts["storage-key"]["mountPath"], str(mounted)).replace("{name}", node.name))
        assert repr(StorageKey.load_or_create_file(path)) == f"StorageKey(path={str(path)!r})"
        assert path.read_bytes() == before[node.name]
