"""The studies the ablation runner knows: name -> ``study.Study`` (rows and schedule). A new study is its rows in a
module of its own and one line here; ``run.run_ablation(study=name)`` and ``minideeplab ablate --study name`` run it
the same way (resumable rows, one table)."""

from __future__ import annotations

from minideeplab.ablate.attention import ATTENTION
from minideeplab.ablate.study import ABLATION, Study

__all__ = ["STUDIES", "get_study"]

STUDIES = {s.name: s for s in (ABLATION, ATTENTION)}


def get_study(name) -> Study:
    if name not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(map(repr, STUDIES))}, got {name!r}")
    return STUDIES[name]
