"""The attention study (issue 14, section 3): is atrous convolution still useful on top of attention? Run by the
ablation's runner (``minideeplab ablate --study attention``; ``studies.run_study(ATTENTION)``): each row
in OUT/<name>/ (last.pt, result.json, per_image.npz), finished rows skipped, an interrupted one resumed; the table
in RESULTS/attention.csv (one line per configuration and seed: name, seed, miou, parameters, mult_adds, the
trimap accuracies, ...), attention.json, attention_miou.png, attention_trimap.png, attention_per_image.npz (for
paired bootstraps over val images, ``ablate.stats``). Read back by ``measured.read_study(ATTENTION_EXPECTED)``
(notebook 11): the configurations and seeds below, the baseline and the questions asked of them.

Rows (every model at parameters and multiply-adds within 1.5x of the mini CNN v3+, ``within_budget``; the
seeds are the rows' own, three for the rows the answer rests on):

    cnn-v3plus       the mini ResNet v3+ (OS 16, ASPP rates (2, 4, 6), image pooling): the course's model
    vit-linear       vit_mini + a 1x1 conv to the classes (SETR-naive / Segmenter-linear): attention alone
    vit-aspp         vit_mini + v3's head (ASPP (2, 4, 6) on the 8x8 token map, image pooling)
    vit-aspp-dec     vit_mini + v3+'s ASPP and decoder (the stride-4 conv stem beside the patch embedding)
    segformer        SegFormer-mini (mit_mini + the all-MLP decoder): DeepLab's descendant
    vit-na-linear    vit_mini_na (dilated neighbourhood attention in blocks 0-3) + the linear head: atrous
                     convolution's idea inside attention
    vit-linear-adamw, vit-aspp-adamw
                     vit-linear and vit-aspp under the transformers' recipe (schedule "adamw", ``SCHEDULES``): the
                     follow-up question below

The schedule: "about the full 30 epochs" on the 3,000-image set (``study``'s docstring: the shipped model, lr
0.05, 30 epochs of 375 iterations, reaches 0.80 mIoU; at 20 and 25 epochs 0.695 and 0.763, under 90 % of it),
batch 8, crops of 128, scales (0.75, 1.5), SGD with momentum 0.9 and the poly schedule for every row (the
transformers too: one recipe, the CNN's; ViTs are usually trained with AdamW and warm-up, so this is the
question "does the DeepLab recipe's model benefit from ASPP on a ViT", not a tuned transformer).

The follow-up question, added on 2026-12-07 after vit-linear-s0 had finished (19.8 % mIoU; its training loss
stayed at 0.65-0.75 for all 30 epochs while the CNN's fell to 0.16): does the ViT fit, and does ASPP help it,
under the transformers' recipe? The declared rows above and their question are unchanged; these two rows ask a
new one, with one seed each (budget: about 40 CPU minutes a row). The recipe: AdamW (betas 0.9, 0.999), weight
decay 0.05 on every parameter, a linear warm-up over the first epoch (375 iterations), then poly, same epochs,
batch, crops and data. Its lr was picked before either row ran, by a 3-epoch pilot of vit-linear (seed 0, the same
data, scored by the training loss at the end, not by val mIoU): AdamW at lr 1e-3 ended at 0.661, at 3e-4 at 0.654
(SGD at the study's lr 0.05, the same 3 epochs: 0.70). 3e-4 won by less than the noise of one smoothed loss, so
the pilot says AdamW fits somewhat faster than SGD early on, not which of the two lrs is better.
Their second seed (seed 1 of both) was added on 2026-12-07 (third session), after both seed-0 rows had finished
(vit-aspp-adamw against vit-linear-adamw: -2.3 points, not told apart; under SGD, ASPP's +11.6): the reading
"ASPP's gain is an optimisation effect" rested on that one pair, so it gets a second before being stated. The
recipe, the epochs and the question are unchanged.
"""

from __future__ import annotations

from minideeplab.ablate.measured import Expected
from minideeplab.ablate.results import format_rows
from minideeplab.ablate.study import LR, Row, Study, costs

__all__ = ["ATTENTION", "ATTENTION_ROWS", "SCHEDULES", "ATTENTION_EXPECTED", "ATTENTION_EPOCHS", "SEEDS", "BUDGET",
           "within_budget"]

ATTENTION_EPOCHS = 30
SEEDS = (0, 1, 2)
BUDGET = 1.5  # parameters and multiply-adds within this factor of the mini CNN v3+'s
RATES = (2, 4, 6)  # the ablation's / 3 rule on the 8x8 map (``study``'s docstring; ``specs.vit``)

SCHEDULES = {  # a row's own settings (Row.schedule) over the study's SGD at LR
    # the transformers' recipe, the follow-up's (the docstring says how lr was picked): AdamW, decoupled weight
    # decay 0.05, a one-epoch linear warm-up (375 iterations of 8), then poly
    "adamw": dict(optimizer="adamw", lr=3e-4, weight_decay=0.05, warmup_iters=375),
}

