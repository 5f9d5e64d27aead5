"""Every model's pixels are its own library's: rib's load_image equals timm's and open_clip's eval
transforms (before ToTensor and Normalize) to the last grey level, for every interpolation, crop
fraction and crop/resize mode the registry produces, on images of many sizes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import timm.data as timm_data
import torch
from PIL import Image

from rib.data import cache
from rib.data.loading import _geometry, decode_on_device, load_image
from rib.data.manifest import DataError
from rib.models import clip
from rib.models.registry import (
    PIXEL_RULE,
    Preprocessing,
    from_open_clip_config,
    from_timm_config,
    get_model,
    open_clip_preprocess_cfg,
    prep_key,
    preprocessing_of,
)

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
OPENAI = {"mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}

# (input size, interpolation, crop_pct, timm crop_mode, mean/std): what timm's pretrained configs use
# (crop_pct 0.875 / 0.9 / 0.95 / 1.0 and the odd ones, center / squash / border), what the paper
# models use (bicubic 0.9, 1.0, 0.95; bilinear 0.875), rib-mini's 32 px bilinear crop 1, and a
# crop_pct above 1 (the resize is smaller than the crop: torchvision pads with 0).
TIMM_COMBOS = [
    (224, "bicubic", 0.875, "center", IMAGENET),
    (224, "bicubic", 0.9, "center", IMAGENET),
    (224, "bicubic", 0.95, "center", IMAGENET),
    (224, "bicubic", 1.0, "center", OPENAI),
    (224, "bicubic", 0.965, "center", IMAGENET),
    (224, "bilinear", 0.875, "center", IMAGENET),
    (224, "bilinear", 0.9, "center", IMAGENET),
    (224, "nearest", 0.875, "center", IMAGENET),
    (224, "bicubic", 1.15, "center", IMAGENET),
    (32, "bilinear", 1.0, "center", IMAGENET),
    (224, "bicubic", 1.0, "squash", IMAGENET),
    (224, "bilinear", 1.0, "squash", IMAGENET),
    (224, "bicubic", 0.91, "squash", IMAGENET),
    (224, "bicubic", 1.0, "border", OPENAI),  # fill = the mean as uint8 (123, 117, 104)
    (224, "bilinear", 0.9, "border", IMAGENET),
]

# (resize_mode, interpolation, fill_color): open_clip's eval modes (shortest: OpenAI/OpenCLIP and
# MobileCLIP; squash: SigLIP, CLIPA, PE, DFN; longest: none of its tags, but a config may ask for it)
OPEN_CLIP_COMBOS = [
    ("shortest", "bicubic", 0),
    ("shortest", "bilinear", 0),
    ("squash", "bicubic", 0),
    ("squash", "bilinear", 0),
    ("longest", "bicubic", 0),
    ("longest", "bilinear", 255),
]

# The registry's own models, resolved as the pipeline resolves them (preprocessing_of)
PAPER = ["vit_base_patch16_clip_224.openai_ft_in1k", "vit_base_patch16_224_miil.in21k_ft_in1k",
         "resnet50.a1_in1k", "vit_base_patch16_clip_224.laion2b_ft_in1k", "vit_base_patch32_224.augreg_in1k"]
TIMM_PREFIXED = ["timm:dm_nfnet_f1.dm_in1k"]  # squash, crop 0.91
OPEN_CLIP_TAGS = ["ViT-B-32/openai", "ViT-B-16-SigLIP/webli", "ViT-L-14-CLIPA/datacomp1b", "MobileCLIP-S1/datacompdr"]


def _sizes() -> list[tuple[int, int]]:
    """(w, h): tiny, exact, the shorter (or longer) side already at a resize target (224/0.875 =
    256, 224/0.9 = 248, 224/0.95 = 235, 224), one pixel off, smaller than the crop, then random
    portrait and landscape sizes (seeded)."""
    sizes = [(1, 1), (1, 2), (2, 1), (2, 3), (3, 2), (5, 4), (4, 9), (8, 8), (13, 7), (16, 12), (31, 32), (32, 32),
             (224, 224), (225, 224), (224, 225), (223, 224), (224, 227), (100, 150), (200, 180)]
    for t in (224, 235, 248, 256, 194):
        sizes += [(t, t), (t, t + 57), (t + 91, t), (t, t + 1), (t + 1, t)]
    sizes += [(224, 150), (100, 224), (235, 200), (203, 248)]  # the longer side at a target ('border')
    rng = np.random.default_rng(2024)
    while len(sizes) < 120:
        w, h = np.exp(rng.uniform(0, np.log(400), size=2)).round().astype(int)
        if max(w, h) <= 4 * min(w, h):  # no extreme strips: those resize to huge images at the shorter side
            sizes.append((int(w), int(h)))
    return sizes


SIZES = _sizes()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(path, RGB PIL image) per size: random content, blocky to fine noise, saved as PNG."""
    folder = tmp_path_factory.mktemp("pixels")
    rng = np.random.default_rng(7)
    out = []
    for i, (w, h) in enumerate(SIZES):
        block = int(rng.choice([1, 2, 5]))
        small = rng.integers(0, 256, size=(-(-h // block), -(-w // block), 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(small, block, axis=0), block, axis=1)[:h, :w]
        path = folder / f"{i:03d}-{w}x{h}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=1)
        out.append((path, Image.open(path).convert("RGB")))
    return out


def _uint8(transform, img: Image.Image) -> torch.Tensor:
    """What a library's transform (without ToTensor/Normalize) makes of ``img``, as uint8 (3, H, W)."""
    out = transform(img)
    if isinstance(out, Image.Image):
        out = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy()).permute(2, 0, 1)
    assert out.dtype == torch.uint8
    return out


def _timm_eval(cfg: dict):
    """timm's eval transform of a data config; use_prefetcher ends it in MaybePILToTensor (uint8,
    no scaling), so its pixels are compared, not a normalised float tensor."""
    return timm_data.create_transform(**cfg, is_training=False, use_prefetcher=True)


def _open_clip_eval(cfg: dict):
    """open_clip's eval transform (image_transform_v2, as create_model_and_transforms' preprocess_val)
    without its last two steps, MaybeToTensor and Normalize."""
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from torchvision.transforms import Compose, Normalize

    full = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    assert isinstance(full.transforms[-1], Normalize) and "ToTensor" in type(full.transforms[-2]).__name__
    return Compose(full.transforms[:-2])


def _identical(images, prep: Preprocessing, reference) -> int:
    """The number of images whose rib pixels differ from the reference's (0 expected)."""
    bad = []
    for path, img in images:
        ours, theirs = load_image(path, prep).numpy(), _uint8(reference, img).numpy()  # (numpy: torch.equal
        if not np.array_equal(ours, theirs):  # of strided uint8 tensors is slow)
            diff = np.abs(ours.astype(int) - theirs).max() if ours.shape == theirs.shape else "shape"
            bad.append(f"{img.size}: {diff}")
    assert not bad, f"{prep_key(prep)}: {len(bad)}/{len(images)} differ ({', '.join(bad[:5])})"
    return len(images)


def test_sizes_cover_the_cases():
    assert len(SIZES) >= 100 and len(set(SIZES)) >= 100
    assert any(w < h for w, h in SIZES) and any(w > h for w, h in SIZES) and (224, 224) in SIZES
    assert {256, 248, 235, 224} <= {min(s) for s in SIZES} and min(map(max, SIZES)) == 1


@pytest.mark.parametrize("size,interpolation,crop_pct,crop_mode,norm", TIMM_COMBOS,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}" for c in TIMM_COMBOS])
def test_timm_eval_transform(images, size, interpolation, crop_pct, crop_mode, norm):
    cfg = {"input_size": (3, size, size), "interpolation": interpolation, "crop_pct": crop_pct,
           "crop_mode": crop_mode, **norm}
    prep = from_timm_config(cfg)
    assert (prep.input_size, prep.interpolation, prep.crop_pct, prep.crop_mode) == (size, interpolation, crop_pct,
                                                                                   crop_mode)
    assert prep.fill == (tuple(round(255 * v) for v in norm["mean"]) if crop_mode == "border" else (0, 0, 0))
    assert _identical(images, prep, _timm_eval(cfg)) == len(SIZES)


@pytest.mark.parametrize("name", PAPER + TIMM_PREFIXED)
def test_registry_timm_models(images, name):
    """preprocessing_of (which names the caches) and fetch's resolve_data_config agree, and the
    pixels are those of timm's transform for the model's pretrained config."""
    import timm

    spec = get_model(name, {"suite": "imagenet-rib"})
    prep = preprocessing_of(spec)
    pretrained = timm.models.get_pretrained_cfg(spec.arch)
    cfg = timm_data.resolve_data_config({}, model=SimpleNamespace(pretrained_cfg=pretrained.to_dict()))
    assert from_timm_config(cfg) == prep
    assert (prep.interpolation, prep.crop_pct, prep.crop_mode) == (pretrained.interpolation, pretrained.crop_pct,
                                                                   pretrained.crop_mode)
    assert _identical(images[::3], prep, _timm_eval(cfg))


def test_the_openai_clip_finetune_config():
    """vit_base_patch16_clip_224.openai_ft_in1k: timm's config, not open_clip's (bicubic, crop 0.9)."""
    prep = preprocessing_of(get_model("vit_base_patch16_clip_224.openai_ft_in1k", {"suite": "imagenet-rib"}))
    assert prep == Preprocessing(224, "bicubic", 0.9, OPENAI["mean"], OPENAI["std"], "center")
    assert prep_key(prep) == "v2-224px-bicubic-crop0.9-center"


@pytest.mark.parametrize("resize_mode,interpolation,fill", OPEN_CLIP_COMBOS,
                         ids=[f"{c[0]}-{c[1]}-fill{c[2]}" for c in OPEN_CLIP_COMBOS])
def test_open_clip_eval_transform(images, resize_mode, interpolation, fill):
    cfg = {"size": 224, "resize_mode": resize_mode, "interpolation": interpolation, "fill_color": fill, **OPENAI}
    prep = from_open_clip_config(cfg)
    assert prep.crop_pct == 1.0 and prep.interpolation == interpolation
    assert prep.crop_mode == {"shortest": "center", "squash": "squash", "longest": "border"}[resize_mode]
    reference = open_clip.image_transform(224, is_train=False, mean=OPENAI["mean"], std=OPENAI["std"],
                                          resize_mode=resize_mode, interpolation=interpolation, fill_color=fill)
    assert _identical(images, prep, type(reference)(reference.transforms[:-2])) == len(SIZES)


@pytest.mark.parametrize("name", OPEN_CLIP_TAGS)
def test_registry_open_clip_models(images, name):
    """preprocessing_of an open_clip model: its tag's resize mode, interpolation, mean and std, as
    create_model_and_transforms resolves them (and clip.preprocessing, what fetch saves, agrees)."""
    arch, tag = name.split("/")
    spec = get_model(f"open_clip:{name}", {"suite": "imagenet-rib"})
    prep = preprocessing_of(spec)
    cfg = open_clip_preprocess_cfg(arch, tag)
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
    assert (prep.mean, prep.std) == (tuple(tag_cfg["mean"]), tuple(tag_cfg["std"]))
    assert prep.crop_mode == {"shortest": "center", "squash": "squash"}[tag_cfg["resize_mode"]]
    assert prep.interpolation == tag_cfg["interpolation"]
    # what a loaded model carries: the tag's config (a model from a weights file: the defaults)
    loaded = SimpleNamespace(visual=SimpleNamespace(image_size=cfg["size"], preprocess_cfg=cfg))
    assert Preprocessing.from_dict(clip.preprocessing(loaded)) == prep
    from_file = SimpleNamespace(visual=SimpleNamespace(image_size=cfg["size"], preprocess_cfg={}))
    assert Preprocessing.from_dict(clip.preprocessing(from_file, arch, tag)) == prep
    assert _identical(images[::3], prep, _open_clip_eval(cfg))


def test_border_is_cropped_before_the_resize(images, tmp_path):
    """ObjectNet's frame comes off first; the rest is the model's transform of what remains."""
    prep = Preprocessing(224, "bicubic", 0.875)
    reference = _timm_eval({"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875})
    for path, img in images[::10]:
        w, h = img.size
        if min(w, h) <= 4:
            continue
        framed = Image.new("RGB", (w + 4, h + 4), (255, 0, 0))
        framed.paste(img, (2, 2))
        framed.save(tmp_path / "framed.png")
        assert torch.equal(load_image(tmp_path / "framed.png", prep, border=2), _uint8(reference, img))


def test_an_image_that_resizes_to_nothing_is_a_data_error(tmp_path):
    Image.new("RGB", (1, 1000)).save(tmp_path / "strip.png")
    with pytest.raises(DataError, match="strip.png: 1x1000 pixels cannot be preprocessed"):
        load_image(tmp_path / "strip.png", Preprocessing(224, "bicubic", 1.0, crop_mode="border"))


def test_gpu_decode_path_shares_the_geometry(images):
    """decode_on_device (torch resize: close to, not identical with, PIL's) takes the same sizes,
    pads and offsets: where no resize happens, it is identical."""
    import io

    for prep in (Preprocessing(224, "bicubic", 1.0), Preprocessing(224, "bilinear", 1.0, crop_mode="border",
                                                                   fill=(1, 2, 3)), Preprocessing(248, "bicubic", 1.0)):
        for path, img in images:
            g = _geometry(*img.size, prep)
            if g.resize != img.size:
                continue
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            got = decode_on_device([buf.getvalue()], prep, torch.device("cpu"))[0]
            assert torch.equal(got, load_image(path, prep)), (img.size, prep_key(prep))
    prep = Preprocessing(224, "bicubic", 0.9)
    path, img = next((p, i) for p, i in images if min(i.size) > 100)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    got = decode_on_device([buf.getvalue()], prep, torch.device("cpu"))[0]
    assert got.shape == (3, 224, 224) and (got.float() - load_image(path, prep).float()).abs().mean() < 8


def test_cache_key_is_versioned():
    """The key names the pixel rule's version: caches of the old rule (224px-bicubic-crop0.875) live
    in other folders and their keys are not read as new ones; every key round-trips."""
    assert PIXEL_RULE == 2 and cache.FORMAT == 2
    preps = [Preprocessing(224, "bicubic", 0.875), Preprocessing(224, "bilinear", 1.0, crop_mode="squash"),
             Preprocessing(32), Preprocessing(224, "bicubic", 0.91, crop_mode="squash"),
             Preprocessing(224, "bicubic", 1.0, crop_mode="border", fill=(123, 117, 104))]
    preps += [from_timm_config({"input_size": (3, s, s), "interpolation": i, "crop_pct": c, "crop_mode": m, **n})
              for s, i, c, m, n in TIMM_COMBOS]
    preps += [from_open_clip_config({"size": 224, "resize_mode": r, "interpolation": i, "fill_color": f})
              for r, i, f in OPEN_CLIP_COMBOS]
    for prep in preps:
        key = prep_key(prep)
        assert key.startswith("v2-")
        back = cache.prep_from_key(key)
        assert prep_key(back) == key
        assert (back.input_size, back.interpolation, back.crop_pct, back.crop_mode, back.fill) == \
            (prep.input_size, prep.interpolation, prep.crop_pct, prep.crop_mode, prep.fill)
    assert prep_key(Preprocessing(224, "bicubic", 0.875)) == "v2-224px-bicubic-crop0.875-center"
    assert prep_key(preps[-1 - len(OPEN_CLIP_COMBOS) - len(TIMM_COMBOS)]) == \
        "v2-224px-bicubic-crop1-border-fill123-117-104"
    assert len({prep_key(p) for p in preps}) == len({(p.input_size, p.interpolation, p.crop_pct, p.crop_mode, p.fill)
                                                     for p in preps})
    for old in ("224px-bicubic-crop0.875", "224px-bilinear-crop1", "32px-bilinear-crop1"):
        with pytest.raises(DataError, match="earlier pixel rule"):
            cache.prep_from_key(old)
        assert old not in {prep_key(p) for p in preps}
    for bad in ("v1-224px-bicubic-crop0.875-center", "v2-224px-bicubic-crop0.875", "v2-224px-bicubic-crop1-border",
                "v2-224px-bicubic-crop1-center-fill0-0-0", "v2-224px-bicubic-crop1-border-fill256-0-0",
                "v2-224px-bicubic-crop0.8750-center", "v2-224px-lanczos-crop1-center"):
        with pytest.raises(DataError):
            cache.prep_from_key(bad)


def test_old_checkpoints_load_as_center():
    old = {"input_size": 224, "interpolation": "bicubic", "crop_pct": 0.9, "mean": [0.5] * 3, "std": [0.5] * 3}
    prep = Preprocessing.from_dict(old)
    assert prep.crop_mode == "center" and prep.fill == (0, 0, 0)
    assert Preprocessing.from_dict(prep.as_dict()) == prep
    border = Preprocessing(224, "bicubic", 1.0, crop_mode="border", fill=(1, 2, 3))
    assert Preprocessing.from_dict(border.as_dict()) == border
    assert Preprocessing(224, crop_mode="squash", fill=(9, 9, 9)).fill == (0, 0, 0)  # fill only pads 'border'
    with pytest.raises(ValueError, match="crop mode"):
        Preprocessing(224, crop_mode="letterbox")
