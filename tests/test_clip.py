"""open_clip weights get the activation they were trained with: QuickGELU for the tags whose
pretrained config says so (OpenAI's ViT-B-32, ...), at fetch and at every reload of the checkpoint,
also when the weights come from a local file -- offline, with weights the test writes itself."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn
from torch.nn import functional as F

from rib.models import clip, network
from rib.models.heads import Float32Linear

NAMES = ["tench", "goldfish", "great white shark"]
TEMPLATES = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of the {c}."]
LABELS = [f"n{i:08d}" for i in range(len(NAMES))]


def activations(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, (QuickGELU, nn.GELU))}


@pytest.mark.parametrize(("arch", "tag", "quick"), [
    ("ViT-B-32", "openai", True),  # OpenAI's weights: QuickGELU
    ("ViT-B-32", "laion400m_e32", True),
    ("ViT-B-32", "laion2b_s34b_b79k", False),  # LAION-2B's: GELU
    ("ViT-B-16", "openai", True),
    ("RN50", "openai", True),
    ("ViT-B-32-quickgelu", "metaclip_400m", True),  # the architecture says so itself
    ("ViT-B-32", "my-own-weights", False),  # a tag open_clip does not know: the architecture's (GELU)
    ("ViT-B-32", None, False),
])
def test_activation_is_decided_from_the_tag(arch, tag, quick):
    assert clip.uses_quick_gelu(arch, tag) is quick


def test_quick_gelu_weights_from_a_file_at_fetch_and_reload(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32-quickgelu").eval()  # open_clip's own QuickGELU ViT-B-32, random
    assert activations(reference.visual) == {QuickGELU}
    weights = tmp_path / "vit-b-32-openai.pt"
    torch.save(reference.state_dict(), weights)  # stands for OpenAI's weights, read from a local file

    built = {}

    def spy(*args, **kwargs):
        built["model"], prep = real_build(*args, **kwargs)
        return built["model"], prep

    real_build = clip.build
    monkeypatch.setattr(clip, "build", spy)
    out = tmp_path / "pretrained.pt"
    network.fetch_open_clip("open_clip:ViT-B-32/openai", "ViT-B-32", "openai", out, LABELS, NAMES, TEMPLATES,
                            weights_file=weights)
    ckpt = network.load(out)
    assert ckpt.arch == "open_clip:ViT-B-32" and ckpt.arch_kwargs == {"quick_gelu": True}
    for model in (built["model"], ckpt.model):  # right after fetch, and as every later job loads it
        assert activations(model) == {QuickGELU}
        assert type(network.head(model)) is Float32Linear

    # the logits of open_clip's correctly built model, with the zero-shot head made from its text tower
    head = clip.zero_shot_head(reference, open_clip.get_tokenizer("ViT-B-32"), NAMES, TEMPLATES)
    assert torch.allclose(ckpt.model.head.weight, head, atol=1e-5)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = F.normalize(reference.encode_image(x), dim=-1) @ head.T
        for model in (built["model"], ckpt.model):
            assert torch.allclose(model.eval()(x), expected, rtol=0, atol=1e-5)

        # the control: the same weights built with GELU (open_clip's default for the bare file) differ
        gelu = open_clip.create_model("ViT-B-32", pretrained=str(weights)).eval()
        assert activations(gelu.visual) == {nn.GELU}
        gelu_head = clip.zero_shot_head(gelu, open_clip.get_tokenizer("ViT-B-32"), NAMES, TEMPLATES)
        gelu_logits = F.normalize(gelu.encode_image(x), dim=-1) @ gelu_head.T
    assert (gelu_logits - expected).abs().max() > 1e-3

    # The reference code's HeadOnly and LoRA draw the same line in an open_clip tower as in a timm
    # ViT: the patch embedding (conv1) and the blocks (transformer) are frozen, the rest trains.
    from rib.methods import METHODS, get_method
    from rib.methods.base import TrainContext

    outside = {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.ln_pre.weight",
               "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"}
    ctx = TrainContext(device=torch.device("cpu"), seed=0)
    head_only = get_method("lp", {}).setup(network.load(out).model, ctx)
    assert {n for n, p in head_only.named_parameters() if p.requires_grad} == outside | {"head.weight"}
    lora = get_method("lora", METHODS["lora"].defaults()).setup(network.load(out).model, ctx)
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    factors = trained - outside
    assert len(factors) == 12 * 4 and all(".attn.parametrizations.in_proj_weight.0." in n for n in factors)


def test_checkpoint_without_a_recorded_activation_loads_as_made(tmp_path, caplog, monkeypatch):
    """Checkpoints fetched before rib recorded the activation were built (and trained) with GELU: they
    load so, with a warning when their weights' tag was trained with QuickGELU."""
    from rib.models.registry import Preprocessing

    model = clip.ZeroShotClassifier(nn.Identity(), torch.zeros(3, 4))
    network.save(tmp_path / "old.pt", model, name="open_clip:ViT-B-32/openai", arch="open_clip:ViT-B-32",
                 arch_kwargs={}, label_space=LABELS, preprocessing=Preprocessing(224),
                 meta={"kind": "pretrained", "weights": "open_clip:ViT-B-32/openai"})
    created = {}

    def fake_create(arch, num_classes, quick_gelu=False):  # the architecture itself is not needed here
        created.update(arch=arch, quick_gelu=quick_gelu)
        return clip.ZeroShotClassifier(nn.Identity(), torch.zeros(num_classes, 4))

    monkeypatch.setattr(clip, "create", fake_create)
    with caplog.at_level("WARNING", logger="rib"):
        network.load(tmp_path / "old.pt")
    assert created == {"arch": "ViT-B-32", "quick_gelu": False}
    assert "trained with QuickGELU" in caplog.text and "rib models fetch open_clip:ViT-B-32/openai" in caplog.text
