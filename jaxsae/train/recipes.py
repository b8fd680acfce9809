"""Published per-architecture training defaults, and the spec built from an SAEConfig.

Warm-ups are given in steps as published and capped at a fraction of the run, so a short run
still reaches full LR and full sparsity pressure.
"""

from __future__ import annotations

import dataclasses
import math

from jaxsae.config import SAEConfig, TrainConfig
from jaxsae.dictionaries.base import Dictionary
from jaxsae.dictionaries.registry import build, spec_class


@dataclasses.dataclass(frozen=True)
class Recipe:
    lr: float
    b1: float
    b2: float
    eps: float
    lr_warmup_steps: int
    lr_decay_fraction: float
    sparsity_warmup_steps: int
    normalize: str


def _topk_lr(d_sae: int) -> float:
    # lr = 2e-4 / sqrt(m / 2^14) (dictionary_learning TopKTrainer; sparsify Adam branch)
    return 2e-4 / math.sqrt(d_sae / 2**14)


def recipe(architecture: str, d_sae: int, activation: str = "topk") -> Recipe:
    if architecture == "clt":
        if activation == "jumprelu":  # Anthropic's Jan-2025 recipe: lambda ramped over the whole run
            return Recipe(2e-4, 0.9, 0.999, 1e-8, 1000, 0.2, -100, "expected_norm")
        return Recipe(_topk_lr(d_sae), 0.9, 0.999, 6.25e-10, 1000, 0.2, 0, "expected_norm")
    if architecture == "crosscoder":
        if activation == "relu":  # the April-2024 L1 recipe, the penalty on the sum of decoder norms
            return Recipe(5e-5, 0.9, 0.999, 1e-8, 1000, 0.2, -5, "expected_norm")
        return Recipe(3e-4, 0.9, 0.999, 1e-8, 1000, 0.2, 0, "expected_norm")
    if architecture == "multitoken_transcoder":
        if activation == "relu":
            return Recipe(5e-5, 0.9, 0.999, 1e-8, 1000, 0.2, -5, "expected_norm")
        return Recipe(_topk_lr(d_sae), 0.9, 0.999, 6.25e-10, 1000, 0.2, 0, "expected_norm")
    if architecture == "topk":
        return Recipe(_topk_lr(d_sae), 0.9, 0.999, 6.25e-10, 1000, 0.2, 0, "expected_norm")
    if architecture in ("batchtopk", "matryoshka"):
        return Recipe(3e-4, 0.9, 0.999, 1e-8, 1000, 0.2, 0, "expected_norm")
    if architecture == "jumprelu":  # Gemma Scope / Jumping Ahead
        return Recipe(7e-5, 0.0, 0.999, 1e-8, 1000, 0.0, 10_000, "unit_msn")
    if architecture == "gated":  # dictionary_learning GDM recipe
        return Recipe(5e-5, 0.0, 0.999, 1e-8, 1000, 0.0, 2000, "expected_norm")
    if architecture == "relu":  # April-2024 update
        return Recipe(5e-5, 0.9, 0.999, 1e-8, 1000, 0.2, -5, "expected_norm")
    raise ValueError(f"no recipe for architecture {architecture!r}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The resolved optimiser settings of one run (published defaults with the config's overrides)."""

    lr: float
    b1: float
    b2: float
    eps: float
    lr_warmup_steps: int
    lr_decay_steps: int
    sparsity_warmup_steps: int
    grad_clip: float
    total_steps: int
    normalize: str


def resolve(architecture: str, activation: str, d_sae: int, t: TrainConfig) -> Schedule:
    arch = activation if architecture == "transcoder" else architecture
    r = recipe(arch, d_sae, activation)
    n = t.steps
    pick = lambda v, d: d if v is None else v
    # a negative published sparsity warm-up means "this percentage of the run"
    sw = r.sparsity_warmup_steps if r.sparsity_warmup_steps >= 0 else n * (-r.sparsity_warmup_steps) // 100
    decay_frac = pick(t.lr_decay_fraction, r.lr_decay_fraction)
    if not 0.0 <= decay_frac <= 1.0:
        raise ValueError(f"train.lr_decay_fraction must be in [0, 1], got {decay_frac}")
    normalize = t.normalize if t.normalize != "auto" else r.normalize
    return Schedule(
        lr=pick(t.lr, r.lr), b1=pick(t.adam_b1, r.b1), b2=pick(t.adam_b2, r.b2), eps=pick(t.adam_eps, r.eps),
        lr_warmup_steps=pick(t.lr_warmup_steps, min(r.lr_warmup_steps, n // 20)),
        lr_decay_steps=int(decay_frac * n),
        sparsity_warmup_steps=pick(t.sparsity_warmup_steps, min(sw, n // 5)),
        grad_clip=t.grad_clip, total_steps=n, normalize=normalize,
    )


_SPEC_FIELDS = ("sparsity_coefficient", "variant", "bandwidth", "threshold_init", "k_aux", "aux_alpha",
                "multi_topk", "sparse_decoder", "group_fractions", "threshold_start_step",
                "apply_b_dec_to_input", "pre_act_coefficient", "tanh_c", "head_mixing")


def spec_from_config(s: SAEConfig, d_in: int, d_out: int | None, total_steps: int | None = None,
                     n_layers: int | None = None, data_fields: dict | None = None) -> Dictionary:
    """Build the dictionary spec: fields that are None or foreign to the architecture keep their
    defaults; fields the user set for the wrong architecture are rejected by `build`. With
    `total_steps`, the BatchTopK threshold EMA starts by step min(1000, total/10) so short runs
    still learn the threshold their JumpReLU export needs."""
    cls = spec_class(s.architecture, s.activation)
    valid = {f.name for f in dataclasses.fields(cls)}
    kw: dict = {"d_in": d_in, "d_sae": s.d_sae}
    if "n_layers" in valid:  # multi-layer dictionaries: the layer count comes from the data
        kw["n_layers"] = n_layers or 1
        kw["activation"] = s.activation
    if d_out is not None and d_out != d_in:
        kw["d_out"] = d_out
    for name, v in (data_fields or {}).items():  # shapes only the data knows (heads, context length)
        if name in valid:
            kw[name] = v
    if "head_mixing" in valid:
        kw["activation"] = s.activation
    if s.architecture == "transcoder":
        kw["activation"] = s.activation
        kw["skip"] = s.skip
        if d_out is not None:
            kw["d_out"] = d_out
    if "k" in valid and s.k is not None:
        kw["k"] = int(s.k) if float(s.k).is_integer() else s.k
    for name in _SPEC_FIELDS:
        v = getattr(s, name)
        if v is not None and name in valid:
            kw[name] = v
    if "threshold_start_step" in valid and s.threshold_start_step is None and total_steps is not None:
        kw["threshold_start_step"] = min(1000, total_steps // 10)
    if s.architecture == "transcoder":
        kw.pop("apply_b_dec_to_input", None)
    return build(s.architecture, **kw)
