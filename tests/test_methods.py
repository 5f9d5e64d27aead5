"""Each fine-tuning method's defining property, exact resume for every method, and their settings."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from rib.cli import main
from rib.config import ConfigError, method_schedule, validate
from rib.data.labels import LabelProjection
from rib.data.loading import open_dataset
from rib.data.manifest import load_prepared
from rib.errors import TrainingStopped
from rib.methods import get_method
from rib.methods.base import MethodError, TrainContext
from rib.methods.lwf import distillation_loss
from rib.methods.weights import average, greedy_soup, interpolate, model_stock, stock_ratio
from rib.models import network
from rib.train import Schedule, fit
from tests.conftest import REPO

CPU = torch.device("cpu")
TRAIN_METHODS = ["ft", "lp", "linear_probe", "lora", "visual_prompt", "ewc", "ewc_fisher", "l2sp", "lwf", "mas"]


def _reference(prep):
    """The pipeline's own loader of pretraining-domain images: ``samples`` of the narrow corpus."""
    from rib.steps import _reference_loader

    return _reference_loader("data/rib-mini/corpora/prepared/narrow", prep, False)


def _config(params, entry, epochs=3):
    cfg = method_schedule(params, entry)
    cfg.update(epochs=epochs, batch_size=8, warmup_steps=2)
    return cfg


def _train(params, checkpoint, entry, state, stop=None, epochs=3, method=None, dataset="sketch"):
    """Fit ``entry`` on the tiny suite; returns (saved model, wrapper, method, pretrained checkpoint)."""
    ckpt = network.load(checkpoint)
    prepared = load_prepared(f"data/rib-mini/prepared/{dataset}")
    data = open_dataset(prepared, "finetune", ckpt.preprocessing, preload_images=True, show_progress=False)
    cfg = _config(params, entry, epochs)
    method = method or get_method(cfg["method"], cfg)
    _, final, wrapper = fit(ckpt.model, method, data, LabelProjection(prepared.classes, ckpt.label_space),
                            ckpt.preprocessing, Schedule.from_config(cfg), seed=0, device=CPU, state_path=state,
                            run_fingerprint="test", show_progress=False, stop_after_epoch=stop,
                            reference=_reference(ckpt.preprocessing))
    return final, wrapper, method


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# Resume: every training method ends with the same weights after a stop as without one.
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", TRAIN_METHODS)
def test_every_method_resumes_to_the_same_weights(in_tiny_suite, tiny_vit, tmp_path, entry):
    _, params = in_tiny_suite
    unbroken, _, _ = _train(params, tiny_vit, entry, tmp_path / "a.pt")
    with pytest.raises(TrainingStopped):
        _train(params, tiny_vit, entry, tmp_path / "b.pt", stop=1)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["epoch"] == 1
    if entry in ("ewc_fisher", "mas"):  # the importance weights travel in the state; resuming does not re-estimate
        assert saved["method"]["importance"]
        cfg = _config(params, entry)
        method = get_method(cfg["method"], cfg)
        method.estimate = lambda *a, **k: pytest.fail("importance re-estimated on resume")
        resumed, _, _ = _train(params, tiny_vit, entry, tmp_path / "b.pt", method=method)
    else:
        resumed, _, _ = _train(params, tiny_vit, entry, tmp_path / "b.pt")
    assert _same(unbroken.state_dict(), resumed.state_dict())
    pretrained = network.load(tiny_vit).model.state_dict()
    if entry != "visual_prompt":
        assert not _same(pretrained, unbroken.state_dict()), f"{entry} did not change the model"


