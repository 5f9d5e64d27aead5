"""Classification heads compute in float32 under bf16 autocast (rib.models.heads): the logits are
those of the fp32 head on the autocast features, not rounded to bf16; state-dict keys, deepcopy
(LwF's teacher) and ``network.head`` are unchanged."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from rib.models import clip, network
from rib.models.heads import Float32Head, Float32Linear, float32_class
from rib.models.registry import MINI_ARCHS
from rib.models.wrappers import PadPrompter

ARCHS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
    "resnet": ("resnet18", dict(MINI_ARCHS["mini_resnet"].kwargs)),
}


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _scaled_head(model: nn.Module, scale: float) -> None:
    """Head weights that put the logits in the tens, where bf16's steps are 0.125 (like CLIP's)."""
    head = network.head(model)
    with torch.no_grad():
        head.weight.copy_(torch.randn_like(head.weight) * scale / head.in_features ** 0.5)
        head.bias.normal_()


@pytest.mark.parametrize("kind", sorted(ARCHS))
def test_timm_head_gives_fp32_logits_under_bf16_autocast(kind):
    arch, kwargs = ARCHS[kind]
    torch.manual_seed(0)
    model = network.create(arch, kwargs, 10).eval()
    head = network.head(model)
    assert isinstance(head, nn.Linear) and isinstance(head, Float32Head)  # still the head linear probing trains
    _scaled_head(model, 40.0)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        with bf16():
            logits = model(x)
            features = network.pre_logits(model, x)
            unpatched = F.linear(features, head.weight, head.bias)  # what a plain nn.Linear head gives here
        expected = head(features.float())  # fp32 head, autocast off
        fp32 = model(x)
    assert logits.dtype == torch.float32 and unpatched.dtype == torch.bfloat16
    assert torch.equal(logits, expected)
    assert logits.abs().max() > 16
    bf16_error = (unpatched.float() - expected).abs().max().item()
    assert bf16_error > 0.01, bf16_error  # the control: a bf16 head rounds these logits

    # the same keys as timm's own model: checkpoints load either way
    plain = timm.create_model(arch, pretrained=False, num_classes=10, **kwargs)
    assert list(plain.state_dict()) == list(model.state_dict())
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), fp32)

    # a pad prompt around the model uses the same head
    prompted = PadPrompter(model, 4, 32)
    with torch.no_grad(), bf16():
        assert prompted(x).dtype == torch.float32 and network.head(prompted) is head


def test_deepcopy_keeps_its_own_fp32_head():
    arch, kwargs = ARCHS["vit"]
    torch.manual_seed(1)
    model = network.create(arch, kwargs, 10).eval()
    _scaled_head(model, 40.0)
    teacher = copy.deepcopy(model)  # as LwF takes its teacher
    assert type(network.head(teacher)) is type(network.head(model))
    assert network.head(teacher).weight is not network.head(model).weight
    with torch.no_grad():
        network.head(teacher).weight.normal_()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), bf16():
        student_logits, teacher_logits = model(x), teacher(x)
        features = network.pre_logits(teacher, x)
    with torch.no_grad():
        assert torch.equal(teacher_logits, network.head(teacher)(features.float()))
        assert torch.equal(student_logits, network.head(model)(features.float()))
    assert teacher_logits.dtype == torch.float32 and not torch.allclose(teacher_logits, student_logits)
    pickle.loads(pickle.dumps(model))  # the head's class is importable


def test_checkpoint_round_trip_keeps_the_fp32_head(tmp_path):
    from rib.models.registry import Preprocessing

    arch, kwargs = ARCHS["vit"]
    model = network.create(arch, kwargs, 3)
    network.save(tmp_path / "m.pt", model, name="m", arch=arch, arch_kwargs=kwargs, label_space=["a", "b", "c"],
                 preprocessing=Preprocessing(32), meta={})
    loaded = network.load(tmp_path / "m.pt").model
    assert type(network.head(loaded)) is Float32Linear


def test_other_head_types():
    torch.manual_seed(2)
    model = network.create(ARCHS["vit"][0], ARCHS["vit"][1], 0).eval()  # no classes: an identity head
    assert isinstance(network.head(model), nn.Identity) and isinstance(network.head(model), Float32Head)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), bf16():
        assert model(x).dtype == torch.float32
    conv = float32_class(nn.Conv2d)
    assert conv is float32_class(nn.Conv2d) and float32_class(conv) is conv
    layer = nn.Conv2d(4, 5, 1)
    layer.__class__ = conv
    y = torch.randn(1, 4, 2, 2)
    with torch.no_grad(), bf16():
        assert layer(y).dtype == torch.float32
    assert pickle.loads(pickle.dumps(layer)).__class__ is conv


def test_zero_shot_head_gives_fp32_logits_under_bf16_autocast():
    torch.manual_seed(3)
    visual = nn.Sequential(nn.Conv2d(3, 32, 8, stride=8), nn.GELU(), nn.Flatten(), nn.Linear(32 * 16, 16))
    weights = 100 * F.normalize(torch.randn(6, 16), dim=-1)  # logit scale 100, as a CLIP head
    model = clip.ZeroShotClassifier(visual, weights).eval()
    head = network.head(model)
    assert isinstance(head, nn.Linear) and isinstance(head, Float32Head)
    assert list(model.state_dict()) == ["visual.0.weight", "visual.0.bias", "visual.3.weight", "visual.3.bias",
                                        "head.weight"]  # as with a plain nn.Linear head
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        with bf16():
            logits = model(x)
            features = network.pre_logits(model, x)
            unpatched = F.linear(features.bfloat16(), head.weight)
        expected = head(features.float())
    assert logits.dtype == torch.float32 and features.dtype == torch.float32  # normalised in fp32
    assert torch.equal(logits, expected)
    bf16_error = (unpatched.float() - expected).abs().max().item()
    assert logits.abs().max() > 16 and bf16_error > 0.01, bf16_error
    teacher = copy.deepcopy(model)
    assert type(teacher.head) is Float32Linear and teacher.head.weight is not model.head.weight
