"""Two runs' metrics.csv side by side: do they hold the same numbers?

    python bench/compare_summaries.py before/metrics.csv results/summary/metrics.csv

Rows are matched on every column but `value`; prints how many match within the
tolerance, the largest differences, and the rows only one side has (a metric added or
dropped). Exit status 1 when a shared number differs beyond the tolerance.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--show", type=int, default=10, help="differences and extra rows shown")
    args = parser.parse_args()
    before, after = pd.read_csv(args.before), pd.read_csv(args.after)
    keys = [c for c in before.columns if c != "value"]
    both = before.merge(after, on=keys, how="outer", suffixes=("_before", "_after"),
                        indicator=True)
    shared = both[both["_merge"] == "both"].copy()
    a, b = shared["value_before"].to_numpy(float), shared["value_after"].to_numpy(float)
    same = np.isclose(a, b, rtol=args.rtol, atol=args.atol, equal_nan=True)
    shared["difference"] = np.abs(a - b)
    print(f"{len(shared)} shared numbers: {int(same.sum())} equal within rtol {args.rtol:g}, "
          f"atol {args.atol:g}; largest difference {np.nanmax(shared['difference']):.3g}")
    worst = shared.sort_values("difference", ascending=False).head(args.show)
    print(worst[[*keys, "value_before", "value_after"]].to_string(index=False))
    for side in ("left_only", "right_only"):
        rows = both[both["_merge"] == side]
        name = "only before" if side == "left_only" else "only after"
        metrics = sorted(rows["metric"].str.replace(r"\[\d+\]", "[i]", regex=True).unique())
        print(f"{len(rows)} rows {name}; metrics: {metrics[: args.show]}"
              + (" ..." if len(metrics) > args.show else ""))
    sys.exit(0 if same.all() else 1)


if __name__ == "__main__":
    main()