# ------------------------------------------------------------------------------------------------
# Defining properties
# ------------------------------------------------------------------------------------------------
def test_lora_leaves_the_base_untouched_and_merges_to_base_plus_low_rank(in_tiny_suite, tiny_vit, tmp_path):
    _, params = in_tiny_suite
    before = network.load(tiny_vit).model.state_dict()
    ckpt = network.load(tiny_vit)
    cfg = _config(params, "lora")
    method = get_method("lora", cfg)
    module = method.setup(ckpt.model, TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing))
    # Training would move the factors; give them values and check the algebra directly too.
    qkv = module.blocks[0].attn.qkv
    update = qkv.parametrizations.weight[0]
    with torch.no_grad():
        for name, p in update.named_parameters():
            p.copy_(torch.randn_like(p))
    base = qkv.parametrizations.weight.original.detach().clone()
    assert torch.equal(base, before["blocks.0.attn.qkv.weight"])
    expected = base.clone()
    d = base.shape[0] // 3
    scale = cfg["alpha"] / cfg["rank"]
    expected[:d] += scale * update.B_q @ update.A_q
    expected[2 * d:] += scale * update.B_v @ update.A_v
    assert update.A_q.shape == (cfg["rank"], base.shape[1])
    merged, wrapper = method.finalize(module)
    assert wrapper is None
    merged_sd = merged.state_dict()
    assert merged_sd.keys() == before.keys()
    assert torch.allclose(merged_sd["blocks.0.attn.qkv.weight"], expected, atol=1e-6)
    assert torch.equal(merged_sd["blocks.0.attn.qkv.weight"][d:2 * d], base[d:2 * d])  # k untouched

    # A real run: inside the blocks only the q and v rows of qkv moved; the patch embedding and the
    # head are frozen; what lies outside the blocks trains (the reference code's LoRA).
    final, _, _ = _train(params, tiny_vit, "lora", tmp_path / "s.pt")
    after = final.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    in_blocks = {k for k in changed if k.startswith("blocks.")}
    assert in_blocks and all(k.endswith("attn.qkv.weight") for k in in_blocks)
    for k in in_blocks:
        assert torch.equal(before[k][d:2 * d], after[k][d:2 * d])
    assert not any(k.startswith(("patch_embed.", "head.")) for k in changed)
    assert changed - in_blocks, "nothing outside the blocks trained"


def _reference_vit():
    """A small timm ViT with a class token, the layout of ViT-B/16 (patch embedding, fused qkv)."""
    return network.create("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2,
                                                    "embed_dim": 48, "num_heads": 3}, 10)


def _trainable(method, model, prep=None):
    module = method.setup(model, TrainContext(device=CPU, seed=0, prep=prep))
    trained = {id(p) for p in method.trainable_parameters(module)}
    names = {n for n, p in module.named_parameters() if id(p) in trained}
    assert names == {n for n, p in module.named_parameters() if p.requires_grad}
    return names


def test_lp_and_lora_train_what_the_reference_code_trains():
    # HeadOnly (main.py): patch_embed and blocks frozen; everything else trains.
    model = _reference_vit()
    everything = [n for n, _ in model.named_parameters()]
    head_only = {n for n in everything if not n.startswith(("patch_embed.", "blocks."))}
    assert {"cls_token", "pos_embed", "norm.weight", "head.weight"} <= head_only
    assert _trainable(get_method("lp", {"entry": "lp"}), model) == head_only
    # Pure linear probing: the head alone.
    assert _trainable(get_method("linear_probe", {}), _reference_vit()) == {"head.weight", "head.bias"}
    # LoRA (convert2lora + mark_only_lora_as_trainable(model.blocks), patch_embed and head frozen):
    # the factors of q and v and everything outside the blocks but the patch embedding and head.
    from rib.methods import METHODS

    defaults = METHODS["lora"].defaults()
    assert (defaults["rank"], defaults["alpha"], defaults["targets"]) == (8, 1, ["q", "v"])
    method = get_method("lora", defaults)
    names = _trainable(method, _reference_vit())
    factors = {n for n in names if n.startswith("blocks.")}
    assert factors == {f"blocks.{i}.attn.qkv.parametrizations.weight.0.{f}_{t}"
                       for i in range(2) for f in "AB" for t in "qv"}
    assert names - factors == {n for n in everything if not n.startswith(("patch_embed.", "blocks.", "head."))}
    update = method.sites[0][0].parametrizations.weight[0]
    assert update.scale == 1 / 8  # lora_alpha / r
    # Hu et al.'s adapters alone:
    alone = get_method("lora", {**defaults, "train_outside_blocks": False})
    assert {n for n in _trainable(alone, _reference_vit())} == factors
    # A CNN: HeadOnly trains its fc only, as the reference code does for a ResNet.
    cnn = network.create("resnet18", {"channels": (8, 8, 8, 8), "stem_width": 8}, 10)
    assert _trainable(get_method("lp", {}), cnn) == {"fc.weight", "fc.bias"}


def test_lora_on_a_model_without_attention_is_a_clear_error(in_tiny_suite, tiny_pretrained):
    _, params = in_tiny_suite
    ckpt = network.load(tiny_pretrained)  # mini_resnet
    method = get_method("lora", _config(params, "lora"))
    with pytest.raises(MethodError, match="no attention projections"):
        method.setup(ckpt.model, TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing))