_CONFIGS = (
    # name            model        backbone       OS  rates  pooling  seeds  about; schedule (None: the study's SGD)
    ("cnn-v3plus",    "v3plus",    "mini",        16, RATES, True,  SEEDS, "mini ResNet v3+: ASPP + decoder", None),
    ("vit-linear",    "linear",    "vit_mini",    16, (),    None,  SEEDS, "ViT + 1x1 conv (SETR-naive)", None),
    ("vit-aspp",      "v3",        "vit_mini",    16, RATES, True,  SEEDS, "ViT + v3's ASPP head", None),
    ("vit-aspp-dec",  "v3plus",    "vit_mini",    16, RATES, True,  (0,),  "ViT + ASPP + decoder (conv stem)", None),
    ("segformer",     "segformer", "mit_mini",    32, (),    None,  (0,),  "SegFormer-mini (MiT + all-MLP)", None),
    ("vit-na-linear", "linear",    "vit_mini_na", 16, (),    None,  (0,),
     "ViT with dilated neighbourhood attention in blocks 0-3 + 1x1 conv", None),
    ("vit-linear-adamw", "linear", "vit_mini",    16, (),    None,  (0, 1), "ViT + 1x1 conv, AdamW + warm-up", "adamw"),
    ("vit-aspp-adamw",   "v3",     "vit_mini",    16, RATES, True,  (0, 1),
     "ViT + v3's ASPP, AdamW + warm-up", "adamw"),
)

# seed by seed: every configuration's seed 0 first, so that a study stopped early has one run of each
ATTENTION_ROWS = tuple(Row(f"{name}-s{seed}", model, os_, rates, pool, about=about, backbone=backbone, seed=seed,
                           schedule=schedule)
                       for seed in SEEDS
                       for name, model, backbone, os_, rates, pool, seeds, about, schedule in _CONFIGS
                       if seed in seeds)


def _listing() -> str:
    """--list: the rows, and how close to the mini CNN v3+ they are in parameters and multiply-adds."""
    worst = max(max(v) for v in within_budget().values())
    return (format_rows(ATTENTION_ROWS) + f"\n\nevery row within {BUDGET}x of the mini CNN v3+ in parameters and "
            f"multiply-adds (the largest ratio: {worst:.2f}x)")


ATTENTION = Study("attention", ATTENTION_ROWS, ATTENTION_EPOCHS, LR,
                  "atrous convolution on top of attention: mini CNN v3+, ViT + linear / ASPP / ASPP + decoder, "
                  "SegFormer-mini, ViT with dilated neighbourhood attention",
                  "Atrous convolution on top of attention, synthetic set", listing=_listing, schedules=SCHEDULES)
# what the study's reader (``measured``, notebook 11) expects: the configurations and seeds of the rows above, the
# baseline and the questions, each comparison a - b over the same val images
ATTENTION_EXPECTED = Expected("attention", ATTENTION_ROWS, baseline="cnn-v3plus", comparisons=(
    ("vit-aspp", "vit-linear", "does ASPP help on top of attention?"),
    ("vit-linear", "cnn-v3plus", "attention with a linear head against the CNN DeepLab:"),
    ("vit-aspp", "cnn-v3plus", "ViT + ASPP against the CNN DeepLab:"),
    ("vit-aspp-dec", "vit-aspp", "does the v3+ decoder help the ViT?"),
    ("vit-na-linear", "vit-linear", "dilated neighbourhood attention against global attention:"),
    ("segformer", "cnn-v3plus", "SegFormer against the CNN DeepLab:"),
    ("vit-linear-adamw", "vit-linear", "does the transformers' recipe (AdamW, warm-up) fit the ViT better?"),
    ("vit-aspp-adamw", "vit-linear-adamw", "under the transformers' recipe, does ASPP help on top of attention?"),
))


def within_budget(rows=ATTENTION_ROWS, num_classes=7, factor=BUDGET) -> dict[str, tuple[float, float]]:
    """{row name: (parameters ratio, multiply-adds ratio)} of each row against the mini CNN v3+ (cnn-v3plus-s0),
    each ratio >= 1 (the larger over the smaller); ValueError naming the rows outside ``factor``."""
    base = costs(ATTENTION_ROWS[0], num_classes)
    ratios = {}
    for r in rows:
        c = costs(r, num_classes)
        ratios[r.name] = tuple(max(c[k], base[k]) / min(c[k], base[k]) for k in ("parameters", "mult_adds"))
    outside = {n: v for n, v in ratios.items() if max(v) > factor}
    if outside:
        raise ValueError(f"within_budget: rows outside {factor}x of the mini CNN v3+: " + ", ".join(
            f"{n} (parameters {p:.2f}x, multiply-adds {m:.2f}x)" for n, (p, m) in outside.items()))
    return ratios
