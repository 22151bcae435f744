"""Abort reasons: every reason text the code can produce has its member of the closed vocabulary; anything else is `other`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import qcinode
from qcinode.core import estimation
from qcinode.core.aborts import AbortReason, abort_reason

ROOT = Path(qcinode.__file__).parent


def _literal_reasons() -> set[str]:
    """Every string literal the pipeline and the link workers give as a block's abort reason."""
    found: set[str] = set()
    pipeline = ast.parse((ROOT / "core" / "pipeline.py").read_text())
    for node in ast.walk(pipeline):
        ending = ("_abort", "_aborted", "_reject", "_decline", "_no_key_reason")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ending:
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                elif isinstance(arg, ast.BoolOp):  # msg.reason or "rejected_by_peer"
                    found.update(v.value for v in arg.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if isinstance(node, ast.Return) and isinstance(node.value, ast.IfExp):  # "pass_too_short" if block.short else reason
            found.update(v.value for v in (node.value.body, node.value.orelse) if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):  # f"no_usable_statistics: {exc}"
            head = str(node.values[0].value)
            if head.endswith(": ") and head[:-2].isidentifier():
                found.add(head + "detail")
    link = ast.parse((ROOT / "node" / "link.py").read_text())
    lost = next(n for n in ast.walk(link) if isinstance(n, ast.FunctionDef) and n.name == "_lost_reason")
    returns = [n.value for n in ast.walk(lost) if isinstance(n, ast.Return) and n.value is not None]
    found.update(c.value for r in returns for c in ast.walk(r) if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return found


def test_every_reason_the_code_gives_is_in_the_vocabulary() -> None:
    reasons = _literal_reasons()
    assert {"verification_failed", "session_lost", "contact_ended", "storage_write_failed", "pass_too_short", "commit_lost"} <= reasons
    unknown = sorted(r for r in reasons if abort_reason(r) is AbortReason.OTHER)
    assert unknown == []


@pytest.mark.parametrize("text", [v for k, v in vars(estimation).items() if k.startswith("REASON_")])
def test_every_sentence_of_the_key_length_formula_is_in_the_vocabulary(text: str) -> None:
    assert abort_reason(text) is not AbortReason.OTHER


@pytest.mark.parametrize(
    ("text", "reason", "short"),
    [
        (estimation.REASON_PHASE_ERROR, AbortReason.PHASE_ERROR, "phase error >= 1/2"),
        (estimation.REASON_NO_SINGLE_PHOTON_KEY, AbortReason.NO_SINGLE_PHOTON_KEY, "s_Z1<=0"),
        (estimation.REASON_TAGGED_KEY, AbortReason.NO_SINGLE_PHOTON_KEY, "s_Z1<=0"),
        (estimation.REASON_TAGGED_TEST, AbortReason.NO_SINGLE_PHOTON_TEST, "s_X1<=0"),
        (estimation.REASON_CORRECTIONS, AbortReason.NO_ENTROPY, "no entropy left"),
        ("insufficient_entropy", AbortReason.NO_ENTROPY, "no entropy left"),
        ("no_usable_statistics: decoy intensity 0 cannot feed the bounds", AbortReason.NO_USABLE_STATISTICS, "no_usable_statistics"),
        ("phase_error", AbortReason.PHASE_ERROR, "phase error >= 1/2"),  # a counter saved by this version
        ("session_lost", AbortReason.SESSION_LOST, "session_lost"),
    ],
)
def test_reason_texts_classify(text: str, reason: AbortReason, short: str) -> None:
    assert abort_reason(text) is reason and reason.short == short


@pytest.mark.parametrize("text", ["", "free text a peer made up", "x" * 10_000, "other:but spelled oddly", "phase_error_too_high"])
def test_anything_else_is_other_so_the_label_set_stays_bounded(text: str) -> None:
    assert abort_reason(text) is AbortReason.OTHER or text.startswith("other")
    assert len(AbortReason) < 32  # a closed list, not one value per text
