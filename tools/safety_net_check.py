"""Does the safety net flag the volumes that need it? (validation)

The default scores each output and Nyul's map of the same scan by the prior's
change-of-variables likelihood (bits/dim) and flags the output where Nyul's scores
higher (`pipeline.safety_net`). This check runs the default on each site's
validation volumes, one site fit per site, and records per volume the two scores and
both methods' in-mask PSNR and SSIM against the truth, so that a flag rule can be
read against what it should catch: an output below Nyul's.

    python tools/safety_net_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo-val20 --out runs/safety-net \
        --sites log exp siteA siteC --subjects sub-016 sub-017 sub-018 sub-024 sub-025

`--intruder SITE` adds, to every site's volumes, the first subject's scan from SITE
(a scan grouped with the wrong site, the failure the net is for), scored with the
site it was grouped with. Writes OUT/safety_net_check.json (rows) and prints them.
"""

from __future__ import annotations

import json

from noise_check import check_parser, mean_scores, open_check, site_volumes

from bh_jax.experiments.evaluate import classical_methods
from bh_jax.harmonize.methods import flow_method
from bh_jax.harmonize.settings import default_settings


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="+", required=True)
    parser.add_argument("--subjects", nargs="+", help="only these subjects (sites of them)")
    parser.add_argument("--intruder", help="a site whose first scan joins every site")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    flow, manifest, out = open_check(args)
    data = flow.config.data
    default = flow_method(flow, "blindharmony", default_settings(), args.batch_size)
    nyul = classical_methods(flow.reference)["Nyul"]
    rows = []
    for site in args.sites:
        entries, sources, truths, _ = site_volumes(manifest, args.split, site, data,
                                                   args.subjects)
        labels = [e["subject"] for e in entries]
        if args.intruder and args.intruder != site:
            extra, source, truth, _ = site_volumes(manifest, args.split, args.intruder, data,
                                                   args.subjects)
            labels, sources, truths = (labels + [f"{extra[0]['subject']} ({args.intruder})"],
                                       sources + source[:1], truths + truth[:1])
        results = default.harmonize(sources, None)
        for label, result, theirs, truth in zip(labels, results, nyul(sources), truths,
                                                strict=True):
            bits = result.notes.get("bits_per_dim", {})
            rows.append({"site": site, "subject": label,
                         "bpd_default": bits.get("transform"), "bpd_nyul": bits.get("nyul"),
                         "flag": result.notes.get("flag"),
                         "default": mean_scores(result.slices, truth),
                         "nyul": mean_scores(theirs, truth)})
            print(json.dumps(rows[-1]), flush=True)
    (out / "safety_net_check.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "checkpoint": args.checkpoint}, indent=1))


if __name__ == "__main__":
    main()
