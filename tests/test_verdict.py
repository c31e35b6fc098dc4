"""kdlib.runs.verdict on hand-made claims tables: every claim with its numbers, counted and sorted by verdict."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from kdlib.errors import KdlibError
from kdlib.runs.verdict import evidence, paragraph

NAN = math.nan


def _claim(claim, a, verdict, mean, low, high, p, n, expect="greater"):
    return {"claim": claim, "a": a, "b": "scratch", "expect": expect, "diff_mean": mean, "diff_low": low,
            "diff_high": high, "diff_sd": 1.0, "diff_n": n, "diff_level": 0.95, "t": 3.0, "p": p, "verdict": verdict}


CLAIMS = pd.DataFrame([
    _claim("KD has more detectors", "kd", "held", 5.0, 2.5, 7.5, 0.0123, 3),
    _claim("LS has fewer detectors", "ls", "opposite", 2.0, 0.5, 3.5, 0.04, 3, expect="less"),
    _claim("KD is more accurate", "kd", "undecided", 0.01, -0.02, 0.04, 0.4, 3),
    _claim("KD has a higher DiffROAR", "kd", "undecided", 0.0185, NAN, NAN, NAN, 1),
    {"claim": "KD has more part detectors", "a": "kd", "b": "scratch", "verdict": "no data", "n": 0},
])


def test_the_paragraph_counts_and_quotes_every_claim():
    text = paragraph(CLAIMS)
    assert "\n" not in text
    assert text.startswith("Of the 5 claims judged on up to 3 seeds (a claim holds when the 95% interval of a - b "
                           "excludes 0 in the paper's direction), 1 held, 1 went the opposite way, 2 are undecided and 1 had no data.")
    assert "Held: KD has more detectors (kd - scratch = +5 [2.5, 7.5], p = 0.0123, 3 seeds)." in text
    assert "Opposite to the paper: LS has fewer detectors (ls - scratch = +2 [0.5, 3.5], p = 0.04, 3 seeds)." in text
    assert ("The data cannot decide: KD is more accurate (kd - scratch = +0.01 [-0.02, 0.04], p = 0.4, 3 seeds; "
            "the interval includes 0); KD has a higher DiffROAR (kd - scratch = +0.0185 on one seed; one seed gives no "
            "interval); KD has more part detectors (no rows of kd and scratch match the claim's measure; no data).") in text
    assert text.index("Held:") < text.index("Opposite") < text.index("cannot decide")


def test_numbers_come_from_the_table():
    changed = CLAIMS.copy()
    changed.loc[0, "diff_mean"] = 6.25
    assert "+6.25 [2.5, 7.5]" in paragraph(changed) and "+5 [" not in paragraph(changed)


def test_all_decided_says_so_and_a_negative_difference_has_its_sign():
    rows = pd.DataFrame([_claim("LS has fewer detectors", "ls", "held", -3.0, -4.0, -2.0, 0.001, 4, expect="less")])
    text = paragraph(rows, level=0.9)
    assert "90% interval" in text and "(ls - scratch = -3 [-4, -2], p = 0.001, 4 seeds)" in text
    assert text.endswith("Every claim was decided by the data.")


def test_no_claims_is_a_sentence_not_an_error():
    assert paragraph(pd.DataFrame()).startswith("No claims are judged")


@pytest.mark.parametrize("table,match", [
    (CLAIMS.drop(columns=["verdict"]), "claims table lacks column 'verdict'"),
    (CLAIMS.assign(verdict="maybe"), "claims table has verdict 'maybe'; valid: held, opposite, undecided, no data"),
])
def test_a_table_that_is_not_a_claims_table_is_one_line(table, match):
    with pytest.raises(KdlibError, match=match):
        paragraph(table)


def test_evidence_of_one_row():
    assert evidence(CLAIMS.iloc[0].to_dict()) == "kd - scratch = +5 [2.5, 7.5], p = 0.0123, 3 seeds"
