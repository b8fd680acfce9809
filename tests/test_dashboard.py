"""Feature dashboards: each latent's record is what its activations say (density, histogram, top
contexts, quantile samples), its logit effects equal the decoder direction pushed through the HF
model's final norm and unembedding, and the page renders in headless Chromium with no console
errors, showing every latent asked for (the Makefile's test target installs Debian's chromium)."""

import os
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from tiny_lm import make_tiny_lm

from jaxsae import dictionaries as D
from jaxsae import models
from jaxsae.data import tokens as tokens_lib
from jaxsae.dictionaries.bound import SAE
from jaxsae.report import dashboard

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = make_tiny_lm(str(tmp_path_factory.mktemp("lm")), layers=2)
    lm, tok = models.load(d), models.load_tokenizer(d)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, tok.vocab_size, size=(12, 24)).astype(np.int32)
    tokens[:, 0] = tok.bos_id
    spec = D.build("topk", d_in=32, d_sae=64, k=6)
    sae = SAE(spec, spec.init(jax.random.key(0)))
    acts, rows = dashboard.activations(lm, SITE, tokens, tokens_lib.special_ids(tok), batch=5)
    return {"dir": d, "lm": lm, "tok": tok, "tokens": tokens, "sae": sae, "acts": acts, "rows": rows}


def test_records_follow_the_activations(setup):
    s = setup
    assert len(s["acts"]) == 12 * 23 and (s["rows"][:, 1] >= 1).all()  # every text token, BOS dropped
    f = np.asarray(s["sae"].encode(s["acts"]))
    live = [int(i) for i in np.argsort(-(f > 0).sum(0))[:3]]
    recs = dashboard.latent_data(s["sae"], s["acts"], s["rows"], s["tokens"], s["tok"], live, lm=s["lm"],
                                 explanations={live[0]: "a test explanation"})
    for rec in recs:
        a = f[:, rec["latent"]]
        assert rec["density"] == pytest.approx((a > 0).mean())
        assert sum(rec["histogram"]["counts"]) == (a > 0).sum()
        assert rec["top"][0]["value"] == pytest.approx(a.max(), rel=1e-5)
        top = rec["top"][0]
        assert top["pieces"][top["at"]][1] == pytest.approx(a.max(), rel=1e-5)  # the outlined token is the max
        values = [t["value"] for t in rec["top"]]
        assert values == sorted(values, reverse=True)
        for q in rec["quantiles"]:
            assert all(q["range"][0] - 1e-6 <= e["value"] <= q["range"][1] + 1e-6 for e in q["examples"])
        assert len(rec["neighbours"]) == 5 and rec["latent"] not in [n[0] for n in rec["neighbours"]]
    assert recs[0]["explanation"] == "a test explanation" and recs[1]["explanation"] is None
    with pytest.raises(ValueError, match="out of range"):
        dashboard.latent_data(s["sae"], s["acts"], s["rows"], s["tokens"], s["tok"], [64])


def test_logit_effects_match_hf_final_norm_and_unembedding(setup):
    s = setup
    hf = transformers.AutoModelForCausalLM.from_pretrained(s["dir"])
    w_dec = np.asarray(s["sae"].params["W_dec"], np.float32)[:4]
    with torch.no_grad():
        logits = hf.lm_head(hf.model.norm(torch.tensor(w_dec))).numpy()
    logits = logits - logits.mean(1, keepdims=True)
    ours = dashboard.logit_effects(s["lm"], w_dec, k=5)
    for row, eff in zip(logits, ours):
        assert [int(t) for t, _ in eff["promoted"]] == np.argsort(-row)[:5].tolist()
        assert [int(t) for t, _ in eff["suppressed"]] == np.argsort(row)[:5].tolist()
        np.testing.assert_allclose([v for _, v in eff["promoted"]], np.sort(row)[::-1][:5], rtol=1e-4, atol=1e-5)


def _chromium():
    path = os.environ.get("JAXSAE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        if os.environ.get("JAXSAE_REQUIRE_BROWSER"):
            pytest.fail("the dashboard test needs Chromium: `make test` installs Debian's chromium package")
        pytest.skip("no Chromium here (make test installs it)")
    return path


def test_page_renders_in_headless_chromium(setup, tmp_path):
    from playwright.sync_api import sync_playwright

    s = setup
    f = np.asarray(s["sae"].encode(s["acts"]))
    live = [int(i) for i in np.argsort(-(f > 0).sum(0))[:4]]
    dead = int(np.argmin((f > 0).sum(0)))
    latents = live + ([dead] if (f[:, dead] == 0).all() else [])
    recs = dashboard.latent_data(s["sae"], s["acts"], s["rows"], s["tokens"], s["tok"], latents, lm=s["lm"],
                                 explanations={live[1]: "fires on </script> <b>tags</b>"})
    path = dashboard.write(str(tmp_path / "dashboard.html"), "tiny <test> run", recs, {"site": SITE})
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        pg = browser.new_page()
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(f"file://{path}")
        pg.wait_for_selector("body[data-rendered]")
        assert errors == []
        shown = pg.eval_on_selector_all("section.card", "cs => cs.map(c => Number(c.dataset.latent))")
        assert shown == latents
        first = f"#latent-{live[0]}"
        assert pg.eval_on_selector_all(f"{first} svg.hist rect", "rs => rs.length") == dashboard.HIST_BINS
        assert pg.eval_on_selector_all(f"{first} .ctx", "cs => cs.length") >= len(recs[0]["top"])
        assert pg.eval_on_selector_all(f"{first} table.logits tr", "rs => rs.length") == 11  # header + 10
        assert pg.inner_text(f"#latent-{live[1]} .expl") == "Explanation: fires on </script> <b>tags</b>"
        assert pg.eval_on_selector_all("nav a", "as => as.length") == len(latents)
        assert pg.title() == "tiny <test> run"
        browser.close()


def test_logit_effects_drop_the_layernorm_bias(tmp_path):
    from tiny_models import CASES, save_tiny

    kind, extra = CASES["gpt2_learned_positions"]
    hf = save_tiny(tmp_path, kind, **extra)
    with torch.no_grad():  # a LayerNorm bias that would otherwise push the same tokens for every latent
        hf.transformer.ln_f.bias.normal_(0, 1.0)
    hf.save_pretrained(tmp_path)
    lm = models.load(str(tmp_path))
    w = np.random.default_rng(0).normal(size=(3, hf.config.n_embd)).astype(np.float32)
    with torch.no_grad():
        ln, head = hf.transformer.ln_f, hf.lm_head
        logits = (head(ln(torch.tensor(w))) - head(ln(torch.zeros(1, w.shape[1])))).numpy()
    logits = logits - logits.mean(1, keepdims=True)
    for row, eff in zip(logits, dashboard.logit_effects(lm, w, k=5)):
        assert [int(t) for t, _ in eff["promoted"]] == np.argsort(-row)[:5].tolist()
        np.testing.assert_allclose([v for _, v in eff["promoted"]], np.sort(row)[::-1][:5], rtol=1e-4, atol=1e-4)
