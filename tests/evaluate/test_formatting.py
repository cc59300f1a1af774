"""The one number format (e2mc.evaluation.stats.fmt_*): std and intervals at the mean's precision,
no e-notation, accuracies in %; the compare table and the demo/report headline use it."""

import pytest

from e2mc.evaluation.compare import ComparisonResult, build_rows, headline
from e2mc.evaluation.stats import decimals_for, fmt_difference, fmt_estimate, fmt_number


@pytest.mark.parametrize(
    "ref, places",
    [(15.56, 2), (155.6, 1), (1234.5, 0), (0.002351, 6), (-4.218e-05, 8), (-1.315, 3), (0.0, 4), (None, 4), (1e-15, 8)],
)
def test_decimals_keep_four_significant_digits(ref, places):
    assert decimals_for(ref) == places


def test_estimates_round_std_to_the_means_precision():
    assert fmt_estimate(15.56, 0.0923, 3) == "15.56 ± 0.09 (3)"
    assert fmt_estimate(0.002351, 0.0003916, 3) == "0.002351 ± 0.000392 (3)"
    assert fmt_estimate(-1.315, 0.02827) == "-1.315 ± 0.028"
    assert fmt_estimate(0.92634, 0.00131, 3, percent=True) == "92.63 ± 0.13 (3)"  # a fraction shown in %
    assert fmt_estimate(14.58, None, 1) == "14.58 (1)"


def test_differences_are_signed_at_the_compared_means_precision():
    assert fmt_difference(0.6775, 0.4857, 0.8693, ref=15.56) == "+0.68 [+0.49, +0.87]"
    assert fmt_difference(-4.218e-05, ref=0.002351) == "-0.000042"  # not -4.218e-05
    assert fmt_difference(0.0104, -0.0035, 0.0243, percent=True) == "+1.04 [-0.35, +2.43]"
    assert fmt_difference(3.358) == "+3.358"


def test_no_e_notation_and_no_negative_zero():
    for x in (1e-12, -3e-9, 2.5e7, -1e-5):
        assert "e" not in fmt_estimate(x, abs(x) / 10, 2) and "e" not in fmt_difference(x, x, x)
    assert fmt_number(-0.0001, 2) == "0.00" and fmt_number(-0.0001, 2, sign=True) == "+0.00"
    assert fmt_number(None, 2) == "n/a" and fmt_number(float("nan"), 2) == "n/a"


def _comparison():
    results = [
        [{"knn": {"top1_k20": 0.90 + d}, "rankme": {"backbone": 15.5 + 10 * d}} for d in (0.0, 0.002, 0.004)],
        [{"knn": {"top1_k20": 0.91 + d}, "rankme": {"backbone": 15.6 + 5 * d}} for d in (0.0, 0.003, 0.004)],
    ]
    seeds = [[0, 1, 2], [0, 1, 2]]
    names = ["base", "e2mc"]
    return ComparisonResult(
        names,
        [["a", "b", "c"], ["d", "e", "f"]],
        "digits",
        ["knn", "rankme"],
        [0],
        results,
        build_rows(names, results, seeds),
        seeds,
    )


def test_compare_table_and_headline_use_the_one_format():
    comp = _comparison()
    md = comp.to_markdown()
    # hand-computed: base knn 90.00, 90.20, 90.40 -> 90.20 ± 0.20; e2mc 91.00, 91.30, 91.40 -> 91.23 ± 0.21
    # paired differences 1.00, 1.10, 1.00 -> +1.03; rankme base 15.5, 15.52, 15.54 -> 15.52 ± 0.02
    assert "| knn/top1_k20 (%) | 90.20 ± 0.20 (3) | 91.23 ± 0.21 (3) | +1.03 [" in md
    assert "| rankme/backbone | 15.52 ± 0.02 (3) | 15.61 ± 0.01 (3) | +0.09 [" in md
    assert "e-0" not in md
    head = headline(comp)
    row = comp.row("e2mc", "knn/top1_k20")
    assert head["metric"] == "knn/top1_k20" and head["difference"] == row["diff"]
    assert f"= {fmt_difference(row['diff'], percent=True)} points, 95% CI [" in head["text"]
    assert head["verdict"].startswith("`e2mc` helps") == (row["diff_low"] > 0)
