"""Checks for notebook 01, receptive fields: exercises 1.1-1.3."""

from __future__ import annotations

import numpy as np

from minideeplab.grading.checks.common import as_number, first_bad, offsets_mask
from minideeplab.grading.core import ExerciseWrong, compare_arrays, exercise_check, passed

__all__ = ["exercise_1_1", "exercise_1_2", "exercise_1_3"]


_RF_CASES = [  # (kernel, stride, rate, padding) per layer; simple first
    [(3, 1, 1, 1)],
    [(3, 1, 2, 2)],
    [(3, 1, 2, 2)] * 3,
    [(3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 4, 4)],
    [(7, 2, 1, 3), (3, 2, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2)],
    [(3, 1, 1, 0), (3, 2, 1, 0), (5, 1, 2, 1)],
    [(2, 2, 1, 0), (3, 1, 2, 0)],
]


def _measured(layers):
    from minideeplab.reference.receptive import measure_receptive_field

    return measure_receptive_field(layers)


@exercise_check("1.1")
def exercise_1_1(effective_kernel_size):
    """effective_kernel_size(kernel, rate) against the field of one conv measured by torch autograd."""
    cases = [(k, r) for k in (1, 2, 3, 5, 7) for r in (1, 2, 3, 6, 12)]
    got = np.array([as_number(effective_kernel_size(k, r), "1.1", f"effective_kernel_size({k}, {r})")
                    for k, r in cases], dtype=float)
    expected = np.array([_measured([(k, 1, r, 0)]).size for k, r in cases], dtype=float)
    ks, rs = np.array(cases).T
    known = {
        "kernel*rate counts one gap too many: k taps leave k-1 gaps of rate pixels, plus the pixel you "
        "start on: rate*(kernel-1) + 1.": ks * rs,
        "rate*(kernel-1) counts the gaps but forgets the first tap's own pixel: add 1.": rs * (ks - 1),
        "kernel + rate - 1 adds the rate once; every one of the kernel-1 gaps grows to rate pixels.": ks + rs - 1,
        "rate*kernel - 1 is one short: rate*(kernel-1) + 1 (check kernel=1: it must be 1 for every rate).": ks * rs - 1,
    }
    what = "effective_kernel_size(kernel, rate) for kernel in (1, 2, 3, 5, 7) x rate in (1, 2, 3, 6, 12)"
    try:
        worst = compare_arrays("1.1", what, got, expected, rtol=0, atol=1e-9, known_mistakes=known,
                               check_dtype=False)
    except ExerciseWrong as e:
        i = first_bad(got, expected)
        raise ExerciseWrong(f"{e}\n  first wrong case: effective_kernel_size(kernel={cases[i][0]}, "
                            f"rate={cases[i][1]}) returned {got[i]:g}, the measured field is "
                            f"{expected[i]:g} pixel{'' if expected[i] == 1 else 's'} wide") from None
    passed("1.1", f"{len(cases)} (kernel, rate) pairs equal the width of the field measured "
                  "with torch autograd", worst, "exact")


def _rf_variant(layers, mistake=None):
    """Receptive field (size, jump, start) by the recurrence, optionally with a known mistake."""
    size, jump, start = 1, 1, 0.0
    for k, s, r, p in layers:
        k_eff = k if mistake == "no_rate" else r * (k - 1) + 1
        j_used = jump * s if mistake == "jump_first" else jump
        size += (k_eff - 1) * (1 if mistake == "no_jump" else j_used)
        pad = {"no_pad": 0, "pad_sign": -p}.get(mistake, p)
        start += ((k_eff - 1) / 2 - pad) * (1 if mistake == "start_no_jump" else j_used)
        jump *= s * r if mistake == "jump_rate" else s
    if mistake == "left_edge":
        start -= (size - 1) / 2
    return np.array([size, jump, start], dtype=float)


_RF_HINTS = {
    "no_jump": "the size grows by (k_eff - 1) input pixels per layer only at stride 1: after a stride, each "
               "step of a layer's kernel moves `jump` input pixels, so size += (k_eff - 1) * jump.",
    "jump_rate": "the jump is the product of the strides only: a rate spreads the taps of a kernel, but "
                 "neighbouring output pixels are still `stride` input steps apart.",
    "no_rate": "the field ignores the rate: use the effective kernel k_eff = rate*(kernel-1) + 1.",
    "jump_first": "jump was updated before size and start: a layer's kernel moves in the jump of its "
                  "input, so update size and start first, then jump *= stride.",
    "start_no_jump": "start moves by ((k_eff - 1)/2 - padding) pixels of the layer's input, i.e. that many "
                     "times the current jump in input pixels.",
    "no_pad": "start ignores the padding: padding shifts the layer's first window left by `padding` input pixels, "
              "so start += ((k_eff - 1)/2 - padding) * jump.",
    "pad_sign": "the padding moves start the wrong way: padding shifts the first window LEFT, so subtract it, "
                "start += ((k_eff - 1)/2 - padding) * jump.",
    "left_edge": "start is the centre of output pixel 0's field, not its left edge: the left edge is "
                 "start - (size - 1)/2.",
}


