"""The environment the launcher gives node processes (qcinode.cluster.launcher.node_environment)."""

from __future__ import annotations

from qcinode.cluster.launcher import NODE_ENVIRONMENT, node_environment


def test_nodes_get_few_malloc_arenas_and_no_openblas_threads_by_default() -> None:
    env = node_environment({"PATH": "/bin"})
    assert env["MALLOC_ARENA_MAX"] == "2"
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/bin"
    assert set(NODE_ENVIRONMENT) <= set(env)


def test_the_callers_own_settings_win_but_output_stays_unbuffered() -> None:
    env = node_environment({"MALLOC_ARENA_MAX": "8", "OPENBLAS_NUM_THREADS": "4", "PYTHONUNBUFFERED": "0"})
    assert env["MALLOC_ARENA_MAX"] == "8"
    assert env["OPENBLAS_NUM_THREADS"] == "4"
    assert env["PYTHONUNBUFFERED"] == "1"  # the node logs must reach their files as they happen


def test_kubernetes_pods_get_the_same_memory_settings_as_local_nodes() -> None:
    from pathlib import Path

    import yaml

    manifest = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "statefulset.yaml"
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    containers = [c for d in documents if d.get("kind") == "StatefulSet" for c in d["spec"]["template"]["spec"]["containers"]]
    env = {e["name"]: e.get("value") for c in containers if c["name"] == "qcinode" for e in c.get("env", [])}
    for name in ("MALLOC_ARENA_MAX", "OPENBLAS_NUM_THREADS"):
        assert env.get(name) == NODE_ENVIRONMENT[name], name
