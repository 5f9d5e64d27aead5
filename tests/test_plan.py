"""`rib plan`: jobs per rule as Snakemake schedules them, images per job, disk and hours."""

from __future__ import annotations

import json

import pytest
import timm
import yaml

from rib.config import load, validate
from rib.errors import FormatError
from rib.models.registry import MINI_ARCHS
from rib.plan import PlanError, dataset_sizes, job_counts, load_throughputs, make_plan
from tests.conftest import REPO, run_rib

IMAGENET = load(REPO / "configs" / "imagenet-rib.yaml")
AFTER = {"aggregate": 1, "figures": 1, "usage": 1}


def test_job_counts_are_those_of_snakemake_dry_runs(default_params, tiny_params):
    # The paper grid's, as tests/test_real_data.py's dry run finds them (and its 27 image caches:
    # 9 datasets x 3 preprocessings)
    assert job_counts(IMAGENET) == {"fetch": 9, "prepare": 9, "cache": 27, "fetch_weights": 7, "distance": 56,
                                    "evaluate_pretrained": 7, "finetune": 448, "combine": 224,
                                    "evaluate_finetuned": 392, **AFTER}
    # `snakemake -n` for params.yaml and tests/tiny-params.yaml (without its target rule all)
    assert job_counts(validate(default_params)) == {
        "generate": 9, "generate_corpus": 2, "prepare": 9, "prepare_corpus": 2, "cache": 9, "pretrain": 2,
        "distance": 16, "evaluate_pretrained": 2, "evaluate_snapshots": 2, "finetune": 192, "combine": 64, "evaluate_finetuned": 176, **AFTER}
    assert job_counts(validate(tiny_params)) == {
        "generate": 3, "generate_corpus": 1, "prepare": 3, "prepare_corpus": 1, "cache": 3, "pretrain": 1,
        "distance": 2, "evaluate_pretrained": 1, "evaluate_snapshots": 1, "finetune": 20, "combine": 8, "evaluate_finetuned": 18, **AFTER}


def _rows(plan, rule=None) -> dict:
    rows = plan.methods if rule else plan.rules
    return {(r.method if rule else r.rule): r for r in rows if rule in (None, r.rule)}


def test_tiny_plan_by_hand(tiny_params, tmp_path):
    params = validate(tiny_params)
    plan = make_plan(params, root=tmp_path, throughputs_file=tmp_path / "none.yaml")
    # 4 classes: source 20, sketch 20, c 2 per class in each of 75 leaves, corpus narrow 300; half held out
    sizes = {n: (d.images, d.finetune, d.heldout) for n, d in plan.datasets.items()}
    assert sizes == {"source": (80, 40, 40), "sketch": (80, 40, 40), "c": (600, 300, 300), "narrow": (1200, 1200, 0)}
    evaluated = 80 + 80 + 600
    rules, tuned, combined = _rows(plan), _rows(plan, "finetune"), _rows(plan, "combine")
    assert rules["evaluate_pretrained"].per_job == [evaluated] * 2
    assert rules["evaluate_finetuned"].images == 18 * evaluated
    # 4 epochs at batch 16 over the fine-tuning part: 40 (sketch), 300 (c)
    assert tuned["ft"].per_job == [4 * 40, 4 * 300] and tuned["ft"].jobs == 2
    assert tuned["ewc_fisher"].per_job == [4 * 40 + 16, 4 * 300 + 16]  # + its 16 importance images
    assert combined["wise_ft"].per_job == [3 * evaluated] * 2  # one model per alpha of [0, 0.5, 1]
    # greedy soup of 4: each ingredient alone and 3 candidate soups on held-out D_ft, then the soup
    assert combined["greedy_soup"].per_job == [evaluated + 7 * 40, evaluated + 7 * 300]
    assert combined["uniform_soup"].per_job == [evaluated] * 2
    # 50 samples: 50 of source's 80, and 40 (sketch) or 50 (c) of the fine-tuning part
    assert rules["distance"].per_job == [50 + 40, 50 + 50]
    assert rules["pretrain"].images == 6 * 1200  # 6 epochs over the narrow corpus
    disk = {d.item.split(" (")[0]: d for d in plan.disk}
    assert disk["image caches"].bytes == evaluated * 3 * 16 ** 2
    assert disk["raw data"].bytes == (80 + 80 + 600 + 1200) * 3 * 16 ** 2  # nothing generated yet
    kwargs = {**MINI_ARCHS["mini_vit"].kwargs, "img_size": 16}
    net = timm.create_model("vit_tiny_patch16_224", num_classes=4, device="meta", **kwargs)
    weights = 4 * sum(t.numel() for t in net.state_dict().values())
    assert disk["fine-tuned checkpoints"].bytes == 20 * weights and disk["pretrained checkpoints"].bytes == weights
    assert plan.hours() is None and plan.throughputs == {"mini_vit": None}
    assert any("no throughput measured for family mini_vit" in n for n in plan.notes)


