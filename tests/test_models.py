"""The model zoo: registry entries, timm and open_clip models by name, local weight files, the
weights cache, zero-shot heads -- all offline, with weights the tests write themselves."""

from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
import yaml
from torch.nn import functional as F

from rib.config import ConfigError, load, validate
from rib.errors import UnknownNameError
from rib.models import clip, network
from rib.models.registry import (PAPER_MODELS, canonical_name, check_available, get_model, model_slug,
                                 models_for)
from tests.conftest import REPO, run_rib

IMAGENET = load(REPO / "configs" / "imagenet-rib.yaml")
LABELS = [f"n{i:08d}" for i in range(1000)]


def test_every_registry_entry_resolves_to_an_architecture(default_params):
    for params in (IMAGENET, default_params):
        for name, spec in models_for(params).items():
            model = timm.create_model(spec.arch, pretrained=False, device="meta", **spec.arch_kwargs)
            assert sum(p.numel() for p in model.parameters()) > 0, name
    for name in PAPER_MODELS:  # pinned pretrained tags that timm knows
        check_available(get_model(name, IMAGENET))
    paper = [n for n in PAPER_MODELS if n.startswith("vit_base_patch16")]
    assert IMAGENET["grid"]["models"] == paper and len(paper) == 7


def test_names_with_prefixes_and_their_path_forms():
    spec = get_model("timm:vit_small_patch16_224.augreg_in21k", IMAGENET)
    assert (spec.arch, spec.slug) == ("vit_small_patch16_224.augreg_in21k", "timm--vit_small_patch16_224.augreg_in21k")
    spec = get_model("open_clip:ViT-B-32/laion2b_s34b_b79k", IMAGENET)
    assert spec.arch == "open_clip:ViT-B-32" and spec.slug == "open_clip--ViT-B-32--laion2b_s34b_b79k"
    assert canonical_name(spec.slug) == spec.name and model_slug(spec.name) == spec.slug
    assert get_model(spec.slug, IMAGENET) == spec  # the path form is accepted anywhere (DVC stage names)


def test_wrong_names_list_close_matches(default_params):
    with pytest.raises(UnknownNameError, match="did you mean 'vit_base_patch16_224.augreg_in1k'"):
        get_model("vit_base_patch16_224.augreg_in1", IMAGENET)
    with pytest.raises(UnknownNameError, match="timm has no pretrained model .*did you mean timm:vit_base_patch16_224.augreg_in1k"):
        check_available(get_model("timm:vit_base_patch16_224.augreg_inlk", IMAGENET))
    with pytest.raises(UnknownNameError, match="open_clip has no pretrained ViT-B-32/opanai; did you mean open_clip:ViT-B-32/openai"):
        check_available(get_model("open_clip:ViT-B-32/opanai", IMAGENET))
    with pytest.raises(UnknownNameError, match="need a suite with the ImageNet-1K label space"):
        get_model("timm:resnet18.a1_in1k", default_params)
    bad = json.loads(json.dumps(IMAGENET))
    bad["grid"]["models"] = ["timm:resnet18.a1_in1k", "timm--resnet18.a1_in1k"]
    with pytest.raises(ConfigError, match=r"grid.models\[1\]: 'timm--resnet18.a1_in1k' is the same model as grid.models\[0\]"):
        validate(bad)


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_timm_weights_file_round_trips_through_the_cache(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    out = tmp_path / "models" / "pretrained.pt"
    network.fetch(get_model("timm:resnet18.a1_in1k", IMAGENET), out, LABELS, weights_file=tmp_path / "weights.pth")
    ckpt = network.load(out)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_logits(ckpt.model, x), _logits(reference, x))
    assert ckpt.name == "timm:resnet18.a1_in1k" and ckpt.label_space == LABELS
    assert ckpt.preprocessing.input_size == 224 and ckpt.preprocessing.crop_pct == 0.95  # resnet18.a1_in1k's own
    assert ckpt.meta["parameters"] == sum(p.numel() for p in reference.parameters())
    assert ckpt.meta["feature_dim"] == 512