def test_the_pad_prompt_changes_only_border_pixels_and_nothing_else(in_tiny_suite, tiny_vit, tmp_path):
    _, params = in_tiny_suite
    before = network.load(tiny_vit).model.state_dict()
    ckpt = network.load(tiny_vit)
    cfg = _config(params, "visual_prompt")
    start = get_method("visual_prompt", cfg).setup(ckpt.model, TrainContext(device=CPU, seed=0,
                                                                             prep=ckpt.preprocessing))
    side = params["synthetic"]["image_size"]
    inner = torch.zeros(side, side, dtype=torch.bool)
    inner[4:side - 4, 4:side - 4] = True
    initial = start.prompt().detach()[0]
    border = initial[:, ~inner]  # the reference's PadPrompter: torch.randn in normalised-pixel space
    assert border.numel() == 3 * (side ** 2 - (side - 8) ** 2)
    assert abs(float(border.mean())) < 0.1 and 0.9 < float(border.std()) < 1.1
    final, wrapper, _ = _train(params, tiny_vit, "visual_prompt", tmp_path / "s.pt")
    assert wrapper == {"kind": "pad_prompt", "width": 4, "image_size": side}
    prompt = final.prompt().detach()[0]
    assert prompt[:, inner].abs().max() == 0
    assert not torch.equal(prompt, initial), "the prompt did not learn"
    # init: zeros starts at the pretrained model.
    zero = get_method("visual_prompt", {**cfg, "init": "zeros"}).setup(
        network.load(tiny_vit).model, TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing))
    assert zero.prompt().abs().max() == 0
    assert _same(before, final.model.state_dict())  # the model is frozen
    # Saved and loaded back, the checkpoint is the same prompted model.
    ckpt = network.load(tiny_vit)
    network.save(tmp_path / "vp.pt", final, name=ckpt.name, arch=ckpt.arch, arch_kwargs=ckpt.arch_kwargs,
                 label_space=ckpt.label_space, preprocessing=ckpt.preprocessing, meta={}, wrapper=wrapper)
    again = network.load(tmp_path / "vp.pt")
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        assert torch.equal(final.eval()(x), again.model.eval()(x))


def test_ewc_is_the_reference_codes_plain_l2_pull(in_tiny_suite, tiny_vit):
    # lib/regularization.py: ewc_penalty = sum over named parameters of (theta - theta0)^2, added
    # to the cross-entropy with coefficient 1.
    _, params = in_tiny_suite
    ckpt = network.load(tiny_vit)
    cfg = _config(params, "ewc")
    assert cfg["strength"] == 1.0
    method = get_method("ewc", cfg)
    module = method.setup(ckpt.model, TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing))
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    by_hand = torch.nn.functional.cross_entropy(logits, y) + sum(
        (p - before[n]).pow(2).sum() for n, p in module.named_parameters())
    assert float(method.loss(module, None, logits, y, None).detach()) == pytest.approx(float(by_hand), rel=1e-5)
    # L2-SP is the same pull at half the coefficient (alpha / 2).
    l2sp = get_method("l2sp", {**_config(params, "l2sp"), "strength": 1.0})
    l2sp.anchor = method.anchor
    assert float(l2sp.penalty(module)) == pytest.approx(float(method.penalty(module)), rel=1e-6)
    assert float((method.loss(module, None, logits, y, None) - l2sp.loss(module, None, logits, y, None)).detach()) == \
        pytest.approx(0.5 * float(method.penalty(module)), rel=1e-4)


