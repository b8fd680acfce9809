"""Core evaluation of a dictionary at one hook site of a language model (docs/methods.md section 9).

Reconstruction (over every text token of the evaluation windows; BOS/pad excluded):
  L0, L1, l2_loss (squared error summed over dimensions, per token), MSE (per element), FVU against
  the dataset mean in streaming form (sum|x|^2 - N|mean x|^2 in the denominator), explained variance, cosine similarity, l2_ratio,
  relative reconstruction bias (shrinkage: gamma < 1), latent densities (dead, dense over 1% and
  10%, a log10 density histogram) and the top-activating contexts of every latent.
Downstream (the dictionary spliced into the LM; BOS positions keep their clean activations;
every variant scored on the same next-token targets, float32):
  CE loss clean / with the dictionary / zero-ablated / mean-ablated, CE loss recovered against
  both baselines, delta LM loss, KL(clean || spliced) and kl_div_score.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.atomic import atomic_write_bytes
from jaxsae.data import tokens as tokens_lib

TOP_CONTEXTS = 8
PROGRESS_EVERY_S = 20.0  # how often a long evaluation saves its running state
log = logging.getLogger("jaxsae")


class _Stream:
    """Running sums (float64) for the reconstruction metrics and latent statistics."""

    def __init__(self, d: int, f: int):
        self.n = 0
        self.sum_x = np.zeros(d)
        self.sum_sq_x = self.sum_sq_err = self.sum_cos = self.sum_ratio = 0.0
        self.sum_sq_xhat = self.sum_dot = self.sum_l0 = self.sum_l1 = 0.0
        self.fires = np.zeros(f, np.int64)
        self.prompts_fired = np.zeros(f, np.int64)  # windows in which each latent fired at least once
        self.sum_norm_x = self.sum_norm_xhat = self.sum_ev_legacy = self.sum_mse_saebench = 0.0
        self.l0_tokens: list[np.ndarray] = []
        self.top: list[list[tuple[float, int]]] = [[] for _ in range(f)]  # min-heaps of (value, row id)

    def add(self, x, x_hat, f_nf, row0: int, window_n=None) -> None:
        """One batch of rows; `window_n` [rows] numbers each row's window (None: one window). A
        window's rows come in one call (the evaluation batches whole windows)."""
        x, x_hat, f_nf = (np.asarray(a, np.float64) for a in (x, x_hat, f_nf))
        err = x - x_hat
        nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
        sse_n = (err * err).sum(1)
        self.sum_norm_x += float(nx.sum())
        self.sum_norm_xhat += float(nh.sum())
        # SAEBench's per-token forms: explained variance against this batch's mean, and its mse
        # (per-token SSE over the batch's token count, so it shrinks as batches grow)
        tss_n = ((x - x.mean(0)) ** 2).sum(1)
        self.sum_ev_legacy += float((1.0 - sse_n / np.maximum(tss_n, 1e-30)).sum())
        self.sum_mse_saebench += float(sse_n.sum() / max(len(x), 1))
        fired = f_nf > 0
        windows = np.zeros(len(x), np.int64) if window_n is None else np.asarray(window_n)
        for w in np.unique(windows):
            self.prompts_fired += fired[windows == w].any(0)
        self.n += len(x)
        self.sum_x += x.sum(0)
        self.sum_sq_x += float((x * x).sum())
        self.sum_sq_err += float((err * err).sum())
        self.sum_cos += float(((x * x_hat).sum(1) / np.maximum(nx * nh, 1e-12)).sum())
        self.sum_ratio += float((nh / np.maximum(nx, 1e-12)).sum())
        self.sum_sq_xhat += float((nh * nh).sum())
        self.sum_dot += float((x * x_hat).sum())
        active = f_nf != 0
        l0 = active.sum(1)
        self.l0_tokens.append(l0)
        self.sum_l0 += float(l0.sum())
        self.sum_l1 += float(np.abs(f_nf).sum())
        self.fires += (f_nf > 0).sum(0)
        k = min(TOP_CONTEXTS, len(f_nf))
        cand = np.argpartition(-f_nf, k - 1, axis=0)[:k]  # [k, F] rows of each latent's largest values
        for latent in np.nonzero((f_nf > 0).any(0))[0]:
            heap = self.top[latent]
            for r in cand[:, latent]:
                v = f_nf[r, latent]
                if v <= 0:
                    continue
                item = (float(v), row0 + int(r))
                if len(heap) < TOP_CONTEXTS:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)

    def metrics(self, d: int) -> dict:
        n = max(self.n, 1)
        mean = self.sum_x / n
        total_var = self.sum_sq_x - n * float(mean @ mean)
        fvu = self.sum_sq_err / max(total_var, 1e-30)
        p = self.fires / n
        total_p = max(float(p.sum()), 1e-30)
        return {
            "n_tokens": self.n, "l0": self.sum_l0 / n, "l1": self.sum_l1 / n, "l2_loss": self.sum_sq_err / n,
            "mse": self.sum_sq_err / n / d, "fvu": fvu, "explained_variance": 1.0 - fvu,
            "cosine_similarity": self.sum_cos / n, "l2_ratio": self.sum_ratio / n,
            "relative_reconstruction_bias": self.sum_sq_xhat / max(self.sum_dot, 1e-30),
            "dead_fraction": float((p == 0).mean()), "dense_fraction_over_1_percent": float((p > 0.01).mean()),
            "dense_fraction_over_10_percent": float((p > 0.1).mean()),
            "frac_alive": float((p > 0).mean()),
            "normalized_freq_over_1_percent": float(p[p > 0.01].sum() / total_p),
            "normalized_freq_over_10_percent": float(p[p > 0.1].sum() / total_p),
            "l2_norm_in": self.sum_norm_x / n, "l2_norm_out": self.sum_norm_xhat / n,
            "explained_variance_legacy": self.sum_ev_legacy / n,
            "mse_saebench": self.sum_mse_saebench / n,
        }

    def consistent_activation(self) -> np.ndarray:
        """Per latent: its firings per window in which it fired at all (nan for latents that never fire)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.prompts_fired > 0, self.fires / np.maximum(self.prompts_fired, 1), np.nan)


def _next_token_terms(logits_btv, ref_logp_btv, tokens_bt, valid_bt):
    """Summed CE over valid targets and summed KL(ref || this) over the same positions."""
    logp = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    target = tokens_bt[:, 1:]
    nll = -jnp.take_along_axis(logp[:, :-1], target[..., None], axis=-1)[..., 0]
    mask = valid_bt[:, 1:]
    ce = jnp.where(mask, nll, 0.0).sum()
    kl = None
    if ref_logp_btv is not None:
        kl_t = (jnp.exp(ref_logp_btv) * (ref_logp_btv - logp)).sum(-1)[:, :-1]
        kl = jnp.where(mask, kl_t, 0.0).sum()
    return ce, kl, logp


def _keep_bos_clean(fn):
    def spliced(x, payload):
        inner, mask_bt = payload
        new = fn(x, inner)
        return jnp.where(mask_bt[..., None], new, x)

    return spliced


def _reconstruct(x, sae):
    return sae.forward(x)


def _zero(x, _):
    return jnp.zeros_like(x)


def _mean(x, m):
    return jnp.broadcast_to(m.astype(x.dtype), x.shape)


# built once: a splice's function is static in the jitted model, a new closure would recompile
SPLICES = {"sae": _keep_bos_clean(_reconstruct), "zero": _keep_bos_clean(_zero), "mean": _keep_bos_clean(_mean)}


class _Progress:
    """The evaluation's running state, saved atomically after every batch to `path` (when given) under
    an identity (what was evaluated, how), so a killed evaluation resumes at the batch it reached."""

    def __init__(self, path: str | None, identity: dict | None, fresh: dict):
        self.path, self.identity = path, identity
        self.state = fresh
        self.every_s, self._last = PROGRESS_EVERY_S, time.monotonic()
        if path and os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    saved = pickle.load(f)
            except Exception:  # noqa: BLE001 - a damaged progress file only costs a recomputation
                saved = None
            if saved and saved.get("identity") == identity:
                self.state = saved["state"]
                log.info("evaluation resumes at %s window %d (%s)", self.state["phase"], self.state["next"], path)

    def save(self, force: bool = False) -> None:
        """Saved at most every `every_s` seconds (the state grows with the evaluation), and at the
        end of each phase."""
        if self.path and (force or time.monotonic() - self._last >= self.every_s):
            blob = pickle.dumps({"identity": self.identity, "state": self.state})
            atomic_write_bytes(self.path, lambda f: f.write(blob))
            self._last = time.monotonic()


def discard_progress(path: str) -> None:
    """Remove an evaluation's progress file once its results are written."""
    if os.path.isfile(path):
        os.remove(path)


