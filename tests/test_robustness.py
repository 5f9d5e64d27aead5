"""Effective robustness (rib.robustness) against fits computed by hand."""

from __future__ import annotations

import math

import pytest

from rib.errors import FormatError
from rib.robustness import BaselineError, baselines, fit, inverse, read_reference, transform


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_the_axes():
    assert transform(0.5) == 0 and transform(0.5, "probit") == 0
    assert transform(sigmoid(1.3)) == pytest.approx(1.3) and transform(phi(-0.7), "probit") == pytest.approx(-0.7)
    for scale in ("logit", "probit"):
        assert inverse(transform(0.83, scale), scale) == pytest.approx(0.83)
        assert math.isfinite(transform(0.0, scale)) and math.isfinite(transform(1.0, scale))  # clipped
    with pytest.raises(ValueError, match="not a fraction"):
        transform(57.0)
    with pytest.raises(ValueError, match="scale 'log'"):
        transform(0.5, "log")


def test_points_on_a_line_give_that_line_and_the_distance_above_it():
    # logit(OOD) = 0.5 logit(ID) - 1 through three models
    points = {m: (sigmoid(x), sigmoid(0.5 * x - 1)) for m, x in (("a", -1.0), ("b", 0.0), ("c", 1.0))}
    line = fit(points, "r")
    assert (line.slope, line.intercept, line.r2) == (pytest.approx(0.5), pytest.approx(-1.0), pytest.approx(1.0))
    assert line.models == ("a", "b", "c")
    # a model at 50 % ID is expected at sigmoid(-1) = 26.89 % OOD; at 50 % OOD it is 23.11 points above
    assert line.expected(0.5) == pytest.approx(0.2689414)
    assert line.effective_robustness(0.5, 0.5) == pytest.approx(0.2310586)
    assert line.effective_robustness(*points["b"]) == pytest.approx(0.0, abs=1e-12)
    assert "logit fit on 3 models (a, b, c): slope 0.500, intercept -1.000" in line.describe()


def test_a_least_squares_fit_by_hand():
    # logits x = -1, 0, 1 and y = -1, 0, 2: slope 3/2, intercept 1/3, residuals 1/6, -1/3, 1/6, R^2 = 27/28
    points = {m: (sigmoid(x), sigmoid(y)) for m, x, y in (("a", -1, -1), ("b", 0, 0), ("c", 1, 2))}
    line = fit(points, "sketch")
    assert line.slope == pytest.approx(1.5) and line.intercept == pytest.approx(1 / 3)
    assert line.r2 == pytest.approx(27 / 28)
    assert line.effective_robustness(*points["b"]) == pytest.approx(0.5 - sigmoid(1 / 3))  # below the line


def test_probit_axes():
    points = {m: (phi(z), phi(0.5 * z - 1)) for m, z in (("a", -1.0), ("b", 0.0), ("c", 1.0))}
    line = fit(points, "r", "probit")
    assert (line.slope, line.intercept) == (pytest.approx(0.5), pytest.approx(-1.0))
    assert line.expected(0.5) == pytest.approx(0.1586553)


def test_two_points_make_no_line():
    with pytest.raises(BaselineError, match="'r': the baseline needs at least 3 models .* 2 given \\(a, b\\)"):
        fit({"a": (0.6, 0.3), "b": (0.7, 0.4)}, "r")
    with pytest.raises(BaselineError, match="same ID accuracy"):
        fit({"a": (0.6, 0.3), "b": (0.6, 0.4), "c": (0.6, 0.5)}, "r")


def test_reference_models_join_the_grids(tmp_path):
    table = tmp_path / "testbed.csv"
    table.write_text("model,source,r,sketch\nref1,76.1,36.2,24.1\nref2,81.0,45.5,\nref3,70.0,28.0,20.0\n")
    reference = read_reference(table)
    assert reference["ref1"] == {"source": pytest.approx(0.761), "r": pytest.approx(0.362),
                                 "sketch": pytest.approx(0.241)}
    assert "sketch" not in reference["ref2"]  # an empty cell: not evaluated there
    grid = {"mini_vit.narrow": {"source": 0.59, "r": 0.30, "sketch": 0.21}}
    lines = baselines({**grid, **reference}, "source", ["r", "sketch"])
    assert lines["r"].models == ("mini_vit.narrow", "ref1", "ref2", "ref3")
    with pytest.raises(BaselineError, match="'sketch'.*2 given"):  # without the grid: ref2 has no sketch
        baselines({**reference}, "source", ["sketch"])


