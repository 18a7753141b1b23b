"""The paper's analyses of per-case DSC: paired comparison of two prediction sets
(Wilcoxon signed-rank, violin plot as in Figure 2) and DSC against tumour volume change
(Spearman, scatter plot as in Figure 4).

Both use the cases whose mid-RT ground truth contains the structure, where DSC is
defined and meaningful (an empty ground truth gives DSC 0 or NaN, not a shape match).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hntseg.errors import InputError
from hntseg.evaluate import find_masks, match_cases, score
from hntseg.figures import save_png
from hntseg.io import LABEL_NAMES, nan_to_null, read_mask, write_json, write_text


def _nonempty_dsc(rows: Sequence[dict[str, Any]], name: str) -> dict[str, float]:
    return {r["id"]: r["dsc"] for r in rows if r["structure"] == name and r["gt_mm3"] > 0}


def wilcoxon_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples (NaN with no pairs)."""
    from scipy import stats

    if len(a) == 0:
        return math.nan
    if np.allclose(a, b, rtol=0, atol=0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(a, b).pvalue)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(rho, p); NaN for fewer than 3 points or a constant input."""
    from scipy import stats

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- compare


def compare(
    a_dir: str | Path,
    b_dir: str | Path,
    gt_dir: str | Path,
    out: str | Path | None = None,
    names: tuple[str, str] = ("A", "B"),
    allow_missing: bool = False,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Paired per-case DSC of two prediction sets against the same ground truth, with a
    Wilcoxon signed-rank p-value per structure; `ids` limits it to those ground-truth
    patients (None: all). With `out`: compare.csv, compare.json and compare.png (violins
    as the paper's Figure 2)."""
    cases_a = match_cases(a_dir, gt_dir, allow_missing, ids)
    cases_b = match_cases(b_dir, gt_dir, allow_missing, ids)
    rows_a, _ = score(a_dir, gt_dir, ("dsc",), allow_missing=allow_missing, cases=cases_a)
    rows_b, _ = score(b_dir, gt_dir, ("dsc",), allow_missing=allow_missing, cases=cases_b)
    selected = None if ids is None else [c[0] for c in cases_a]
    result: dict[str, Any] = {"names": list(names), "ids": selected, "structures": {}}
    table = ["id,structure," + ",".join(f"dsc_{n}" for n in names)]
    for name in LABEL_NAMES.values():
        da, db = _nonempty_dsc(rows_a, name), _nonempty_dsc(rows_b, name)
        ids = [i for i in da if i in db]
        a = np.array([da[i] for i in ids], float)
        b = np.array([db[i] for i in ids], float)
        table += [
            f"{i},{name},{x!r},{y!r}" for i, x, y in zip(ids, a.tolist(), b.tolist(), strict=True)
        ]
        result["structures"][name] = {
            "n": len(ids),
            "ids": ids,
            f"mean_{names[0]}": float(a.mean()) if ids else math.nan,
            f"mean_{names[1]}": float(b.mean()) if ids else math.nan,
            f"median_{names[0]}": float(np.median(a)) if ids else math.nan,
            f"median_{names[1]}": float(np.median(b)) if ids else math.nan,
            "wilcoxon_p": wilcoxon_p(a, b),
            "dsc": {names[0]: a.tolist(), names[1]: b.tolist()},
        }
    if out is not None:
        out = Path(out)
        write_text(out / "compare.csv", "\n".join(table) + "\n")
        write_json(out / "compare.json", nan_to_null(result))
        plot_compare(result, out / "compare.png")
    return result


def plot_compare(result: dict[str, Any], path: str | Path) -> Path:
    """Violin plot of paired DSC per structure, with the cases' points and pairing lines."""
    from matplotlib.figure import Figure

    names = result["names"]
    fig = Figure(figsize=(8, 4))
    axes = fig.subplots(1, len(LABEL_NAMES), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), LABEL_NAMES.values(), strict=True):
        entry = result["structures"][name]
        data = [np.asarray(entry["dsc"][n], float) for n in names]
        if all(len(d) >= 2 and np.ptp(d) > 0 for d in data):
            parts = ax.violinplot(data, positions=[1, 2], showmedians=True, widths=0.8)
            for body, colour in zip(parts["bodies"], ("tab:grey", "tab:blue"), strict=True):
                body.set_facecolor(colour)
                body.set_alpha(0.4)
        for x, y in zip(*data, strict=True):
            ax.plot([1, 2], [x, y], color="0.6", lw=0.6, zorder=1)
        for pos, d, colour in zip((1, 2), data, ("tab:grey", "tab:blue"), strict=True):
            ax.scatter(np.full(len(d), pos), d, s=12, color=colour, zorder=2)
        p = entry["wilcoxon_p"]
        ax.set_title(f"{name} (n={entry['n']}, Wilcoxon p={p:.3g})", fontsize=10)
        ax.set_xticks([1, 2], names)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("DSC per case")
    fig.tight_layout()
    return save_png(fig, path)


# --------------------------------------------------------------------------- volume change


def structure_volumes_ml(path: str | Path) -> dict[str, float]:
    """Volume of each structure (mL) in a mask on its own grid."""
    import SimpleITK as sitk

    image = read_mask(path, "pre-RT mask")
    counts = np.bincount(sitk.GetArrayViewFromImage(image).ravel(), minlength=3)
    sx, sy, sz = image.GetSpacing()
    voxvol = sx * sy * sz
    return {name: float(counts[label]) * voxvol / 1000.0 for label, name in LABEL_NAMES.items()}