def test_ewc_penalty_is_zero_at_the_pretrained_weights_and_weighted_by_fisher(in_tiny_suite, tiny_vit):
    _, params = in_tiny_suite
    ckpt = network.load(tiny_vit)
    method = get_method("ewc_fisher", _config(params, "ewc_fisher"))
    ctx = TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing, reference=_reference(ckpt.preprocessing),
                       normalize=__import__("rib.data.loading", fromlist=["normalize"]).normalize)
    module = method.setup(ckpt.model, ctx)
    method.start(module, ctx)
    fisher = method.importance
    assert set(fisher) == {n for n, _ in module.named_parameters()}
    assert all((f >= 0).all() for f in fisher.values()) and sum(float(f.sum()) for f in fisher.values()) > 0
    assert method.penalty(module).item() == 0.0
    delta = {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            delta[name] = torch.randn_like(p) * 0.01
            p.add_(delta[name])
    expected = sum(float((fisher[n] * delta[n].pow(2)).sum()) for n in delta)
    assert method.penalty(module).item() == pytest.approx(expected, rel=1e-4)
    # The Fisher of one image, by hand: the squared gradient of log p(y|x) for the label drawn.
    one = method.estimate(module, _reference(ckpt.preprocessing)(1, 0), ctx)
    assert all(torch.isfinite(v).all() for v in one.values())


def test_l2sp_pulls_toward_the_pretrained_weights(in_tiny_suite, tiny_vit, tmp_path):
    _, params = in_tiny_suite
    before = network.load(tiny_vit).model.state_dict()

    def distance(model):
        sd = model.state_dict()
        return sum(float((sd[k].float() - before[k].float()).pow(2).sum()) for k in before)

    ft, _, _ = _train(params, tiny_vit, "ft", tmp_path / "ft.pt")
    pulled, _, method = _train(params, tiny_vit, "l2sp", tmp_path / "l2sp.pt")
    assert distance(pulled) < distance(ft)
    # The penalty is the squared distance to the anchor (every weight counts the same).
    assert method.penalty(pulled).item() == pytest.approx(
        sum(float((p.detach() - before[n]).pow(2).sum()) for n, p in pulled.named_parameters()), rel=1e-4)


def test_lwf_distillation_is_zero_when_the_student_is_the_teacher(in_tiny_suite, tiny_vit):
    logits = torch.randn(5, 7)
    assert float(distillation_loss(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, torch.randn(5, 7), 2.0)) > 0
    # The reference code (lib/regularization.py): kl_div(log_softmax(out / T), softmax(prev / T),
    # reduction="batchmean"), no T^2 factor.
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    reference = torch.nn.functional.kl_div(torch.log_softmax(student / 2, dim=1), torch.softmax(teacher / 2, dim=1),
                                           reduction="batchmean")
    assert float(distillation_loss(student, teacher, 2.0)) == pytest.approx(float(reference), rel=1e-5)
    assert float(distillation_loss(student, teacher, 2.0, squared=True)) == pytest.approx(4 * float(reference),
                                                                                          rel=1e-5)
    # T^2 scaling: for small differences the squared term does not shrink as 1/T^2.
    eps = 1e-2 * torch.randn(5, 7)
    ratio = float(distillation_loss(logits + eps, logits, 4.0, True)) / float(
        distillation_loss(logits + eps, logits, 1.0, True))
    assert 0.3 < ratio < 3
    # In the method: at the start the student is the teacher, so the loss is the cross-entropy alone.
    _, params = in_tiny_suite
    ckpt = network.load(tiny_vit)
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    projection = LabelProjection(prepared.classes, ckpt.label_space)
    method = get_method("lwf", _config(params, "lwf"))
    ctx = TrainContext(device=CPU, seed=0, projection=projection, prep=ckpt.preprocessing)
    module = method.setup(ckpt.model, ctx).eval()
    side = params["synthetic"]["image_size"]
    x = torch.randn(4, 3, side, side)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logits = projection.restrict(module(x))
        assert float(method.loss(module, x, logits, y, ctx)) == pytest.approx(
            float(torch.nn.functional.cross_entropy(logits, y)), abs=1e-6)
        # Away from the teacher: cross-entropy + the reference's KL at T = 2, weight 1.
        moved = logits + torch.randn_like(logits)
        expected = torch.nn.functional.cross_entropy(moved, y) + torch.nn.functional.kl_div(
            torch.log_softmax(moved / 2, dim=1), torch.softmax(logits / 2, dim=1), reduction="batchmean")
        assert float(method.loss(module, x, moved, y, ctx)) == pytest.approx(float(expected), rel=1e-5)


def test_mas_importance_is_the_output_norm_sensitivity(in_tiny_suite, tiny_vit):
    _, params = in_tiny_suite
    ckpt = network.load(tiny_vit)
    from rib.data.loading import normalize

    method = get_method("mas", _config(params, "mas"))
    ctx = TrainContext(device=CPU, seed=0, prep=ckpt.preprocessing, reference=_reference(ckpt.preprocessing),
                       normalize=normalize)
    module = method.setup(ckpt.model, ctx)
    data = _reference(ckpt.preprocessing)(2, 0)
    importance = method.estimate(module, data, ctx)
    module.eval()
    by_hand = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    for i in range(len(data)):
        module.zero_grad()
        module(normalize(data.images[i:i + 1], ckpt.preprocessing, CPU)).pow(2).sum().backward()
        for n, p in module.named_parameters():
            by_hand[n] += p.grad.abs() / len(data)
    for n in by_hand:
        assert torch.allclose(importance[n], by_hand[n], rtol=1e-4, atol=1e-7)
    assert method.penalty(module).item() == 0.0


# ------------------------------------------------------------------------------------------------
# Weight-space methods
# ------------------------------------------------------------------------------------------------
def _states(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g),
             "steps": torch.tensor(7)} for _ in range(n)]


def test_wise_ft_ends_are_the_pretrained_and_the_finetuned_model():
    theta0, theta1 = _states(2)
    assert _same(interpolate(theta0, theta1, 0.0), theta0)
    assert _same(interpolate(theta0, theta1, 1.0), theta1)
    mid = interpolate(theta0, theta1, 0.3)
    assert torch.allclose(mid["w"], 0.7 * theta0["w"] + 0.3 * theta1["w"])