def _rf_triple(got, call):
    if not isinstance(got, (np.ndarray, str)) and all(hasattr(got, a) for a in ("size", "jump", "start")):
        vals = (got.size, got.jump, got.start)
    else:
        try:
            vals = tuple(got)
        except TypeError:
            vals = ()
        if len(vals) != 3:
            raise ExerciseWrong(f"Exercise 1.2: {call} returned {got!r}; expected RF(size, jump, start)")
    return np.array([as_number(v, "1.2", call) for v in vals], dtype=float)


@exercise_check("1.2")
def exercise_1_2(receptive_field):
    """receptive_field(layers) -> RF(size, jump, start) against torch gradient measurements."""
    worst = 0.0
    for layers in _RF_CASES:
        call = f"receptive_field({layers})"
        got = _rf_triple(receptive_field(layers), call)
        m = _measured(layers)
        expected = np.array([m.size, m.jump, m.start], dtype=float)
        known = {text: _rf_variant(layers, key) for key, text in _RF_HINTS.items()}
        what = f"(size, jump, start) of {call}, index 0 = size, 1 = jump, 2 = start"
        worst = max(worst, compare_arrays("1.2", what, got, expected, rtol=0, atol=1e-9,
                                          known_mistakes=known, check_dtype=False))
    passed("1.2", f"size, jump and start of {len(_RF_CASES)} stacks (strides, rates, paddings, an even "
                  "kernel) equal the fields measured from torch input gradients", worst, "exact")


def _footprint_variant(layers, mistake):
    offsets, jump = {0}, 1
    for k, s, r, _ in layers:
        if mistake == "jump_first":
            jump *= s
        step = r if mistake == "no_jump" else r * jump
        offsets = {o + step * t for o in offsets for t in range(k)}
        if mistake != "jump_first":
            jump *= s * r if mistake == "jump_rate" else s
    mask = offsets_mask(offsets)
    return np.ones_like(mask) if mistake == "dense" else mask


_FOOTPRINT_HINTS = {
    "dense": "every pixel of the field is marked: the taps of a dilated kernel leave holes, and stacked "
             "layers add the tap offsets of each layer (a set of sums), they do not fill the span.",
    "no_jump": "the taps of a layer after a stride are rate * jump input pixels apart, not rate.",
    "jump_rate": "the jump is the product of the strides only, not of strides and rates.",
    "jump_first": "the jump was multiplied by the layer's stride before its taps were placed: a layer's taps "
                  "are rate * jump apart with the jump of its INPUT (the product of the strides of the layers "
                  "before it); multiply jump by the stride after placing the taps.",
}


@exercise_check("1.3")
def exercise_1_3(footprint):
    """footprint(layers) -> bool mask over the field, against the non-zero input gradient of torch."""
    cases = [[(3, 1, 2, 2)], [(3, 1, 2, 2)] * 3, [(3, 1, 1, 1), (3, 1, 2, 2), (3, 1, 5, 5)],
             [(3, 2, 1, 1), (3, 1, 2, 2), (3, 1, 2, 2)], [(3, 1, 2, 2), (3, 1, 4, 4), (3, 1, 8, 8)],
             [(2, 2, 1, 0), (3, 1, 3, 0)]]
    for layers in cases:
        call = f"footprint({layers})"
        got = footprint(layers)
        if got is not None and not isinstance(got, np.ndarray):
            got = np.asarray(got)
        if isinstance(got, np.ndarray) and got.dtype != bool and got.dtype.kind in "iuf":
            got = got != 0  # path counts are fine too: non-zero means sampled
        expected = _measured(layers).footprint.any(axis=0)
        known = {text: _footprint_variant(layers, key) for key, text in _FOOTPRINT_HINTS.items()}
        compare_arrays("1.3", f"{call} (True where an input pixel of the field is sampled)", got, expected,
                       rtol=0, atol=0, known_mistakes=known)
    passed("1.3", f"footprints of {len(cases)} stacks equal the pixels with non-zero torch input "
                  "gradient", 0.0, "exact")
