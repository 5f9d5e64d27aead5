"""`rib data list` / `rib models list` on the real suite's configuration (rib-mini's are checked on
the finished tiny grid in tests/test_pipeline.py)."""

from __future__ import annotations

from rib import config, status
from rib.data.suites import get_suite
from tests.conftest import REPO


def test_real_datasets_missing_present_and_how_to_get_them(tmp_path):
    params = config.load(REPO / "configs" / "imagenet-rib.yaml")
    raw = tmp_path / "data" / "imagenet-rib" / "raw" / "v2" / "0"
    raw.mkdir(parents=True)
    (raw / "img.jpeg").write_bytes(b"\xff" * 10_000)
    archive = get_suite(params).dataset("r").source.archives[0].filename
    (tmp_path / params["data"]["downloads"]).mkdir()
    (tmp_path / params["data"]["downloads"] / archive).write_bytes(b"\0" * 50_000)  # a partial download
    rows = {r.name: r for r in status.datasets(params, root=tmp_path)}
    assert list(rows) == ["imagenet", "v2", "a", "r", "sketch", "objectnet", "cartoon", "drawing", "c"]
    v2 = rows["v2"]
    assert (v2.state, v2.images, v2.images_counted, v2.in_grid) == ("present", 10_000, "published size", True)
    assert v2.disk_bytes >= 10_000 and v2.how.startswith("rib data fetch v2 (1 archive(s), 1.3 GB)")
    assert rows["r"].state == "missing" and rows["r"].disk_bytes >= 50_000  # its archive counts
    assert rows["sketch"].disk_bytes == 0 and rows["c"].images == 375_000
    assert rows["objectnet"].how.startswith("by hand from https://objectnet.dev")
    assert "rib data add objectnet PATH" in rows["objectnet"].how
    table = status.render_datasets(list(rows.values()))
    assert "| v2 | shift | yes | present | 10,000 expected |" in table


def test_real_models_weights_and_their_own_preprocessing(tmp_path):
    params = config.load(REPO / "configs" / "imagenet-rib.yaml")
    ckpt = tmp_path / "models" / "imagenet-rib" / "vit_base_patch16_224.augreg_in1k" / "pretrained.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\0" * 4096)
    rows = {r.name: r for r in status.models(params, root=tmp_path)}
    augreg = rows["vit_base_patch16_224.augreg_in1k"]
    assert augreg.fetched and augreg.in_grid and augreg.disk_bytes >= 4096
    assert augreg.weights == "timm pretrained vit_base_patch16_224.augreg_in1k (Hugging Face hub)"
    # timm's own pretrained configs: AugReg at crop 0.9 bicubic, mean 0.5; CLIP's mean; MIIL's 0/1
    assert augreg.preprocessing == "224px bicubic crop 0.9 center, mean 0.5,0.5,0.5, std 0.5,0.5,0.5"
    assert "mean 0.481,0.458,0.408" in rows["vit_base_patch16_clip_224.laion2b_ft_in1k"].preprocessing
    assert rows["vit_base_patch16_224_miil.in21k_ft_in1k"].preprocessing.startswith("224px bilinear crop 0.875")
    assert not rows["resnet50.a1_in1k"].fetched and not rows["resnet50.a1_in1k"].in_grid


def test_compare_puts_a_runs_cells_beside_the_papers_numbers(tmp_path, capsys):
    from rib import published
    from rib.errors import RibError

    params = config.load(REPO / "configs" / "imagenet-rib.yaml")
    reports = tmp_path / "reports" / "imagenet-rib"
    reports.mkdir(parents=True)
    laion = "vit_base_patch16_clip_224.laion2b_ft_in1k"
    (reports / "metrics.csv").write_text(
        "model,method,finetune_dataset,eval_dataset,acc_pre,acc_ft\n"
        f"{laion},ft,r,imagenet,85.40,50.00\n"
        f"{laion},lp,r,imagenet,85.40,80.00\n"  # another method: not the published cell
        f"{laion},ft,sketch,a,41.00,30.00\n")  # another D_ft: neither
    (reports / "summary.csv").write_text("model,method,finetune_dataset,ood_pre,ood_ft,mri\n"
                                         f"{laion},ft,r,61.00,25.00,-36.0\n")
    rows = {(r.model, r.quantity): r for r in published.compare(params, root=tmp_path)}
    assert len(rows) == 7 + 2 * 5  # average OOD of the seven, five accuracies of two
    top1 = rows[("LAION-2B", "top-1 imagenet")]
    assert top1.paper == (85.5, 47.1) and top1.ours == (85.4, 50.0) and abs(top1.gap - 2.9) < 1e-9
    assert rows[("LAION-2B", "top-1 a")].ours is None  # FT on sketch is not the published cell
    avg = rows[("LAION-2B", "average OOD")]
    assert avg.paper == (61.49, 23.40) and avg.ours == (61.0, 25.0)
    assert rows[("OpenAI", "average OOD")].ours is None
    text = published.render(list(rows.values()))
    assert "| LAION-2B | top-1 imagenet | 85.5 -> 47.1 | 85.4 -> 50.0 | +2.9 |" in text
    assert "2 of 17 published numbers computed by this run" in text
    try:
        published.compare(config.load(REPO / "params.yaml"), root=tmp_path)
    except RibError as err:
        assert "for the imagenet-rib suite" in str(err)
    else:
        raise AssertionError("rib-mini has no published numbers")