def test_prepared_datasets_are_counted_from_their_manifests(in_tiny_suite):
    from rib import grid
    from rib.data.manifest import load_prepared

    root, params = in_tiny_suite
    sizes = dataset_sizes(params, root)
    for name, size in sizes.items():
        prepared = load_prepared(grid.data_dir(params, name))
        assert size.counted.startswith("prepared")
        assert size.images == len(prepared.rows)
        assert size.finetune + size.heldout == len(prepared.rows)
        assert size.heldout == len(prepared.select("heldout"))
    other = {**params, "split": {**params["split"], "heldout_fraction": 0.25}}  # prepared with another split
    assert dataset_sizes(other, root)["sketch"].counted == "synthetic settings"


def test_throughput_override_scales_hours(tiny_params, tmp_path):
    params = validate(tiny_params)
    slow = make_plan(params, root=tmp_path, overrides=["mini_vit=100,1000"])
    fast = make_plan(params, root=tmp_path, overrides=["mini_vit=200,2000"])
    assert slow.hours() == pytest.approx(2 * fast.hours()) and slow.hours() > 0
    for a, b in zip(slow.rules, fast.rules):
        if a.seconds:
            assert a.seconds == pytest.approx(2 * b.seconds), a.rule
    ft = _rows(slow, "finetune")["ft"]
    assert ft.seconds == pytest.approx(ft.images / 100)  # FT trains at the given rate
    assert _rows(slow)["evaluate_finetuned"].seconds == pytest.approx(18 * 760 / 1000)
    # other methods keep their measured ratio to FT (the CPU table: LwF trains 1.14 img/s where FT does 1.62)
    lwf = _rows(slow, "finetune")["lwf"]
    assert lwf.seconds / lwf.images == pytest.approx((1.62 / 1.14) / 100)
    only_eval = make_plan(params, root=tmp_path, overrides=["mini_vit=100,2000"])
    assert _rows(only_eval)["finetune"].seconds == pytest.approx(_rows(slow)["finetune"].seconds)


@pytest.mark.parametrize("value, message", [
    ("mini_vit=fast,100", "expected FAMILY=TRAIN_IMG_S,EVAL_IMG_S, two positive numbers"),
    ("mini_vit=100", "expected FAMILY=TRAIN_IMG_S,EVAL_IMG_S"),
    ("mini_vit=0,100", "two positive numbers"),
    ("100,200", "expected FAMILY=TRAIN_IMG_S,EVAL_IMG_S"),
    ("vit_b16=400,2500", "no model of the grid is of family 'vit_b16'; its families: mini_vit"),
])
def test_bad_throughput_is_one_clear_error(tiny_params, tmp_path, value, message):
    with pytest.raises(PlanError, match=message):
        make_plan(validate(tiny_params), root=tmp_path, overrides=[value])


