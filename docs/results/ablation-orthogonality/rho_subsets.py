"""Spearman's rho between update CV and final val loss over subsets of the orthogonality ablation's runs.

Reads the summary.json that `rotadam sweep --ablation orthogonality` writes (its `update_cv.runs`) and
prints rho over all runs, over AdamW's runs, over AdamW's runs without soap (the rotations of one
optimizer), and over the variants' means. Ties get mean ranks; rho is Pearson's correlation of the ranks.

    python3 docs/results/ablation-orthogonality/rho_subsets.py docs/results/ablation-orthogonality/summary.json
"""
import json
import statistics
import sys


def ranks(x):
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            r[k] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5


def main(path):
    runs = json.load(open(path))["update_cv"]["runs"]
    subsets = [
        ("all runs", None),
        ("AdamW (none, global, svd, soap)", {"none", "global", "svd", "soap"}),
        ("AdamW's rotations (none, global, svd)", {"none", "global", "svd"}),
    ]
    for name, keep in subsets:
        sel = [r for r in runs if keep is None or r["variant"] in keep]
        y = [r["final_val"] for r in sel]
        print(
            f"{name}: {len(sel)} runs, rho(mean CV) = {spearman([r['mean_cv'] for r in sel], y):+.2f}, "
            f"rho(last CV) = {spearman([r['last_cv'] for r in sel], y):+.2f}"
        )
    by = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r)
    means = [
        [statistics.mean(r[k] for r in v) for k in ("mean_cv", "last_cv", "final_val")]
        for v in by.values()
    ]
    y = [m[2] for m in means]
    print(
        f"variant means: {len(means)} points, rho(mean CV) = {spearman([m[0] for m in means], y):+.2f}, "
        f"rho(last CV) = {spearman([m[1] for m in means], y):+.2f}"
    )


if __name__ == "__main__":
    main(sys.argv[1])
