"""The benchmark's formulas against hand-computed values, and the tables built from cell files."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from rib import aggregate, grid
from rib.data.manifest import Row
from rib.evaluate import summarize
from rib.io import write_record
from rib.metrics import (
    average_accuracy,
    average_ood_after,
    corruption_accuracy,
    mean_robustness_improvement,
    robustness_improvement,
)


def test_corruption_accuracy_is_mean_over_corruptions_of_mean_over_severities():
    per, mean = corruption_accuracy({"fog/1": 0.5, "fog/2": 0.7, "fog/3": 0.9, "snow/1": 0.2, "snow/2": 0.4})
    assert per == pytest.approx({"fog": 0.7, "snow": 0.3})
    assert mean == pytest.approx(0.5)  # not the pooled 0.54
    with pytest.raises(ValueError):
        corruption_accuracy({"fog": 0.5})


def test_ri_mri_and_average_ood():
    pre = {"a": 0.40, "r": 0.60, "sketch": 0.50}
    ft = {"a": 0.30, "r": 0.90, "sketch": 0.45}
    assert robustness_improvement(0.9, 0.6) == pytest.approx(0.3)
    ood = ["a", "sketch"]  # r is D_ft
    assert mean_robustness_improvement(ft, pre, ood) == pytest.approx(((0.30 - 0.40) + (0.45 - 0.50)) / 2)
    assert average_accuracy(pre, ood) == pytest.approx(0.45)
    assert average_ood_after(ft, pre, ood) == pytest.approx(0.375)  # mRI + mean A_pre = mean A_ft


def test_summarize_groups_like_imagenet_c():
    rows = [Row(f"{g}/x{i}.png", 0, "x", g, f"x{i}", "heldout") for g in ("fog/1", "fog/2", "snow/1") for i in range(2)]
    correct = [True, True, True, False, False, False]
    s = summarize(rows, correct)
    assert s["groups"]["fog/2"] == {"n": 2, "correct": 1, "top1": 0.5}
    assert s["per_corruption"] == pytest.approx({"fog": 0.75, "snow": 0.0})
    assert s["top1"] == pytest.approx(0.375) and s["pooled_top1"] == pytest.approx(0.5)


def _write_cell(root, cell, suite, top1, heldout=None, subset="all"):
    path = root / cell.path(suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    subsets = {"all": {"n": 100, "correct": int(top1 * 100), "top1": top1}}
    if heldout is not None:
        subsets["heldout"] = {"n": 50, "correct": int(heldout * 50), "top1": heldout}
    if subset == "heldout":
        subsets = {"heldout": subsets["heldout"]}
    write_record(path, {"top1": top1 if subset == "all" else heldout, "subset": subset,
                        "n": subsets[subset]["n"], "subsets": subsets, "scoring": "restricted"})


def test_tables_from_cells(tmp_path, tiny_params):
    params = tiny_params
    params["grid"]["datasets"] = ["sketch", "c", "r"]
    params["grid"]["methods"] = ["ft"]
    m = "mini_vit.narrow"
    pre = {"source": (0.90, 0.92), "sketch": (0.50, 0.52), "c": (0.70, 0.68), "r": (0.40, 0.44)}
    for ev, (a, h) in pre.items():
        _write_cell(tmp_path, grid.Cell(m, grid.PRETRAINED, None, ev), "rib-mini", a, h)
    ft = {"sketch": {"source": 0.80, "sketch": 0.95, "c": 0.60, "r": 0.50},
          "c": {"source": 0.85, "sketch": 0.45, "c": 0.90, "r": 0.35},
          "r": {"source": 0.70, "sketch": 0.55, "c": 0.50, "r": 0.88}}
    for dft, accs in ft.items():
        for ev, a in accs.items():
            own = ev == dft
            _write_cell(tmp_path, grid.Cell(m, "ft", dft, ev), "rib-mini", a, a if own else None,
                        subset="heldout" if own else "all")
    for dft, value in (("sketch", 3.0), ("c", 1.0), ("r", 5.0)):
        write_record(tmp_path / grid.path("distance", suite="rib-mini", model=m, dataset=dft),
                   {"reference": "source", "otdd": value, "n": [10, 8]})
    # effective robustness's baseline on c: the pretrained model (source 90 %, c 70 %) and two reference
    # models on the line logit(c) = logit(source) + logit(0.7) - logit(0.9); no snapshots
    shift = math.log(0.7 / 0.3) - math.log(0.9 / 0.1)
    on_line = [(s_acc, 1 / (1 + math.exp(-(math.log(s_acc / (1 - s_acc)) + shift)))) for s_acc in (0.5, 0.75)]
    reference = tmp_path / "reference.csv"
    reference.write_text("model,source,c\n" + "".join(f"ref{i},{100 * a},{100 * b}\n" for i, (a, b) in enumerate(on_line)))
    params["robustness"] = {"snapshots": 0, "reference": str(reference)}
    outs = {k: str(tmp_path / f"{k}.out") for k in grid.TABLES}
    aggregate.write_tables(params, outs, root=tmp_path)

    # FT on sketch: source 80 %, c 60 %; the line expects sigmoid(logit(0.8) + shift) at 80 %
    robust = pd.read_csv(outs["robustness"]).set_index("finetune_dataset")
    expected = 1 / (1 + math.exp(-(math.log(0.8 / 0.2) + shift)))
    assert robust.loc["sketch", "er_pre"] == pytest.approx(0.0, abs=1e-3)  # on the line it was fit on
    assert robust.loc["sketch", "er_ft"] == pytest.approx(100 * (0.60 - expected), abs=1e-3)
    assert robust.loc["sketch", "n_ood"] == 1  # c alone has a line; r has one point
    lines = pd.read_csv(outs["baseline_lines"]).set_index("eval_dataset")
    assert lines.loc["c", "n_points"] == 3 and lines.loc["c", "slope"] == pytest.approx(1.0, abs=1e-4)
    assert "at least 3 models" in lines.loc["r", "note"]
    reference.write_text("model,c\nref0,20\n")
    with pytest.raises(ValueError, match="reference.csv: no model has a 'source' column"):
        aggregate.write_tables(params, outs, root=tmp_path)

    cells = pd.read_csv(outs["cells"])
    assert len(cells) == 4 + 3 * 4  # one row per cell, pretrained cells included
    summary = pd.read_csv(outs["summary"]).set_index("finetune_dataset")
    row = summary.loc["sketch"]
    # by hand: OOD = {c, r}; A_pre = 70, 40; A_ft = 60, 50 -> RI = -10, +10 -> mRI 0, OOD pre 55, OOD ft 55
    assert row.mri == pytest.approx(0.0, abs=1e-6)
    assert row.ood_pre == pytest.approx(55.0) and row.ood_ft == pytest.approx(55.0)
    assert row.finetune_pre == pytest.approx(52.0)  # pretrained on the held-out part of sketch
    assert row.finetune_ft == pytest.approx(95.0)
    assert row.source_pre == pytest.approx(90.0) and row.source_ft == pytest.approx(80.0)
    row = summary.loc["c"]
    # OOD = {sketch, r}: RI = 45-50 = -5, 35-40 = -5 -> mRI -5; OOD pre 45 -> OOD ft 40
    assert row.mri == pytest.approx(-5.0) and row.ood_ft == pytest.approx(40.0)
    assert row.finetune_pre == pytest.approx(68.0)
    by_method = pd.read_csv(outs["methods_summary"]).iloc[0]
    mri_r = ((0.55 - 0.50) + (0.50 - 0.70)) / 2 * 100
    assert by_method.mri == pytest.approx((0.0 - 5.0 + mri_r) / 3, abs=1e-3)  # tables keep 4 decimals
    assert by_method.n_finetune_datasets == 3
    md = open(outs["summary_md"]).read()
    assert "| model | method | n_finetune_datasets |" in md
    # RI matrix: fine-tuned on c, evaluated on r: 35 - 40 = -5 points; on c itself: held-out 90 - 68
    matrix = pd.read_csv(outs["ri_matrix"]).set_index("finetune_dataset")
    assert matrix.loc["c", "r"] == pytest.approx(-5.0) and matrix.loc["c", "c"] == pytest.approx(22.0)
    assert matrix.loc["sketch", "source"] == pytest.approx(-10.0)
    # distances next to the pretraining-domain accuracy lost: r's FT lost 90 - 70 = 20 points
    dist = pd.read_csv(outs["distances"]).set_index("finetune_dataset")
    assert dist.loc["r", "otdd"] == 5.0 and dist.loc["r", "source_drop_ft"] == pytest.approx(20.0)
    tex = open(outs["summary_tex"]).read()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "mini\\_vit.narrow & ft & 3 &" in tex
    assert json.loads(open(outs["metrics_json"]).read())[m]["ft"]["mri"] == pytest.approx(by_method.mri, abs=1e-3)


def test_missing_cell_is_named(tmp_path, tiny_params):
    outs = {k: str(tmp_path / f"{k}.out") for k in grid.TABLES}
    with pytest.raises(FileNotFoundError, match="results/rib-mini/mini_vit.narrow/pretrained/source.json"):
        aggregate.write_tables(tiny_params, outs, root=tmp_path)
    assert not list(tmp_path.iterdir())  # no table written
