"""Typed, validated configs.

Presets live in `configs/*.py` as ml_collections ConfigDicts (so absl's `--config.a.b=v` overrides
work); `from_configdict` turns one into these frozen dataclasses, rejecting unknown keys, wrong
types and out-of-range values with messages that name the field and the valid choices. Inner code
only ever receives the slice it needs (`TrainConfig`, a `Dictionary` spec, ...).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from jaxsae.toy.synthetic import ToySpec

_UNIONS = (typing.Union, types.UnionType)

NORMALIZE = ("none", "expected_norm", "unit_msn", "auto")
B_DEC_INIT = ("geometric_median", "mean", "zeros")
DATA_SOURCES = ("toy", "npy", "store", "stream", "contexts")
TEXT_KINDS = ("shakespeare", "text", "jsonl", "parquet", "hf_disk")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    architecture: str = "topk"
    d_sae: int = 4096
    k: float | None = 32  # topk / batchtopk / matryoshka (batchtopk may be fractional)
    sparsity_coefficient: float | None = None  # None: the architecture's default
    variant: str | None = None  # relu: "april2024" | "2023"
    bandwidth: float | None = None  # jumprelu
    threshold_init: float | None = None  # jumprelu
    k_aux: int | None = None
    aux_alpha: float | None = None
    multi_topk: bool | None = None
    sparse_decoder: bool | None = None
    group_fractions: tuple[float, ...] | None = None  # matryoshka
    threshold_start_step: int | None = None  # batchtopk family: when the threshold EMA starts
    activation: str = "topk"  # transcoder: the activation of its latents
    d_out: int | None = None  # transcoder target width (None: from the data)
    skip: bool = False  # transcoder: linear skip connection W_skip
    apply_b_dec_to_input: bool | None = None
    pre_act_coefficient: float | None = None  # clt (jumprelu): lambda_P of the pre-activation loss
    tanh_c: float | None = None  # clt (jumprelu): c of the tanh sparsity penalty
    head_mixing: str | None = None  # multitoken_transcoder: learned (signed mixture of heads) | top1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 4096
    lr: float | None = None  # None: the architecture's published default
    adam_b1: float | None = None
    adam_b2: float | None = None
    adam_eps: float | None = None
    lr_warmup_steps: int | None = None
    lr_decay_fraction: float | None = None  # linear decay to 0 over this last fraction of steps
    sparsity_warmup_steps: int | None = None
    grad_clip: float = 1.0
    dead_tokens: int = 10_000_000  # tokens without firing before a latent counts as dead
    normalize: str = "auto"  # none | expected_norm (E||x|| = sqrt d) | unit_msn (E||x||^2 = 1) | auto
    norm_batches: int = 16  # batches used to estimate the normalisation scale
    b_dec_init: str = "geometric_median"
    b_dec_samples: int = 16384
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Where the text comes from (jaxsae.data.text): the packaged corpus, or a path."""

    kind: str = "shakespeare"  # shakespeare | text (file/folder) | jsonl | parquet | hf_disk
    path: str | None = None
    field: str = "text"  # jsonl field / parquet or dataset column
    split: str = "train"  # hf_disk DatasetDict split


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The language model activations come from (harvest, streaming, evaluation)."""

    path: str | None = None  # HF dir, .gguf or Kaggle Gemma dir; None: the packaged SmolLM2-135M
    sites: tuple[str, ...] = ("blocks.15.hook_resid_post",)  # harvested together in one forward
    context: int = 128  # tokens per window, BOS included
    batch_windows: int = 16  # windows per forward (and per store shard)
    windows: int = 0  # windows to harvest (multitoken stream: to train on); 0: the whole corpus
    dtype: str = "float32"  # model and store dtype: float32 | bfloat16
    buffer_batches: int = 16  # streaming: forwards mixed together before training on them


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # toy | npy | store (a harvested activation store) | stream (LM in the loop) | contexts (whole
    # contexts with attention patterns, for multitoken transcoders)
    source: str = "toy"
    path: str | None = None  # npy: [N, d_in] array; store: the store directory
    y_path: str | None = None  # npy: optional [N, d_out] target array (transcoders)
    site: str | None = None  # store/stream: the site to train on (default: the first of lm.sites)
    # multi-layer dictionaries (clt, ...) from a store/stream: the sites read (one per layer, in
    # order) and written; e.g. in_sites=('blocks.0.ln2.hook_normalized', ...), out_sites=('blocks.0.hook_mlp_out', ...)
    in_sites: tuple[str, ...] = ()
    out_sites: tuple[str, ...] = ()
    # crosscoders across models (model diffing): one store per model, harvested with the same text,
    # windows and seed; data.site of each is stacked as a "layer"
    paths: tuple[str, ...] = ()
    toy: ToySpec = ToySpec()  # the synthetic generator (source=toy): --config.data.toy.d_in=...
    text: TextConfig = TextConfig()
    lm: LMConfig = LMConfig()


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    model: int = 1


@dataclasses.dataclass(frozen=True)
class Config:
    sae: SAEConfig = SAEConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    seed: int = 0

    def validate(self) -> Config:
        from jaxsae.dictionaries.registry import NAMES

        s, t, d = self.sae, self.train, self.data
        if s.architecture not in NAMES:
            raise ValueError(f"sae.architecture={s.architecture!r} is unknown; valid choices: {', '.join(NAMES)}")
        if s.architecture == "transcoder":
            from jaxsae.dictionaries.transcoder import ACTIVATIONS

            if s.activation not in ACTIVATIONS:
                raise ValueError(f"sae.activation={s.activation!r} is unknown for a transcoder; valid choices: "
                                 f"{', '.join(ACTIVATIONS)}")
        if s.architecture == "clt":
            from jaxsae.dictionaries.clt import ACTIVATIONS as CLT_ACTIVATIONS

            if s.activation not in CLT_ACTIVATIONS:
                raise ValueError(f"sae.activation={s.activation!r} is unknown for a cross-layer transcoder; valid "
                                 f"choices: {', '.join(CLT_ACTIVATIONS)}")
            if d.source == "npy":
                raise ValueError("sae.architecture=clt trains from data.source=store, stream or toy (one site per "
                                 "layer); an .npy file holds one site")
            if d.source in ("store", "stream") and not d.in_sites:
                raise ValueError("sae.architecture=clt reads one site per layer: set --config.data.in_sites=(...) "
                                 "(e.g. each layer's blocks.L.ln2.hook_normalized) and --config.data.out_sites=(...) "
                                 "(each layer's blocks.L.hook_mlp_out)")
            if d.source == "toy" and d.toy.layers < 1:
                raise ValueError("sae.architecture=clt on toy data needs --config.data.toy.layers=L (>= 1)")
        if s.architecture == "crosscoder":
            from jaxsae.dictionaries.crosscoder import ACTIVATIONS as CC_ACTIVATIONS

            if s.activation not in CC_ACTIVATIONS:
                raise ValueError(f"sae.activation={s.activation!r} is unknown for a crosscoder; valid choices: "
                                 f"{', '.join(CC_ACTIVATIONS)}")
            if d.source == "toy" and d.toy.layers < 1:
                raise ValueError("sae.architecture=crosscoder on toy data needs --config.data.toy.layers=L and "
                                 "--config.data.toy.layer_mode=crosscoder")
            if d.source in ("store", "stream") and not (d.in_sites or d.paths):
                raise ValueError("sae.architecture=crosscoder reads several sites or models: set "
                                 "--config.data.in_sites=(...) (layers of one model) or --config.data.paths=(...) "
                                 "(one store per model, same text, windows and seed) with --config.data.site")
            if d.out_sites and tuple(d.out_sites) != tuple(d.in_sites):
                raise ValueError("a crosscoder reconstructs the sites it reads: leave data.out_sites empty")
        if s.architecture == "multitoken_transcoder":
            from jaxsae.dictionaries.multitoken import ACTIVATIONS as MTC_ACTIVATIONS
            from jaxsae.dictionaries.multitoken import HEAD_MIXING

            if s.activation not in MTC_ACTIVATIONS:
                raise ValueError(f"sae.activation={s.activation!r} is unknown for a multitoken transcoder; valid "
                                 f"choices: {', '.join(MTC_ACTIVATIONS)}")
            if s.head_mixing is not None and s.head_mixing not in HEAD_MIXING:
                raise ValueError(f"sae.head_mixing={s.head_mixing!r} is unknown; valid choices: {', '.join(HEAD_MIXING)}")
            if d.source not in ("stream", "contexts"):
                raise ValueError("sae.architecture=multitoken_transcoder trains on whole contexts: use "
                                 "data.source=stream (the LM in the loop) or data.source=contexts (a directory "
                                 "written by jaxsae.data.contexts.save)")
            if d.source == "stream":
                from jaxsae.data.contexts import check_sites

                check_sites(d.in_sites, d.out_sites)
        elif d.source == "contexts":
            raise ValueError("data.source=contexts (whole contexts with attention patterns) is the data of "
                             "sae.architecture=multitoken_transcoder")
        if d.paths and d.source != "store":
            raise ValueError("data.paths (one store per model) needs data.source=store")
        if d.in_sites and len(d.in_sites) != len(d.out_sites or d.in_sites):
            raise ValueError(f"data.in_sites has {len(d.in_sites)} sites but data.out_sites has "
                             f"{len(d.out_sites)}; give one output site per input site")
        if s.d_sae <= 0:
            raise ValueError(f"sae.d_sae must be > 0, got {s.d_sae}")
        if t.steps <= 0 or t.batch_size <= 0:
            raise ValueError(f"train.steps and train.batch_size must be > 0, got {t.steps}, {t.batch_size}")
        if t.lr is not None and t.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {t.lr}")
        if t.normalize not in NORMALIZE:
            raise ValueError(f"train.normalize={t.normalize!r} is unknown; valid choices: {', '.join(NORMALIZE)}")
        if t.b_dec_init not in B_DEC_INIT:
            raise ValueError(f"train.b_dec_init={t.b_dec_init!r} is unknown; valid choices: {', '.join(B_DEC_INIT)}")
        if d.source not in DATA_SOURCES:
            raise ValueError(f"data.source={d.source!r} is unknown; valid choices: {', '.join(DATA_SOURCES)}")
        if d.source == "contexts" and not d.path:
            raise ValueError("data.source=contexts needs --config.data.path=DIR (x.npy, pattern.npy, y.npy, meta.json)")
        if d.source == "npy" and not d.path:
            raise ValueError("data.source=npy needs --config.data.path=FILE.npy (an [N, d_in] float array)")
        if d.source == "store" and not (d.path or d.paths):
            raise ValueError("data.source=store needs --config.data.path=DIR (a store written by experiments.harvest)")
        if d.text.kind not in TEXT_KINDS:
            raise ValueError(f"data.text.kind={d.text.kind!r} is unknown; valid choices: {', '.join(TEXT_KINDS)}")
        if d.text.kind != "shakespeare" and not d.text.path:
            raise ValueError(f"data.text.kind={d.text.kind} needs --config.data.text.path")
        if d.lm.dtype not in DTYPES:
            raise ValueError(f"data.lm.dtype={d.lm.dtype!r} is unknown; valid choices: {', '.join(DTYPES)}")
        if not d.lm.sites:
            raise ValueError("data.lm.sites is empty; name at least one hook site, e.g. blocks.6.hook_resid_post")
        for name in ("context", "batch_windows", "buffer_batches"):
            if getattr(d.lm, name) < (2 if name == "context" else 1):
                raise ValueError(f"data.lm.{name} is too small: {getattr(d.lm, name)}")
        if d.site is not None and d.site not in d.lm.sites and d.source == "stream":
            raise ValueError(f"data.site={d.site!r} is not among data.lm.sites {list(d.lm.sites)}")
        for name in ("checkpoint_every", "log_every", "norm_batches", "b_dec_samples", "keep_checkpoints"):
            if getattr(t, name) <= 0:
                raise ValueError(f"train.{name} must be > 0, got {getattr(t, name)}")
        return self


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if origin in _UNIONS and type(None) in args:
            return None
        raise ValueError(f"{where} may not be None")
    if origin in _UNIONS:
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: {value!r} is not a valid {tp}")
    if origin is tuple:
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + u for u in unknown]}; valid keys under "
                         f"{prefix or 'the root'}: {sorted(names)}")
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            kw[f.name] = _build(hints[f.name], dict(v), f"{prefix}{f.name}.")
        else:
            kw[f.name] = _coerce(hints[f.name], v, f"{prefix}{f.name}")
    return cls(**kw)


def from_dict(values: dict) -> Config:
    return _build(Config, values, "").validate()


def from_configdict(cd: Any) -> Config:
    """From an ml_collections ConfigDict (or any nested mapping)."""
    as_dict = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
    return from_dict(as_dict)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
