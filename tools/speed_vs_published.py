"""Equal work, side by side: the `reference` flow's forward + inverse pass here and in the
published BlindHarmony code (PyTorch, CPU), from one run (issue 31).

    python tools/speed_vs_published.py --torch-python TORCH_VENV/bin/python \\
        --ref-repo REF_CHECKOUT --ref-script ../shared/anchors/ref_speed.py --batch 4 8

Set-up of the published side (once, outside this project's venv), as the timing script's
header says; torch's own requirements conflict with `setuptools<70` in one resolve, so
in two steps:

    python3 -m venv TORCH_VENV
    TORCH_VENV/bin/pip install torch numpy scipy matplotlib sacred tensorboardX
    TORCH_VENV/bin/pip install --no-deps 'setuptools<70'
    git clone https://github.com/Hwihuni/BlindHarmony REF_CHECKOUT

Each side runs in its own fresh process, one after the other (never at the same time), for
each batch size and `--rounds` times, alternating; the best round of each is kept. Both
time the round trip the same way: one untimed call, then the mean of two timed calls
(`ref_speed.py`'s rule; `ROUND_TRIP_CALLS` here). Prints one line per round and a table
with the ratio (ours / published; above 1: ours is faster).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROUND_TRIP_CALLS = 2
HEIGHT, WIDTH = 144, 176  # the `reference` preset's slice

OURS = f"""
import sys, time
import jax
from bh_jax.config import get_preset
from bh_jax.flows.model import FlowModel
batch = int(sys.argv[1])
config = get_preset("reference")
model = FlowModel(config.flow, config.data.height, config.data.width)
x = jax.random.uniform(jax.random.PRNGKey(0), (batch, *model.image_shape))
params = jax.jit(model.init)(jax.random.PRNGKey(1), x)
round_trip = jax.jit(lambda p, v: model.decode(p, model.encode(p, v)))
round_trip(params, x).block_until_ready()
start = time.perf_counter()
for _ in range({ROUND_TRIP_CALLS}):
    y = round_trip(params, x).block_until_ready()
seconds = (time.perf_counter() - start) / {ROUND_TRIP_CALLS}
print(f"ours jax {{batch / seconds:.3f}} slices/s, max error {{float(abs(y - x).max()):.2g}}")
"""


def ours(batch: int) -> float:
    out = subprocess.run([sys.executable, "-c", OURS, str(batch)], check=True,
                         capture_output=True, text=True).stdout
    print("  " + out.strip(), flush=True)
    return float(re.search(r"([\d.]+) slices/s", out).group(1))


def published(args, batch: int) -> float:
    out = subprocess.run([args.torch_python, args.ref_script, str(HEIGHT), str(WIDTH),
                          str(batch)], check=True, capture_output=True, text=True,
                         env={"REF_REPO": str(args.ref_repo), "PATH": "/usr/bin:/bin"}).stdout
    line = out.strip().splitlines()[-1]
    print("  " + line, flush=True)
    return float(re.search(r"([\d.]+) slice-iters/s", line).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", required=True, help="python of the torch venv")
    parser.add_argument("--ref-repo", required=True, type=Path,
                        help="checkout of Hwihuni/BlindHarmony")
    parser.add_argument("--ref-script", required=True, type=Path,
                        help="the published code's timing script (ref_speed.py)")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for batch in args.batch:
        best_ours = best_published = 0.0
        for round_ in range(args.rounds):
            print(f"batch {batch}, round {round_ + 1}:", flush=True)
            best_ours = max(best_ours, ours(batch))
            best_published = max(best_published, published(args, batch))
        rows.append((batch, best_ours, best_published))
    print("\n| batch | bh_jax (slices/s) | published PyTorch (slices/s) | ratio |")
    print("|---|---|---|---|")
    for batch, mine, theirs in rows:
        print(f"| {batch} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f}x |")


if __name__ == "__main__":
    main()