def volume_change(
    pred_dir: str | Path,
    gt_dir: str | Path,
    pre_dir: str | Path,
    out: str | Path | None = None,
    bins: Sequence[float] = (5.0, 20.0),
    allow_missing: bool = False,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Spearman correlation of tumour volume change (pre-RT minus mid-RT, mL) with DSC per
    structure, over all cases with the structure in the mid-RT ground truth and within
    bins of mid-RT volume (edges in mL); `ids` limits it to those ground-truth patients
    (None: all). With `out`: volume_change.csv / .json / .png."""
    edges = [0.0, *sorted(float(b) for b in bins), math.inf]
    if any(not (0 < e < math.inf) for e in edges[1:-1]):  # NaN fails too
        raise InputError(f"--bins {list(bins)}: edges must be positive mL")
    cases = match_cases(pred_dir, gt_dir, allow_missing, ids)
    rows, _ = score(pred_dir, gt_dir, ("dsc",), allow_missing=allow_missing, cases=cases)
    pres = find_masks(pre_dir, "pre-RT mask")
    selected = None if ids is None else [c[0] for c in cases]
    ids = list(dict.fromkeys(r["id"] for r in rows))
    lacking = [i for i in ids if i not in pres]
    if lacking:
        raise InputError(
            f"{Path(pre_dir) / (lacking[0] + '_preRT_mask.nii.gz')}: no pre-RT mask for "
            f"patient {lacking[0]}"
        )
    pre_vol = {i: structure_volumes_ml(pres[i]) for i in ids}
    labels = [f"[{lo:g}, {hi:g}) mL" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    result: dict[str, Any] = {"bins_ml": edges[1:-1], "ids": selected, "structures": {}}
    table = ["id,structure,pre_ml,mid_ml,change_ml,dsc,bin"]
    for name in LABEL_NAMES.values():
        sel = [r for r in rows if r["structure"] == name and r["gt_mm3"] > 0]
        mid = np.array([r["gt_mm3"] / 1000.0 for r in sel])
        pre = np.array([pre_vol[r["id"]][name] for r in sel])
        change = pre - mid
        dsc = np.array([r["dsc"] for r in sel])
        which = np.digitize(mid, edges[1:-1], right=False)
        rho, p = spearman(change, dsc)
        per_bin = []
        for k, label in enumerate(labels):
            m = which == k
            r_k, p_k = spearman(change[m], dsc[m])
            per_bin.append({"bin": label, "n": int(m.sum()), "rho": r_k, "p": p_k})
        result["structures"][name] = {
            "n": len(sel),
            "rho": rho,
            "p": p,
            "bins": per_bin,
            "points": [
                {
                    "id": r["id"],
                    "pre_ml": a,
                    "mid_ml": b,
                    "change_ml": c,
                    "dsc": d,
                    "bin": labels[k],
                }
                for r, a, b, c, d, k in zip(sel, pre, mid, change, dsc, which, strict=True)
            ],
        }
        table += [
            f"{r['id']},{name},{a!r},{b!r},{c!r},{d!r},{labels[k]}"
            for r, a, b, c, d, k in zip(
                sel, pre.tolist(), mid.tolist(), change.tolist(), dsc.tolist(), which, strict=True
            )
        ]
    if out is not None:
        out = Path(out)
        write_text(out / "volume_change.csv", "\n".join(table) + "\n")
        write_json(out / "volume_change.json", nan_to_null(result))
        plot_volume_change(result, out / "volume_change.png")
    return result


def plot_volume_change(result: dict[str, Any], path: str | Path) -> Path:
    """Scatter of DSC against volume change per structure, coloured by mid-RT volume bin."""
    import matplotlib
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, len(LABEL_NAMES), sharey=True)
    colours = matplotlib.colormaps["viridis"]
    for ax, name in zip(np.atleast_1d(axes), LABEL_NAMES.values(), strict=True):
        entry = result["structures"][name]
        bins = [b["bin"] for b in entry["bins"]]
        for k, b in enumerate(entry["bins"]):
            pts = [p for p in entry["points"] if p["bin"] == b["bin"]]
            rho = "n/a" if not math.isfinite(b["rho"]) else f"{b['rho']:.2f}"
            ax.scatter(
                [p["change_ml"] for p in pts],
                [p["dsc"] for p in pts],
                s=18,
                color=colours(k / max(1, len(bins) - 1)),
                label=f"mid {b['bin']}: n={b['n']}, rho={rho}",
            )
        rho = "n/a" if not math.isfinite(entry["rho"]) else f"{entry['rho']:.2f}"
        p = "" if not math.isfinite(entry["p"]) else f", p={entry['p']:.3g}"
        ax.set_title(f"{name}: Spearman rho={rho}{p} (n={entry['n']})", fontsize=10)
        ax.set_xlabel("volume change, pre-RT - mid-RT (mL)")
        ax.axvline(0, color="0.7", lw=0.6)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    np.atleast_1d(axes)[0].set_ylabel("DSC per case")
    fig.tight_layout()
    return save_png(fig, path)