def test_local_model_from_params(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=1000)
    torch.save(reference.state_dict(), tmp_path / "mine.pth")
    params = json.loads(json.dumps(IMAGENET))
    params["local_models"] = {"my_resnet": {"arch": "resnet18", "weights": str(tmp_path / "mine.pth")}}
    params["grid"]["models"] = ["my_resnet"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run_rib("models", "fetch", "my_resnet", cwd=tmp_path)
    ckpt = network.load(tmp_path / "models" / "imagenet-rib" / "my_resnet" / "pretrained.pt")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(_logits(ckpt.model, x), _logits(reference, x))
    # weights of the wrong architecture are refused with the model's name
    params["local_models"]["my_resnet"]["arch"] = "resnet34"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_rib("models", "fetch", "my_resnet", "--out", str(tmp_path / "x.pt"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "my_resnet: could not load pretrained weights from" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


def test_offline_fetch_and_missing_cache_say_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "configs" / "imagenet-rib.yaml").read_text())
    missing = tmp_path / "models" / "imagenet-rib" / "vit_base_patch16_224.augreg_in1k" / "pretrained.pt"
    proc = run_rib("finetune", "vit_base_patch16_224.augreg_in1k", "ft", "r", "--pretrained", str(missing),
                   "--data", "data/imagenet-rib/prepared/r", "--out", str(tmp_path / "ft.pt"), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2
    assert "checkpoint not found; fetch it on a machine with internet: rib models fetch " \
           "vit_base_patch16_224.augreg_in1k" in proc.stderr


def test_open_clip_zero_shot_head_matches_the_text_encoder(tmp_path):
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-S-32")  # random weights
    tokenizer = open_clip.get_tokenizer("ViT-S-32")
    names = ["tench", "goldfish", "great white shark", "tiger shark"]
    templates = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of the {c}."]
    head = clip.zero_shot_head(model.eval(), tokenizer, names, templates)
    with torch.no_grad():
        for i, name in enumerate(names):
            emb = F.normalize(model.encode_text(tokenizer([t(name) for t in templates])), dim=-1).mean(0)
            expected = model.logit_scale.exp() * F.normalize(emb, dim=-1)
            assert torch.allclose(head[i], expected, atol=1e-5), name
    # through the cache: a weights file of this model, fetched as open_clip:ViT-S-32/<file>
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    out = tmp_path / "clip-ckpt.pt"
    network.fetch_open_clip("open_clip:ViT-S-32/test", "ViT-S-32", "test", out, LABELS[:4], names, templates,
                            weights_file=tmp_path / "clip.pt")
    ckpt = network.load(out)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(x), dim=-1) @ head.T
    assert torch.allclose(_logits(ckpt.model, x), expected, atol=1e-4)
    assert ckpt.arch == "open_clip:ViT-S-32" and ckpt.preprocessing.interpolation == "bicubic"
    assert network.head(ckpt.model) is ckpt.model.head  # linear probing trains exactly this head


def test_imagenet_class_names_are_real_names_in_label_order():
    names = clip.imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench" and not any(n.startswith("n0") for n in names)
    assert len(clip.imagenet_templates()) == 80


def test_dry_run_with_any_timm_and_open_clip_model(tmp_path):
    import shutil
    import subprocess
    import sys

    from tests.conftest import job_counts, rib_env

    for name in ("Snakefile", "workflow", "profiles", "src", "params.yaml"):
        src = REPO / name
        (shutil.copytree(src, tmp_path / name) if src.is_dir() else shutil.copy2(src, tmp_path / name))
    params = json.loads(json.dumps(IMAGENET))
    params["grid"]["models"] = ["timm:vit_small_patch16_224.augreg_in21k", "open_clip:ViT-B-32/openai"]
    params["grid"]["datasets"] = ["r", "sketch"]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "other.yaml"], cwd=tmp_path,
                          env=rib_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job_counts(proc.stdout)["fetch_weights"] == 2
    assert "models/imagenet-rib/open_clip--ViT-B-32--openai/pretrained.pt" in proc.stdout
    assert "rib models fetch open_clip--ViT-B-32--openai" in proc.stdout
    # run for real, offline (the hub made unreachable at once): a local rule, and a clear error
    # offline, with an empty hub cache: the same on every machine, whatever it downloaded before
    env = {**rib_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "TORCH_HOME": str(tmp_path / "torch")}
    target = "models/imagenet-rib/timm--vit_small_patch16_224.augreg_in21k/pretrained.pt"
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "other.yaml"],
                          cwd=tmp_path, env=env, text=True, capture_output=True)
    assert proc.returncode != 0
    assert "localrule fetch_weights:" in proc.stdout + proc.stderr
    assert ("rib: error: timm:vit_small_patch16_224.augreg_in21k: could not load pretrained weights "
            "(this needs internet: run it on a machine that has it)") in proc.stdout + proc.stderr
    assert not (tmp_path / target).exists()


