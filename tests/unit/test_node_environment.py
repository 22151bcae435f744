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
