"""SCR (spurious correlation removal) and TPP (targeted probe perturbation), as SAEBench runs them
(evals/scr_and_tpp; Karvonen et al., "Evaluating Sparse Autoencoders on Targeted Concept Removal
Tasks"), on offline data (jaxsae.evals.probe_datasets: CROSSED designs, MULTICLASS sets).

Probes are SAEBench's: a linear logit on mean-pooled model activations, AdamW (lr 1e-3), batch 16,
20 epochs, BCE + 1e-3 * ||w||_1 (jaxsae.evals.probes.fit_minibatch). A latent's effect on probe p
is (mean pooled latent on p's positives - on its negatives) * (W_dec w_p): SCR takes its absolute
value, TPP clamps the mean difference at 0 first. Ablating the top-n latents (among nonzero
effects) zeroes them and keeps the error term, x' = x - (f * drop) W_dec, on the pooled vectors
(exact: see jaxsae.evals.pooled).

SCR, per 2x2 design (concept 1: SAEBench's profession; concept 2: its gender), three probes are
trained: concept 1, concept 2, and a *biased* probe on (c1, c2) = (first, first) vs (second, second)
rows only, which learns both concepts. Direction 1 ablates the concept-2 probe's latents and scores
the biased probe on balanced concept-1 data, (changed - original) / (clean - original) with clean =
the concept-1 probe's accuracy there (0 when clean - original < 0.001); direction 2 swaps the
concepts. `scr_metric` is the direction in which the biased probe is less accurate.

TPP, per multi-class set: one balanced one-vs-rest probe per class. Ablating class i's top-n
latents should hurt probe i (intended) and not the others (unintended):
total = (clean_i - ablated_ii) - mean_{j != i}(clean_j - ablated_ij), averaged over classes.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxsae.evals import pooled as pooled_lib
from jaxsae.evals import probe_datasets, probes, results

log = logging.getLogger("jaxsae")
N_VALUES = (2, 5, 10, 20, 50, 100, 500)  # SAEBench's n_values (its result keys); n > d_sae is written as null
MIN_PER_QUADRANT = 4
DIFFERENCES = {
    "datasets": "offline crossed designs (movie/restaurant/product reviews x sentiment; historical figures "
                "politician x gender) and multi-class sets (places by country, news by section) from the "
                "sae-probes package, in place of bias_in_bios and Amazon reviews",
    "set_sizes": "train_set_size / test_set_size are upper bounds: each design uses the largest balanced sets "
                 "its data allow, written in its details (SAEBench asserts the sizes fit)",
    "probe_selection": "probe_selection='final' keeps the probe after the last epoch; SAEBench keeps the epoch "
                       "with the best test accuracy (model selection on the test set). Both are written: the "
                       "*_saebench_probe_selection metrics and detail keys use SAEBench's choice "
                       "(probe_selection='best_test' makes it the headline)",
    "ablation_pooling": "ablated activations are pooled over text tokens only; SAEBench also adds each masked "
                        "(BOS/pad) position's -(f(0) * drop) W_dec term into the pooled sum, which is nonzero "
                        "whenever encode(0) fires an ablated latent (TopK and positive-bias ReLU SAEs)",
    "tpp_negatives": "each probe's test set is drawn once (seeded) and reused for clean and ablated accuracies; "
                     "SAEBench redraws the negatives at every accuracy measurement",
    "scr_metric_ties": "scr_metric_threshold_n takes direction 1 when the biased probe is equally accurate in "
                       "both directions; SAEBench writes no value then",
}


@dataclasses.dataclass(frozen=True)
class ScrTppConfig:
    scr_designs: tuple[str, ...] = tuple(probe_datasets.CROSSED)
    tpp_datasets: tuple[str, ...] = tuple(probe_datasets.MULTICLASS)
    train_size: int = 1600  # at most this many rows per probe's training set (SAEBench: 4000)
    test_size: int = 400  # (SAEBench: 1000)
    context: int = 128
    n_values: tuple[int, ...] = N_VALUES
    probe_batch: int = 16  # SAEBench: "DO NOT CHANGE" (it sets how much spurious signal the probe learns)
    probe_epochs: int = 20
    probe_lr: float = 1e-3
    probe_l1: float = 1e-3
    probe_weight_decay: float = 0.01  # torch.optim.AdamW's default, which SAEBench uses
    probe_selection: str = "final"  # or "best_test": SAEBench's selection on the test set
    batch_prompts: int = 16
    seed: int = 42

    def validate(self) -> ScrTppConfig:
        probe_datasets.check_designs(self.scr_designs, probe_datasets.CROSSED, "SCR design(s)")
        probe_datasets.check_designs(self.tpp_datasets, probe_datasets.MULTICLASS, "TPP dataset(s)")
        if self.train_size < 4 * MIN_PER_QUADRANT or self.test_size < 4 * MIN_PER_QUADRANT:
            raise ValueError(f"SCR/TPP: train_size and test_size must be >= {4 * MIN_PER_QUADRANT}, got "
                             f"{self.train_size}, {self.test_size}")
        if not self.n_values or min(self.n_values) < 1:
            raise ValueError(f"SCR/TPP: n_values must be positive latent counts, got {self.n_values}")
        if self.probe_selection not in ("final", "best_test"):
            raise ValueError(f"SCR/TPP: probe_selection must be 'final' or 'best_test', got {self.probe_selection!r}")
        if self.probe_batch < 1 or self.probe_epochs < 1 or self.context < 2 or self.batch_prompts < 1:
            raise ValueError("SCR/TPP: probe_batch, probe_epochs, batch_prompts >= 1 and context >= 2 are required")
        return self


@dataclasses.dataclass
class ProbeSet:
    """A binary probe's rows: positive then negative prompts."""
    pos: list[str]
    neg: list[str]

    def texts(self) -> list[str]:
        return self.pos + self.neg

    def labels(self) -> np.ndarray:
        return np.concatenate([np.ones(len(self.pos), np.int32), np.zeros(len(self.neg), np.int32)])


