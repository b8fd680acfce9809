"""Vmapped sweeps: N dictionaries of one architecture and shape with different k, sparsity
coefficient, learning rate or initialisation seed, trained in one compiled step on the same
batches (`python -m experiments.sweep`).

`Sweep` is a dictionary spec whose parameters carry a leading `SWEEP` axis. Its loss vmaps the
base spec's loss over the N dictionaries (each with its own sparsity coefficient and, for TopK /
BatchTopK, its own k as `LossContext.k_limit` below the spec's largest k) and sums them: the
gradients stay separate, Adam is elementwise, clipping is per dictionary
(`optim.clip_by_leading_norm`) and the learning rate is scaled per dictionary
(`optim.scale_leading`). Everything else is the ordinary training loop: the same data source
(in streaming mode the LM forward is paid once for all N), checkpoints, exact resume, divergence
checks. Each dictionary is then exported on its own (`export/{i}/`, SAELens format) and one table
(`sweep.csv`, `sweep.md`) compares them on a batch the run did not train on (and, on toy data,
against the true features). Dictionary i equals the separate run with its settings (tests).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae import axes
from jaxsae.dictionaries.base import Dictionary, LossContext, LossOutput

SWEPT = ("k", "sparsity_coefficient", "lr", "seed")


@dataclasses.dataclass(frozen=True)
class Sweep(Dictionary):
    base: Dictionary | None = None
    ks: tuple = ()  # per dictionary (TopK family), each <= base.k
    sparsities: tuple = ()  # per dictionary
    lr_factors: tuple = ()  # per dictionary: lr_i / the schedule's lr
    seeds: tuple = ()  # per dictionary: the init key
    # True: the loss is N unrolled copies of the base loss (each with its own sparse top-k kernels;
    # on CPU ~10x faster than vmapping them, at N times the compile); False: one vmapped loss
    unroll: bool = True

    name: ClassVar[str] = "sweep"
    export_format: ClassVar[str] = "sweep"

    def __post_init__(self):
        super().__post_init__()
        n = len(self.seeds)
        if n < 1 or any(len(t) not in (0, n) for t in (self.ks, self.sparsities, self.lr_factors)):
            raise ValueError("sweep: every per-dictionary tuple needs one entry per dictionary")
        if getattr(self.base, "multi_topk", False):
            raise ValueError("sweep: multi-TopK is not supported (its 4k pass is tied to the spec's k)")
        if self.ks and any(k > self.base.k for k in self.ks):
            raise ValueError("sweep: the spec's k must be the largest swept k")

    @classmethod
    def create(cls, **kw):
        return cls(**kw)

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def out_dim(self) -> int:
        return self.base.out_dim

    @property
    def is_transcoder(self) -> bool:
        return self.base.is_transcoder

    def param_shapes(self):
        return {k: ((self.n, *shape), (axes.SWEEP, *ax)) for k, (shape, ax) in self.base.param_shapes().items()}

    def input_axes(self):
        return self.base.input_axes()

    def target_axes(self):
        return self.base.target_axes()

    def member(self, i: int) -> Dictionary:
        """Dictionary i's own spec (its k and sparsity coefficient)."""
        kw = {}
        if self.ks:
            k = self.ks[i]
            kw["k"] = int(k) if float(k).is_integer() else k
        if self.sparsities:
            kw["sparsity_coefficient"] = self.sparsities[i]
        return dataclasses.replace(self.base, **kw)

    def init(self, key, b_dec_init=None):
        del key  # each dictionary's init comes from its own seed (as a separate run's would)
        return jax.vmap(lambda s: self.base.init(jax.random.key(s), b_dec_init))(jnp.asarray(self.seeds, jnp.uint32))

    def encode(self, params, x):
        raise TypeError("a sweep holds several dictionaries: export them (export/{i}) and use one")

    def loss(self, params, x, y, ctx: LossContext) -> LossOutput:
        ks = jnp.asarray(self.ks, jnp.float32) if self.ks else jnp.zeros((self.n,))
        sp = jnp.asarray(self.sparsities, jnp.float32) if self.sparsities else jnp.zeros((self.n,))

        def one(p, dead, k, s):
            spec = dataclasses.replace(self.base, sparsity_coefficient=s) if self.sparsities else self.base
            c = LossContext(ctx.sparsity_scale, dead, k if self.ks else None)
            out = spec.loss(p, x, y, c)
            return out.loss, out.fired_f, out.metrics, out.batch_threshold

        if self.unroll:  # N copies of each member's own program (its static k: its own sparse kernels)
            outs = []
            for i in range(self.n):
                out = self.member(i).loss(jax.tree.map(lambda a: a[i], params), x, y,
                                          LossContext(ctx.sparsity_scale, ctx.dead_f[i]))
                outs.append((out.loss, out.fired_f, out.metrics, out.batch_threshold))
            loss_n, fired, metrics, thr = jax.tree.map(lambda *v: jnp.stack(v), *outs)
        else:
            loss_n, fired, metrics, thr = jax.vmap(one)(params, ctx.dead_f, ks, sp)
        flat = {k: jnp.mean(v) for k, v in metrics.items()}
        for k, v in metrics.items():
            for i in range(self.n):
                flat[f"{k}/{i}"] = v[i]
        for i in range(self.n):
            flat[f"loss/{i}"] = loss_n[i]
        return LossOutput(jnp.sum(loss_n), fired, flat, thr)

    def init_state(self):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.n, *a.shape)), self.base.init_state())

    def state_axes(self):
        return {k: (axes.SWEEP, *a) for k, a in self.base.state_axes().items()}

    def update_state(self, state, out: LossOutput, n_tokens, step):
        def one(st, fired, thr):
            return self.base.update_state(st, LossOutput(jnp.float32(0), fired, {}, thr), n_tokens, step)

        return jax.vmap(one)(state, out.fired_f, out.batch_threshold)


