"""steps.quantile_sensitivity: the last layer dissected again at other activation quantiles."""

from dataclasses import replace

import pytest

from kdlib.dissect import dissect
from kdlib.layout import StudyFolder
from kdlib.params import load_study
from kdlib.runs import steps


@pytest.mark.slow
def test_each_quantile_is_a_direct_dissection_and_the_study_quantile_is_the_saved_one(tiny_dissected):
    path, root = tiny_dissected
    study = load_study(path)
    assert study.report.quantiles == [0.0025, 0.01]
    folder = StudyFolder(root)
    table = steps.quantile_sensitivity(study, folder, progress=False)
    layer = study.dissect.layers[-1]
    names = [n.name for n in steps.networks(study)]
    assert sorted(set(table["quantile"])) == [0.0025, 0.005, 0.01]
    assert len(table) == len(names) * 3 * 2 and set(table["layer"]) == {layer}
    saved = steps.dissections(study, folder)
    probe = steps.probe_set(study)
    for name in (names[0], names[-1]):  # a trained network and a null
        for thr in steps.IOU_THRESHOLDS:
            row = table[(table.network == name) & (table["quantile"] == 0.005) & (table.iou_threshold == thr)]
            assert row.detectors.item() == saved[name][layer].summary(thr).set_index("category").loc["total", "detectors"]
        model = next(n for n in steps.networks(study) if n.name == name).load(folder, 6)
        direct = dissect(model, probe, replace(study.dissect, quantile=0.01, layers=[layer]), progress=False)[layer]
        for thr in steps.IOU_THRESHOLDS:
            row = table[(table.network == name) & (table["quantile"] == 0.01) & (table.iou_threshold == thr)]
            assert row.detectors.item() == direct.summary(thr).set_index("category").loc["total", "detectors"]
    # the quantile changes what a unit's mask is: some network's count moves between quantiles
    counts = table.pivot_table(index=["network", "iou_threshold"], columns="quantile", values="detectors")
    assert (counts.nunique(axis=1) > 1).any()
    stamps = {p: p.stat().st_mtime_ns for p in (root / "sensitivity").rglob("done")}
    assert len(stamps) == len(names) * 2
    again = steps.quantile_sensitivity(study, folder, progress=False)
    assert again.equals(table) and {p: p.stat().st_mtime_ns for p in stamps} == stamps, "read back, not dissected again"
