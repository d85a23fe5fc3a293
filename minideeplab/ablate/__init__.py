"""DeepLab's ablations, reproduced on the synthetic set: one table, one schedule, one small backbone.

    rows = run_ablation("runs/ablation", results="data/ablation")   # trains what is missing, writes the table
    rows = read_csv("data/ablation/ablation.csv")                   # the notebook: no retraining
    print(format_table(rows)); print("\\n".join(trends(rows)))

- ``attention``: the attention study's rows (issue 14: ViT, SegFormer, the mini CNN v3+ over seeds); ``studies``:
  the registry of studies (``get_study("attention")``), ``run_study`` (a study's runner: ``run_ablation`` unless it
  has its own) and what ``minideeplab ablate`` prints of each (``listing``, ``report``).
- ``study``: the rows, the schedule, the shallow network, each row's costs and field of view; its docstring
  explains each choice of the study.
- ``run``: the training driver (``run_ablation``), per-image confusions, the CRF's evaluation, resumable rows.
- ``results``: ablation.csv / .json / _per_image.npz and long_runs.json, the table as text (plots: ``viz.ablation``).
- ``stats``: mIoUs of resampled images, the paired bootstrap and its interval, the Pareto front.
- ``claims``: ``trends``, the papers' claims checked against a table.
- ``crf_study``: the CRF study (``minideeplab ablate --study crf``): post-processing against the trained CRF
  layer, three seeds, rows on ``run``'s machinery, fine-tuning from the shipped weights (its own runner: ``CRF``).
- ``measured``: a study over seeds read for its answer (notebooks 11 and 12): per configuration the seed means and
  spread, the paired bootstrap against a baseline, the rows still to run; what each study expects
  (``measured.Expected``) is declared beside its rows (``attention.ATTENTION_EXPECTED``, ``crf_study.CRF_EXPECTED``).
"""

from minideeplab.ablate.attention import ATTENTION, ATTENTION_ROWS, BUDGET, within_budget
from minideeplab.ablate.claims import CLEARLY, trends
from minideeplab.ablate.results import (columns, format_rows, format_table, read_csv, read_per_image, write_long_runs,
                                        write_results)
from minideeplab.ablate.run import evaluate_crf, per_image_confusions, run_ablation
from minideeplab.ablate.studies import ABLATION, STUDIES, get_study, listing, report, run_study
from minideeplab.ablate.stats import bootstrap_interval, bootstrap_miou_difference, mean_ious, pareto_front
from minideeplab.ablate.study import (BATCH_SIZE, CROP_SIZE, EPOCHS, IMAGE_SIZE, LR, NARROW, ROWS,
                                      SCALE_RANGE, SEED, Row, ShallowConfig, ShallowFCN, Study, costs, field_of_view,
                                      select)

__all__ = ["Row", "ROWS", "EPOCHS", "BATCH_SIZE", "CROP_SIZE", "LR", "SCALE_RANGE", "SEED", "IMAGE_SIZE",
           "NARROW", "CLEARLY", "ShallowConfig", "ShallowFCN", "select", "field_of_view", "costs", "run_ablation",
           "evaluate_crf", "per_image_confusions", "write_results", "read_csv", "read_per_image", "format_table",
           "format_rows", "trends", "columns", "mean_ious", "bootstrap_miou_difference", "bootstrap_interval",
           "pareto_front", "write_long_runs", "Study", "STUDIES", "ABLATION", "get_study", "run_study", "listing",
           "report", "ATTENTION", "ATTENTION_ROWS", "BUDGET", "within_budget"]
