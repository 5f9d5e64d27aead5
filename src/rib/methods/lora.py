"""LoRA (Hu et al., 2021): low-rank updates of the attention projections; the base weights stay frozen.

For each targeted projection (default: q and v, rank 8) the weight becomes
``W + (alpha / rank) * B @ A`` with ``A`` (rank x in) drawn uniformly in +-1/sqrt(in) from the
run's seed and ``B`` (out x rank) zero, so training starts exactly at the pretrained model. The
update is a ``torch.nn.utils.parametrize`` parametrization of the existing weight, which works
alike for timm's fused ``qkv`` linear layer (q, k, v are its three row blocks), for separate
``q_proj``/``v_proj`` layers and for ``nn.MultiheadAttention`` (open_clip; ``in_proj_weight``).
The saved checkpoint holds the merged weights, an ordinary model of the pretrained architecture;
the factors themselves live in the resumable training state.

Defaults are the reference code's (``convert2lora(model, r=8)`` of FieteLab/ImageNet-RIB on loralib's
MergedLinear): rank 8 on q and v, ``alpha`` 1 (the update scaled by alpha / rank = 1/8), the factors
and every parameter outside the transformer blocks except the patch embedding and the head (class
token, position embedding, norms: ``mark_only_lora_as_trainable(model.blocks)`` leaves them
trainable) train. Hu et al.'s adapters alone are ``train_outside_blocks: false``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.network import head
from .base import Method, MethodError, TrainContext, outside_core_parameters

_BLOCKS = ("q", "k", "v")


class LowRankUpdate(nn.Module):
    """Parametrization ``W -> W + scale * [B_q A_q; B_k A_k; B_v A_v]`` over the row blocks of a
    fused weight (``blocks`` = 3), or ``W -> W + scale * B A`` for one projection (``blocks`` = 1)."""

    def __init__(self, weight: torch.Tensor, parts: tuple[str, ...], rank: int, alpha: float,
                 generator: torch.Generator, blocks: int):
        super().__init__()
        out_features, in_features = weight.shape
        if out_features % blocks:
            raise MethodError(f"lora: a fused projection of {out_features} rows is not {blocks} equal blocks")
        self.block = out_features // blocks
        self.in_features = in_features
        self.layout = _BLOCKS if blocks == 3 else parts
        self.parts = parts
        self.scale = alpha / rank
        bound = 1.0 / math.sqrt(in_features)
        for part in parts:
            a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
            self.register_parameter(f"A_{part}", nn.Parameter(a.to(weight.device, weight.dtype)))
            self.register_parameter(f"B_{part}", nn.Parameter(weight.new_zeros(self.block, rank)))

    def delta(self) -> torch.Tensor:
        rows = []
        for part in self.layout:
            if part in self.parts:
                rows.append(getattr(self, f"B_{part}") @ getattr(self, f"A_{part}"))
            else:
                rows.append(getattr(self, f"B_{self.parts[0]}").new_zeros(self.block, self.in_features))
        return torch.cat(rows, dim=0) * self.scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def attention_projections(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[nn.Module, str, tuple[str, ...], int]]:
    """(module, weight name, parts, blocks) for every attention projection LoRA can target."""
    found = []
    for _, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            if m.in_proj_weight is not None:
                found.append((m, "in_proj_weight", targets, 3))
            else:
                for part in targets:
                    found.append((m, f"{part}_proj_weight", (part,), 1))
        elif isinstance(getattr(m, "qkv", None), nn.Linear):
            found.append((m.qkv, "weight", targets, 3))
        else:
            for part in targets:
                for attr in (f"{part}_proj", part):
                    layer = getattr(m, attr, None)
                    if isinstance(layer, nn.Linear) and hasattr(m, "num_heads"):
                        found.append((layer, "weight", (part,), 1))
                        break
    return found


class LoRA(Method):
    name = "lora"

    def __init__(self, config: dict):
        super().__init__(config)
        self.rank = int(config["rank"])
        self.alpha = float(config["alpha"])
        self.targets = tuple(t for t in _BLOCKS if t in config["targets"])
        self.train_head = bool(config["train_head"])
        self.train_outside_blocks = bool(config.get("train_outside_blocks", False))
        self.sites: list[tuple[nn.Module, str]] = []

    def setup(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        sites = attention_projections(model, self.targets)
        if not sites:
            raise MethodError(f"{self.config.get('entry', 'lora')}: the model has no attention projections to adapt "
                              f"({type(model).__name__}: no fused qkv layer, q/v projections or nn.MultiheadAttention); "
                              "LoRA needs a transformer; use ft, lp or another method")
        for p in model.parameters():
            p.requires_grad_(False)
        generator = torch.Generator().manual_seed(ctx.seed * 1_000_033 + 101)
        for module, weight_name, parts, blocks in sites:
            update = LowRankUpdate(getattr(module, weight_name), parts, self.rank, self.alpha, generator, blocks)
            parametrize.register_parametrization(module, weight_name, update, unsafe=True)
            self.sites.append((module, weight_name))
        for p in self._extra_parameters(model):
            p.requires_grad_(True)
        return model

    def _extra_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """What trains besides the factors: the head, and what lies outside the blocks."""
        classifier = head(module)
        extra = outside_core_parameters(module, classifier) if self.train_outside_blocks else []
        return extra + (list(classifier.parameters()) if self.train_head else [])

    def trainable_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        factors = [p for n, p in module.named_parameters() if ".A_" in n or ".B_" in n]
        return factors + self._extra_parameters(module)

    def finalize(self, module: nn.Module) -> tuple[nn.Module, dict | None]:
        for m, weight_name in self.sites:
            parametrize.remove_parametrizations(m, weight_name, leave_parametrized=True)
        self.sites = []
        return module, None
