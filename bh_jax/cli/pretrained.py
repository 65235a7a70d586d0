"""The shipped checkpoints: list them, or ship the best state of a training folder.

    bh-pretrained list
    bh-pretrained export runs/demo-v2 --name demo --command "bh-train ..." \\
        --training-time "57 min" --machine "2-core CPU"
"""

from __future__ import annotations

import json
import sys

from bh_jax import pretrained
from bh_jax.cli.common import Parser, run


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="bh-pretrained", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command_name", required=True)
    sub.add_parser("list", help="the shipped checkpoints and their provenance")
    ex = sub.add_parser("export", help="ship the best state of a training folder")
    ex.add_argument("workdir")
    ex.add_argument("--name", required=True)
    ex.add_argument("--command", required=True, help="the command that trained it")
    ex.add_argument("--training-time", required=True)
    ex.add_argument("--machine", required=True)
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command_name == "list":
            for name in pretrained.available():
                print(name, json.dumps(pretrained.provenance(name), indent=2))
            return 0
        out = pretrained.export(args.workdir, args.name, args.command, args.training_time,
                                args.machine)
        print(f"exported {args.workdir} -> {out}")
        print((out / pretrained.PROVENANCE_FILE).read_text())
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())

