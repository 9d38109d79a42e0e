"""Side-by-side markdown table of several `sd2ail-reward train` runs, from their metrics.csv.

One row per evaluation step, one column per run: true return, (x travelled), and D on expert /
agent where the discriminator trained. This is how benchmarks/README.md's tables of Hopper runs
are made from the committed CSVs:

    python benchmarks/runs_table.py "seed 0=benchmarks/results/hopper_..._seed0.csv" \
        "seed 1=benchmarks/results/hopper_..._seed1.csv" [--first-label "BC actor"]

Prints the table to stdout.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def cell(row: dict[str, str] | None) -> str:
    if row is None:
        return ""
    # `+ 0.0` turns a rounded -0.0 into 0.0
    text = f"{float(row['eval_return_mean']):.0f}"
    x = row.get("eval_x_travelled", "nan")
    if x != "nan":
        text += f" ({round(float(x), 1) + 0.0:.1f} m)"
    if row.get("d_agent", "nan") != "nan":
        text += f", D {float(row['d_expert']):.2f} / {float(row['d_agent']):.2f}"
    return text


def table(runs: dict[str, Path], first_label: str = "") -> str:
    data = {
        label: {int(r["env_step"]): r for r in csv.DictReader(path.open())}
        for label, path in runs.items()
    }
    steps = sorted(set().union(*data.values()))
    lines = [
        "| env steps | " + " | ".join(data) + " |",
        "|---|" + "---|" * len(data),
    ]
    for step in steps:
        label = f"{step // 1000}k" if step % 1000 == 0 else str(step)
        if step == steps[0] and first_label:
            label += f" ({first_label})"
        cells = " | ".join(cell(rows.get(step)) for rows in data.values())
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=METRICS_CSV, one per column")
    parser.add_argument("--first-label", default="", help="note on the first row's step")
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"expected LABEL=METRICS_CSV, got {spec!r}")
        runs[label] = Path(path)
    print(table(runs, args.first_label))


if __name__ == "__main__":
    main()
