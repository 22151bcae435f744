"""The CLI's own messages: one line, no repetition (no sockets, no processes)."""

from __future__ import annotations

import pytest

from qcinode import cli


def test_an_etsi_error_is_its_message_once_then_what_the_details_add() -> None:
    message = "the network cannot carry 3 key(s) of 256 bits to rotterdam-app now"
    assert cli._etsi_message({"message": message, "details": [message]}) == message
    assert cli._etsi_message({"message": message, "details": [message, "node antwerp is down"]}) == f"{message}; node antwerp is down"
    assert cli._etsi_message({}) == "no message"


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--speed", "fast"],
        ["eve", "--link", "a-b", "--attack", "teleport"],
        ["keys", "--from", "a"],
        ["frobnicate"],
    ],
)
def test_bad_options_are_one_line_with_exit_code_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qcinode") and "--help" in err


def test_a_config_error_is_one_line_without_the_class_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--state-dir", "/nonexistent/qcinode-state"]) == 2
    err = capsys.readouterr().err
    assert err == "qcinode: --state-dir: no cluster at /nonexistent/qcinode-state/cluster.json (start one with `qcinode up --detach`)\n"