def test_bad_throughput_on_the_command_line(tiny_params, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params))
    proc = run_rib("--params", str(params_file), "plan", "--throughput", "mini_vit=fast", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("rib: error: --throughput 'mini_vit=fast': expected FAMILY=TRAIN_IMG_S,EVAL_IMG_S, two "
                           "positive numbers of images per second, e.g. mini_vit=400,2500\n")


def test_measurements_file(tmp_path):
    committed = load_throughputs(REPO / "benchmarks" / "throughputs.yaml")
    cpu = next(e for e in committed if e.family == "vit_b16" and e.gpu is False)  # benchmarks/README.md's table
    assert cpu.train == 1.62 and cpu.eval == pytest.approx(100 / 21.7)
    assert "methods_vit_b16.py" in cpu.source and "cpu (2 cores)" in cpu.source and "fp32" in cpu.source
    bad = tmp_path / "bad.yaml"
    bad.write_text("measurements:\n  - family: vit_b16\n    methods: {}\n")
    with pytest.raises(FormatError, match=r"bad.yaml: measurements\[0\]: expected family"):
        load_throughputs(bad)
    # CPU numbers alone: used, and said to be CPU hours; a GPU entry, even an older one, is preferred
    only_cpu = tmp_path / "cpu.yaml"
    data = yaml.safe_load((REPO / "benchmarks" / "throughputs.yaml").read_text())
    data["measurements"] = [m for m in data["measurements"] if not m["gpu"]]
    only_cpu.write_text(yaml.safe_dump(data))
    plan = make_plan(IMAGENET, throughputs_file=only_cpu, root=tmp_path)
    assert plan.throughputs["vit_b16"] == cpu
    assert any(n.startswith("vit_b16: no GPU measurement exists") for n in plan.notes)
    gpu = {**data["measurements"][0], "device": "a GPU", "gpu": True, "date": "2020-01-01",
           "methods": {"ft": {"train_img_per_s": 400.0, "s_per_100_eval_images": 0.04}}}
    data["measurements"].append(gpu)
    with_gpu = tmp_path / "gpu.yaml"
    with_gpu.write_text(yaml.safe_dump(data))
    plan = make_plan(IMAGENET, throughputs_file=with_gpu, root=tmp_path)
    assert (plan.throughputs["vit_b16"].train, plan.throughputs["vit_b16"].eval) == (400.0, 2500.0)
    assert not any("no GPU measurement" in n for n in plan.notes)
    ft = _rows(plan, "finetune")["ft"]
    assert ft.seconds == pytest.approx(ft.images / 400)
    lwf = _rows(plan, "finetune")["lwf"]  # not measured on the GPU: FT's rate there x its CPU ratio
    assert lwf.seconds == pytest.approx(lwf.images / (400 * 1.14 / 1.62))


def test_rib_plan_of_the_paper_grid(tmp_path, capsys, monkeypatch):
    proc = run_rib("--params", str(REPO / "configs" / "imagenet-rib.yaml"), "plan", cwd=tmp_path)
    out = proc.stdout
    assert "rib plan:" in out and "Disk" in out and "Throughputs" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert lines["finetune"][1] == "448" and lines["combine"][1] == "224" and lines["distance"][1] == "56"
    assert "vit_b16: train" in out and "methods_vit_b16.py" in out  # which measurement the hours use
    from rib.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["--params", str(REPO / "configs" / "imagenet-rib.yaml"), "plan", "--json",
                 "--throughput", "vit_b16=400,2500"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["jobs"]["finetune"] == 448 and data["jobs"]["cache"] == 27
    assert data["throughputs"]["vit_b16"]["train_img_per_s"] == 400.0
    assert data["datasets"]["c"]["images"] == 75 * 5000  # corruption_subset: 5000 per corruption x severity
    assert data["total"]["hours"] > 0 and data["total"]["disk_bytes"] > 0
