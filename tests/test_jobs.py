"""The job graph (rib.jobs) is the one description of the pipeline's jobs, and rib.steps its API.

Snakemake's DAG equal to the graph is checked on the paper grid's dry run (tests/test_real_data.py);
the committed dvc.yaml files rendered from it by `rib dvc --check` (tests/test_pipeline.py).
"""

from __future__ import annotations

import ast
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from rib import config, dvc_pipeline, grid, steps
from rib.errors import RibError
from rib.jobs import Dep, Graph
from tests.conftest import REPO, TINY_PARAMS


@pytest.fixture(scope="module")
def tiny():
    return config.load(str(TINY_PARAMS))


def test_the_graph_is_closed_and_every_cell_has_its_writer(tiny):
    """Every input of every job is the output of another job of the graph (nothing dangles), each
    output has one writer, and every cell of the tables is written by one evaluate or combine job."""
    graph = Graph(tiny)
    jobs = list(graph.jobs())
    writers: dict[str, str] = {}
    for job in jobs:
        for out in job.outputs:
            assert out not in writers, f"{out}: written by {writers[out]} and {job.rule}"
            writers[out] = job.rule
    for job in jobs:
        for name, paths in job.inputs().items():
            for p in paths:
                assert p in writers, f"{job.rule} {job.key}: input {name} {p} is made by no job"
    for cell in grid.cells(tiny):
        rule = writers[cell.path(tiny["suite"])]
        kind = grid.PRETRAINED if cell.method == grid.PRETRAINED else grid.method_kind(tiny, cell.method)
        assert rule == {"pretrained": "evaluate_pretrained", "train": "evaluate_finetuned", "weights": "combine"}[kind]
    # what verify rebuilds: checkpoints, caches, cells, distances (no datasets, no reports)
    rebuild = graph.rebuildable_outputs()
    assert {writers[p] for p in rebuild} == {"cache", "pretrain", "finetune", "evaluate_pretrained", "evaluate_snapshots",
                                             "evaluate_finetuned", "combine", "distance"}
    snapshot_records = [grid.path("snapshot_cells", suite=tiny["suite"], model=m) for m in grid.snapshot_models(tiny)]
    assert snapshot_records and set(snapshot_records) <= rebuild  # the tiny grid keeps pretraining snapshots
    assert len([p for p in rebuild if p.startswith("results/")]) == len(list(grid.cells(tiny))) + len(snapshot_records)


def test_lp_ft_and_ewc_read_what_they_start_from(tiny):
    graph = Graph(tiny)
    lp_ft = graph.job("finetune", model="mini_vit.narrow", method="lp_ft", dataset="c")
    assert lp_ft.inputs()["init"] == ["checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt"]
    assert "--init checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt" in lp_ft.command
    chain = [j.outputs[0] for j in graph.upstream(graph.writer("results/rib-mini/mini_vit.narrow/lp_ft/c/source.json"))
             if j.rule in ("finetune", "pretrain")]
    assert chain == ["checkpoints/rib-mini/mini_vit.narrow/lp_ft/c/model.pt", "models/rib-mini/mini_vit.narrow/pretrained.pt",
                     "checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt"]
    ewc = graph.job("finetune", model="mini_vit.narrow", method="ewc_fisher", dataset="sketch")
    assert ewc.inputs()["reference"] == ["data/rib-mini/corpora/prepared/narrow"]
    assert "init" not in ewc.inputs()
    # D_ft is never a corpus; only the kinds of job are jobs
    with pytest.raises(RibError, match="a pretraining corpus"):
        graph.job("finetune", model="mini_vit.narrow", method="ft", dataset="narrow")
    with pytest.raises(RibError, match="no job kind 'pat'"):
        graph.job("pat")