def test_a_uniform_soup_is_the_parameter_mean():
    states = _states(3)
    soup = average(states)
    assert torch.allclose(soup["w"], (states[0]["w"] + states[1]["w"] + states[2]["w"]) / 3)
    assert torch.equal(soup["steps"], states[0]["steps"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6), st.integers(0, 10_000))
def test_greedy_soup_never_adds_an_ingredient_that_lowers_heldout_accuracy(centers, seed):
    # Held-out "accuracy" of a state: how close its weight is to a hidden optimum.
    ingredients = {f"m{i}": {"w": torch.tensor([c])} for i, c in enumerate(centers)}
    target = torch.Generator().manual_seed(seed)
    optimum = float(torch.randn(1, generator=target)) * 2

    def score(state):
        return -abs(float(state["w"][0]) - optimum)

    chosen, trail = greedy_soup(ingredients, score)
    alone = {n: score(s) for n, s in ingredients.items()}
    assert chosen[0] == max(alone, key=alone.get)
    best = score(ingredients[chosen[0]])
    for step in trail[1:]:
        assert step["added"] == (step["soup"] >= best)
        if step["added"]:
            best = step["soup"]
    assert score(average([ingredients[n] for n in chosen])) >= max(alone.values())


def test_greedy_soup_through_rib_combine_keeps_only_the_known_best_ingredient(in_tiny_suite, tiny_pretrained, tmp_path):
    """Four ingredients of the tiny grid's greedy_soup entry: FT on C, and three copies of it whose head is
    reversed and tripled (they rank the classes backwards, and so does any average that holds one).
    Through `rib combine`: the trail ranks FT first, rejects every soup with a reversed head, and the
    soup it keeps is FT itself (its cells equal FT's own)."""
    import yaml

    root, params = in_tiny_suite
    stronger = tmp_path / "params.yaml"  # FT long enough to be clearly above chance on C's held-out part
    stronger.write_text(yaml.safe_dump({**params, "train": {**params["train"], "epochs": 6, "lr": 0.05}}))
    common = ["--params", str(stronger)]
    ft = tmp_path / "ft" / "model.pt"
    assert main([*common, "finetune", "mini_resnet.narrow", "ft", "c", "--pretrained", str(tiny_pretrained),
                 "--data", "data/rib-mini/prepared/c", "--out", str(ft), "-q"]) == 0
    ckpt = network.load(ft)
    head = ckpt.model.get_classifier()
    with torch.no_grad():
        head.weight.mul_(-3)
        head.bias.mul_(-3)
    reversed_ = []
    for name in ("lp_ft", "ewc", "ewc_fisher"):  # the entry's other ingredients (tests/tiny-params.yaml)
        path = tmp_path / name / "model.pt"
        network.save(path, ckpt.model, name=ckpt.name, arch=ckpt.arch, arch_kwargs=ckpt.arch_kwargs,
                     label_space=ckpt.label_space, preprocessing=ckpt.preprocessing, meta={**ckpt.meta, "method": name})
        reversed_.append(str(path))
    assert params["methods"]["greedy_soup"]["ingredients"] == ["ft", "lp_ft", "ewc", "ewc_fisher"]
    out = tmp_path / "greedy"
    assert main([*common, "combine", "mini_resnet.narrow", "greedy_soup", "c", "--pretrained", str(tiny_pretrained),
                 "--ingredients", str(ft), *reversed_, "--data", "data/rib-mini/prepared/c",
                 "--out-dir", str(out), "-q"]) == 0
    assert main([*common, "evaluate", str(ft), "--out-dir", str(tmp_path / "ft-cells"), "-q"]) == 0
    cell = json.loads((out / "c.json").read_text())
    trail = cell["combination"]["greedy_trail"]
    alone = {step["ingredient"]: step["alone"] for step in trail}
    held = json.loads((tmp_path / "ft-cells" / "c.json").read_text())["subsets"]["heldout"]
    ft_alone = held["correct"] / held["n"]  # greedy soup ranks on the plain held-out top-1 (C's cell averages leaves)
    assert trail[0]["ingredient"] == "ft" and alone["ft"] == pytest.approx(ft_alone)
    assert ft_alone > 0.25 + 0.1, f"FT on C should be clearly above chance (4 classes), got {ft_alone}"
    assert all(alone[name] < ft_alone - 0.1 for name in ("lp_ft", "ewc", "ewc_fisher")), alone
    assert [step["added"] for step in trail] == [True, False, False, False], trail
    assert all(step["soup"] < ft_alone for step in trail[1:]), trail
    assert cell["combination"]["settings"] == {"ingredients": ["ft"]}
    for name in ("source", "sketch", "c"):  # a soup of FT alone is FT
        ours = json.loads((out / f"{name}.json").read_text())["subsets"]
        assert ours == json.loads((tmp_path / "ft-cells" / f"{name}.json").read_text())["subsets"], name