def variants(grid: dict[str, list]) -> list[dict]:
    """The cartesian product of {name: [values]} over SWEPT names, in order."""
    bad = sorted(set(grid) - set(SWEPT))
    if bad:
        raise ValueError(f"sweep: cannot sweep {bad}; sweepable: {', '.join(SWEPT)} (shapes must agree)")
    names = [n for n in SWEPT if grid.get(n)]
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))] or [{}]


def build(cfg, base: Dictionary, sched, grid: list[dict]) -> Sweep:
    """The sweep spec over `grid` (a list of {k, sparsity_coefficient, lr, seed}) for a base spec
    built with the config's values (its k is raised to the largest swept k)."""
    if base.export_format != "saelens":
        raise ValueError(f"sweep: {base.name} dictionaries are not supported yet (a sweep exports SAELens "
                         "directories); sweep an SAE or a per-layer transcoder, or run one job per setting")
    ks = tuple(v.get("k", getattr(base, "k", None)) for v in grid) if any("k" in v for v in grid) else ()
    if ks:
        if not hasattr(base, "k"):
            raise ValueError(f"sweep: {base.name} has no k to sweep")
        k_max = max(ks)
        base = dataclasses.replace(base, k=int(k_max) if float(k_max).is_integer() else k_max)
    sp = tuple(v.get("sparsity_coefficient", base.sparsity_coefficient) for v in grid) \
        if any("sparsity_coefficient" in v for v in grid) else ()
    lrs = tuple(v.get("lr", sched.lr) / sched.lr for v in grid)
    seeds = tuple(int(v.get("seed", cfg.seed)) for v in grid)
    return Sweep(d_in=base.d_in, d_sae=base.d_sae, d_out=base.d_out, unit_norm_decoder=base.unit_norm_decoder,
                 base=base, ks=ks, sparsities=sp, lr_factors=lrs, seeds=seeds)


def finish(run, state, workdir: str, grid: list[dict]) -> dict:
    """Export every dictionary (export/{i}, SAELens format) and write the comparison table."""
    from jaxsae.atomic import atomic_write_text, remove_temporaries
    from jaxsae.interop import saelens
    from jaxsae.train import fingerprint
    from jaxsae.train.export import inference_sae

    spec: Sweep = run.spec
    x, y = run.source.batch(run.schedule.total_steps + 1000)  # a batch the run did not train on
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    final = run.metrics[-1] if run.metrics else {}
    rows, files = [], []
    dead_tokens = run.cfg.train.dead_tokens
    for i in range(spec.n):
        st_i = state.replace(params=jax.tree.map(lambda a: a[i], state.params),
                             dict_state=jax.tree.map(lambda a: a[i], state.dict_state))
        sae = inference_sae(spec.member(i), st_i)
        bad = fingerprint.nonfinite(sae.params)
        row = {"dict": i, **{k: v for k, v in grid[i].items()}}
        if bad:
            row["error"] = f"nan/inf in {bad}: not exported"
            rows.append(row)
            continue
        out_dir = os.path.join(workdir, "export", str(i))
        remove_temporaries(out_dir)
        saelens.save(sae, out_dir, {"jaxsae_spec": spec.member(i).describe(), "sweep": grid[i],
                                    "training_steps": run.schedule.total_steps})
        files.append(f"{i}/{saelens.WEIGHTS}")
        f = np.asarray(sae.encode(x))
        yhat = np.asarray(sae.forward(x))
        row.update(eval_fvu=float(((y - yhat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()),
                   eval_l0=float((f != 0).sum(-1).mean()),
                   dead_fraction=float((np.asarray(st_i.dict_state["tokens_since_fired"]) >= dead_tokens).mean()),
                   train_loss=final.get(f"loss/{i}"), train_fvu=final.get(f"fvu/{i}"))
        if run.cfg.data.source == "toy" and not run.cfg.data.toy.layers:
            from jaxsae.evals.ground_truth import recovery

            rec = recovery(np.asarray(sae.params["W_dec"]), np.asarray(run.source.features.out_dirs_no))
            row.update(gt_mmcs=rec["mmcs"], gt_recovered=rec["frac_recovered"])
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    csv = ",".join(cols) + "\n" + "".join(",".join(_fmt(r.get(c)) for c in cols) + "\n" for r in rows)
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + "".join(
        "| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |\n" for r in rows)
    atomic_write_text(os.path.join(workdir, "sweep.csv"), csv)
    atomic_write_text(os.path.join(workdir, "sweep.md"), md)
    summary = {"export": os.path.join(workdir, "export"), "steps": run.schedule.total_steps, "dictionaries": rows}
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    atomic_write_text(os.path.join(workdir, "export", "cfg.json"), json.dumps(
        {"architecture": "sweep", "files": files, "metadata": {"training_steps": run.schedule.total_steps,
                                                                "sweep": grid}}, indent=2))
    return summary


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
