"""Several `tools/settings_check.py` runs read as one: per-volume means over all their rows.

A split run as several sites (each run with `--subjects`, so that each group's site fit
sees only its own scans, as a test split's 5 scans are one site) is summarised over all
its subjects, with each method's margin over Nyul:

    python tools/merge_checks.py runs/g5-val/g1 runs/g5-val/g2 runs/g5-val/g3 runs/g5-val/g4

Every run must score the same methods with the same segmenter seeds on the same split;
runs of other sites add their sites (e.g. the shifts `log gamma0.7` in one run and
`exp gamma1.5` in another), and a volume scored in two runs is refused (it would count
twice). Each run records the seed its data set was drawn with, and subjects are named
`SEED:sub-XXX` (another seed's sub-019 is another subject), so runs of fresh samples
(`--phantom-seed N`) pool their subjects with the others', e.g. the test splits of six
samples as one set of 30 subjects:

    python tools/merge_checks.py runs/pooled/s0 runs/pooled/s2 runs/pooled/s3

Runs that record no seed (made before settings_check recorded it on every run) merge
only with each other: beside a run that records one, whether their sub-019 is the same
subject cannot be told, and the merge is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from noise_check import summary


def merged_rows(folders: list[Path]) -> list[dict]:
    """The rows of each folder's settings_check.json (a truth scored again by a run of
    other sites is kept once; subjects named `SEED:subject` where the run records its
    data set's seed); refuses runs of other methods, split or segmenter seeds, a run that
    records no seed beside one that does, or a source volume scored twice."""
    rows, seen, layout, first = [], set(), None, None  # first: (path, seed) of the first run
    for folder in folders:
        path = folder / "settings_check.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (has the run finished?)")
        run = json.loads(path.read_text())
        this = ({r["method"] for r in run["rows"] if r["site"] != "target"},
                run["segmenter_seeds"], run["split"])
        if layout is not None and this != layout:
            raise SystemExit(f"{path}: other methods, split or segmenter seeds than "
                             f"{folders[0]}")
        layout = this
        seed = run.get("phantom_seed")
        first = first or (path, seed)
        if (seed is None) != (first[1] is None):
            unknown, known = (path, first[0]) if seed is None else (first[0], path)
            raise SystemExit(f"{unknown}: records no data-set seed, so its subjects cannot be "
                             f"told from those of {known}; merge runs that record none only "
                             f"with each other, or run it again")
        for row in run["rows"]:
            if seed is not None:
                row = {**row, "subject": f"{seed}:{row['subject']}"}
            key = (row["site"], row["method"], row["subject"])
            if key in seen:
                if row["site"] != "target":
                    raise SystemExit(f"{path}: {row['subject']} at {row['site']} "
                                     f"({row['method']}) is already in an earlier run")
                continue
            seen.add(key)
            rows.append(row)
    return rows


def margins(rows: list[dict], baseline: str = "Nyul") -> str:
    """Markdown: per site and method, mean PSNR (dB) and WM Dice minus `baseline`'s, and
    how many subjects are below its Dice."""
    sites = list(dict.fromkeys(r["site"] for r in rows if r["site"] != "target"))
    names = [n for n in dict.fromkeys(r["method"] for r in rows if r["site"] != "target")
             if n != baseline]
    lines = [f"| method - {baseline} | " + " | ".join(sites) + " |",
             "|---|" + "---|" * len(sites)]
    base = {site: {r["subject"]: r for r in rows
                   if r["site"] == site and r["method"] == baseline} for site in sites}
    for name in names:
        cells = []
        for site in sites:
            mine = [r for r in rows if r["site"] == site and r["method"] == name]
            psnr = np.mean([r["psnr"] - base[site][r["subject"]]["psnr"] for r in mine])
            dice = [r["dice"] - base[site][r["subject"]]["dice"] for r in mine]
            below = sum(d < 0 for d in dice)
            cells.append(f"{psnr:+.2f} / {np.mean(dice):+.5f} ({below} below)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="settings_check.py --out folders")
    args = parser.parse_args()
    rows = merged_rows(args.folders)
    print(summary(rows))
    print()
    print(margins(rows))


if __name__ == "__main__":
    main()