def test_model_stock_ratio_follows_the_angle_between_updates():
    theta0 = torch.zeros(2)
    assert stock_ratio(theta0, [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])]) == pytest.approx(1.0)
    assert stock_ratio(theta0, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]) == pytest.approx(0.0)
    # cos = 0.5 with two models: t = 2 * 0.5 / (1 + 0.5) = 2/3
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 3 ** 0.5 / 2])
    assert stock_ratio(theta0, [a, b]) == pytest.approx(2 / 3)
    merged, ratios = model_stock({"w": theta0}, [{"w": a}, {"w": b}])
    assert torch.allclose(merged["w"], 2 / 3 * (a + b) / 2)
    assert ratios == {"w": pytest.approx(2 / 3)}


# ------------------------------------------------------------------------------------------------
# Through the command line: LP-FT, WiSE-FT's ends, settings errors
# ------------------------------------------------------------------------------------------------
def test_lp_ft_starts_from_the_linear_probe_and_wise_ft_ends_match(in_tiny_suite, tiny_vit, tmp_path):
    base = ["--pretrained", tiny_vit, "--data", "data/rib-mini/prepared/sketch", "-q"]
    ck = {m: str(tmp_path / m / "model.pt") for m in ("lp", "lp_ft", "ft")}
    assert main(["finetune", "mini_vit.narrow", "lp", "sketch", *base, "--out", ck["lp"]]) == 0
    assert main(["finetune", "mini_vit.narrow", "lp_ft", "sketch", *base, "--out", ck["lp_ft"]]) == 2  # no --init
    assert main(["finetune", "mini_vit.narrow", "lp_ft", "sketch", *base, "--out", ck["lp_ft"], "--init", tiny_vit]) == 2
    assert main(["finetune", "mini_vit.narrow", "lp_ft", "sketch", *base, "--out", ck["lp_ft"], "--init", ck["lp"]]) == 0
    meta = network.load(ck["lp_ft"]).meta
    assert meta["init"] == ck["lp"] and meta["implementation"] == "lp_ft"
    assert main(["finetune", "mini_vit.narrow", "ft", "sketch", *base, "--out", ck["ft"]]) == 0

    cells = tmp_path / "cells"
    assert main(["evaluate", tiny_vit, "--out-dir", str(cells / "pretrained"), "-q"]) == 0
    assert main(["evaluate", ck["ft"], "--out-dir", str(cells / "ft"), "-q"]) == 0
    assert main(["combine", "mini_vit.narrow", "wise_ft", "sketch", "--pretrained", tiny_vit, "--ingredients",
                 ck["ft"], "--data", "data/rib-mini/prepared/sketch", "--out-dir", str(cells / "wise"), "-q"]) == 0
    for name in ("source", "c", "sketch"):
        wise = json.loads((cells / "wise" / f"{name}.json").read_text())
        pre = json.loads((cells / "pretrained" / f"{name}.json").read_text())
        ft = json.loads((cells / "ft" / f"{name}.json").read_text())
        sweep = {s["alpha"]: s for s in wise["sweep"]}
        assert sorted(sweep) == [0.0, 0.5, 1.0]
        subset = wise["subset"]
        assert sweep[0.0]["subsets"][subset] == pre["subsets"][subset]
        assert sweep[1.0]["subsets"][subset] == ft["subsets"][subset]
        assert wise["top1"] == sweep[0.5]["top1"] and wise["combination"]["settings"] == {"alpha": 0.5}
    # Greedy soup chooses on the held-out part of D_ft and records every decision.
    assert main(["combine", "mini_vit.narrow", "uniform_soup", "sketch", "--pretrained", tiny_vit, "--ingredients",
                 ck["ft"], ck["lp_ft"], "--data", "data/rib-mini/prepared/sketch",
                 "--out-dir", str(cells / "soup"), "-q"]) == 2  # three ingredients expected
    assert main(["combine", "mini_vit.narrow", "wise_ft", "sketch", "--pretrained", tiny_vit, "--ingredients",
                 ck["lp"], "--out-dir", str(cells / "bad"), "-q"]) == 2  # an lp checkpoint is not ft's
    # The reference's Soup-PRE-FT: a soup of the pretrained weights and FT is WiSE-FT at 0.5.
    assert main(["combine", "mini_vit.narrow", "soup_pre_ft", "sketch", "--pretrained", tiny_vit, "--ingredients",
                 ck["ft"], "--data", "data/rib-mini/prepared/sketch", "--out-dir", str(cells / "pre_ft"), "-q"]) == 0
    for name in ("source", "c", "sketch"):
        soup = json.loads((cells / "pre_ft" / f"{name}.json").read_text())
        wise = json.loads((cells / "wise" / f"{name}.json").read_text())
        assert soup["subsets"] == {s["alpha"]: s for s in wise["sweep"]}[0.5]["subsets"]
        assert soup["combination"]["settings"] == {"ingredients": ["pretrained", "ft"]}
        assert soup["combination"]["ingredients"]["pretrained"]["checkpoint"] == str(tiny_vit)