def test_an_input_added_to_a_job_kind_reaches_snakemake_dvc_and_rib_cell(tiny, monkeypatch):
    """The one edit: a kind's function names a new input; the rules' input functions, dvc.yaml and
    the dependency walk of `rib cell` all have it, with no other change."""
    before = dvc_pipeline.render(tiny, "params.yaml", "dvc.yaml")
    kind = Graph._distance

    def with_labels(self, model, dataset):
        job = kind(self, model, dataset)
        extra = Dep("labels", ("checkpoints/rib-mini/{model}/lp/{dataset}/model.pt",))
        return replace(job, deps=(*job.deps, extra))

    monkeypatch.setattr(Graph, "_distance", with_labels)
    graph = Graph(tiny)
    job = graph.job("distance", model="mini_vit.narrow", dataset="c")
    assert job.inputs()["labels"] == ["checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt"]  # Snakemake's input
    stage = yaml.safe_load(dvc_pipeline.render(tiny, "params.yaml", "dvc.yaml"))["stages"]["distance"]
    assert stage["do"]["deps"][-1] == "checkpoints/rib-mini/${item.model}/lp/${item.dataset}/model.pt"
    assert before != dvc_pipeline.render(tiny, "params.yaml", "dvc.yaml")
    assert "finetune" in {j.rule for j in graph.upstream(job)}  # rib cell's walk now reaches the probe


def test_a_stage_whose_jobs_differ_beyond_their_items_is_refused(tiny, monkeypatch):
    kind = Graph._distance

    def odd(self, model, dataset):
        job = kind(self, model, dataset)
        return replace(job, cmd=job.cmd + (" --odd" if dataset == "c" else ""))

    monkeypatch.setattr(Graph, "_distance", odd)
    with pytest.raises(Exception, match="stage 'distance'"):
        dvc_pipeline.render(tiny, "params.yaml", "dvc.yaml")


def test_steps_fine_tune_and_evaluate_one_cell_at_the_pipelines_paths(tiny_suite, tiny_pretrained, tmp_path,
                                                                      monkeypatch):
    """The API with no path given: the pipeline's files. LP-FT finds its probe through the graph."""
    root, _ = tiny_suite
    shutil.copytree(root, tmp_path / "project", symlinks=True)  # the shared suite's folder stays as it was
    monkeypatch.chdir(tmp_path / "project")
    params = config.load("params.yaml")
    probe = steps.finetune(params, "mini_resnet.narrow", "lp", "sketch", progress=False)
    assert probe == "checkpoints/rib-mini/mini_resnet.narrow/lp/sketch/model.pt" and Path(probe).exists()
    tuned = steps.finetune(params, "mini_resnet.narrow", "lp_ft", "sketch", progress=False)
    cells = steps.evaluate(params, tuned, progress=False)
    assert [c["eval_dataset"] for c in cells] == grid.eval_datasets(params)
    for c in cells:
        written = Path(f"results/rib-mini/mini_resnet.narrow/lp_ft/sketch/{c['eval_dataset']}.json")
        assert written.exists() and c["method"] == "lp_ft" and 0 <= c["top1"] <= 1
    from rib.models import network

    assert network.load(tuned).meta["init"] == probe
    params["grid"]["models"] = ["mini_resnet.narrow"]  # rib cell looks in the grid
    info = steps.cell(params, "mini_resnet.narrow", "lp_ft", "sketch", "sketch")
    assert info.record["top1"] == cells[1]["top1"] and "dvc repro evaluate-finetuned@" in info.render()


def test_the_docs_example_calls_only_what_steps_has():
    text = (REPO / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    called = {node.attr for node in ast.walk(ast.parse(code))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "steps"}
    assert called >= {"finetune", "evaluate", "pretrain", "prepare", "generate"}
    assert all(callable(getattr(steps, name)) for name in called)
    for name in re.findall(r"`(\w+)`", text.split("keyword arguments:")[1].split(". The command line")[0]):
        assert callable(getattr(steps, name)), name


def test_the_command_line_only_parses_and_dispatches():
    """cli.py: argument parsing and dispatch, about 300 lines; the steps live in rib.steps."""
    source = (REPO / "src" / "rib" / "cli.py").read_text()
    assert len(source.splitlines()) <= 310
    for heavy in ("import torch", "fit(", "evaluate_checkpoint", "network.save", "write_record"):
        assert heavy not in source, heavy