def test_local_open_clip_model_from_params(tmp_path, monkeypatch):
    """local_models takes open_clip weights from a file too: `open_clip:ARCH/TAG` names the recipe
    (the tag's activation and preprocessing), `weights` the file; fetching reads the file."""
    from rib.models.registry import preprocessing_of

    params = json.loads(json.dumps(IMAGENET))
    weights = str(tmp_path / "my-clip.pt")
    params["local_models"] = {"my_clip": {"arch": "open_clip:ViT-B-32/openai", "weights": weights}}
    params["grid"]["models"] = ["my_clip"]
    validate(params)
    spec = get_model("my_clip", params)
    assert (spec.source, spec.arch, spec.weights_file) == ("open_clip", "open_clip:ViT-B-32", weights)
    assert preprocessing_of(spec) == preprocessing_of(get_model("open_clip:ViT-B-32/openai", params))
    calls = []
    monkeypatch.setattr(network, "fetch_open_clip", lambda *a, **k: calls.append((a, k)))
    network.fetch(spec, tmp_path / "pretrained.pt", [f"c{i}" for i in range(1000)])
    (name, arch, tag, *_), kwargs = calls[0]
    assert (name, arch, tag, kwargs["weights_file"]) == ("my_clip", "ViT-B-32", "openai", weights)
    params["local_models"]["my_clip"]["arch"] = "open_clip:ViT-B-32"  # no tag: no recipe to follow
    with pytest.raises((ConfigError, UnknownNameError), match="expected open_clip:ARCH/PRETRAINED"):
        validate(params)


def test_open_clip_model_folder_in_local_models(tmp_path):
    """local_models {arch: open_clip, weights: FOLDER}: the folder's config decides the architecture, the
    activation and the pixels; a folder without its config or weights is one clear error."""
    from rib.errors import MissingFileError
    from rib.models.registry import Preprocessing, check_available, preprocessing_of

    folder = tmp_path / "my-clip"
    folder.mkdir()
    params = json.loads(json.dumps(IMAGENET))
    params["local_models"] = {"my_clip": {"arch": "open_clip", "weights": str(folder), "templates": "simple"}}
    params["grid"]["models"] = ["my_clip"]
    validate(params)
    spec = get_model("my_clip", params)
    with pytest.raises(MissingFileError, match="my-clip/open_clip_config.json: not found"):
        check_available(spec)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 16, "quick_gelu": True, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32,
                                                                         "head_width": 16, "patch_size": 16},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}},
        "preprocess_cfg": {"interpolation": "bilinear", "resize_mode": "squash", "mean": [0.5] * 3, "std": [0.25] * 3}}))
    check_available(spec)
    assert (spec.family, spec.templates) == ("vit", "simple")
    assert preprocessing_of(spec) == Preprocessing(64, "bilinear", 1.0, (0.5,) * 3, (0.25,) * 3, "squash")
    with pytest.raises(MissingFileError, match="no weights file in this open_clip model folder"):
        network.fetch(spec, tmp_path / "pretrained.pt", [f"c{i}" for i in range(1000)])
    assert not (tmp_path / "pretrained.pt").exists()