def _with(params, **methods):
    p = json.loads(json.dumps(params))
    for key, value in methods.items():
        if value is None:
            p["methods"].pop(key, None)
        else:
            p["methods"][key] = value
    return p


@pytest.mark.parametrize("change, message", [
    ({"lora": {"rnak": 4}}, "methods.lora.rnak: unknown key; did you mean 'rank'?"),
    ({"lora": {"rank": 0}}, "methods.lora.rank: expected a value at least 1, got 0"),
    ({"lora": {"targets": ["q", "x"]}}, "methods.lora.targets[1]: 'x' is not one of 'q', 'k', 'v'"),
    ({"lwf": {"temperature": "hot"}}, "methods.lwf.temperature: expected a number, got a string 'hot'"),
    ({"ft_seed1": {"method": "fft"}}, "methods.ft_seed1.method: unknown method 'fft'; did you mean 'ft'?"),
    ({"lp_ft": {"lp": "ft_seed1"}}, None),
    ({"lp_ft": {"lp": "lpp"}}, "methods.lp_ft.lp: no methods entry 'lpp'; did you mean 'lp'?"),
    ({"lp_ft": {"lp": "wise_ft"}}, "methods.lp_ft.lp: 'wise_ft' must be a training method"),
    ({"model_stock": {"ingredients": ["ft"]}}, "methods.model_stock.ingredients: expected at least 2 entries, got 1"),
    ({"uniform_soup": {"ingredients": ["ft", "visual_prompt"]}},
     "methods.uniform_soup.ingredients: 'visual_prompt' does not make a plain fine-tuned model"),
    ({"wise_ft": {"alpha": 0.3, "alphas": [0.0, 1.0]}}, "methods.wise_ft.alpha: 0.3 is not one of alphas"),
    ({"ewc_fisher": {"reference": "imagenet"}}, "methods.ewc_fisher.reference: unknown dataset 'imagenet'"),
    ({"ewc": {"samples": 10}}, "methods.ewc.samples: unknown key"),
    ({"uniform_soup": {"ingredients": ["pretrained", "ft"]}}, None),
    ({"model_stock": {"ingredients": ["pretrained", "ft"]}},
     "methods.model_stock.ingredients: model_stock cannot take the pretrained weights"),
    ({"pretrained": {"method": "ft"}}, "methods.pretrained: reserved for the pretrained model"),
    ({"lwf": {"temperature_squared": 1}}, "methods.lwf.temperature_squared: expected true or false"),
    ({"visual_prompt": {"init": "uniform"}}, "methods.visual_prompt.init: 'uniform' is not one of"),
    ({"mas": None}, "grid.methods[8]: no methods entry 'mas'"),
])
def test_method_settings_are_checked(tiny_suite, change, message):
    _, params = tiny_suite
    bad = _with(params, **change)
    if message is None:
        validate(bad)
        return
    with pytest.raises(ConfigError) as err:
        validate(bad)
    text = str(err.value)
    assert message.split(":")[0] in text and message.split(":", 1)[1].strip()[:30] in text, text
    assert "\n" not in text


def test_the_default_params_run_every_method(tmp_path):
    from rib import grid
    from rib.config import load
    from rib.methods import METHODS, implementation

    params = load(REPO / "params.yaml")
    used = {implementation(params, m) for m in params["grid"]["methods"]}
    assert used == set(METHODS)
    assert "ft_seed1" in grid.train_entries(params)  # trained for Model Stock, not a table row
    assert params["train"]["lr"] == 0.001 and params["train"]["momentum"] == 0.9


