"""The studies the ablation runner knows: name -> ``study.Study`` (rows, schedule, hooks). A new study is its rows
in a module of its own and one entry here; ``run_study`` and ``minideeplab ablate --study NAME`` run it (resumable
rows, one table), ``listing`` and ``report`` are what the command prints.

    study = get_study("attention")
    rows = run_study(study, "runs/attention", ["cnn-v3plus-s0"], threads=1)
    print(report(study, rows))
"""

from __future__ import annotations

from minideeplab.ablate.attention import ATTENTION
from minideeplab.ablate.claims import trends
from minideeplab.ablate.crf_study import CRF
from minideeplab.ablate.results import format_rows, format_table
from minideeplab.ablate.run import run_ablation
from minideeplab.ablate.study import EPOCHS, LR, ROWS, Study

__all__ = ["ABLATION", "STUDIES", "get_study", "run_study", "listing", "report"]


def _ablation_report(rows) -> str:
    """The table, then the papers' claims checked against it."""
    return "\n".join([format_table(rows), "", *(f"- {line}" for line in trends(rows))])


ABLATION = Study("ablation", ROWS, EPOCHS, LR, "DeepLab's ablations on the mini ResNet", report=_ablation_report)
STUDIES = {s.name: s for s in (ABLATION, ATTENTION, CRF)}


def get_study(name) -> Study:
    if name not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(map(repr, STUDIES))}, got {name!r}")
    return STUDIES[name]


def run_study(study: Study, out=None, only=None, **options) -> list[dict]:
    """Train and measure ``study``'s rows named in ``only`` (all when None) that OUT (default runs/NAME) does not
    hold yet and write its table: its runner (``run.run_ablation`` unless it has its own). Returns the records."""
    return (study.runner or run_ablation)(f"runs/{study.name}" if out is None else out, only, study=study, **options)


def listing(study: Study) -> str:
    """What ``--list`` prints: the study's rows (and what it adds)."""
    return study.listing() if study.listing else format_rows(study.rows)


def report(study: Study, rows) -> str:
    """What a run prints after writing the table."""
    return study.report(rows) if study.report else format_table(rows)
