"""The papers' trends checked against a table of the study: one plain statement per claim, with its numbers."""

from __future__ import annotations

from minideeplab.ablate.study import NARROW

__all__ = ["CLEARLY", "trends"]

CLEARLY = 10.0       # mIoU points: v3+ "beats the no-atrous baseline by at least 10"; the shallow net "clearly worse"


def trends(rows, width=NARROW) -> list[str]:
    """The course's claims checked against a table (records as ``read_csv`` or ``run_ablation`` return them),
    one plain statement each, with its numbers and "holds" / "does not hold" (or "not measured" when a row is
    missing). mIoU and trimap accuracy in points (%); boundary accuracy is the trimap accuracy within
    ``width`` pixels of a boundary."""
    by = {r["name"]: r for r in rows}
    tri = f"trimap_{width:g}"
    out = []

    def have(*names):
        missing = [n for n in names if n not in by]
        return not missing, f"not measured: needs row{'s' if len(missing) > 1 else ''} {', '.join(missing)}"

    def pts(name, key="miou"):
        return 100 * by[name][key]

    def verdict(ok):
        return "holds" if ok else "does not hold"

    def beats(a, b, key, what, threshold=None, claim=""):
        ok, why = have(a, b)
        if not ok:
            return f"{a} vs {b}, {what}: {why}"
        d = pts(a, key) - pts(b, key)
        need = (d >= threshold) if threshold is not None else d > 0
        return (f"{a} {'beats' if d >= 0 else 'trails'} {b} by {abs(d):.1f} {what} points ({pts(a, key):.1f} vs "
                f"{pts(b, key):.1f}; {claim}: {verdict(need)})")

    def ordered(names, key, what, claim):
        ok, why = have(*names)
        if not ok:
            return f"{claim}: {why}"
        values = [pts(n, key) for n in names]
        fails = [f"{names[i + 1]} {values[i + 1]:.1f} >= {names[i]} {values[i]:.1f}"
                 for i in range(len(names) - 1) if not values[i] > values[i + 1]]
        listing = ", ".join(f"{n} {v:.1f}" for n, v in zip(names, values))
        return f"{what}: {listing} ({claim}: {verdict(not fails)}{'; not where ' + '; '.join(fails) if fails else ''})"

    out.append(beats("v3plus-os16", "fcn", "miou", "mIoU", CLEARLY, f"the course asks >= {CLEARLY:g}"))
    out.append(ordered(["v3-os8", "v3-os16", "v3-os32"], tri,
                       f"output stride (v3), trimap accuracy at {width:g} px",
                       "a smaller output stride places boundaries better"))
    out.append(beats("v3plus-os8", "v3plus-os16", tri, f"trimap-{width:g}px",
                     claim="output stride 8 beats 16 at the boundaries (v3+)"))
    out.append(ordered(["v3-os8", "v3-os16", "v3-os32"], "miou", "output stride (v3), mIoU",
                       "a smaller output stride scores higher"))
    out.append(beats("v3plus-os16", "v3-os16", tri, f"trimap-{width:g}px",
                     claim="the decoder improves boundary accuracy"))
    out.append(beats("v3plus-os16", "v3-os16", "miou", "mIoU", claim="the decoder improves mIoU"))
    out.append(beats("v3-os16", "v3-os16-nopool", "miou", "mIoU", claim="image pooling helps"))
    out.append(beats("v3-os16", "v3-os16-paper-rates", "miou", "mIoU",
                     claim="rates scaled to the 8x8 map beat the paper's (6, 12, 18), two of whose branches "
                           "are 1x1 convs here"))
    out.append(beats("v3-os8", "v3-os8-paper-rates", "miou", "mIoU",
                     claim="rates scaled to the 16x16 map beat the paper's (12, 24, 36)"))
    ok, why = have("v3plus-os16-crf", "v3plus-os16")
    if ok:
        dm = pts("v3plus-os16-crf") - pts("v3plus-os16")
        dt = pts("v3plus-os16-crf", tri) - pts("v3plus-os16", tri)
        out.append(f"CRF on v3plus-os16: mIoU {dm:+.1f} points ({pts('v3plus-os16-crf'):.1f} vs "
                   f"{pts('v3plus-os16'):.1f}), trimap accuracy at {width:g} px {dt:+.1f} points "
                   f"({pts('v3plus-os16-crf', tri):.1f} vs {pts('v3plus-os16', tri):.1f}) (the papers: the CRF "
                   f"raises both: {verdict(dm > 0 and dt > 0)})")
    else:
        out.append(f"CRF: {why}")
    out.append(ordered(["v3plus-os16", "v3-os16", "v2", "v1", "fcn"], "miou", "mIoU by generation",
                       "each DeepLab beats the one before, and v1 beats the FCN"))
    out.append(beats("v3plus-os16", "shallow", "miou", "mIoU", CLEARLY,
                     f"a small field of view does clearly worse, >= {CLEARLY:g} points"))
    if rows:
        out.append(f"one seed per row ({rows[0].get('seed', '?')}): differences of a point or so may be noise")
    return out
