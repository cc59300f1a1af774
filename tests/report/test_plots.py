"""Which training columns the report plots."""

from e2mc.report.plots import curve_columns


def test_constant_and_empty_columns_are_not_plotted():
    runs = {
        "a": [
            {
                "epoch": "0",
                "step": "1",
                "phase": "train",
                "loss": "3.0",
                "addon.m": "11",
                "addon.tied": "0",
                "rankme": "",
            },
            {
                "epoch": "1",
                "step": "2",
                "phase": "train",
                "loss": "2.5",
                "addon.m": "11",
                "addon.tied": "0",
                "rankme": "4.0",
            },
        ],
        "b": [
            {
                "epoch": "0",
                "step": "1",
                "phase": "train",
                "loss": "3.1",
                "addon.m": "11",
                "addon.tied": "0.01",
                "rankme": "nan",
            }
        ],
    }
    # addon.m is 11 everywhere; addon.tied varies across runs; rankme has one finite value only
    assert curve_columns(runs) == ["loss", "addon.tied"]


import matplotlib.colors as mcolors  # noqa: E402
import pytest  # noqa: E402

from e2mc.report.plots import accuracy_differences, accuracy_figure, training_figure  # noqa: E402


def _rows(offset, seed):
    return [
        {
            "epoch": "0",
            "step": str(s),
            "phase": "train",
            "loss": str(10 - s + offset + 0.1 * seed),
            "addon.m": "11",
            "rankme": str(20 + s),
        }
        for s in range(1, 5)
    ]


def test_training_figure_colours_by_arm_and_labels_axes():
    runs = {"b0": _rows(0, 0), "b1": _rows(0, 1), "e0": _rows(1, 0), "e1": _rows(1, 1)}
    arms = {"b0": "base", "b1": "base", "e0": "e2mc", "e1": "e2mc"}
    fig = training_figure(runs, arms)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["loss", "rankme"]  # addon.m (11 everywhere) is dropped
    assert [ax.get_ylabel() for ax in axes] == ["total loss", "RankMe, backbone (eff. rank)"]
    loss = axes[0].lines
    assert [list(line.get_ydata()) for line in loss] == [
        [10 - s + o + 0.1 * k for s in range(1, 5)] for o, k in ((0, 0), (0, 1), (1, 0), (1, 1))
    ]
    rgb = [mcolors.to_rgb(line.get_color()) for line in loss]
    hue = [mcolors.rgb_to_hsv(c)[0] for c in rgb]
    assert hue[0] == pytest.approx(hue[1], abs=1e-6) and hue[2] == pytest.approx(hue[3], abs=1e-6)  # one hue per arm
    assert abs(hue[0] - hue[2]) > 0.05  # two arms, two hues
    assert rgb[0] != rgb[1] and rgb[2] != rgb[3]  # seeds: shades of it


def test_accuracy_figure_plots_differences_with_intervals_and_zero_line():
    rows = [
        {"arm": "base", "metric": "knn/top1_k20", "mean": 0.9, "diff": None, "diff_low": None, "diff_high": None},
        {
            "arm": "e2mc",
            "metric": "knn/top1_k20",
            "mean": 0.91,
            "diff": 0.01,
            "diff_low": -0.002,
            "diff_high": 0.022,
            "diff_kind": "paired, n=3",
        },
        {
            "arm": "start",
            "metric": "knn/top1_k20",
            "mean": 0.89,
            "diff": -0.005,
            "diff_low": None,
            "diff_high": None,
            "diff_kind": "n=1: no interval",
        },
    ]
    arms = ["base", "e2mc", "start"]
    data = accuracy_differences(arms, ["knn/top1_k20"], rows)
    assert [(d["arm"], d["diff"], d["low"], d["high"]) for d in data] == [
        ("e2mc", pytest.approx(1.0), pytest.approx(-0.2), pytest.approx(2.2)),
        ("start", pytest.approx(-0.5), None, None),
    ]
    fig = accuracy_figure(arms, ["knn/top1_k20"], rows)
    ax = fig.axes[0]
    (bars,) = ax.containers  # one errorbar: e2mc's interval, in points
    (segment,) = bars.lines[2][0].get_segments()
    assert [p[0] for p in segment] == pytest.approx([-0.2, 2.2])
    assert list(bars.lines[0].get_xdata()) == pytest.approx([1.0])
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the zero line
    assert any(list(line.get_xdata()) == pytest.approx([-0.5]) for line in ax.lines)  # n=1: a dot, no bar
    assert "points" in ax.get_xlabel()
    assert accuracy_figure(["base"], ["knn/top1_k20"], rows[:1]) is None  # nothing to compare