def test_the_paper_configuration_runs_the_reference_codes_settings(capsys):
    """configs/imagenet-rib.yaml's paper methods depart from FieteLab/ImageNet-RIB in precision only
    (bf16 on GPU, a documented choice), and `rib methods` says so entry by entry."""
    from rib.config import load
    from rib.methods import METHODS, REFERENCE_SCHEDULE
    from tests.conftest import REPO

    path = str(REPO / "configs" / "imagenet-rib.yaml")
    params = load(path)
    paper = [m for m in params["grid"]["methods"] if METHODS[method_schedule(params, m)["method"]].reference]
    assert {method_schedule(params, m)["method"] for m in paper} == {
        "ft", "lp", "lp_ft", "lora", "visual_prompt", "ewc", "lwf", "uniform_soup"}
    for entry in paper:
        config = method_schedule(params, entry)
        info = METHODS[config["method"]]
        refs = {**(REFERENCE_SCHEDULE if info.kind == "train" else {}),
                **{k: s["reference"] for k, s in info.options.items() if "reference" in s}}
        departs = {k for k, v in refs.items() if config[k] != v}
        assert departs <= {"precision"}, (entry, departs)
    assert main(["--params", path, "methods"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("\nlora = lora"):]
    block = block[:block.index("\n", block.index("departs from it"))]
    assert "(the reference code's lora)" in block and "alpha 1," in block and "rank 8," in block
    assert "departs from it: precision 'auto' (reference code: 'fp16')" in block
    assert "lora_adapters = lora (the reference code's lora)" in out
    assert "alpha 16 (reference code: 1)" in out and "temperature_squared True (reference code: False)" in out
    assert "ewc_fisher = ewc_fisher (not in the reference code)" in out


def test_model_stock_with_three_models_and_nonzero_pretrained_weights_is_the_closed_form():
    """Model Stock (Jang et al. 2024) for N = 3 fine-tuned models whose updates from theta0 meet at
    pairwise cosines of 0.5: t = N cos / (1 + (N - 1) cos) = 0.75 and the merge is
    t * mean(theta_i) + (1 - t) * theta0; the (1 - t) theta0 term shows because theta0 is not zero."""
    theta0 = torch.tensor([1.0, -2.0, 0.5])
    units = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 3 ** 0.5 / 2, 0.0]),
             torch.tensor([0.5, 3 ** 0.5 / 6, (2 / 3) ** 0.5])]
    finetuned = [theta0 + scale * u for scale, u in zip((2.0, 1.0, 3.0), units)]  # norms differ, angles do not
    assert stock_ratio(theta0, finetuned) == pytest.approx(0.75)
    merged, ratios = model_stock({"w": theta0, "steps": torch.tensor(7)},
                                 [{"w": w, "steps": torch.tensor(7)} for w in finetuned])
    expected = 0.75 * torch.stack(finetuned).mean(0) + 0.25 * theta0
    assert torch.allclose(merged["w"], expected, atol=1e-6) and ratios == {"w": pytest.approx(0.75)}
    assert not torch.allclose(merged["w"], 0.75 * torch.stack(finetuned).mean(0))  # theta0 matters
    assert merged["steps"].item() == 7  # integer buffers are copied, not averaged


def test_ewc_fisher_and_its_strength_against_a_hand_computation():
    """EWC's diagonal Fisher on a softmax regression, by hand: the mean over images of the squared
    gradient of -log p(y|x), y drawn from the model's own prediction with the method's seeded
    generator; then loss = CE + 1/2 * strength * sum F (theta - theta0)^2."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    xs = torch.randn(5, 3)
    ctx = SimpleNamespace(seed=2, device=CPU, prep=None, normalize=lambda x, prep, device: x)
    method = get_method("ewc_fisher", {"strength": 10.0, "samples": 5})
    data = type("Images", (), {"images": xs, "__len__": lambda self: len(xs)})()
    fisher = method.estimate(model, data, ctx)
    generator = torch.Generator().manual_seed(ctx.seed * 7919 + 17)
    w_sq, b_sq = torch.zeros(4, 3), torch.zeros(4)
    with torch.no_grad():
        for x in xs:
            p = torch.softmax(model(x[None]), dim=-1)[0]
            y = torch.multinomial(p, 1, generator=generator).item()
            g = p - F.one_hot(torch.tensor(y), 4).float()  # d(-log p_y)/d logits
            w_sq += torch.outer(g, x) ** 2
            b_sq += g ** 2
    assert torch.allclose(fisher["weight"], w_sq / 5, atol=1e-6) and torch.allclose(fisher["bias"], b_sq / 5, atol=1e-6)
    method.setup(model, SimpleNamespace(device=CPU, seed=0))
    method.importance = fisher
    with torch.no_grad():
        model.weight.add_(0.1)
    logits, targets = model(xs), torch.tensor([0, 1, 2, 3, 0])
    extra = method.loss(model, None, logits, targets, None) - F.cross_entropy(logits, targets)
    assert float(extra.detach()) == pytest.approx(0.5 * 10.0 * float((fisher["weight"] * 0.01).sum()), rel=1e-4)
