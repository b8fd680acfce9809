"""SAELens format against SAELens itself (the oracle, installed by `make test`): what jaxsae saves,
SAELens loads with identical outputs, and what SAELens saves, jaxsae loads with identical outputs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sae_lens import SAE as LensSAE
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from jaxsae import dictionaries as D
from jaxsae.dictionaries.bound import SAE
from jaxsae.interop import saelens

DIN, F = 10, 40
RTOL, ATOL = 1e-5, 1e-5


def _random_sae(spec, seed=0):
    rng = np.random.default_rng(seed)
    p = {n: (0.3 * rng.standard_normal(s)).astype(np.float32) for n, (s, _) in spec.param_shapes().items()}
    if "log_threshold" in p:
        p["log_threshold"] = np.log(rng.uniform(0.05, 0.4, F)).astype(np.float32)
    return SAE(spec, {k: jnp.asarray(v) for k, v in p.items()})


def _x(d=DIN, n=32, seed=1):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


SPECS = {
    "standard": lambda: D.build("relu", d_in=DIN, d_sae=F),
    "standard_b_dec_in": lambda: D.build("relu", d_in=DIN, d_sae=F, variant="2023"),
    "topk": lambda: D.build("topk", d_in=DIN, d_sae=F, k=6),
    "jumprelu": lambda: D.build("jumprelu", d_in=DIN, d_sae=F),
    "gated": lambda: D.build("gated", d_in=DIN, d_sae=F),
    "transcoder": lambda: D.build("transcoder", activation="relu", d_in=DIN, d_sae=F, d_out=7),
    "skip_transcoder": lambda: D.build("transcoder", activation="relu", d_in=DIN, d_sae=F, d_out=7, skip=True),
    "jumprelu_transcoder": lambda: D.build("transcoder", activation="jumprelu", d_in=DIN, d_sae=F, d_out=7),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_saelens_loads_what_jaxsae_saves(name, tmp_path):
    sae = _random_sae(SPECS[name]())
    saelens.save(sae, str(tmp_path))
    cfg = json.load(open(tmp_path / "cfg.json"))
    lens = LensSAE.load_from_disk(str(tmp_path))
    assert cfg["architecture"] == lens.cfg.architecture()
    x = _x()
    with torch.no_grad():
        f_lens = lens.encode(torch.from_numpy(x)).numpy()
        y_lens = lens(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(sae.encode(x)), f_lens, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(sae(x)), y_lens, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(sae.decode(jnp.asarray(f_lens))),
                               lens.decode(torch.from_numpy(f_lens)).detach().numpy(), rtol=RTOL, atol=ATOL)
    # and our own loader reads it back to the same dictionary
    back = saelens.load(str(tmp_path))
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(sae(x)), rtol=1e-6, atol=1e-6)


def _lens_models():
    torch.manual_seed(0)
    yield "standard", StandardSAE(StandardSAEConfig(d_in=DIN, d_sae=F, apply_b_dec_to_input=True))
    yield "topk", TopKSAE(TopKSAEConfig(d_in=DIN, d_sae=F, k=5))
    yield "topk_rescaled", TopKSAE(TopKSAEConfig(d_in=DIN, d_sae=F, k=5, rescale_acts_by_decoder_norm=True))
    yield "jumprelu", JumpReLUSAE(JumpReLUSAEConfig(d_in=DIN, d_sae=F))
    yield "gated", GatedSAE(GatedSAEConfig(d_in=DIN, d_sae=F))
    bt = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=DIN, d_sae=F, k=5))
    assert bt.cfg.rescale_acts_by_decoder_norm  # SAELens's default: exercises the norm fold
    bt.topk_threshold = torch.tensor(0.15, dtype=bt.topk_threshold.dtype)
    yield "batchtopk", bt


@pytest.mark.parametrize("name", ["standard", "topk", "topk_rescaled", "jumprelu", "gated", "batchtopk"])
def test_jaxsae_loads_what_saelens_saves(name, tmp_path):
    lens = dict(_lens_models())[name]
    with torch.no_grad():  # move every parameter off its init so biases and thresholds matter
        for p in lens.parameters():
            p.add_(0.2 * torch.randn_like(p))
        if hasattr(lens, "threshold"):
            lens.threshold.copy_(torch.rand_like(lens.threshold) * 0.3)
    lens.save_model(str(tmp_path))
    assert json.load(open(tmp_path / "cfg.json"))["architecture"] == name.split("_")[0]
    sae = saelens.load(str(tmp_path))
    x = _x()
    with torch.no_grad():
        if name == "batchtopk":  # evaluated as JumpReLU with the learned global threshold
            pre = lens.process_sae_in(torch.from_numpy(x)) @ lens.W_enc + lens.b_enc
            pre = pre * lens.W_dec.norm(dim=-1)  # threshold acts on decoder-norm-scaled values
            f_want = (torch.relu(pre) * (pre > 0.15)).numpy()
        else:
            f_want = lens.encode(torch.from_numpy(x)).numpy()
        y_want = lens.decode(torch.from_numpy(f_want)).numpy()
    np.testing.assert_allclose(np.asarray(sae.encode(x)), f_want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(sae(x)), y_want, rtol=RTOL, atol=ATOL)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        saelens.load(str(tmp_path))
    sae = _random_sae(SPECS["standard"]())
    saelens.save(sae, str(tmp_path))
    cfg = json.load(open(tmp_path / "cfg.json"))
    cfg["architecture"] = "hypersparse"
    json.dump(cfg, open(tmp_path / "cfg.json", "w"))
    with pytest.raises(ValueError, match="'hypersparse' is not supported; loadable: standard, topk"):
        saelens.load(str(tmp_path))
