"""End to end: the real `snakemake` and `dvc repro` on the tiny configuration, in fresh workspaces.

Both front doors must produce the same numbers, do nothing on a second run, and (Snakemake)
regenerate a single targeted cell with only what it depends on.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import faults
from tests.conftest import REPO, TINY_PARAMS, job_counts, rib_env, run_rib

pytestmark = pytest.mark.e2e


def make_workspace(path: Path) -> Path:
    return faults.make_workspace(path, TINY_PARAMS)


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=rib_env(), text=True, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd)


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=rib tests", "-c", "user.email=tests@rib.invalid", *args], cwd)


def cell_numbers(ws: Path) -> dict[str, dict]:
    return {str(p.relative_to(ws)): faults._numbers(json.loads(p.read_text()))
            for p in sorted((ws / "results").rglob("*.json"))}


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("e2e") / "snakemake")
    first = snakemake(ws)
    return ws, first


def test_snakemake_runs_the_whole_tiny_grid(snakemake_run):
    ws, first = snakemake_run
    counts = job_counts(first.stdout + first.stderr)
    # 1 model x 2 datasets x every method: 10 trained entries (9 methods + Model Stock's second FT run),
    # 9 of them evaluated as table rows, 4 weight-space methods; 3 evaluation datasets and 1 corpus
    assert counts == {"generate": 3, "generate_corpus": 1, "prepare": 3, "prepare_corpus": 1, "cache": 3, "pretrain": 1,
                      "finetune": 20, "evaluate_pretrained": 1, "evaluate_snapshots": 1, "evaluate_finetuned": 18, "combine": 8,
                      "distance": 2, "aggregate": 1, "figures": 1, "usage": 1, "all": 1}
    reports = ws / "reports" / "rib-mini"
    for name in ("cells.csv", "metrics.csv", "summary.csv", "summary.md", "summary.tex", "summary_by_method.csv",
                 "sweeps.csv", "ri_matrix.csv", "imagenet_c.csv", "distances.csv", "metrics.json",
                 "effective_robustness.csv", "effective_robustness_cells.csv", "effective_robustness.md",
                 "effective_robustness.tex", "baseline.csv", "baseline_lines.csv"):
        assert (reports / name).stat().st_size > 0, name
    for figure in ("radar", "bar", "ri_heatmap", "ood_scatter", "wise_curve", "otdd_scatter", "effective_robustness"):
        assert (reports / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG", figure
        assert (reports / "figures" / f"{figure}.pdf").read_bytes()[:4] == b"%PDF", figure
    # Snakemake's benchmark of every compute job, per rule; the jobs ran in forks of the rib server,
    # whose usage replaces the client's (about 15 MiB, against some 500 with torch)
    usage = pd.read_csv(reports / "usage_by_rule.csv").set_index("rule")
    for rule in ("pretrain", "finetune", "evaluate_pretrained", "evaluate_finetuned", "combine", "distance"):
        assert usage.loc[rule, "jobs"] == counts[rule], rule
        assert usage.loc[rule, "measured_in"] == "fork" and usage.loc[rule, "peak_rss_mib"] > 200, rule
        assert 0 < usage.loc[rule, "wall_max_s"] < 300 and usage.loc[rule, "cpu_total_s"] > 0, rule
    usage_md = (reports / "usage_by_rule.md").read_text()
    assert "| finetune | 20 |" in usage_md
    # the measured rates, in the form a plan takes (a pilot's usage plans the full grid)
    rates = re.search(r"`rib plan --throughput (mini_vit=([0-9.]+),([0-9.]+))`", usage_md)
    assert rates and float(rates.group(2)) > 10 and float(rates.group(3)) > float(rates.group(2))
    planned = run_rib("plan", "--throughput", rates.group(1), cwd=ws).stdout
    assert re.search(r"finetune\s+20\s.*\s[0-9.]+\n", planned), planned
    cells = pd.read_csv(reports / "cells.csv")
    assert len(cells) == 3 + 13 * 2 * 3  # (pretrained + 13 methods x 2 D_ft) x 3 evaluation datasets
    by_method = pd.read_csv(reports / "summary_by_method.csv")
    assert list(by_method.method) == ["ft", "lp", "lp_ft", "lora", "visual_prompt", "ewc", "ewc_fisher", "lwf",
                                      "mas", "wise_ft", "uniform_soup", "greedy_soup", "model_stock"]
    # the jobs ran in forks of the warm rib server
    assert "rib server on" in (ws / "logs/rib-mini/server.log").read_text()
    # every job wrote its log, and the fine-tuning logs show per-epoch progress
    log = (ws / "logs/rib-mini/finetune/mini_vit.narrow/ft/sketch.log").read_text()
    assert "ft epoch 4/4" in log
    # a table cell re-derived by hand from the cell files
    summary = pd.read_csv(reports / "summary.csv").set_index(["method", "finetune_dataset"])
    pre = {p.stem: json.loads(p.read_text()) for p in (ws / "results/rib-mini/mini_vit.narrow/pretrained").glob("*.json")}
    ft = {p.stem: json.loads(p.read_text()) for p in (ws / "results/rib-mini/mini_vit.narrow/lp/sketch").glob("*.json")}
    mri = 100 * (ft["c"]["top1"] - pre["c"]["subsets"]["all"]["top1"])  # only OOD dataset: c
    assert summary.loc[("lp", "sketch"), "mri"] == pytest.approx(mri, abs=1e-3)
    assert summary.loc[("lp", "sketch"), "finetune_pre"] == pytest.approx(
        100 * pre["sketch"]["subsets"]["heldout"]["top1"], abs=1e-3)
    # WiSE-FT's sweep: alpha 0 is the pretrained model, alpha 1 the fine-tuned one
    sweeps = pd.read_csv(reports / "sweeps.csv").set_index(["finetune_dataset", "alpha"])
    assert sorted(sweeps.loc["c"].index) == [0.0, 0.5, 1.0]
    assert sweeps.loc[("c", 0.0), "ood"] == pytest.approx(100 * pre["sketch"]["top1"], abs=1e-3)
    assert sweeps.loc[("c", 1.0), "ood"] == pytest.approx(summary.loc[("ft", "c"), "ood_ft"], abs=1e-3)
    # ImageNet-C breakdown and OTDD re-derived from their files
    corr = pd.read_csv(reports / "imagenet_c.csv").set_index(["method", "finetune_dataset"])
    c_cell = json.loads((ws / "results/rib-mini/mini_vit.narrow/ft/sketch/c.json").read_text())
    assert corr.loc[("ft", "sketch"), "fog"] == pytest.approx(
        100 * c_cell["subsets"]["all"]["per_corruption"]["fog"], abs=1e-3)
    dist = json.loads((ws / "distances/rib-mini/mini_vit.narrow/c.json").read_text())
    table = pd.read_csv(reports / "distances.csv").set_index("finetune_dataset")
    assert table.loc["c", "otdd"] == pytest.approx(dist["otdd"], abs=1e-3)
    assert table.loc["c", "source_drop_ft"] == pytest.approx(summary.loc[("ft", "c"), "source_pre"]
                                                             - summary.loc[("ft", "c"), "source_ft"], abs=1e-3)
    # provenance of a cell
    for key in ("checkpoint_sha256", "pretrained_sha256", "manifest_sha256", "code_sha256", "rib_version", "seed",
                "device", "seconds", "train_seconds", "method_settings"):
        assert ft["c"].get(key) is not None, key
    assert ft["c"]["method_settings"]["lr"] == 0.05 and ft["c"]["method_settings"]["method"] == "lp"
    soup = json.loads((ws / "results/rib-mini/mini_vit.narrow/greedy_soup/c/source.json").read_text())
    assert soup["combination"]["greedy_trail"][0]["added"] and soup["checkpoint"] is None
    assert set(soup["combination"]["ingredients"]) == {"ft", "lp_ft", "ewc", "ewc_fisher"}
    # Effective robustness: the logit line through the pretrained model and its 3 pretraining
    # snapshots (epochs 2, 3, 4 of 6), refit here from the cell and snapshot files, and FT's
    # effective robustness on c (D_ft sketch) before and after from it
    import numpy as np

    snaps = json.loads((ws / "results/rib-mini/mini_vit.narrow/snapshots.json").read_text())["snapshots"]
    assert [s["epoch"] for s in snaps] == [2, 3, 4]
    assert sorted(p.name for p in (ws / "models/rib-mini/mini_vit.narrow/snapshots").glob("*.pt")) == [
        "epoch-2.pt", "epoch-3.pt", "epoch-4.pt"]
    logit = lambda a: np.log(np.clip(a, 1e-4, 1 - 1e-4) / (1 - np.clip(a, 1e-4, 1 - 1e-4)))  # noqa: E731
    xs = [pre["source"]["top1"], *(s["top1"]["source"] for s in snaps)]
    ys = [pre["c"]["top1"], *(s["top1"]["c"] for s in snaps)]
    slope, intercept = np.polyfit(logit(np.array(xs)), logit(np.array(ys)), 1)
    lines = pd.read_csv(reports / "baseline_lines.csv").set_index("eval_dataset")
    assert lines.loc["c", "slope"] == pytest.approx(slope, abs=1e-3) and lines.loc["c", "n_points"] == 4
    on_sketch = {p.stem: json.loads(p.read_text()) for p in (ws / "results/rib-mini/mini_vit.narrow/ft/sketch").glob("*.json")}

    def er(id_acc, ood_acc):
        return 100 * (ood_acc - 1 / (1 + np.exp(-(slope * logit(id_acc) + intercept))))

    robust = pd.read_csv(reports / "effective_robustness.csv").set_index(["method", "finetune_dataset"])
    assert robust.loc[("ft", "sketch"), "er_pre"] == pytest.approx(er(pre["source"]["top1"], pre["c"]["top1"]), abs=1e-2)
    assert robust.loc[("ft", "sketch"), "er_ft"] == pytest.approx(er(on_sketch["source"]["top1"], on_sketch["c"]["top1"]),
                                                                  abs=1e-2)
    assert len(robust) == 13 * 2 and robust.er_ft.notna().all()
    assert "3 intermediate pretraining snapshot(s) of mini_vit.narrow" in (reports / "effective_robustness.md").read_text()
    # Both protocols (split.leak_free): c shares its photos with source, sketch with nothing.
    assert "## Leak-free protocol" in (reports / "summary.md").read_text()
    assert {"mri", "mri_leak_free"} <= set(by_method.columns)
    assert summary.loc[("lp", "sketch"), "mri_leak_free"] == pytest.approx(summary.loc[("lp", "sketch"), "mri"])
    on_c = {p.stem: json.loads(p.read_text()) for p in (ws / "results/rib-mini/mini_vit.narrow/ft/c").glob("*.json")}
    assert summary.loc[("ft", "c"), "source_ft_leak_free"] == pytest.approx(
        100 * on_c["source"]["subsets"]["heldout"]["top1"], abs=1e-3)
    assert summary.loc[("ft", "c"), "source_pre_leak_free"] == pytest.approx(
        100 * pre["source"]["subsets"]["heldout"]["top1"], abs=1e-3)
    assert summary.loc[("ft", "c"), "source_ft"] == pytest.approx(100 * on_c["source"]["subsets"]["all"]["top1"],
                                                                  abs=1e-3)


def learning_problems(ws: Path) -> list[str]:
    """What says the models of a finished tiny-grid run did not learn (empty when they did): the
    pretrained transformer far above chance on the source set; FT on sketch (near chance before)
    raising sketch's held-out accuracy by 10 points or more; LP moving it. A near-zero learning rate
    for pretraining, or for FT and LP, makes it report problems (see benchmarks/README.md)."""
    res = ws / "results/rib-mini/mini_vit.narrow"
    chance = 1 / yaml.safe_load((ws / "params.yaml").read_text())["synthetic"]["num_classes"]

    def heldout(path: str) -> float:
        return json.loads((res / path).read_text())["subsets"]["heldout"]["top1"]

    problems = []
    source = json.loads((res / "pretrained/source.json").read_text())["top1"]
    if source < chance + 0.2:
        problems.append(f"pretrained source top-1 {source:.3f}: not far above chance ({chance:.2f})")
    before = heldout("pretrained/sketch.json")
    after_ft, after_lp = heldout("ft/sketch/sketch.json"), heldout("lp/sketch/sketch.json")
    if after_ft < before + 0.1:
        problems.append(f"FT on sketch: held-out sketch top-1 {before:.3f} -> {after_ft:.3f}, not +0.1 or more")
    if after_lp == before:
        problems.append(f"LP on sketch left held-out sketch top-1 at {before:.3f}")
    return problems


def test_the_tiny_grid_learns(snakemake_run):
    ws, _ = snakemake_run
    assert learning_problems(ws) == []


def test_report_and_one_cell_lookup(snakemake_run):
    ws, _ = snakemake_run
    snakemake(ws, "--report", "report.html")
    html = (ws / "report.html").read_text()
    assert len(html) > 100_000
    for name in ("radar.png", "bar.png", "ri_heatmap.pdf", "ood_scatter.png", "wise_curve.png", "otdd_scatter.png",
                 "effective_robustness.png", "summary_by_method.csv", "imagenet_c.csv", "distances.csv",
                 "effective_robustness.csv", "baseline_lines.csv"):  # every figure is in the report
        assert name in html, name
    assert "Points below the diagonal lost" in html  # a caption
    out = run_rib("cell", "mini_vit.narrow", "lp_ft", "c", "sketch", cwd=ws).stdout
    cell = json.loads((ws / "results/rib-mini/mini_vit.narrow/lp_ft/c/sketch.json").read_text())
    assert "cell:  results/rib-mini/mini_vit.narrow/lp_ft/c/sketch.json" in out
    assert f"top-1 {100 * cell['top1']:.2f}%" in out
    # the jobs it is made from, walked back through the job graph: LP-FT from its linear probe
    made_by = out.split("made by:")[1].split("datasets:")[0].strip().splitlines()
    assert [line.split("  <- ")[0].strip() for line in made_by[1:]] == [
        "checkpoints/rib-mini/mini_vit.narrow/lp_ft/c/model.pt", "checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt",
        "models/rib-mini/mini_vit.narrow/pretrained.pt"]
    assert "--init checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt" in made_by[1]
    assert "snakemake --cores all results/rib-mini/mini_vit.narrow/lp_ft/c/sketch.json" in out
    assert "dvc repro evaluate-finetuned@mini_vit.narrow-lp_ft-c" in out


def test_second_snakemake_run_does_nothing(snakemake_run):
    ws, _ = snakemake_run
    again = snakemake(ws)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_one_cell_regenerates_with_only_its_dependencies(snakemake_run, tmp_path):
    ws, _ = snakemake_run
    cell = "results/rib-mini/mini_vit.narrow/lp/c/sketch.json"
    before = json.loads((ws / cell).read_text())["subsets"]
    (ws / cell).unlink()
    out = snakemake(ws, cell)
    assert job_counts(out.stdout + out.stderr) == {"evaluate_finetuned": 1}
    assert json.loads((ws / cell).read_text())["subsets"] == before
    # from scratch, the same target needs only its own chain: no other method, dataset or evaluation
    fresh = make_workspace(tmp_path / "fresh")
    plan = snakemake(fresh, "-n", cell)
    chain = {"generate": 3, "generate_corpus": 1, "prepare": 3, "prepare_corpus": 1, "cache": 3, "pretrain": 1}
    assert job_counts(plan.stdout + plan.stderr) == {**chain, "finetune": 1, "evaluate_finetuned": 1}
    # LP-FT's cell needs the linear probe first (found through the DAG); Model Stock's its two FT runs
    plan = snakemake(fresh, "-n", "results/rib-mini/mini_vit.narrow/lp_ft/c/sketch.json")
    assert job_counts(plan.stdout + plan.stderr) == {**chain, "finetune": 2, "evaluate_finetuned": 1}
    assert "checkpoints/rib-mini/mini_vit.narrow/lp/c/model.pt" in plan.stdout
    plan = snakemake(fresh, "-n", "results/rib-mini/mini_vit.narrow/model_stock/c/sketch.json")
    assert job_counts(plan.stdout + plan.stderr) == {**chain, "finetune": 2, "combine": 1}
    assert "checkpoints/rib-mini/mini_vit.narrow/ft_seed1/c/model.pt" in plan.stdout


def test_dvc_repro_killed_and_rerun_gives_the_same_numbers_and_then_reruns_nothing(snakemake_run, tmp_path):
    ws, _ = snakemake_run
    dws = make_workspace(tmp_path / "dvc")
    # DVC runs its stages one at a time: a part of the tiny grid (a trained and a weight-space method;
    # the one architecture of grid.models), whose cells are the Snakemake run's
    params = yaml.safe_load((dws / "params.yaml").read_text())
    params["grid"]["methods"] = ["ft", "wise_ft"]
    params["pretrain"]["architectures"] = ["mini_vit"]
    (dws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml is generated from the params file: the default one does not fit the tiny grid
    stale = run_rib("dvc", "--check", cwd=dws, check=False)
    assert stale.returncode == 2 and "dvc.yaml: out of date with params.yaml" in stale.stderr
    run_rib("dvc", cwd=dws)
    # a git repository, as a user's clone is, with the project's DVC settings (cache.type: links)
    shutil.copy2(REPO / ".gitignore", dws / ".gitignore")
    git(dws, "init", "-q")
    dvc(dws, "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", dws / ".dvc" / "config")
    # the first `dvc repro` is killed (SIGKILL, the whole run) while a model trains; the same
    # command then completes, and the numbers are those of the unbroken Snakemake run
    # (as `make dvc` runs it: `rib serve -- dvc repro`, the stages' rib commands in forks of one warm server)
    served = [sys.executable, "-m", "rib", "serve", "--", sys.executable, "-m", "dvc", "repro"]
    kill = faults.kill_during(dws, served, "finetune", random.Random(5), 1.0)
    assert kill.killed and not kill.finished_first
    assert faults.outputs_left_are_valid(dws) == []
    run(served, dws)
    cells = cell_numbers(dws)
    # pretrained + (ft, wise_ft) x 2 D_ft, on 3 evaluation sets, and the pretraining snapshots' record
    assert len(cells) == 3 + 2 * 2 * 3 + 1
    assert cells == {name: numbers for name, numbers in cell_numbers(ws).items() if name in cells}
    for table in ("metrics.csv", "summary.csv"):  # the rows of these methods, as the Snakemake run wrote them
        header, *rows = (dws / "reports/rib-mini" / table).read_text().splitlines()
        full_header, *full_rows = (ws / "reports/rib-mini" / table).read_text().splitlines()
        assert header == full_header and rows and set(rows) <= set(full_rows), table
    again = dvc(dws, "repro")
    assert "Running stage" not in again.stdout
    metrics = dvc(dws, "metrics", "show", "--json").stdout
    assert '"mri"' in metrics and "mini_vit.narrow" in metrics
    dvc(dws, "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
    status = dvc(dws, "status")
    assert "up to date" in status.stdout
    # Versioning: dvc.lock committed with the code, the outputs pushed to a folder remote; a clone
    # elsewhere pulls them, DVC finds everything up to date there, and rib cell reads a cell.
    linked = dws / "checkpoints/rib-mini/mini_vit.narrow/ft/c/model.pt"  # the workspace's file is DVC's
    assert linked.stat().st_nlink == 2  # one file: the workspace's is a hard link to DVC's cache
    dvc(dws, "remote", "add", "-d", "store", str(tmp_path / "remote"))
    git(dws, "add", "-A")
    git(dws, "commit", "-q", "-m", "tiny grid, ft and wise_ft")
    assert "dvc.lock" in git(dws, "ls-files").stdout.split()
    dvc(dws, "push", "-q")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(dws), str(clone)], tmp_path)
    assert not (clone / "results").exists()
    dvc(clone, "pull", "-q")
    assert "up to date" in dvc(clone, "status").stdout
    assert cell_numbers(clone) == cells
    cell = json.loads((clone / "results/rib-mini/mini_vit.narrow/ft/c/sketch.json").read_text())
    read = run_rib("cell", "mini_vit.narrow", "ft", "c", "sketch", cwd=clone).stdout
    assert f"top-1 {100 * cell['top1']:.2f}%" in read


def test_a_typo_in_params_stops_snakemake_with_one_clear_line(tmp_path):
    ws = make_workspace(tmp_path / "typo")
    text = (ws / "params.yaml").read_text().replace("  lr: 0.01", "  lr: 0.01\n  learnig_rate: 0.1")
    (ws / "params.yaml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=ws, env=rib_env(), text=True,
                          capture_output=True)
    assert proc.returncode != 0
    assert "params.yaml: train.learnig_rate: unknown key" in proc.stdout + proc.stderr


def test_configfile_selects_another_params_file(tmp_path):
    ws = make_workspace(tmp_path / "other")
    shutil.copy2(REPO / "params.yaml", ws / "params.yaml")
    tiny = yaml.safe_load(TINY_PARAMS.read_text())
    tiny["runtime"]["fork_server"] = False  # each job a fresh process: no rib server
    (ws / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    default = snakemake(ws, "-n")
    assert job_counts(default.stdout)["finetune"] == 192  # 2 models x 8 datasets x 12 trained entries
    tiny = snakemake(ws, "-n", "--configfile", "tiny.yaml")
    assert job_counts(tiny.stdout)["finetune"] == 20
    # the rib commands of the jobs read the same file: 4 classes x 20 images, not 10 x 40
    snakemake(ws, "data/rib-mini/prepared/sketch", "--configfile", "tiny.yaml")  # (--configfile takes several)
    info = json.loads((ws / "data/rib-mini/prepared/sketch/info.json").read_text())
    assert (info["num_classes"], info["num_images"]) == (4, 80)
    assert not (ws / "logs/rib-mini/server.log").exists()


def test_snakemake_lint_is_clean_and_changes_no_file(tmp_path):
    ws = make_workspace(tmp_path / "lint")
    locks = ws / ".snakemake" / "locks"  # a killed run's lock: only a run that executes jobs removes it
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text(f"{ws / 'params.yaml'}\n")
    before = faults.file_tree(ws)
    out = snakemake(ws, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr
    assert faults.file_tree(ws) == before  # tests/test_faults.py checks a dry run on a finished, damaged workspace


def test_rules_ask_the_cluster_for_the_params_resources(tmp_path):
    """params.yaml `resources` become the rules' Snakemake resources (what profiles/slurm sends to
    sbatch); a profile's or the command line's set-resources overrides them. (Which rules are local
    is checked on a real cluster, in test_slurm.py.)"""
    ws = make_workspace(tmp_path / "resources")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["resources"] = {"default": {"mem_mb": 1500, "runtime": 20},
                           "finetune": {"gpus": 1, "cpus": 4, "mem_mb": 9000, "runtime": 90}}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    out = snakemake(ws, "-n", "--set-resources", "evaluate_finetuned:runtime=7").stdout

    def resources(rule: str) -> str:
        block = out.split(f"rule {rule}:\n", 1)[1].split("\n\n", 1)[0]
        return next(line for line in block.splitlines() if line.strip().startswith("resources:"))

    assert "gpu=1" in resources("finetune") and "cpus_per_gpu=4" in resources("finetune")
    assert "mem_mb=9000" in resources("finetune") and "runtime=90" in resources("finetune")
    assert "gpu=" not in resources("prepare") and "mem_mb=1500" in resources("prepare")
    assert "runtime=20" in resources("evaluate_pretrained") and "runtime=7" in resources("evaluate_finetuned")


def test_the_inspection_commands_on_a_finished_workspace(snakemake_run, tmp_path):
    """rib grid, rib methods, rib verify (plain, --repair, --all-suites), rib cell for a pretrained, a
    weight-space and a not yet computed cell, and rib dvc --check on both committed dvc.yaml files."""
    ws, _ = snakemake_run
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    cells = pd.read_csv(copy / "reports/rib-mini/cells.csv")
    listed = run_rib("grid", "cells", cwd=copy).stdout.split()
    assert len(listed) == len(cells) and "results/rib-mini/mini_vit.narrow/wise_ft/c/sketch.json" in listed
    methods = run_rib("methods", cwd=copy).stdout
    assert "lora" in methods and "[ref:" in methods
    assert run_rib("verify", cwd=copy).returncode == 0
    # a damaged cell: named, left in place by plain verify, moved aside by --repair
    damaged = copy / "results/rib-mini/mini_vit.narrow/ft/c/source.json"
    damaged.write_text(damaged.read_text()[:40])
    plain = run_rib("verify", cwd=copy, check=False)
    assert plain.returncode == 1 and "results/rib-mini/mini_vit.narrow/ft/c/source.json" in plain.stdout + plain.stderr
    assert damaged.exists()
    repair = run_rib("verify", "--repair", cwd=copy)
    assert "1 damaged, moved aside" in repair.stdout and not damaged.exists()
    assert (damaged.parent / "source.json.damaged").exists()
    assert run_rib("verify", "--all-suites", cwd=copy).returncode == 0
    # rib cell: a pretrained cell, a weight-space one, and the one just moved aside
    pre = json.loads((copy / "results/rib-mini/mini_vit.narrow/pretrained/sketch.json").read_text())
    out = run_rib("cell", "mini_vit.narrow", "pretrained", "-", "sketch", cwd=copy).stdout
    assert f"top-1 {100 * pre['top1']:.2f}%" in out and "evaluate-pretrained@mini_vit.narrow" in out
    out = run_rib("cell", "mini_vit.narrow", "wise_ft", "c", "sketch", cwd=copy).stdout
    assert "checkpoints/rib-mini/mini_vit.narrow/ft/c/model.pt" in out and "combine-wise_ft@mini_vit.narrow-c" in out
    missing = run_rib("cell", "mini_vit.narrow", "ft", "c", "source", cwd=copy, check=False)
    assert "not computed yet" in missing.stdout + missing.stderr
    assert "snakemake --cores all results/rib-mini/mini_vit.narrow/ft/c/source.json" in missing.stdout + missing.stderr
    # status at a glance: datasets (prepared, counted from their manifests, or missing) and models
    data = {d["name"]: d for d in json.loads(run_rib("data", "list", "--json", cwd=copy).stdout)}
    assert (data["sketch"]["state"], data["sketch"]["images"], data["sketch"]["in_grid"]) == ("prepared", 80, True)
    assert data["sketch"]["disk_bytes"] > 80 * 100 and data["c"]["images"] == 600
    assert (data["v2"]["state"], data["v2"]["in_grid"], data["v2"]["disk_bytes"]) == ("missing", False, 0)
    assert data["narrow"]["role"] == "corpus" and "snakemake --cores all data/rib-mini/raw/v2" in data["v2"]["how"]
    assert "| sketch | shift | yes | prepared | 80 |" in run_rib("data", "list", cwd=copy).stdout
    models = {m["name"]: m for m in json.loads(run_rib("models", "list", "--json", cwd=copy).stdout)}
    narrow = models["mini_vit.narrow"]
    assert narrow["in_grid"] and narrow["fetched"] and narrow["disk_bytes"] > 0
    assert narrow["weights"] == "trained by the pipeline on the narrow corpus"
    assert narrow["preprocessing"].startswith("16px bilinear crop 1 center")
    assert not models["mini_vit.diverse"]["fetched"] and not models["mini_vit.diverse"]["in_grid"]
    # the committed DVC pipelines are those their params files generate
    assert run_rib("dvc", "--check", cwd=REPO).returncode == 0
    assert run_rib("--params", "configs/imagenet-rib.yaml", "dvc", "--check", "--out", "pipelines/imagenet-rib/dvc.yaml",
                   cwd=REPO).returncode == 0


def test_the_figures_plot_the_tables_values(snakemake_run, monkeypatch, tmp_path):
    """Each figure's plotted values are the table's (the PNG/PDF checks above only see the files)."""
    import numpy as np

    from rib import figures

    ws, _ = snakemake_run
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.__setitem__(path("png").split("/")[-1][:-4], fig))
    reports = ws / "reports/rib-mini"
    tables = {name: str(reports / f"{name}.csv") for name in ("metrics", "summary", "sweeps", "distances", "ri_matrix")}
    tables.update(robustness_cells=str(reports / "effective_robustness_cells.csv"),
                  baseline=str(reports / "baseline.csv"), baseline_lines=str(reports / "baseline_lines.csv"))
    figures.draw_all(tables, {"focus_dataset": "sketch", "focus_method": "ft"}, lambda n, e: f"{tmp_path}/{n}.{e}")
    assert set(drawn) == {"radar", "bar", "ri_heatmap", "ood_scatter", "wise_curve", "otdd_scatter",
                          "effective_robustness"}
    metrics, summary = pd.read_csv(tables["metrics"]), pd.read_csv(tables["summary"])
    sweeps, distances = pd.read_csv(tables["sweeps"]), pd.read_csv(tables["distances"])
    # radar: pretrained and after-FT accuracy on each evaluation dataset, FT on sketch
    sel = metrics[(metrics.finetune_dataset == "sketch") & (metrics.method == "ft")]
    pre_line, ft_line = drawn["radar"].axes[0].lines[:2]
    assert np.allclose(pre_line.get_ydata()[:-1], sel.acc_pre) and np.allclose(ft_line.get_ydata()[:-1], sel.acc_ft)
    # bar (left panel, D_ft = sketch): the pretrained bar, then one bar per method, in the table's order
    heights = [p.get_height() for p in drawn["bar"].axes[0].patches]
    on_sketch = summary[summary.finetune_dataset == "sketch"]
    assert np.allclose(heights, [on_sketch.ood_pre.mean(), *on_sketch.ood_ft], equal_nan=True)
    # RI heatmap of FT: the matrix rows
    matrix = pd.read_csv(tables["ri_matrix"])
    rows = matrix[matrix.method == "ft"].drop(columns=["model", "method", "finetune_dataset"]).to_numpy(float)
    assert np.allclose(np.asarray(drawn["ri_heatmap"].axes[0].images[0].get_array()), rows, equal_nan=True)
    # OOD scatter: per method, mean OOD accuracy before and after over the fine-tuning datasets
    points = np.concatenate([c.get_offsets() for c in drawn["ood_scatter"].axes[0].collections])
    means = summary.groupby(["model", "method"], sort=False)[["ood_pre", "ood_ft"]].mean().to_numpy()
    assert np.allclose(points, means)
    # WiSE-FT curve: the sweep's held-out D_ft and OOD accuracy per alpha
    curve = drawn["wise_curve"].axes[0].lines[0]
    by_alpha = sweeps.groupby("alpha")[["finetune", "ood"]].mean()
    assert np.allclose(curve.get_xdata(), by_alpha.finetune) and np.allclose(curve.get_ydata(), by_alpha.ood)
    # OTDD against the source accuracy FT lost
    points = drawn["otdd_scatter"].axes[0].collections[0].get_offsets()
    assert np.allclose(points, distances[["otdd", "source_drop_ft"]].to_numpy(float))
    # effective robustness (D_ft sketch: one panel, c): the baseline points and each method's fine-tuned
    # point on logit axes, the line from the table, the title saying what it was fit on
    from rib.robustness import transform

    ax = drawn["effective_robustness"].axes[0]
    base = pd.read_csv(tables["baseline"])
    plotted = np.concatenate([c.get_offsets() for c in ax.collections])
    expected = [(transform(a / 100), transform(b / 100)) for a, b in zip(base.source, base.c)]
    expected += [(transform(r.id_ft / 100), transform(r.ood_ft / 100)) for r in pd.read_csv(
        tables["robustness_cells"]).query("finetune_dataset == 'sketch' and eval_dataset == 'c'").itertuples()]
    assert sorted(map(tuple, np.round(plotted, 6))) == sorted(tuple(np.round(p, 6)) for p in expected)
    line = pd.read_csv(tables["baseline_lines"]).set_index("eval_dataset").loc["c"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"][0]
    assert np.allclose(dashed.get_ydata(), line.slope * dashed.get_xdata() + line.intercept)
    assert "pretraining snapshot" in drawn["effective_robustness"]._suptitle.get_text()
