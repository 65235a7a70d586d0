"""How many volumes would each safety-net margin flag? (reads safety_net_check runs)

    python tools/safety_net_margins.py runs/sn-g1 runs/sn-g2 runs/sn-g1-intruder \
        --margins 0 0.05 0.1 0.2

Per run and site: the volumes, how many are below Nyul's PSNR, the largest gap
(the output's bits/dim minus Nyul's map's) and how many volumes each margin flags
(gap > margin); a site with an intruder (`--intruder`) counts its own volumes and
the intruder apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def site_rows(folder: Path) -> dict[str, list[dict]]:
    rows = json.loads((folder / "safety_net_check.json").read_text())["rows"]
    sites: dict[str, list[dict]] = {}
    for row in rows:
        sites.setdefault(row["site"], []).append(row)
    return sites


def margin_table(folders: list[Path], margins: list[float]) -> str:
    lines = ["| run | site | volumes | below Nyul's PSNR | largest gap | "
             + " | ".join(f"flagged at {m:g}" for m in margins) + " |",
             "|---|---|---|---|---|" + "---|" * len(margins)]
    for folder in folders:
        for site, rows in site_rows(folder).items():
            gaps = [r["bpd_default"] - r["bpd_nyul"] for r in rows]
            below = sum(r["default"]["psnr"] < r["nyul"]["psnr"] for r in rows)
            counts = [sum(g > m for g in gaps) for m in margins]
            intruder = [g for r, g in zip(rows, gaps) if "(" in r["subject"]]
            note = f" (intruder's gap {intruder[0]:+.3f})" if intruder else ""
            lines.append(f"| {folder.name} | {site}{note} | {len(rows)} | {below} | "
                         f"{max(gaps):+.3f} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--margins", nargs="+", type=float, default=[0.0, 0.05, 0.1, 0.2])
    args = parser.parse_args()
    print(margin_table(args.runs, args.margins))


if __name__ == "__main__":
    main()
