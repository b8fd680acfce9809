"""Feature absorption (first letter), as SAEBench runs it (evals/absorption; Chanin et al. 2409.14507).

1. Vocabulary: every token made of ASCII letters only (one leading space allowed), shuffled and
   split 80/20; one prompt per token: `max_icl_examples` examples "\\n{w} has the first letter: W"
   from the same split, then "{word} has the first letter:". The activation is read at position
   -6 (the word) at the dictionary's site.
2. Ground-truth probe: 26 one-vs-rest logits on the activations, BCE with pos_weight = neg/pos,
   Adam (coupled L2 1e-4), lr 1e-2 decaying exponentially per epoch to 1e-5, batch 64, 50 epochs.
   Letters whose test F1 exceeds `min_GT_probe_f1` qualify; with fewer than `min_feats_for_eval`
   the dictionary cannot be scored and the result says so (metrics null, `gate` in details).
3. k-sparse probes on the latents: one 26-way probe with 0.01 * mean_c ||w_c||_1 (batch 4096,
   50 epochs, the same schedule, L2 1e-6); for each letter and k = 1..10 the k latents of largest
   positive weight get an sklearn-objective LogisticRegression(class_weight="balanced"); test F1.
   The main latents are those of the largest k reached while F1 rises by more than 0.03 per step.
4. For each test word of the letter the ground-truth probe gets right, with probe direction p
   (unit), latent projections a_j cos(W_dec_j, p) and the activation's projection x.p:
   absorption fraction: 0 if the main latents' projection >= x.p or the top 3 other latents with
   cos >= 0.1 and positive projection explain < 0.4 of x.p; 1 if the main latents' projection
   <= 0; else min(absorbers, x.p - main) / (that + main). Full absorption: main latents all
   < 1e-8, the top-projecting latent has cos >= 0.025 and >= 0.4 of x.p, and x.p > 0.
5. Per letter: mean fraction and full-absorption rate over its true positives; mean and standard
   deviation over qualifying letters. Lower is better as stored (SAEBench's convention; its paper
   plots 1 - score).

The steps after the forward pass (`score`) take any classes, not just letters: the toy-model test
runs them on parent/child features with known absorption.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import string

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxsae import sites
from jaxsae.atomic import atomic_write_bytes
from jaxsae.evals import probes, results

log = logging.getLogger("jaxsae")
LETTERS = string.ascii_lowercase
EPS = 1e-8
DIFFERENCES = {
    "site": "activations are read at the dictionary's own site; SAEBench reads blocks.{L}.hook_resid_post whatever "
            "the dictionary's hook",
    "gate": "when too few letters pass the ground-truth probe gate the result is written with null metrics and "
            "the gate in its details; SAEBench stops evaluating every later SAE in its list",
    "words": "words whose query does not re-tokenize to the word's own token at position -6 are dropped and "
             "counted (SAEBench requires equal prompt lengths instead)",
    "icl_examples": "the absorption pass reuses each test word's probe prompt (examples from the test split); "
                    "SAEBench rebuilds the prompt with examples from the whole vocabulary and runs the model again",
    "probes": "probes are trained in JAX with SAEBench's losses, optimisers and schedules; the k-sparse "
              "LogisticRegression minimises sklearn's objective (L-BFGS in JAX)",
}


@dataclasses.dataclass(frozen=True)
class AbsorptionConfig:
    prompt_template: str = "{word} has the first letter:"
    prompt_token_pos: int = -6
    max_icl_examples: int = 10
    max_k_value: int = 10
    f1_jump_threshold: float = 0.03
    k_sparse_probe_l1_decay: float = 0.01
    k_sparse_probe_batch_size: int = 4096
    k_sparse_probe_num_epochs: int = 50
    probe_batch_size: int = 64
    probe_num_epochs: int = 50
    probe_lr: float = 1e-2
    probe_end_lr: float = 1e-5
    probe_weight_decay: float = 1e-4
    min_GT_probe_f1: float = 0.6
    min_feats_for_eval: int = 20
    max_words: int | None = None  # None: the whole alphabetic vocabulary (SAEBench); fewer for a quick run
    llm_batch_size: int = 16
    seed: int = 42

    def validate(self) -> AbsorptionConfig:
        if "{word}" not in self.prompt_template:
            raise ValueError(f"absorption: prompt_template must contain {{word}}, got {self.prompt_template!r}")
        if self.prompt_token_pos >= 0:
            raise ValueError(f"absorption: prompt_token_pos counts from the end (negative), got {self.prompt_token_pos}")
        if self.max_k_value < 1 or self.llm_batch_size < 1 or self.max_icl_examples < 0:
            raise ValueError("absorption: max_k_value, llm_batch_size >= 1 and max_icl_examples >= 0 are required")
        if self.max_words is not None and self.max_words < 50:
            raise ValueError(f"absorption: max_words must be None (all) or >= 50, got {self.max_words}")
        return self


# ---- probes ------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("batch", "epochs"))
def _fit_multi(x_nd, y_nc, key, lr, end_lr, weight_decay, l1, batch: int, epochs: int):
    n, d = x_nd.shape
    c = y_nc.shape[1]
    steps = -(-n // batch)
    pos = y_nc.sum(0)
    pos_weight = (n - pos) / jnp.maximum(pos, 1.0)
    gamma = jnp.exp(jnp.log(end_lr / lr) / epochs)  # torch ExponentialLR stepped once per epoch
    k_w, k_b, key = jax.random.split(key, 3)
    bound = 1.0 / jnp.sqrt(d)  # nn.Linear's initialisation
    params = {"w": jax.random.uniform(k_w, (c, d), minval=-bound, maxval=bound),
              "b": jax.random.uniform(k_b, (c,), minval=-bound, maxval=bound)}
    opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam())  # torch Adam, coupled L2

    def loss_fn(p, xb, yb, mb):
        z = xb @ p["w"].T + p["b"]
        # BCEWithLogits(pos_weight): -[pw y log s(z) + (1 - y) log(1 - s(z))], mean over rows and classes
        per = pos_weight * yb * jax.nn.softplus(-z) + (1 - yb) * jax.nn.softplus(z)
        return jnp.sum(per * mb[:, None]) / (jnp.sum(mb) * c) + l1 * jnp.mean(jnp.sum(jnp.abs(p["w"]), -1))

    grad_fn = jax.grad(loss_fn)

    def epoch(carry, inp):
        p, state = carry
        k, e = inp
        order = jnp.concatenate([jax.random.permutation(k, n), jnp.zeros((steps * batch - n,), jnp.int32)])
        valid = (jnp.arange(steps * batch) < n).astype(jnp.float32)
        rate = lr * gamma ** e

        def step(c2, i):
            p, state = c2
            idx = jax.lax.dynamic_slice(order, (i * batch,), (batch,))
            mb = jax.lax.dynamic_slice(valid, (i * batch,), (batch,))
            updates, state = opt.update(grad_fn(p, x_nd[idx], y_nc[idx], mb), state, p)
            return (jax.tree.map(lambda a, u: a - rate * u, p, updates), state), None

        return jax.lax.scan(step, (p, state), jnp.arange(steps))[0], None

    (p, _), _ = jax.lax.scan(epoch, (params, opt.init(params)), (jax.random.split(key, epochs), jnp.arange(epochs)))
    return p["w"], p["b"]


def fit_multi_probe(x_nd, labels_n, n_classes: int, *, batch: int, epochs: int, lr: float, end_lr: float,
                    weight_decay: float, l1: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(W [C, d], b [C]) of SAEBench's multi-probe: C one-vs-rest logits trained together."""
    y = np.eye(n_classes, dtype=np.float32)[np.asarray(labels_n)]
    w, b = _fit_multi(jnp.asarray(x_nd, jnp.float32), jnp.asarray(y), jax.random.key(seed), jnp.float32(lr),
                      jnp.float32(end_lr), jnp.float32(weight_decay), jnp.float32(l1), batch, epochs)
    return np.asarray(w), np.asarray(b)


