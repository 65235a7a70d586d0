"""report.html's choice of the volumes that stand out (the page itself: tests/cli)."""

from bh_jax.harmonize.report import attention


def _report(name, bpd, **extra):
    return {"output": f"/out/{name}_harmonized.nii.gz", "input": f"/in/siteA/{name}.nii.gz",
            "diagnostics": {"bpd_result": bpd, "failed": [False] * len(bpd)}, **extra}


def test_a_broken_volume_stands_out_and_the_others_do_not():
    usual = [_report(f"s{i}", [4.0 + 0.01 * i, 4.1]) for i in range(5)]
    broken = _report("broken", [6.5, 7.0])
    flat = _report("flat", [4.0, 4.1], calibration={"flag": "the prior scores Nyul's map higher"})
    window = _report("big", [4.02, 4.1], brain_outside_window=0.2)
    nan = _report("nan", [float("nan"), 4.0])
    flagged = attention(usual + [broken, flat, window, nan])
    assert set(flagged) == {f"{n}_harmonized.nii.gz" for n in ("broken", "flat", "big", "nan")}
    assert "far above its site's median" in flagged["broken_harmonized.nii.gz"][0]
    assert flagged["flat_harmonized.nii.gz"] == ["the prior scores Nyul's map higher"]
    assert "20% of the brain" in flagged["big_harmonized.nii.gz"][0]
    assert "not finite" in flagged["nan_harmonized.nii.gz"][0]
    assert attention(usual) == {}
    # Another site's volumes are not compared with these (its noise differs).
    other = [dict(_report(f"o{i}", [7.0, 7.1]), input=f"/in/siteB/o{i}.nii.gz") for i in range(3)]
    assert attention(usual + other) == {}
    assert attention([{"output": "/out/hm_harmonized.nii.gz", "input": "/in/hm.nii.gz"}]) == {}
    hm = {"output": "/out/hm_harmonized.nii.gz", "input": "/in/hm.nii.gz", "site": None,
          "calibration": None, "diagnostics": None, "brain_outside_window": None}
    assert attention([hm]) == {}  # a classical method's report: these are null


def test_a_mostly_flagged_site_gets_a_hint_about_its_grouping():
    """The safety net flagging at least 2 and at least half of a site's volumes points
    at the site's grouping; 1 of 5 flagged, or another site's flags, does not."""
    flag = {"flag": "the prior scores Nyul's map 0.2 bits/dim higher"}
    site = [_report(f"s{i}", [4.0, 4.1], calibration=flag if i < 3 else {}) for i in range(5)]
    flagged = attention(site)
    assert set(flagged) == {f"s{i}_harmonized.nii.gz" for i in range(3)}
    for reasons in flagged.values():
        assert reasons[0] == flag["flag"]
        assert reasons[1].startswith("3 of the 5 volumes of its site are flagged")
    one = [_report(f"s{i}", [4.0, 4.1], calibration=flag if i == 0 else {}) for i in range(5)]
    other = [dict(_report(f"o{i}", [4.0, 4.1], calibration=flag), input=f"/in/siteB/o{i}.nii.gz")
             for i in range(2)]
    flagged = attention(one + other)
    assert flagged["s0_harmonized.nii.gz"] == [flag["flag"]]
    assert all(len(flagged[f"o{i}_harmonized.nii.gz"]) == 2 for i in range(2))


def test_planes_keep_the_voxel_aspect_whatever_the_voxel_order(tmp_path):
    """1x1x3 mm voxels in axial and in coronal order: the same (canonical) aspects."""
    import nibabel as nib
    import numpy as np

    from bh_jax.harmonize.report import _aspects

    axial = np.diag([1.0, 1.0, 3.0, 1.0])
    coronal = axial[:, [0, 2, 1, 3]]
    for name, affine, shape in (("a", axial, (4, 5, 6)), ("c", coronal, (4, 6, 5))):
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), tmp_path / f"{name}.nii")
        assert _aspects(str(tmp_path / f"{name}.nii")) == [1.0, 3.0, 3.0]
