"""The paper's grid end to end, in small: suite imagenet-rib (ImageNet-1K's 1000-class label space and
the real class maps), all nine datasets fabricated in their official layouts and ingested the way a
user does (`rib data fetch` from a server, `rib data add` for ImageNet val's official tar and devkit
and for ObjectNet), two real architectures at 224 px from local random-init weights (timm's
vit_tiny_patch16_224 -- patch 16, fused qkv, class token, as ViT-B/16 -- and an open_clip model from
an open_clip model folder), every method of configs/imagenet-rib.yaml at its settings, through
Snakemake and through the generated DVC pipeline, with identical cells.

Small where it can be without leaving the paper's code path: a pilot run on two classes
(data.classes), fine-tuning on ImageNet-R only (grid.finetune_on; every checkpoint is still evaluated
on all nine datasets), one epoch, WiSE-FT's sweep at 3 of its 11 points.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rib.data import suites
from rib.data.imagenet_rib import build_suite
from rib.data.suites import Archive, Source
from tests import faults
from tests.conftest import REPO, job_counts, rib_env
from tests.test_real_data import jpeg, make_archive

pytestmark = pytest.mark.e2e

SUITE = build_suite()
WNIDS = SUITE.label_space
PER_CLASS = 4  # images per class in each dataset (ImageNet-C: per corruption and severity)


def two_classes() -> list[str]:
    """Two wnids that ImageNet-A and -R both have (every dataset then holds both)."""
    common = sorted({c.wnids[0] for c in SUITE.dataset("a").classes} & {c.wnids[0] for c in SUITE.dataset("r").classes})
    return [common[0], common[-1]]


CLASSES = two_classes()


def val_name(ci: int, i: int) -> str:
    """The ImageNet val file name of photo i of class ci (ImageNet-C, -Cartoon and -Drawing keep it)."""
    return f"ILSVRC2012_val_{ci * PER_CLASS + i + 1:08d}.JPEG"


def official_archives() -> dict[str, tuple[str, bytes]]:
    """Each downloadable dataset as its official archive (file name, bytes), holding the two classes."""
    index = {w: i for i, w in enumerate(WNIDS)}
    out = {}
    folders = {  # dataset: (archive, format, wrapper folder, class folder of a wnid, file name)
        "v2": ("imagenetv2-matched-frequency.tar.gz", "tar.gz", "imagenetv2-matched-frequency-format-val/",
               lambda w: str(index[w]), lambda ci, i: f"{i}.jpeg"),
        "a": ("imagenet-a.tar", "tar", "imagenet-a/", str, lambda ci, i: f"0.{ci}{i}.jpg"),
        "r": ("imagenet-r.tar", "tar", "imagenet-r/", str, lambda ci, i: f"art_{ci}{i}.jpg"),
        "sketch": ("ImageNet-Sketch.zip", "zip", "sketch/", str, lambda ci, i: f"sketch_{i}.JPEG"),
        "cartoon": ("imagenet-cartoon.tar.gz", "tar.gz", "imagenet-cartoon/", str, val_name),
        "drawing": ("imagenet-drawing.tar.gz", "tar.gz", "imagenet-drawing/", str, val_name),
    }
    for k, (name, (filename, fmt, wrapper, folder, file)) in enumerate(folders.items()):
        files = {f"{wrapper}{folder(w)}/{file(ci, i)}": jpeg(1000 * k + 10 * ci + i)
                 for ci, w in enumerate(CLASSES) for i in range(PER_CLASS)}
        out[name] = [(filename, make_archive(fmt, files))]
    c = SUITE.dataset("c")
    families = {"noise.tar": c.corruptions[:3], "blur.tar": c.corruptions[3:7], "weather.tar": c.corruptions[7:11],
                "digital.tar": c.corruptions[11:]}
    out["c"] = [(filename, make_archive("tar", {f"{corruption}/{severity}/{w}/{val_name(ci, i)}": jpeg(ci * 10 + i)
                                           for corruption in corruptions for severity in c.severities
                                           for ci, w in enumerate(CLASSES) for i in range(2)}))
                for filename, corruptions in families.items()]
    return out


def objectnet_folder(folder: Path) -> None:
    """objectnet-1.0/ as its zip unpacks: mapping files for 113 classes that overlap ImageNet-1K (the
    first two stand for the chosen classes), the images of those two and of one unmapped class."""
    rng = np.random.default_rng(1)
    others = [w for w in WNIDS if w not in CLASSES]
    mapped = CLASSES + [others[int(k)] for k in rng.choice(len(others), size=113 - len(CLASSES), replace=False)]
    folder_label = {f"thing_{k:03d}": f"Thing {k}" for k in range(113)} | {"other_0": "Other 0"}
    label_names = {f"Thing {k}": f"class {w}" for k, w in enumerate(mapped)}
    maps = folder / "mappings"
    maps.mkdir(parents=True)
    (maps / "folder_to_objectnet_label.json").write_text(json.dumps(folder_label))
    (maps / "objectnet_to_imagenet_1k.json").write_text(json.dumps(label_names))
    (maps / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): i for i in range(1000)}))
    (maps / "imagenet_to_label_2012_v2").write_text("".join(f"class {w}\n" for w in WNIDS))
    for k in (*range(len(CLASSES)), "other"):
        images = folder / "images" / (f"thing_{k:03d}" if k != "other" else "other_0")
        images.mkdir(parents=True)
        for i in range(PER_CLASS):
            (images / f"{i}.png").write_bytes(jpeg(500 + 10 * (k if k != "other" else 9) + i, frame=2))  # a PNG


def weights(folder: Path) -> dict:
    """Random-init weights of the two architectures, as a user would have them on disk."""
    import open_clip
    import timm
    import torch

    torch.manual_seed(0)
    folder.mkdir(parents=True)
    timm_file = folder / "vit_tiny_patch16_224.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), timm_file)
    clip_dir = folder / "tiny-clip"  # an open_clip model folder, as open_clip's hub repositories hold one
    clip_dir.mkdir()
    config = {"model_cfg": {"embed_dim": 64, "quick_gelu": True,
                            "vision_cfg": {"image_size": 224, "layers": 2, "width": 96, "head_width": 32,
                                           "patch_size": 32},
                            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                                         "layers": 2}},
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                                 "resize_mode": "shortest"}}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(config))
    model = open_clip.create_model(f"local-dir:{clip_dir}")
    torch.save(model.state_dict(), clip_dir / "open_clip_pytorch_model.bin")
    return {"tiny_vit": {"arch": "vit_tiny_patch16_224", "weights": str(timm_file)},
            "tiny_clip": {"arch": "open_clip", "weights": str(clip_dir), "templates": "simple"}}


def paper_params(local_models: dict) -> dict:
    """configs/imagenet-rib.yaml with its methods as they are, sized down for two CPU cores."""
    params = yaml.safe_load((REPO / "configs" / "imagenet-rib.yaml").read_text())
    params["local_models"] = local_models
    params["grid"]["models"] = list(local_models)
    params["grid"]["finetune_on"] = ["r"]
    params["data"].update(classes=CLASSES, corruption_subset=1)  # 1 image per class in each of the 75 leaves
    params["train"].update(epochs=1, batch_size=4, warmup_steps=1)
    params["methods"]["wise_ft"]["alphas"] = [0.0, 0.5, 1.0]  # the sweep's code path at 3 of its 11 points
    params["evaluate"]["batch_size"] = 64
    params["distance"]["samples"] = 12
    params["runtime"].update(device="cpu", threads=1, loader_workers=0, preload=True)
    params["resources"] = {"default": {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 30}}
    return params


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """A workspace of the paper-shaped grid with its data ingested, after `snakemake`."""
    from rib.cli import main
    from tests.test_real_data import Files, fabricate_official_val

    root = tmp_path_factory.mktemp("paper")
    local = weights(root / "weights")
    ws = faults.make_workspace(root / "snakemake", paper_params(local))
    # The seven downloadable datasets, from a loopback server (one dead mirror first), by `rib data fetch`
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    served = {}
    for name, files in official_archives().items():
        entries = []
        for filename, data in files:
            Files.files[f"/paper/{filename}"] = data
            entries.append(Archive(filename, (f"{base}/gone/{filename}", f"{base}/paper/{filename}"), size=len(data),
                                   sha256=hashlib.sha256(data).hexdigest()))
        served[name] = Source(tuple(entries), homepage="loopback")
    original = suites._SUITES["imagenet-rib"]

    def served_suite(params=None):  # the registry's suite, its archives on the loopback server
        suite = original(params)
        datasets = {k: dataclasses.replace(v, source=served[k]) if k in served else v for k, v in suite.datasets.items()}
        return dataclasses.replace(suite, datasets=datasets)

    from torchvision.datasets import imagenet as tv

    meta = dict(tv.ARCHIVE_META)
    fabricate_official_val(root / "ilsvrc", [c for c in SUITE.dataset("imagenet").classes if c.wnids[0] in CLASSES], per_class=PER_CLASS)
    objectnet_folder(root / "objectnet-1.0")
    cwd = os.getcwd()
    try:
        suites._SUITES["imagenet-rib"] = served_suite
        for key, name in (("val", "ILSVRC2012_img_val.tar"), ("devkit", "ILSVRC2012_devkit_t12.tar.gz")):
            tv.ARCHIVE_META[key] = (name, hashlib.md5((root / "ilsvrc" / name).read_bytes()).hexdigest())
        os.chdir(ws)
        for name in served:
            assert main(["data", "fetch", name, "-q"]) == 0, name
        assert main(["data", "add", "imagenet", str(root / "ilsvrc"), "-q"]) == 0
        assert main(["data", "add", "objectnet", str(root / "objectnet-1.0"), "-q"]) == 0
    finally:
        os.chdir(cwd)
        suites._SUITES["imagenet-rib"] = original
        tv.ARCHIVE_META.update(meta)
        httpd.shutdown()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=ws, env=rib_env(), text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root, ws, proc.stdout + proc.stderr


def cells(ws: Path) -> dict[str, dict]:
    return {str(p.relative_to(ws)): json.loads(p.read_text())["subsets"]
            for p in sorted((ws / "results").rglob("*.json"))}


def test_the_paper_grid_runs_through_snakemake(paper_run):
    root, ws, out = paper_run
    counts = job_counts(out)
    # 2 models x D_ft r x 8 trained entries (the paper's 7 + Model Stock's second FT), 7 evaluated as rows;
    # 4 weight-space methods; 9 datasets prepared and cached in each model's own pixels
    assert counts == {"prepare": 9, "cache": 18, "fetch_weights": 2, "finetune": 16, "evaluate_pretrained": 2,
                      "evaluate_finetuned": 14, "combine": 8, "distance": 2, "aggregate": 1, "figures": 1, "usage": 1, "all": 1}
    # every dataset holds the two classes, each image under its own label
    for name in ("imagenet", "v2", "a", "r", "sketch", "objectnet", "cartoon", "drawing", "c"):
        classes = json.loads((ws / f"data/imagenet-rib/prepared/{name}/classes.json").read_text())
        wnids = sorted(w for c in classes["classes"] for w in c["wnids"])
        assert wnids == CLASSES, name
    # each model's own preprocessing: timm's for the ViT, the folder's config for open_clip
    caches = sorted(p.name for p in (ws / "cache/imagenet-rib").iterdir())
    assert caches == ["v2-224px-bicubic-crop0.9-center", "v2-224px-bicubic-crop1-center"]
    reports = ws / "reports/imagenet-rib"
    table = pd.read_csv(reports / "cells.csv")
    methods = ["ft", "lp", "lp_ft", "lora", "visual_prompt", "ewc", "lwf",
               "wise_ft", "uniform_soup", "greedy_soup", "model_stock"]
    assert len(table) == 2 * 9 * (1 + len(methods))  # (pretrained + 11 methods on r) x 9 evaluation datasets
    assert set(table.method) == {"pretrained", *methods}
    summary = pd.read_csv(reports / "summary.csv")
    assert set(summary.finetune_dataset) == {"r"} and len(summary) == 2 * len(methods)
    sweeps = pd.read_csv(reports / "sweeps.csv")
    assert len(sweeps) == 2 * 3  # the WiSE sweep (alpha = 0, 0.5, 1 here) for each model
    for figure in ("radar", "bar", "ri_heatmap", "ood_scatter", "wise_curve", "otdd_scatter", "effective_robustness"):
        assert (reports / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    # two pretrained models make no line: the tables say so instead of a number
    lines = pd.read_csv(reports / "baseline_lines.csv")
    assert lines.slope.isna().all() and lines.note.str.contains("at least 3 models").all()
    # the open_clip checkpoint: QuickGELU from its config, the config kept, a zero-shot head of 7 templates
    import torch

    ckpt = torch.load(ws / "models/imagenet-rib/tiny_clip/pretrained.pt", weights_only=True)
    assert ckpt["arch_kwargs"]["quick_gelu"] is True and ckpt["arch_kwargs"]["model_cfg"]["vision_cfg"]["width"] == 96
    assert ckpt["meta"]["head"] == "zero-shot, 7 templates"
    # the paper's settings ran: a 30-px prompt at 224 px, LoRA on the fused qkv of the real ViT
    log = (ws / "logs/imagenet-rib/finetune/tiny_vit/lora/r.log").read_text()
    assert "lora" in log.lower()


def test_the_generated_dvc_pipeline_gives_the_same_cells(paper_run):
    root, ws, _ = paper_run
    params = yaml.safe_load((ws / "params.yaml").read_text())
    # one model and two methods whose stages need another's checkpoint (LP-FT the linear probe's,
    # WiSE-FT FT's): DVC runs its stages one at a time (Model Stock's two FTs: the Snakemake run's)
    params["grid"]["models"] = ["tiny_clip"]
    params["grid"]["methods"] = ["lp_ft", "wise_ft"]
    params["report"]["focus_method"] = "lp_ft"
    dws = faults.make_workspace(root / "dvc", params)
    # The data stages' outputs (fetched, prepared, cached at 224 px) are the Snakemake run's, linked:
    # the same rib commands made them, and DVC adopts them (`dvc commit` of the cache stages and what
    # they depend on; tests/test_pipeline.py runs those stages through DVC). DVC then runs the rest.
    for part in ("data/imagenet-rib/raw", "data/imagenet-rib/prepared", "cache/imagenet-rib"):
        shutil.copytree(ws / part, dws / part, copy_function=os.link)
    # DVC runs each stage as its own process; `rib serve -- dvc repro` (as `make dvc` does) keeps one
    # warm rib server for the stages' rib commands, which spares each the 3.5 s of importing torch
    for cmd in (["rib", "dvc"], ["dvc", "init", "--no-scm", "-q"], ["dvc", "commit", "-f", "-q", "-d", "cache"],
                ["rib", "serve", "--", "dvc", "repro"]):
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=dws, env=rib_env(), text=True, capture_output=True,
                              timeout=900)
        assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rib server on" in proc.stderr
    ran = set(re.findall(r"Running stage '([^'@]+)", proc.stdout))
    assert ran and not ran & {"fetch", "prepare", "cache"}, ran  # adopted, not run again
    ours = cells(dws)
    assert len(ours) == 9 * 3  # pretrained and two methods, on 9 evaluation datasets
    assert ours == {k: v for k, v in cells(ws).items() if k in ours}
    for table in ("summary.csv", "sweeps.csv", "distances.csv"):  # their rows (and columns) of these methods
        mine = pd.read_csv(dws / "reports/imagenet-rib" / table)
        theirs = pd.read_csv(ws / "reports/imagenet-rib" / table)
        keep = theirs.model == "tiny_clip"
        if "method" in theirs:
            keep &= theirs.method.isin(params["grid"]["methods"])
        assert len(mine) and set(mine.columns) <= set(theirs.columns), table
        theirs = theirs[keep][list(mine.columns)].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, theirs, check_exact=True)
