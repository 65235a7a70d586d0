"""Rebuild the HTML report of a harmonize.py output folder.

    bh-report out/harmonized

Writes OUTPUT_DIR/report.html (one self-contained page: the run, the volumes that stand
out, each site's curve, and every output's figures and QC scores) from what the run
left there; harmonize.py writes it after every run unless --no-report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bh_jax.cli.common import Parser, run


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="bh-report", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("output_dir", help="a harmonize.py --output-dir")
    args = parser.parse_args(argv)

    def body() -> int:
        from bh_jax.harmonize.report import build_report, output_reports

        folder = Path(args.output_dir)
        if not folder.is_dir() or not output_reports(folder):
            raise ValueError(f"{folder}: no harmonize.py outputs (*_harmonized.json) there")
        print(f"report: {build_report(folder)}")
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
