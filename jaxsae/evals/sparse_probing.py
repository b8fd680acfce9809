"""Sparse probing, as SAEBench runs it (evals/sparse_probing), on offline labelled text.

For each dataset (jaxsae.evals.probe_datasets) and each of its binary tasks:
1. prompts are tokenized (BOS first, cut to `context` tokens, right-padded) and run through the
   model up to the dictionary's site; BOS/pad positions are dropped and the remaining positions'
   activations mean-pooled into one [d] vector per prompt; the dictionary's latents are computed per
   token, masked the same way and mean-pooled into one [d_sae] vector;
2. train and test sets are balanced (half positive); a multi-class file gives one one-vs-rest task
   per class with negatives drawn evenly from the other classes;
3. for k in `k_values` the k dimensions with the largest |mean_pos - mean_neg| on the training set
   are kept and an L2 logistic regression (C=1) is fit on them (jaxsae.evals.probes: sklearn's
   objective); the full-width probes use every dimension;
4. test accuracies are averaged over a dataset's tasks, then over datasets.

Differences from SAEBench, written into eval_config: its full-width probes pick the epoch with the
best *test* accuracy (selection on the test set); here they are fit once on the training set and
scored once on the test set. Its datasets are replaced by the offline ones above.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from jaxsae.evals import pooled as pooled_lib
from jaxsae.evals import probe_datasets, probes, results

log = logging.getLogger("jaxsae")
REPORTED_K = (1, 2, 5, 10, 20, 50, 100)  # SAEBench's result keys; k values not run are written as null
DIFFERENCES = {
    "full_width_probes": "fit once on the training set and scored once on the test set (SAEBench keeps the "
                         "epoch with the best test accuracy: model selection on the test set). Both are written: "
                         "{llm,sae}_test_accuracy_saebench_probe_selection is SAEBench's probe and selection",
    "datasets": "offline sets from the sae-probes package (sentiment, news topic, code language, gender, "
                "country) in place of SAEBench's hub datasets",
    "probe_solver": "L-BFGS on sklearn's LogisticRegression(C) objective, in JAX",
}


@dataclasses.dataclass(frozen=True)
class SparseProbingConfig:
    datasets: tuple[str, ...] = tuple(probe_datasets.DATASETS)
    train_size: int = 4000  # rows per binary task, half positive (SAEBench probe_train_set_size)
    test_size: int = 1000  # (probe_test_set_size)
    context: int = 128
    k_values: tuple[int, ...] = (1, 2, 5)
    batch_prompts: int = 16
    C: float = 1.0
    seed: int = 42

    def validate(self) -> SparseProbingConfig:
        probe_datasets.check_names(self.datasets)
        if self.train_size < 2 or self.test_size < 2 or self.train_size % 2 or self.test_size % 2:
            raise ValueError(f"sparse probing: train_size and test_size must be even and >= 2, got "
                             f"{self.train_size}, {self.test_size}")
        if self.context < 2 or self.batch_prompts < 1 or not self.k_values or min(self.k_values) < 1:
            raise ValueError("sparse probing: context >= 2, batch_prompts >= 1 and k_values >= 1 are required")
        return self


@dataclasses.dataclass
class Task:
    name: str
    train_rows: np.ndarray  # indices into the dataset's prompts
    y_train: np.ndarray
    test_rows: np.ndarray
    y_test: np.ndarray


def _balanced(y: np.ndarray, n: int, rng, exclude=()) -> np.ndarray:
    pool = np.setdiff1d(np.arange(len(y)), np.asarray(exclude, np.int64))
    pos, neg = pool[y[pool]], pool[~y[pool]]
    if len(pos) < n // 2 or len(neg) < n // 2:
        raise ValueError(f"needs {n // 2} rows of each class, has {len(pos)} positive and {len(neg)} negative")
    return np.concatenate([rng.permutation(pos)[: n // 2], rng.permutation(neg)[: n // 2]])


def build_tasks(name: str, cfg: SparseProbingConfig) -> tuple[list[str], list[Task]]:
    """(prompts, tasks) of one dataset; tasks index into the prompts."""
    prompts: list[str] = []
    tasks: list[Task] = []
    rng = np.random.default_rng(cfg.seed)
    for src in probe_datasets.DATASETS[name]:
        texts, targets = probe_datasets.read(src.file)
        base = len(prompts)
        prompts += texts
        targets = np.asarray(targets)
        try:
            if src.positive is not None:  # a binary file
                y = targets == src.positive
                train = _balanced(y, cfg.train_size, rng)
                test = _balanced(y, cfg.test_size, rng, exclude=train)
                tasks.append(Task(src.file, base + train, y[train].astype(np.int32), base + test,
                                  y[test].astype(np.int32)))
                continue
            order = rng.permutation(len(targets))  # multi-class: disjoint train / test pools
            cut = int(len(order) * cfg.train_size / (cfg.train_size + cfg.test_size))
            train_pool, test_pool = order[:cut], order[cut:]
            for cls in sorted(set(targets.tolist())):
                tr, y_tr = probes.one_vs_rest(targets[train_pool], cls, cfg.train_size // 2, rng)
                te, y_te = probes.one_vs_rest(targets[test_pool], cls, cfg.test_size // 2, rng)
                tasks.append(Task(f"{src.file}/{cls}", base + train_pool[tr], y_tr, base + test_pool[te], y_te))
        except ValueError as e:
            raise ValueError(f"sparse probing dataset {name!r} ({src.file}): {e}; lower train_size/test_size") from e
    return prompts, tasks


def _probe_accuracies(train_x, y_train, test_x, y_test, k_values, C, seed: int = 0) -> dict:
    out = {"saebench": _saebench_full_width(train_x, y_train, test_x, y_test, seed)}
    for k in (None, *k_values):
        cols = np.arange(train_x.shape[1]) if k is None else probes.top_k_by_mean_diff(train_x, y_train, k)
        w, b = probes.fit_logistic(train_x[:, cols], y_train, C=C)
        out[k] = probes.accuracy(w, b, test_x[:, cols], y_test)
    return out


def _saebench_full_width(train_x, y_train, test_x, y_test, seed: int) -> float:
    """SAEBench's own full-width probe: AdamW 1e-2, batch 250, up to 100 epochs, the epoch with the
    best *test* accuracy kept (patience 10), that accuracy reported: model selection on the test set."""
    w, b = probes.fit_minibatch(train_x, y_train, batch=250, epochs=100, lr=1e-2, l1=0.0, weight_decay=0.01, seed=seed,
                                select_on=(test_x, y_test), patience=10)
    return probes.accuracy(w, b, test_x, y_test)


def _keys(prefix: str, acc: dict, k_values) -> dict:
    row = {f"{prefix}_test_accuracy": acc[None], f"{prefix}_test_accuracy_saebench_probe_selection": acc["saebench"]}
    for k in REPORTED_K:
        row[f"{prefix}_top_{k}_test_accuracy"] = acc[k] if k in k_values else None
    return row


def run(lm, sae, site: str, texts, labels, *, tokenizer, k_values=(1, 2, 5), seed: int = 0, test_fraction: float = 0.2,
        context: int = 128, C: float = 1.0, batch_prompts: int = 16, pooler: pooled_lib.Pooler | None = None) -> dict:
    """Sparse probing on any labelled text: SAEBench's metric keys (llm_test_accuracy,
    llm_top_{k}_test_accuracy, sae_test_accuracy, sae_top_{k}_test_accuracy) for probes of `labels`
    (two or more classes; more than two gives one balanced one-vs-rest task per class, averaged)
    from the model's and the dictionary's mean-pooled representations of `texts`. A seeded,
    stratified `test_fraction` of the rows is held out; nothing is chosen on it."""
    texts, labels = list(texts), np.asarray(labels)
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"sparse probing: {len(texts)} texts and {len(labels)} labels; give one label per text")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError(f"sparse probing: the labels hold one class ({classes.tolist()}); a probe needs two or more")
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.nonzero(labels == c)[0])[: max(1, int(round(test_fraction * np.sum(labels == c))))]
                           for c in classes])
    train = np.setdiff1d(np.arange(len(texts)), test)
    pool = pooler or pooled_lib.Pooler(lm, sae, site, tokenizer, context, batch_prompts)
    llm_x, sae_x = pool(texts)
    k_values = tuple(k for k in k_values if k <= sae.d_sae)
    tasks = [classes[1:]] if len(classes) == 2 else classes  # binary: the second class is positive
    rows = []
    for positive in tasks:
        y = (labels == positive).astype(np.int32)
        if len(classes) > 2:  # balanced one-vs-rest, negatives spread over the other classes
            tr, y_tr = probes.one_vs_rest(labels[train], positive, int(np.sum(y[train])), rng)
            te, y_te = probes.one_vs_rest(labels[test], positive, int(np.sum(y[test])), rng)
            tr, te = train[tr], test[te]
        else:
            tr, y_tr, te, y_te = train, y[train], test, y[test]
        llm_acc = _probe_accuracies(llm_x[tr], y_tr, llm_x[te], y_te, k_values, C)
        sae_acc = _probe_accuracies(sae_x[tr], y_tr, sae_x[te], y_te, k_values, C)
        rows.append({**_keys("llm", llm_acc, k_values), **_keys("sae", sae_acc, k_values)})
    return {key: (None if rows[0][key] is None else float(np.mean([r[key] for r in rows]))) for key in rows[0]}


def run_suite(lm, sae, site: str, tokenizer, cfg: SparseProbingConfig = SparseProbingConfig(),
              sae_cfg: dict | None = None, model_name: str = "", llm_dtype: str = "float32", progress: bool = True,
              pooler: pooled_lib.Pooler | None = None) -> dict:
    """The sparse-probing result (SAEBench schema) of dictionary `sae` at `site` of `lm` on the
    offline datasets of `cfg`. `pooler`: a shared activation cache (jaxsae.evals.pooled)."""
    cfg = cfg.validate()
    k_values = tuple(k for k in cfg.k_values if k <= sae.d_sae)
    pool = pooler or pooled_lib.Pooler(lm, sae, site, tokenizer, cfg.context, cfg.batch_prompts, progress)
    if pool.context != cfg.context:
        raise ValueError(f"sparse probing: the shared activations use context {pool.context}, the config {cfg.context}")
    details = []
    for name in cfg.datasets:
        prompts, tasks = build_tasks(name, cfg)
        needed = np.unique(np.concatenate([np.concatenate([t.train_rows, t.test_rows]) for t in tasks]))
        where = {int(r): i for i, r in enumerate(needed)}  # one forward per prompt, shared by the tasks
        llm_x, sae_x = pool([prompts[i] for i in needed])
        per_task = []
        for t in tasks:
            tr = np.array([where[int(r)] for r in t.train_rows])
            te = np.array([where[int(r)] for r in t.test_rows])
            llm_acc = _probe_accuracies(llm_x[tr], t.y_train, llm_x[te], t.y_test, k_values, cfg.C)
            sae_acc = _probe_accuracies(sae_x[tr], t.y_train, sae_x[te], t.y_test, k_values, cfg.C)
            per_task.append({**_keys("llm", llm_acc, k_values), **_keys("sae", sae_acc, k_values)})
        row = {key: (None if per_task[0][key] is None else float(np.mean([p[key] for p in per_task])))
               for key in per_task[0]}
        details.append({"dataset_name": name, **row})
        log.info("sparse probing %s: llm %.3f, sae %.3f, sae top-1 %.3f", name, row["llm_test_accuracy"],
                 row["sae_test_accuracy"], row["sae_top_1_test_accuracy"] or float("nan"))
    mean = {key: (None if details[0][key] is None else float(np.mean([d[key] for d in details])))
            for key in details[0] if key != "dataset_name"}
    metrics = {"llm": {k: v for k, v in mean.items() if k.startswith("llm")},
               "sae": {k: v for k, v in mean.items() if k.startswith("sae")}}
    eval_config = {"random_seed": cfg.seed, "dataset_names": list(cfg.datasets), "probe_train_set_size": cfg.train_size,
                   "probe_test_set_size": cfg.test_size, "context_length": cfg.context,
                   "sae_batch_size": cfg.batch_prompts, "llm_batch_size": cfg.batch_prompts, "llm_dtype": llm_dtype,
                   "model_name": model_name, "k_values": list(k_values), "lower_vram_usage": False, "site": site,
                   "C": cfg.C}
    return results.build("sparse_probing", eval_config, metrics, details, sae_cfg, differences=DIFFERENCES)
