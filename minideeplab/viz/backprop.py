"""Figures for backpropagation (notebook 06).

* ``step_size_errors`` / ``plot_step_size``: how far finite differences are from the exact gradient as the
  step h shrinks, one-sided and centred, in float64 and float32: truncation error falls with h, rounding
  error grows as 1/h, and the best h and the best error depend on the dtype.
* ``plot_gradient_agreement``: worst relative disagreement per parameter group of a model, several
  comparisons side by side on a log scale (float64 against float32, scratch against torch).
"""

from __future__ import annotations

import numpy as np

from minideeplab.scratch.layers import softmax_cross_entropy

STEPS = 10.0 ** -np.arange(1, 13)  # 1e-1 .. 1e-12


def _differences(f, x, h, centred):
    """Centred (f(x + h e_i) - f(x - h e_i)) / 2h or one-sided (f(x + h e_i) - f(x)) / h, every entry of x."""
    grad = np.zeros(x.shape)
    f0 = f(x)
    for i in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[i] += x.dtype.type(h)
        minus[i] -= x.dtype.type(h)
        grad[i] = (f(plus) - f(minus)) / (2 * h) if centred else (f(plus) - f0) / h
    return grad


def step_size_errors(steps=STEPS, seed: int = 0) -> dict:
    """Finite differences of a softmax cross-entropy (logits (1, 4, 3, 3), one pixel ignored) against its
    exact float64 gradient: {(dtype name, "centred" | "one-sided"): max |error| / max |gradient| per step}.
    The loss is computed in that dtype (in float32 a step below about 1e-7 |x| rounds away: x + h == x)."""
    rng = np.random.default_rng(seed)
    logits = 2 * rng.standard_normal((1, 4, 3, 3))
    target = rng.integers(0, 4, (1, 3, 3))
    target[0, 0, 0] = 255
    exact = softmax_cross_entropy(logits, target)[1]
    scale = np.abs(exact).max()
    errors = {}
    for dtype in (np.float64, np.float32):
        x = logits.astype(dtype)

        def f(a):
            return float(softmax_cross_entropy(a, target)[0])

        for centred in (True, False):
            errs = []
            for h in steps:
                errs.append(np.abs(_differences(f, x, h, centred) - exact).max() / scale)
            errors[(np.dtype(dtype).name, "centred" if centred else "one-sided")] = np.array(errs)
    return errors


def plot_step_size(steps=STEPS, seed: int = 0, figsize=(7.5, 4.8)):
    """Error of finite differences against the step h (log-log), one-sided and centred, float64 and float32,
    from ``step_size_errors``. Returns the Figure."""
    import matplotlib.pyplot as plt

    errors = step_size_errors(steps, seed)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    styles = {("float64", "centred"): ("o-", "C0"), ("float64", "one-sided"): ("o--", "C1"),
              ("float32", "centred"): ("s-", "C2"), ("float32", "one-sided"): ("s--", "C3")}
    for key, errs in errors.items():
        style, color = styles[key]
        best = int(np.argmin(errs))
        ax.loglog(steps, errs, style, color=color, ms=4,
                  label=f"{key[0]}, {key[1]}: best {errs[best]:.0e} at h = {steps[best]:.0e}")
    ax.invert_xaxis()
    ax.set_xlabel("step h (smaller to the right)")
    ax.set_ylabel("max |numerical - exact| / max |exact|")
    ax.set_title("finite differences of a softmax cross-entropy: truncation error falls with h,\n"
                 "rounding error grows like eps / h", fontsize=10)
    ax.grid(alpha=0.3, which="major")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    return fig


def plot_gradient_agreement(columns: dict, title: str = "", figsize=(9, 5)):
    """Horizontal bars, log scale: for each parameter group (rows) the worst relative disagreement of each
    comparison in ``columns`` ({label: {group: error}}, e.g. from ``gradcheck.group_errors``). Returns the Figure."""
    import matplotlib.pyplot as plt

    labels = list(columns)
    groups = list(next(iter(columns.values())))
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    height = 0.8 / len(labels)
    for j, label in enumerate(labels):
        values = [max(columns[label][g], 1e-17) for g in groups]  # exact agreement drawn at the left edge
        ax.barh(np.arange(len(groups)) + (j - (len(labels) - 1) / 2) * height, values, height, label=label,
                color=f"C{j}")
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xscale("log")
    ax.set_xlim(1e-17, 1)
    ax.set_yticks(np.arange(len(groups)), groups)
    ax.invert_yaxis()
    ax.set_xlabel("worst max |a - b| / max |b| in the group")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    return fig
