"""How much white-matter Dice removing the target's own bias field could give (an oracle).

Every phantom scan carries a random smooth multiplicative field, the target site's
too (docs/data.md), and so do the shifts, which are intensity maps of the target's
image. The default divides each scan by a quadratic field fitted by the flow's
likelihood, then maps it by a blend of its site's and its own Nyul maps. This check
asks what that model could reach at best, on the split's target-site images (the
truth: a shift inverted exactly): each is re-rendered from its seed to recover the
field the phantom multiplied it by (the data set does not store fields; the
re-rendered image must equal the stored one), then scored by a target-trained
segmenter as it is, divided by its true field, and divided by the quadratic log-field
(the default's nine terms, plus a constant) closest to the true one in least squares,
each through blends of the site's and its own Nyul map (`nyul_blend_check.blends`;
v = 1: Nyul). Nyul on each of `--sites` as it is, the bar the default must reach, is
scored beside them.

    python tools/field_oracle.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo --out runs/field-oracle --split test \
        --sites log gamma0.7 exp gamma1.5

Validation subjects by default. The segmenter is trained as `bh-bench quality` trains
it (1000 steps), or reused from OUT/segmenter.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import nibabel as nib
import numpy as np
from noise_check import (
    check_parser,
    open_check,
    scores,
    site_volumes,
    trained_segmenter,
)
from nyul_blend_check import blends, dice_margins, parsed_with_weights

from bh_jax.config import PhantomConfig
from bh_jax.data import phantom
from bh_jax.data.manifest import prepare_entry
from bh_jax.harmonize.transform import brain_box, field_basis

WEIGHTS = (0.0, 0.375, 1.0)


@contextmanager
def recorded_fields():
    """Collects every smooth random field the phantom draws while inside."""
    fields, draw = [], phantom._smooth_field

    def recording(rng, shape, sigma):
        fields.append(draw(rng, shape, sigma))
        return fields[-1]

    phantom._smooth_field = recording
    try:
        yield fields
    finally:
        phantom._smooth_field = draw


def target_log_field(manifest: dict, entry: dict) -> np.ndarray:
    """float64 log of the field the phantom multiplied `entry`'s target-site image by
    (its image grid). The target's field is the last field drawn when the subject's
    target-site image is rendered. Raises ValueError if the re-rendered image is not
    the stored one (another phantom version or seed)."""
    config = PhantomConfig(**manifest["config"])
    index = int(entry["subject"].removeprefix("sub-"))
    with recorded_fields() as fields:
        _, rendered = phantom.render_subject(config, index, sites=(phantom.TARGET_SITE,))
    stored = np.asarray(nib.load(entry["path"]).dataobj, np.float32)
    if not np.array_equal(stored, rendered[phantom.TARGET_SITE]):
        raise ValueError(f"{entry['path']}: re-rendering {entry['subject']} does not give the "
                         "stored image, so its field cannot be recovered")
    return phantom.SITES[phantom.TARGET_SITE].bias * np.asarray(fields[-1], np.float64)


def quadratic_fit(log_field: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The log-field of the default's form (a constant and `field_basis`'s nine terms
    of world positions over the brain's box) closest to `log_field` inside `mask` in
    least squares; zero outside the mask."""
    inside = np.asarray(mask, bool)
    world = nib.affines.apply_affine(affine, np.argwhere(inside))
    center, half = brain_box(world)
    basis = np.column_stack([np.ones(len(world)), field_basis(world, center, half)])
    coefficients = np.linalg.lstsq(basis, log_field[inside], rcond=None)[0]
    fitted = np.zeros(log_field.shape)
    fitted[inside] = basis @ coefficients
    return fitted


def field_free(manifest: dict, entry: dict, folder) -> dict[str, dict]:
    """{'truth / its field': entry, 'truth / quadratic fit': entry} of the entry's
    target-site image divided by its true field and by that field's quadratic fit,
    written as NIfTI into `folder`."""
    image = nib.load(entry["path"])
    mask = np.asarray(nib.load(entry["mask"]).dataobj) > 0
    log_field = target_log_field(manifest, entry)
    divisors = {"truth / its field": ("true", log_field),
                "truth / quadratic fit": ("quadratic", quadratic_fit(log_field, mask,
                                                                     image.affine))}
    entries = {}
    for name, (stem, log_divisor) in divisors.items():
        data = np.asarray(image.dataobj, np.float64) * np.exp(-log_divisor) * mask
        path = folder / f"{entry['subject']}_{stem}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), image.affine, image.header), str(path))
        entries[name] = {**entry, "path": str(path)}
    return entries


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="*", default=[],
                        help="also score Nyul on these sites' scans as they are")
    args = parsed_with_weights(parser, WEIGHTS)

    flow, manifest, out = open_check(args)
    data = flow.config.data
    segmenter = trained_segmenter(out, None, data, manifest)
    scale = flow.reference.nyul_scale()
    folder = out / "volumes"
    folder.mkdir(exist_ok=True)

    entries, truths, _, labels = site_volumes(manifest, args.split, manifest["target_site"],
                                              data)
    divided = [field_free(manifest, e, folder) for e in entries]
    variants = {"truth": truths, **{name: [prepare_entry(d[name], data) for d in divided]
                                    for name in divided[0]}}
    rows = []
    for variant, volumes in variants.items():
        for v, outputs in blends(volumes, scale, args.weights).items():
            for entry, truth, wm, output in zip(entries, truths, labels, outputs, strict=True):
                rows.append({"site": variant, "subject": entry["subject"], "method": v,
                             **scores(output, truth, wm, segmenter)})
        rows += [{"site": variant, "subject": e["subject"], "method": "as it is",
                  **scores(p.slices, t, wm, segmenter)}
                 for e, p, t, wm in zip(entries, volumes, truths, labels)]
        print(f"{variant}: done", flush=True)
    for site in args.sites:
        site_entries, sources, site_truths, site_labels = site_volumes(manifest, args.split,
                                                                       site, data)
        for entry, truth, wm, output in zip(site_entries, site_truths, site_labels,
                                            blends(sources, scale, [1.0])["v=1"], strict=True):
            rows.append({"site": site, "subject": entry["subject"], "method": "v=1",
                         **scores(output, truth, wm, segmenter)})
    (out / "field_oracle.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "weights": args.weights,
         "checkpoint": args.checkpoint}, indent=1))
    print(oracle_table(rows))
    print("\nWM Dice against Nyul's (v = 1) of the same images, subject by subject:")
    print(dice_margins([r for r in rows if r["method"] != "as it is"]))


def oracle_table(rows: list[dict]) -> str:
    """Markdown: per image (row) and method (column), mean PSNR / WM Dice over subjects."""
    images = list(dict.fromkeys(r["site"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| image | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for image in images:
        cells = []
        for method in methods:
            mine = [r for r in rows if r["site"] == image and r["method"] == method]
            cells.append(f"{np.mean([r['psnr'] for r in mine]):.2f} / "
                         f"{np.mean([r['dice'] for r in mine]):.4f}" if mine else "")
        lines.append(f"| {image} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