def evaluate(lm, sae, site: str, windows_ds, n_windows: int, batch_windows: int, specials, downstream_windows: int,
             progress: bool = True, progress_path: str | None = None, identity: dict | None = None,
             keep_activations: bool = False) -> dict:
    """All core metrics of `sae` at `site`, over `n_windows` windows (reconstruction) and the first
    `downstream_windows` of them (spliced-model losses). Returns {"metrics", "density", "l0_tokens",
    "top", "tokens", "site"} plus the capture/encode functions the report re-runs contexts with.
    With `progress_path`, the running sums are saved there as it goes and a rerun with the same
    `identity` resumes from them (the caller removes it with `discard_progress` once its results are
    written). The file is a pickle: like any checkpoint, load only progress files you wrote.
    `keep_activations`: also return the site's activations of every text token ("activations",
    "rows": (window, position)) so the dashboards reuse this forward; None after a resume."""
    if sites.parse(site)[1] == "attn.hook_z":
        raise ValueError("core evaluation of attn.hook_z dictionaries is not supported yet")
    capture = sites.capture_fn(lm, [site])
    encode = jax.jit(lambda s, x: s.encode(x))
    decode = jax.jit(lambda s, f: s.decode(f))
    n_windows = min(n_windows, len(windows_ds)) // batch_windows * batch_windows
    if n_windows == 0:
        raise ValueError(f"fewer evaluation windows than one batch of {batch_windows}")
    all_tokens = tokens_lib.batch_array(windows_ds, 0, n_windows)
    prog = _Progress(progress_path, identity, {
        "phase": "reconstruction", "next": 0, "stream": _Stream(sae.d_in, sae.d_sae), "row_of": [],
        "sums": dict.fromkeys(("clean", "sae", "zero", "mean", "kl_sae", "kl_zero", "kl_mean", "n"), 0.0)})
    st = prog.state
    stream, row_of, sums = st["stream"], st["row_of"], st["sums"]  # row_of: row id -> (window, position)
    first = st["next"] if st["phase"] == "reconstruction" else n_windows
    kept = [] if keep_activations and first == 0 else None
    bar = tqdm(total=n_windows, initial=first, desc="eval: reconstruction", unit="win", disable=not progress,
               dynamic_ncols=True)
    for start in range(first, n_windows, batch_windows):
        tok = all_tokens[start : start + batch_windows]
        keep = tokens_lib.content_mask(tok, specials)
        w, t = np.nonzero(keep)
        x = tokens_lib.text_rows(capture(jnp.asarray(tok))[site], keep).astype(np.float32)
        f = encode(sae, jnp.asarray(x))
        stream.add(x, decode(sae, f), np.asarray(f), len(row_of), window_n=w)
        if kept is not None:
            kept.append(x)
        row_of.extend(zip((w + start).tolist(), t.tolist()))
        st["next"] = start + batch_windows
        prog.save(force=st["next"] >= n_windows)
        bar.update(batch_windows)
    bar.close()
    metrics = stream.metrics(sae.d_in)
    mean_d = stream.sum_x / max(stream.n, 1)

    n_down = min(downstream_windows, n_windows) // batch_windows * batch_windows
    if st["phase"] == "reconstruction":
        st["phase"], st["next"] = "downstream", 0
    bar = tqdm(total=n_down, initial=st["next"], desc="eval: downstream", unit="win", disable=not progress,
               dynamic_ncols=True)
    for start in range(st["next"], n_down, batch_windows):
        tok = jnp.asarray(all_tokens[start : start + batch_windows])
        valid = jnp.asarray(tokens_lib.content_mask(np.asarray(tok), specials))
        clean_ce, _, ref = _next_token_terms(lm(tok), None, tok, valid)
        sums["clean"] += float(clean_ce)
        sums["n"] += float(valid[:, 1:].sum())
        for name, payload in (("sae", sae), ("zero", None), ("mean", jnp.asarray(mean_d, jnp.float32))):
            patched = sites.splice(lm, site, SPLICES[name], (payload, valid))
            ce, kl, _ = _next_token_terms(patched(tok), ref, tok, valid)
            sums[name] += float(ce)
            sums[f"kl_{name}"] += float(kl)
        st["next"] = start + batch_windows
        prog.save(force=st["next"] >= n_down)
        bar.update(batch_windows)
    bar.close()
    n = max(sums["n"], 1.0)
    ce = {k: sums[k] / n for k in ("clean", "sae", "zero", "mean")}
    kl = {k: sums[f"kl_{k}"] / n for k in ("sae", "zero", "mean")}
    metrics.update({
        "ce_loss_clean": ce["clean"], "ce_loss_with_sae": ce["sae"], "ce_loss_zero_ablation": ce["zero"],
        "ce_loss_mean_ablation": ce["mean"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / max(ce["zero"] - ce["clean"], 1e-12),
        "ce_loss_recovered_mean_ablation": (ce["mean"] - ce["sae"]) / max(ce["mean"] - ce["clean"], 1e-12),
        "delta_lm_loss": ce["sae"] - ce["clean"], "kl_div": kl["sae"], "kl_div_zero_ablation": kl["zero"],
        "kl_div_score": (kl["zero"] - kl["sae"]) / max(kl["zero"], 1e-12), "downstream_tokens": int(sums["n"]),
        "ce_loss_recovered_baseline": "zero ablation (ce_loss_recovered_mean_ablation: mean ablation)",
    })
    top = {i: sorted(h, reverse=True) for i, h in enumerate(stream.top) if h}
    return {"metrics": metrics, "density": stream.fires / max(stream.n, 1), "l0_tokens": np.concatenate(stream.l0_tokens),
            "consistent_activation": stream.consistent_activation(),
            "top": {i: [(v, *row_of[r]) for v, r in items] for i, items in top.items()}, "tokens": all_tokens,
            "capture": capture, "encode": lambda x: encode(sae, x), "site": site,
            "activations": np.concatenate(kept) if kept else None,
            "rows": np.asarray(row_of, np.int64).reshape(-1, 2) if kept else None}