def f1(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = np.sum(y_true & y_pred)
    denom = 2 * tp + np.sum(~y_true & y_pred) + np.sum(y_true & ~y_pred)
    return float(2 * tp / denom) if denom else 0.0


def main_latents(f1_by_k: list[float], feats_by_k: list[np.ndarray], jump: float) -> np.ndarray:
    """SAEBench's feature splits: the latents of the largest k reached while F1 rises by > jump."""
    best, chosen = -100.0, np.zeros((0,), np.int64)
    for score, feats in zip(f1_by_k, feats_by_k):
        if score > best + jump:
            best, chosen = score, np.asarray(feats)
        else:
            break
    return chosen


# ---- the absorption metric ---------------------------------------------------------------------


def word_absorption(lat_nf: np.ndarray, x_nd: np.ndarray, probe_d: np.ndarray, w_dec_fd: np.ndarray,
                    main_ids: np.ndarray, *, fraction_cos: float = 0.1, full_cos: float = 0.025,
                    share: float = 0.4, max_absorbers: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(absorption fraction [n], full absorption [n] bool) of each row, as SAEBench's
    FeatureAbsorptionCalculator computes them (see the module docstring)."""
    p = np.asarray(probe_d, np.float64)
    p = p / np.linalg.norm(p)
    w = np.asarray(w_dec_fd, np.float64)
    cos_f = (w @ p) / np.maximum(np.linalg.norm(w, axis=1), 1e-12)
    lat = np.asarray(lat_nf, np.float64)
    proj_nf = lat * cos_f
    act_n = np.asarray(x_nd, np.float64) @ p
    main = np.zeros(lat.shape[1], bool)
    main[np.asarray(main_ids, np.int64)] = True
    main_n = proj_nf[:, main].sum(1)
    candidate = (~main)[None, :] & (cos_f >= fraction_cos)[None, :] & (proj_nf > 0)
    cand_proj = np.where(candidate, proj_nf, 0.0)
    top = -np.sort(-cand_proj, axis=1)[:, :max_absorbers]
    absorbers_n = top.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = absorbers_n / act_n
        taken = np.minimum(absorbers_n, act_n - main_n)
        partial = np.clip(taken / (taken + main_n), 0.0, 1.0)
    fraction = np.where((main_n >= act_n) | ~(ratio >= share), 0.0, np.where(main_n <= 0.0, 1.0, partial))
    order = np.argsort(-proj_nf, axis=1, kind="stable")[:, 0]
    top_proj = proj_nf[np.arange(len(order)), order]
    with np.errstate(divide="ignore", invalid="ignore"):
        top_share = top_proj / act_n
    main_quiet = np.all(lat[:, main] < EPS, axis=1) if main.any() else np.ones(len(lat), bool)
    full = main_quiet & (cos_f[order] >= full_cos) & (act_n >= 0) & (top_share >= share)
    return fraction, full


def score(x_train, y_train, x_test, y_test, sae, cfg: AbsorptionConfig, class_names, words_test=None) -> dict:
    """Steps 2-5 on activations of labelled rows (`y_*`: class index per row). Returns
    {"metrics": {...} or None, "details": [per class], "gate": {...}, "probe_f1": {...}}."""
    c = len(class_names)
    x_train, x_test = np.asarray(x_train, np.float32), np.asarray(x_test, np.float32)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    gt_w, gt_b = fit_multi_probe(x_train, y_train, c, batch=cfg.probe_batch_size, epochs=cfg.probe_num_epochs,
                                 lr=cfg.probe_lr, end_lr=cfg.probe_end_lr, weight_decay=cfg.probe_weight_decay,
                                 seed=cfg.seed)
    gt_test = x_test @ gt_w.T + gt_b
    probe_f1 = {name: f1(y_test == i, gt_test[:, i] > 0) for i, name in enumerate(class_names)}
    qualifying = [name for name in class_names if probe_f1[name] > cfg.min_GT_probe_f1]
    gate = {"min_GT_probe_f1": cfg.min_GT_probe_f1, "min_feats_for_eval": cfg.min_feats_for_eval,
            "qualifying": len(qualifying), "passed": len(qualifying) >= cfg.min_feats_for_eval}
    if not gate["passed"]:
        log.warning("absorption: only %d of %d ground-truth probes reach F1 > %.2f (%d needed): the model does not "
                    "represent first letters linearly enough at this site to score absorption", len(qualifying), c,
                    cfg.min_GT_probe_f1, cfg.min_feats_for_eval)
        return {"metrics": None, "details": [], "gate": gate, "probe_f1": probe_f1}
    lat_train = np.asarray(_encode(sae, x_train))
    lat_test = np.asarray(_encode(sae, x_test))
    ks_w, _ = fit_multi_probe(lat_train, y_train, c, batch=cfg.k_sparse_probe_batch_size,
                              epochs=cfg.k_sparse_probe_num_epochs, lr=cfg.probe_lr, end_lr=cfg.probe_end_lr,
                              weight_decay=1e-6, l1=cfg.k_sparse_probe_l1_decay, seed=cfg.seed + 1)
    w_dec = np.asarray(sae.params["W_dec"], np.float32)
    details = []
    for i, name in enumerate(class_names):
        if name not in qualifying:
            continue
        f1s, feats = [], []
        for k in range(1, min(cfg.max_k_value, sae.d_sae) + 1):
            ids = np.argsort(-ks_w[i], kind="stable")[:k]
            yk = (y_train == i).astype(np.int32)
            w, b = probes.fit_logistic(lat_train[:, ids], yk, max_iter=500, class_weight="balanced")
            f1s.append(f1(y_test == i, lat_test[:, ids] @ np.asarray(w) + float(b) > 0))
            feats.append(ids)
        main = main_latents(f1s, feats, cfg.f1_jump_threshold)
        tp = (y_test == i) & (gt_test[:, i] > 0)
        frac, full = word_absorption(lat_test[tp], x_test[tp], gt_w[i], w_dec, main)
        n_tp = int(tp.sum())
        details.append({"first_letter": name, "mean_absorption_fraction": float(frac.sum() / max(n_tp, 1)),
                        "full_absorption_rate": float(full.sum() / max(n_tp, 1)),
                        "num_full_absorption": int(full.sum()), "num_probe_true_positives": n_tp,
                        "num_split_features": int(len(main)), "main_latents": main.tolist(),
                        "k_sparse_f1": f1s, "ground_truth_probe_f1": probe_f1[name]})
    fr = [d["mean_absorption_fraction"] for d in details]
    fu = [d["full_absorption_rate"] for d in details]
    ns = [d["num_split_features"] for d in details]
    sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))  # noqa: E731  statistics.stdev
    metrics = {"mean_absorption_fraction_score": float(np.mean(fr)), "mean_full_absorption_score": float(np.mean(fu)),
               "mean_num_split_features": float(np.mean(ns)), "std_dev_absorption_fraction_score": sd(fr),
               "std_dev_full_absorption_score": sd(fu), "std_dev_num_split_features": sd(ns)}
    return {"metrics": metrics, "details": details, "gate": gate, "probe_f1": probe_f1}


@jax.jit
def _encode_jit(sae, x):
    return sae.encode(x)


def _encode(sae, x_nd: np.ndarray, chunk: int = 4096) -> np.ndarray:
    return np.concatenate([np.asarray(_encode_jit(sae, jnp.asarray(x_nd[s : s + chunk])))
                           for s in range(0, len(x_nd), chunk)]) if len(x_nd) else np.zeros((0, sae.d_sae))


# ---- prompts and activations -------------------------------------------------------------------


def token_text(tokenizer, i: int, ref: list[int]) -> str:
    """The text of token i as it reads after other text: decoded behind `ref` and cut, since
    SentencePiece-style decoders drop a leading space at the start of a decode ("▁cat" -> "cat")."""
    return tokenizer.decode([*ref, i])[len(tokenizer.decode(ref)):]


def alpha_vocab(tokenizer) -> list[tuple[int, str]]:
    """(id, text) of every token made of ASCII letters only, one leading space allowed."""
    out = []
    ref = tokenizer.encode("a")
    for i in range(tokenizer.vocab_size):
        if i in (tokenizer.bos_id, tokenizer.eos_id):
            continue
        text = token_text(tokenizer, i, ref)
        core = text[1:] if text.startswith(" ") else text
        if core and all(ch in string.ascii_letters for ch in core):
            out.append((i, text))
    return out


def build_prompt(word: str, examples: list[str], cfg: AbsorptionConfig, rng) -> str:
    """SAEBench's create_icl_prompt: `max_icl_examples` examples other than the word, answers
    " W", newline-separated, a newline first, then the query."""
    pool = [e for e in examples if e != word]
    picks = [pool[j] for j in rng.choice(len(pool), size=min(cfg.max_icl_examples, len(pool)), replace=False)]
    lines = [cfg.prompt_template.format(word=e) + " " + e.strip()[0].upper() for e in picks]
    return "\n" + "\n".join([*lines, cfg.prompt_template.format(word=word)])


def dataset(tokenizer, cfg: AbsorptionConfig) -> dict:
    """Train and test rows: prompts (token ids), the word's position, its letter; dropped words counted."""
    vocab = alpha_vocab(tokenizer)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(vocab))
    if cfg.max_words is not None:
        order = order[: cfg.max_words]
    words = [vocab[j] for j in order]
    cut = int(len(words) * 0.8)
    out = {"dropped": 0}
    for split, rows in (("train", words[:cut]), ("test", words[cut:])):
        texts = [t for _, t in rows]
        ids, letters, kept = [], [], []
        for tid, text in rows:
            prompt = [tokenizer.bos_id, *tokenizer.encode(build_prompt(text, texts, cfg, rng))]
            if len(prompt) < -cfg.prompt_token_pos or prompt[cfg.prompt_token_pos] != tid:
                out["dropped"] += 1
                continue
            ids.append(prompt)
            letters.append(LETTERS.index(text.strip()[0].lower()))
            kept.append(text)
        out[split] = {"tokens": ids, "letters": np.asarray(letters, np.int64), "words": kept}
    return out


def word_activations(lm, site: str, tokens: list[list[int]], pos: int, batch: int, pad_id: int,
                     cache_dir: str | None = None, progress: bool = False) -> np.ndarray:
    """[n, d] activations at `site` at position `pos` (from each prompt's end). Prompts are
    right-padded, so padding never reaches the read position. With `cache_dir`, every 64 batches are
    written atomically and a rerun resumes from them."""
    capture = sites.capture_fn(lm, [site])
    width = max(len(t) for t in tokens)
    width = -(-width // 8) * 8  # few distinct shapes: one compile per multiple of 8
    chunk = 64 * batch
    parts = []
    for c0 in tqdm(range(0, len(tokens), chunk), desc="absorption: activations", disable=not progress, leave=False):
        path = os.path.join(cache_dir, f"acts_{c0 // chunk:05d}.npy") if cache_dir else None
        rows = tokens[c0 : c0 + chunk]
        if path and os.path.isfile(path):
            block = np.load(path)
            if block.shape[0] == len(rows):
                parts.append(block)
                continue
            log.warning("absorption: cached %s holds %d rows, not %d: recomputing it", path, block.shape[0], len(rows))
        got = []
        for s in range(0, len(rows), batch):
            part = rows[s : s + batch]
            arr = np.full((batch, width), pad_id, np.int32)
            for r, t in enumerate(part):
                arr[r, : len(t)] = t
            acts = np.asarray(capture(jnp.asarray(arr))[site], np.float32)
            at = np.array([len(t) + pos for t in part])
            got.append(acts[np.arange(len(part)), at])
        block = np.concatenate(got)
        if path:
            atomic_write_bytes(path, lambda f, b=block: np.save(f, b))
        parts.append(block)
    return np.concatenate(parts)


def run(lm, sae, site: str, tokenizer, cfg: AbsorptionConfig = AbsorptionConfig(), sae_cfg: dict | None = None,
        model_name: str = "", llm_dtype: str = "float32", cache_dir: str | None = None, progress: bool = True) -> dict:
    """The absorption result (SAEBench schema, eval_type_id "absorption_first_letter")."""
    cfg = cfg.validate()
    sites.require_reconstruction(sae, site, "absorption")
    data = dataset(tokenizer, cfg)
    if not data["train"]["tokens"] or not data["test"]["tokens"]:
        raise ValueError(f"absorption: no usable alphabetic words in this tokenizer's vocabulary "
                         f"({data['dropped']} dropped by the tokenization check)")
    acts = {}
    for split in ("train", "test"):
        sub = None
        if cache_dir:
            shaping = [site, split, cfg.prompt_template, cfg.prompt_token_pos, cfg.max_icl_examples, cfg.max_words,
                       cfg.seed, cfg.llm_batch_size]  # what the cached blocks depend on (cache_dir names the model)
            key = hashlib.sha256(json.dumps(shaping).encode())
            sub = os.path.join(cache_dir, f"{split}-{key.hexdigest()[:16]}")
            os.makedirs(sub, exist_ok=True)
        acts[split] = word_activations(lm, site, data[split]["tokens"], cfg.prompt_token_pos, cfg.llm_batch_size,
                                       tokenizer.bos_id, sub, progress)
    out = score(acts["train"], data["train"]["letters"], acts["test"], data["test"]["letters"], sae, cfg,
                list(LETTERS))
    metrics = {"mean": out["metrics"] if out["metrics"] is not None else {  # nan: written as -1, SAEBench's missing value
        k: float("nan") for k in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                          "std_dev_absorption_fraction_score", "std_dev_full_absorption_score",
                          "std_dev_num_split_features")}}
    eval_config = {**{k: v for k, v in dataclasses.asdict(cfg).items()}, "model_name": model_name,
                   "llm_dtype": llm_dtype, "precalc_k_sparse_probe_sae_acts": True, "site": site,
                   "score_direction": "lower is better: absorption scores are fractions of words absorbed "
                                      "(SAEBench stores them so; its paper plots 1 - score)",
                   "gate": out["gate"], "words": {"train": len(data["train"]["words"]),
                                                  "test": len(data["test"]["words"]), "dropped": data["dropped"]}}
    if not out["gate"]["passed"]:
        eval_config["not_scored"] = (f"metrics are -1 (not measured): only {out['gate']['qualifying']} letters have a ground-truth probe with test "
                                     f"F1 > {cfg.min_GT_probe_f1} ({cfg.min_feats_for_eval} needed): absorption "
                                     "cannot be measured on this model and site (SAEBench recommends models of "
                                     ">= 2B parameters)")
    return results.build("absorption_first_letter", eval_config, metrics, out["details"], sae_cfg,
                         unstructured={"ground_truth_probe_f1": out["probe_f1"]}, differences=DIFFERENCES)
