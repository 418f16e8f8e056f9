"""What a node loses without a kubelet gate is written down where an operator looks (issue #23): docs/design.md's
table "What the kubelet relies on" has a filled row per behaviour, and docs/operations.md names the gates."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _table() -> dict[str, str]:
    text = (DOCS / "design.md").read_text()
    section = text.split("## What the kubelet relies on", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    assert rows[0] == "| kubelet behaviour | what pycri answers |", rows[0]
    return {cells[0]: cells[1] for cells in (re.split(r" \| ", r.strip("| ")) for r in rows[1:])}


def test_the_kubelet_table_answers_every_behaviour():
    table = _table()
    for topic in ("EventedPLEG", "DELETED", "ImageFsInfo", "ImageVolume", "kubectl get pod", "UpdateRuntimeConfig",
                  "PodAndContainerStatsFromCRI"):
        rows = [answer for behaviour, answer in table.items() if topic in behaviour]
        assert rows, f"no row on {topic}"
        assert all(len(a) > 40 for a in rows), (topic, rows)


def test_operations_names_the_gates_a_pycri_node_wants():
    text = (DOCS / "operations.md").read_text()
    assert "--feature-gates=PodAndContainerStatsFromCRI=true" in (DOCS / "design.md").read_text()
    for gate in ("PodAndContainerStatsFromCRI", "EventedPLEG"):
        assert f"`{gate}`" in text, gate
