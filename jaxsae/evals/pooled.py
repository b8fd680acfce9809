"""Mean-pooled activations of labelled prompts, computed once and shared by the probing evaluations.

Sparse probing, SCR and TPP all read one vector per prompt: the model's activations at the
dictionary's site and the dictionary's latents, each averaged over the prompt's text tokens (BOS
and padding dropped), as SAEBench does. `Pooler` runs the model on each distinct prompt once per
evaluation call and keeps the pooled vectors, so one forward serves every eval that asks for the
same text (sparse probing's SST-2 rows are also SCR's movie-review rows).

Because a dictionary's decoder is affine (f W_dec + b_dec), ablating latents and keeping the error
term, x' = dec(f * keep) + (x - dec(f)) = x - (f * drop) W_dec, commutes with mean pooling: SCR and
TPP ablate the pooled vectors exactly, without a second forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.data import tokens as tokens_lib


def tokenize(prompts: list[str], tokenizer, context: int) -> np.ndarray:
    """[n, context] ids: BOS, the prompt's first context-1 tokens, then BOS as padding (never text)."""
    pad = tokenizer.bos_id
    out = np.full((len(prompts), context), pad, np.int32)
    for i, p in enumerate(prompts):
        ids = [tokenizer.bos_id, *tokenizer.encode(p)][:context]
        out[i, : len(ids)] = ids
    return out


@jax.jit
def _pool(acts_btd, mask_bt, sae):
    m = mask_bt[..., None].astype(jnp.float32)
    count = jnp.maximum(m.sum(1), 1.0)
    f_btf = sae.encode(acts_btd.astype(jnp.float32))
    return (acts_btd * m).sum(1) / count, (f_btf * m).sum(1) / count


def pooled(lm, sae, site: str, tokens_nt: np.ndarray, specials, batch: int, progress: bool = False):
    """(mean-pooled activations [n, d], mean-pooled latents [n, d_sae]) over each row's text tokens."""
    capture = sites.capture_fn(lm, [site])
    llm, lat = [], []
    n = len(tokens_nt)
    for s in tqdm(range(0, n, batch), desc="probing: activations", disable=not progress, leave=False):
        tok = tokens_nt[s : s + batch]
        real = len(tok)
        if real < batch:  # a full batch keeps one compiled shape
            tok = np.concatenate([tok, np.repeat(tok[-1:], batch - real, 0)])
        mask = tokens_lib.content_mask(tok, specials)
        a, f = _pool(capture(jnp.asarray(tok))[site], jnp.asarray(mask), sae)
        llm.append(np.asarray(a, np.float32)[:real])
        lat.append(np.asarray(f, np.float32)[:real])
    if not llm:
        return np.zeros((0, sae.d_in), np.float32), np.zeros((0, sae.d_sae), np.float32)
    return np.concatenate(llm), np.concatenate(lat)


class Pooler:
    """Pooled (activations, latents) of prompts at one site, memoised by prompt text."""

    def __init__(self, lm, sae, site: str, tokenizer, context: int, batch: int = 16, progress: bool = False):
        sites.require_reconstruction(sae, site, "the probing evaluations (sparse probing, SCR, TPP)")
        self.lm, self.sae, self.site, self.tokenizer = lm, sae, site, tokenizer
        self.context, self.batch, self.progress = context, batch, progress
        self.specials = tokens_lib.special_ids(tokenizer)
        self._rows: dict[str, int] = {}
        self._llm: list[np.ndarray] = []
        self._lat: list[np.ndarray] = []
        self.forwards = 0  # prompts run through the model so far (the test of sharing)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """([n, d], [n, d_sae]) for `texts`, in order; only prompts not seen before are run."""
        new = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if new:
            a, f = pooled(self.lm, self.sae, self.site, tokenize(new, self.tokenizer, self.context), self.specials,
                          self.batch, self.progress)
            base = sum(len(x) for x in self._llm)
            self._rows.update({t: base + i for i, t in enumerate(new)})
            self._llm.append(a)
            self._lat.append(f)
            self.forwards += len(new)
            if len(self._llm) > 1:  # keep one array each
                self._llm, self._lat = [np.concatenate(self._llm)], [np.concatenate(self._lat)]
        idx = np.fromiter((self._rows[t] for t in texts), np.int64, len(texts))
        if not len(idx):
            return np.zeros((0, self.sae.d_in), np.float32), np.zeros((0, self.sae.d_sae), np.float32)
        return self._llm[0][idx], self._lat[0][idx]


def ablate(llm_nd: np.ndarray, lat_nf: np.ndarray, w_dec_fd, drop_f: np.ndarray) -> np.ndarray:
    """Pooled activations with the latents in `drop_f` (bool [d_sae]) zeroed, error term kept."""
    drop = jnp.asarray(drop_f, jnp.float32)
    return np.asarray(jnp.asarray(llm_nd) - (jnp.asarray(lat_nf) * drop) @ jnp.asarray(w_dec_fd, jnp.float32))