def _split(rows: np.ndarray, cfg: ScrTppConfig, rng) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.permutation(rows)
    cut = int(round(len(rows) * cfg.train_size / (cfg.train_size + cfg.test_size)))
    return rows[:cut], rows[cut:]


def scr_sets(name: str, cfg: ScrTppConfig) -> tuple[dict, dict, dict]:
    """(train, test, info) of a crossed design: {"concept1", "concept2", "biased"} -> ProbeSet, as
    SAEBench's get_spurious_corr_data builds them from q rows per quadrant (q = size // 4, or fewer
    when the design has fewer rows; train and test rows are disjoint)."""
    prompts, c1, c2 = probe_datasets.crossed_rows(name)
    c1, c2 = np.asarray(c1), np.asarray(c2)
    rng = np.random.default_rng(cfg.seed)
    quadrants = {"pp": c1 & c2, "np": ~c1 & c2, "pn": c1 & ~c2, "nn": ~c1 & ~c2}  # (concept 1, concept 2)
    parts = {k: _split(np.nonzero(m)[0], cfg, rng) for k, m in quadrants.items()}
    out, info = [], {}
    for s, (split, size) in enumerate((("train", cfg.train_size), ("test", cfg.test_size))):
        rows = {k: [prompts[i] for i in v[s]] for k, v in parts.items()}
        q = min(size // 4, len(rows["np"]), len(rows["pn"]), len(rows["pp"]) // 2, len(rows["nn"]) // 2)
        if q < MIN_PER_QUADRANT:
            counts = {k: len(v) for k, v in rows.items()}
            raise ValueError(f"SCR design {name!r}: its {split} split has {counts} rows per quadrant, fewer than "
                             f"{MIN_PER_QUADRANT} usable; drop it from scr_designs or raise {split}_size")
        pp, np_, pn, nn = rows["pp"], rows["np"], rows["pn"], rows["nn"]
        out.append({"concept2": ProbeSet(pp[:q] + np_[:q], pn[:q] + nn[:q]),
                    "concept1": ProbeSet(pp[:q] + pn[:q], np_[:q] + nn[:q]),
                    "biased": ProbeSet(pp[: 2 * q], nn[: 2 * q])})
        info[f"{split}_set_size"] = 4 * q
    return out[0], out[1], info


def tpp_sets(name: str, cfg: ScrTppConfig) -> tuple[dict, dict, dict]:
    """(train, test, info) of a multi-class set: {class: ProbeSet} of balanced one-vs-rest tasks."""
    texts, targets = probe_datasets.read(probe_datasets.MULTICLASS[name])
    targets = np.asarray(targets)
    rng = np.random.default_rng(cfg.seed)
    classes = sorted(set(targets.tolist()))
    parts = {c: _split(np.nonzero(targets == c)[0], cfg, rng) for c in classes}
    out, info = [], {}
    for s, (split, size) in enumerate((("train", cfg.train_size), ("test", cfg.test_size))):
        pool = np.concatenate([parts[c][s] for c in classes])
        labels = targets[pool]
        per_side = min(size // 2, min(len(parts[c][s]) for c in classes))
        if per_side < MIN_PER_QUADRANT:
            raise ValueError(f"TPP dataset {name!r}: its {split} split has {per_side} rows in its smallest class; "
                             f"raise {split}_size")
        sets = {}
        for c in classes:
            idx, y = probes.one_vs_rest(labels, c, per_side, rng)
            rows = pool[idx]
            sets[c] = ProbeSet([texts[i] for i in rows[y == 1]], [texts[i] for i in rows[y == 0]])
        out.append(sets)
        info[f"{split}_set_size"] = 2 * per_side
    return out[0], out[1], info


class _Probes:
    """Trained probes and the pooled data they read, for one design or set."""

    def __init__(self, pool, train: dict, test: dict, cfg: ScrTppConfig, seed: int):
        self.pool, self.cfg = pool, cfg
        self.train = {k: (*pool(v.texts()), v.labels()) for k, v in train.items()}  # (llm, latents, y)
        self.test = {k: (*pool(v.texts()), v.labels()) for k, v in test.items()}
        self.probes = {}
        for i, (k, (x, _, y)) in enumerate(self.train.items()):
            select = None
            if cfg.probe_selection == "best_test":
                select = (self.test[k][0], self.test[k][2])
            self.probes[k] = probes.fit_minibatch(x, y, batch=cfg.probe_batch, epochs=cfg.probe_epochs,
                                                  lr=cfg.probe_lr, l1=cfg.probe_l1,
                                                  weight_decay=cfg.probe_weight_decay, seed=seed + i,
                                                  select_on=select)

    def accuracy(self, probe: str, data: str, drop=None, w_dec=None) -> float:
        llm, lat, y = self.test[data]
        if drop is not None:
            llm = pooled_lib.ablate(llm, lat, w_dec, drop)
        w, b = self.probes[probe]
        return probes.accuracy(w, b, llm, y)

    def effects(self, probe: str, w_dec, absolute: bool) -> np.ndarray:
        """Each latent's effect on `probe` from its training data (SAEBench's get_effects_per_class)."""
        _, lat, y = self.train[probe]
        diff = lat[y == 1].mean(0) - lat[y == 0].mean(0)
        if not absolute:
            diff = np.maximum(diff, 0.0)
        e = diff * (np.asarray(w_dec, np.float32) @ np.asarray(self.probes[probe][0], np.float32))
        return np.abs(e) if absolute else e


def top_n(effects: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(bool mask of the n largest nonzero effects, how many were chosen: fewer when fewer are nonzero)."""
    nz = np.nonzero(effects != 0)[0]
    chosen = nz[np.argsort(-effects[nz], kind="stable")][:n]
    mask = np.zeros(effects.shape, bool)
    mask[chosen] = True
    return mask, len(chosen)


def scr_scores(pool, w_dec, train: dict, test: dict, cfg: ScrTppConfig, n_values, seed: int = 0) -> dict:
    """SCR metrics of one design from its sets; `pool(texts) -> (pooled activations, pooled latents)`."""
    p = _Probes(pool, train, test, cfg, seed)
    original = {1: p.accuracy("biased", "concept1"), 2: p.accuracy("biased", "concept2")}
    clean = {1: p.accuracy("concept1", "concept1"), 2: p.accuracy("concept2", "concept2")}
    # direction 1 removes concept 2 (gender) and scores on concept-1 data; direction 2 the reverse
    ablated_probe = {1: "concept2", 2: "concept1"}
    data_of = {1: "concept1", 2: "concept2"}
    effects = {d: p.effects(ablated_probe[d], w_dec, absolute=True) for d in (1, 2)}
    better = 1 if original[1] <= original[2] else 2
    out = {"llm_clean_accuracy_dir1": clean[1], "llm_clean_accuracy_dir2": clean[2],
           "biased_probe_accuracy_dir1": original[1], "biased_probe_accuracy_dir2": original[2]}
    for n in sorted(set(N_VALUES) | set(n_values)):  # SAEBench's keys, and any other n asked for
        if n not in n_values:
            out.update({f"scr_dir1_threshold_{n}": None, f"scr_metric_threshold_{n}": None,
                        f"scr_dir2_threshold_{n}": None})
            continue
        for d in (1, 2):
            mask, chosen = top_n(effects[d], n)
            changed = p.accuracy("biased", data_of[d], mask, w_dec)
            gap = clean[d] - original[d]
            out[f"scr_dir{d}_threshold_{n}"] = 0.0 if gap < 0.001 else (changed - original[d]) / gap
            out[f"latents_ablated_dir{d}_threshold_{n}"] = chosen
        out[f"scr_metric_threshold_{n}"] = out[f"scr_dir{better}_threshold_{n}"]
    return out


def tpp_scores(pool, w_dec, train: dict, test: dict, cfg: ScrTppConfig, n_values, seed: int = 0) -> tuple[dict, dict]:
    """(TPP metrics averaged over classes, per-class metrics) of one multi-class set."""
    p = _Probes(pool, train, test, cfg, seed)
    classes = list(train)
    clean = {c: p.accuracy(c, c) for c in classes}
    per_class = {c: {"llm_clean_accuracy": clean[c]} for c in classes}
    for c in classes:
        effects = p.effects(c, w_dec, absolute=False)
        for n in sorted(set(N_VALUES) | set(n_values)):
            keys = [f"tpp_threshold_{n}_{m}" for m in ("total_metric", "intended_diff_only", "unintended_diff_only")]
            if n not in n_values:
                per_class[c].update(dict.fromkeys(keys))
                continue
            mask, chosen = top_n(effects, n)
            ablated = {j: p.accuracy(j, j, mask, w_dec) for j in classes}
            intended = clean[c] - ablated[c]
            unintended = float(np.mean([clean[j] - ablated[j] for j in classes if j != c]))
            per_class[c].update(dict(zip(keys, (intended - unintended, intended, unintended))))
            per_class[c][f"latents_ablated_threshold_{n}"] = chosen
    mean = {k: (None if per_class[classes[0]][k] is None else float(np.mean([per_class[c][k] for c in classes])))
            for k in per_class[classes[0]]}
    return mean, per_class


def _mean(details: list[dict], prefix: str) -> dict:
    keys = [k for k in details[0] if k.startswith(prefix)]
    return {k: (None if details[0][k] is None else float(np.mean([d[k] for d in details]))) for k in keys}


def _eval_config(cfg: ScrTppConfig, scr: bool, site: str, model_name: str, llm_dtype: str, n_values) -> dict:
    lookup = {k: [list(probe_datasets.CROSSED[k].values1)] for k in cfg.scr_designs}
    return {"random_seed": cfg.seed, "dataset_names": list(cfg.scr_designs if scr else cfg.tpp_datasets),
            "perform_scr": scr, "early_stopping_patience": cfg.probe_epochs, "train_set_size": cfg.train_size,
            "test_set_size": cfg.test_size, "context_length": cfg.context,
            "probe_train_batch_size": cfg.probe_batch, "probe_test_batch_size": 500, "probe_epochs": cfg.probe_epochs,
            "probe_lr": cfg.probe_lr, "probe_l1_penalty": cfg.probe_l1, "sae_batch_size": cfg.batch_prompts,
            "llm_batch_size": cfg.batch_prompts, "llm_dtype": llm_dtype, "lower_vram_usage": False,
            "model_name": model_name, "n_values": list(n_values), "column1_vals_lookup": lookup,
            "probe_weight_decay": cfg.probe_weight_decay, "probe_selection": cfg.probe_selection, "site": site}


_SAEBENCH = "_saebench_probe_selection"


def _saebench_selection(cfg: ScrTppConfig) -> ScrTppConfig | None:
    """The config with SAEBench's probe selection when ours differs (both values are then written)."""
    return dataclasses.replace(cfg, probe_selection="best_test") if cfg.probe_selection == "final" else None


def _setup(lm, sae, site, tokenizer, cfg: ScrTppConfig, progress: bool, pooler):
    """(validated config, pooled activations, n values the dictionary allows, W_dec, SAEBench's config)."""
    cfg = cfg.validate()
    pool = pooler or pooled_lib.Pooler(lm, sae, site, tokenizer, cfg.context, cfg.batch_prompts, progress)
    if pool.context != cfg.context:
        raise ValueError(f"SCR/TPP: the shared activations use context {pool.context}, the config {cfg.context}")
    n_values = tuple(n for n in cfg.n_values if n <= sae.d_sae)
    if not n_values:
        raise ValueError(f"SCR/TPP: every n in n_values {cfg.n_values} exceeds the dictionary's {sae.d_sae} latents")
    return cfg, pool, n_values, np.asarray(sae.params["W_dec"], np.float32), _saebench_selection(cfg)


def scr(lm, sae, site: str, tokenizer, cfg: ScrTppConfig = ScrTppConfig(), sae_cfg: dict | None = None,
        model_name: str = "", llm_dtype: str = "float32", progress: bool = True,
        pooler: pooled_lib.Pooler | None = None) -> dict:
    """The SCR result (SAEBench schema, eval_type_id "scr") of `sae` at `site` of `lm`."""
    cfg, pool, n_values, w_dec, saebench = _setup(lm, sae, site, tokenizer, cfg, progress, pooler)
    details = []
    for i, name in enumerate(cfg.scr_designs):
        train, test, info = scr_sets(name, cfg)
        row = scr_scores(pool, w_dec, train, test, cfg, n_values, seed=cfg.seed + 10 * i)
        if saebench is not None:  # the same with SAEBench's probes (best test epoch): both values written
            theirs = scr_scores(pool, w_dec, train, test, saebench, n_values, seed=cfg.seed + 10 * i)
            row.update({f"{k}_saebench_probe_selection": v for k, v in theirs.items() if k.startswith("scr_")})
        v1 = probe_datasets.CROSSED[name].values1
        details.append({"dataset_name": f"{name}_scr_{v1[0]}_{v1[1]}_results", **row, **info})
        log.info("SCR %s: scr_metric@%d %.3f (biased probe %.3f / %.3f, clean %.3f / %.3f)", name, n_values[-1],
                 row[f"scr_metric_threshold_{n_values[-1]}"], row["biased_probe_accuracy_dir1"],
                 row["biased_probe_accuracy_dir2"], row["llm_clean_accuracy_dir1"], row["llm_clean_accuracy_dir2"])
    metrics = {"scr_metrics": {k: v for k, v in _mean(details, "scr_").items() if not k.endswith(_SAEBENCH)}}
    if saebench is not None:
        metrics["scr_metrics_saebench_probe_selection"] = {
            k[: -len(_SAEBENCH)]: v for k, v in _mean(details, "scr_").items() if k.endswith(_SAEBENCH)}
    return results.build("scr", _eval_config(cfg, True, site, model_name, llm_dtype, n_values), metrics, details,
                         sae_cfg, differences=DIFFERENCES)


def tpp(lm, sae, site: str, tokenizer, cfg: ScrTppConfig = ScrTppConfig(), sae_cfg: dict | None = None,
        model_name: str = "", llm_dtype: str = "float32", progress: bool = True,
        pooler: pooled_lib.Pooler | None = None) -> dict:
    """The TPP result (SAEBench schema, eval_type_id "tpp") of `sae` at `site` of `lm`."""
    cfg, pool, n_values, w_dec, saebench = _setup(lm, sae, site, tokenizer, cfg, progress, pooler)
    details, unstructured = [], {}
    for i, name in enumerate(cfg.tpp_datasets):
        train, test, info = tpp_sets(name, cfg)
        mean, per_class = tpp_scores(pool, w_dec, train, test, cfg, n_values, seed=cfg.seed + 10 * i)
        if saebench is not None:
            theirs, _ = tpp_scores(pool, w_dec, train, test, saebench, n_values, seed=cfg.seed + 10 * i)
            mean.update({f"{k}_saebench_probe_selection": v for k, v in theirs.items() if k.startswith("tpp_")})
        details.append({"dataset_name": f"{name}_tpp_results", **mean, **info})
        unstructured[name] = per_class
        log.info("TPP %s: total@%d %.3f", name, n_values[-1], mean[f"tpp_threshold_{n_values[-1]}_total_metric"])
    metrics = {"tpp_metrics": {k: v for k, v in _mean(details, "tpp_").items() if not k.endswith(_SAEBENCH)}}
    if saebench is not None:
        metrics["tpp_metrics_saebench_probe_selection"] = {
            k[: -len(_SAEBENCH)]: v for k, v in _mean(details, "tpp_").items() if k.endswith(_SAEBENCH)}
    return results.build("tpp", _eval_config(cfg, False, site, model_name, llm_dtype, n_values), metrics, details,
                         sae_cfg, unstructured=unstructured, differences=DIFFERENCES)