@pytest.mark.parametrize("text, message", [
    ("name,source\nx,50\n", "needs a 'model' column"),
    ("model,source\nx,fifty\n", "line 2, column 'source': 'fifty' is not a number"),
    ("model,source\nx,0.5\ny,150\n", "line 3, column 'source': 150.0 is not a top-1 accuracy in percent"),
    ("model,source\nx,50\nx,60\n", "line 3: model 'x' is listed twice"),
])
def test_a_bad_reference_table_is_one_line_naming_the_place(tmp_path, text, message):
    table = tmp_path / "testbed.csv"
    table.write_text(text)
    with pytest.raises(FormatError, match=message) as err:
        read_reference(table)
    assert str(err.value).startswith(str(table)) and "\n" not in str(err.value)


def _cells(rows):
    import pandas as pd

    return pd.DataFrame([dict(zip(("model", "method", "finetune_dataset", "eval_dataset", "role", "top1", "heldout_top1"),
                                  r)) for r in rows])


def test_the_tables_before_and_after_fine_tuning_by_hand():
    from rib.robustness import baseline_points, fit_description, tables

    # On x: logit(OOD) = 0.5 logit(ID) - 1 through the pretrained model (ID 50 %) and two snapshots;
    # dataset z has the pretrained model's point only: no line there.
    on_line = {"source": 0.5, "x": sigmoid(-1), "y": 0.4}
    snapshots = [{"model": "m", "snapshots": [
        {"epoch": e, "epochs": 4, "top1": {"source": sigmoid(x), "x": sigmoid(0.5 * x - 1)}} for e, x in ((1, -2.0),
                                                                                                      (2, -1.0))]}]
    points = baseline_points({"m": on_line}, snapshots, {"published": {"source": sigmoid(2.0), "x": sigmoid(0.0)}})
    assert [p["kind"] for p in points] == ["pretrained", "snapshot", "snapshot", "reference"]
    assert points[1]["label"] == "m @ epoch 1/4"
    assert fit_description(points) == ("1 pretrained model(s) of the grid + 2 intermediate pretraining snapshot(s) of "
                                       "m + 1 reference model(s)")
    cells = _cells([
        ("m", "pretrained", "", "source", "source", 0.5, 0.5), ("m", "pretrained", "", "x", "ood", sigmoid(-1), 0.1),
        ("m", "pretrained", "", "y", "ood", 0.4, 0.3),
        # FT on y: ID stays at 50 %, x rises to 50 %: 23.11 points above the line; y (its D_ft) by its held-out part
        ("m", "ft", "y", "source", "source", 0.5, 0.5), ("m", "ft", "y", "x", "ood", 0.5, 0.9),
        ("m", "ft", "y", "y", "finetune", 0.95, 0.8)])
    out = tables(cells, points, "source", ["x", "y"])
    lines = out["baseline_lines"].set_index("eval_dataset")
    assert lines.loc["x", "slope"] == pytest.approx(0.5) and lines.loc["x", "n_points"] == 4
    assert math.isnan(lines.loc["y", "slope"]) and "at least 3 models" in lines.loc["y", "note"]
    rows = out["robustness_cells"].set_index("eval_dataset")
    assert rows.loc["x", "er_pre"] == pytest.approx(0.0, abs=1e-9)
    assert rows.loc["x", "er_ft"] == pytest.approx(23.10586, abs=1e-4)
    assert rows.loc["x", "expected_ft"] == pytest.approx(26.89414, abs=1e-4)
    assert (rows.loc["y", "role"], rows.loc["y", "ood_pre"], rows.loc["y", "ood_ft"]) == ("finetune", 30.0, 80.0)
    assert math.isnan(rows.loc["y", "er_ft"])
    summary = out["robustness"].iloc[0]  # the mean over OOD datasets that have a line: x alone
    assert (summary.n_ood, summary.er_change) == (1, pytest.approx(23.10586, abs=1e-4))
    base = out["baseline"]
    assert list(base.columns) == ["label", "kind", "model", "epoch", "source", "x", "y"]
    assert base.epoch.tolist()[1:3] == [1, 2] and math.isnan(base.y[1])
