"""The training loop: data source -> sharded, jitted train step -> checkpoints -> export.

Thin by design: every piece it wires (spec, optimiser, state, step, checkpointer, source) is a
separate module. Resumes exactly from the newest checkpoint in `workdir/checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsae import axes, sharding
from jaxsae.config import Config, DataConfig
from jaxsae.data import pipeline
from jaxsae.data.arrays import ArraySource, load_npy
from jaxsae.dictionaries.base import Dictionary
from jaxsae.train import data_init, optim, recipes
from jaxsae.train import state as state_lib
from jaxsae.train.checkpoint import Checkpointer
from jaxsae.train.export import inference_sae
from jaxsae.train.step import make_train_step

log = logging.getLogger("jaxsae")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


def make_source(d: DataConfig, seed: int, batch_size: int):
    if d.source == "toy":
        from jaxsae.toy.synthetic import ToySource

        return ToySource(d.toy, seed, batch_size)
    if d.source == "npy":
        x = load_npy(d.path, "data.path")
        y = load_npy(d.y_path, "data.y_path") if d.y_path else None
        return ArraySource(x, y, seed, batch_size, process=(jax.process_index(), jax.process_count()))
    if d.source == "store":
        from jaxsae.data.store_source import StoreSource

        return StoreSource(d.path, d.site, seed, batch_size, process=(jax.process_index(), jax.process_count()))
    if d.source == "stream":
        from jaxsae.data.stream import StreamSource

        return StreamSource(d, seed, batch_size, process=(jax.process_index(), jax.process_count()))
    raise ValueError(f"unknown data.source {d.source!r}")


@dataclasses.dataclass
class Run:
    """Everything a training run wires together (returned for notebooks and tests)."""

    cfg: Config
    spec: Dictionary
    schedule: recipes.Schedule
    mesh: Any
    source: Any
    state: state_lib.TrainState | None = None
    metrics: list[dict] = dataclasses.field(default_factory=list)


def _manifest(cfg: Config, spec: Dictionary, source) -> dict:
    manifest = {"spec": spec.describe(), "data": dataclasses.asdict(cfg.data), "seed": cfg.seed,
                "batch_size": cfg.train.batch_size, "d_in": source.d_in, "d_out": source.d_out,
                "config": dataclasses.asdict(cfg)}
    return json.loads(json.dumps(manifest))  # as it reads back from the checkpoint (tuples -> lists)


def _init_stats(cfg: Config, source, sched: recipes.Schedule, spec: Dictionary):
    """Normalisation scales and the b_dec init, estimated from the first batches (deterministic)."""
    n_norm = max(1, cfg.train.norm_batches)
    n_batches = max(n_norm, -(-cfg.train.b_dec_samples // cfg.train.batch_size))
    whole = getattr(source, "global_batch", source.batch)  # every process estimates from the same rows
    xs, ys = zip(*(whole(i) for i in range(n_batches)))
    x_all, y_all = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    n_rows = n_norm * cfg.train.batch_size
    c_in = data_init.norm_scale(x_all[:n_rows], sched.normalize)
    c_out = data_init.norm_scale(y_all[:n_rows], sched.normalize) if spec.is_transcoder else c_in
    need_rows = cfg.train.b_dec_samples
    init = cfg.train.b_dec_init
    y_s = y_all[:need_rows] * c_out
    if init == "geometric_median":
        b_dec = data_init.geometric_median(jnp.asarray(y_s))
    elif init == "mean":
        b_dec = jnp.asarray(y_s.mean(0))
    else:
        b_dec = jnp.zeros((spec.out_dim,), jnp.float32)
    return np.float32(c_in), np.float32(c_out), np.asarray(b_dec)  # host values: identical on every process


def setup(cfg: Config, mesh=None) -> Run:
    cfg = cfg.validate()
    mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    source = make_source(cfg.data, cfg.seed, cfg.train.batch_size)
    is_tc = source.d_out != source.d_in or cfg.sae.architecture == "transcoder"
    d_out = source.d_out if is_tc else None
    if cfg.sae.d_out is not None and cfg.sae.d_out != source.d_out:
        raise ValueError(f"sae.d_out={cfg.sae.d_out} but the data's target width is {source.d_out}")
    spec = recipes.spec_from_config(cfg.sae, source.d_in, d_out, cfg.train.steps)
    sched = recipes.resolve(cfg.sae.architecture, cfg.sae.activation, cfg.sae.d_sae, cfg.train)
    n_data = mesh.shape[sharding.DATA]
    if cfg.train.batch_size % n_data:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the mesh's data axis "
                         f"({n_data} devices); use a multiple of {n_data}")
    return Run(cfg, spec, sched, mesh, source)


def init_state(run: Run):
    """(optimizer, abstract state, state shardings, init_fn) for abstract-first sharded init:
    shapes from eval_shape, then `jit(init_fn, out_shardings=...)` builds every array straight
    into its sharding (nothing is built on one device and resharded)."""
    spec, sched = run.spec, run.schedule
    tx = optim.make_optimizer(sched, spec.unit_norm_decoder)

    def init_fn(key, b_dec, c_in, c_out):
        return state_lib.create(spec, tx, key, b_dec, c_in, c_out)

    key = jax.random.key(run.cfg.seed)
    dummy = (key, jnp.zeros((spec.out_dim,), jnp.float32), jnp.float32(1), jnp.float32(1))
    abstract = jax.eval_shape(init_fn, *dummy)
    shardings = sharding.fit_shardings(run.mesh, state_lib.logical_axes(spec, tx, abstract), abstract)
    sharding.check_placement(abstract, shardings)
    return tx, abstract, shardings, init_fn


def train(cfg: Config, workdir: str, mesh=None, progress: bool = True) -> Run:
    """Train (or resume) a dictionary; write checkpoints, metrics.jsonl and the SAELens export."""
    run = setup(cfg, mesh)
    spec, sched, mesh, source = run.spec, run.schedule, run.mesh, run.source
    os.makedirs(workdir, exist_ok=True)
    log.info("mesh %s | %s | schedule %s", sharding.describe(mesh), spec.describe(), sched)
    tx, abstract, shardings, init_fn = init_state(run)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints)
    manifest = _manifest(cfg, spec, source)
    abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = ckpt.restore(abstract_sharded, manifest)
    data_state = None
    if restored is None:
        c_in, c_out, b_dec = _init_stats(cfg, source, sched, spec)
        state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(cfg.seed), b_dec, c_in, c_out)
        start = 0
    else:
        start, state = restored
        data_state = ckpt.restore_data(start) or {"next_index": start}
        if pipeline.position(data_state) != start:
            raise TrainingError(f"checkpoint {start} holds a data iterator at step {pipeline.position(data_state)}; "
                                "the checkpoint is inconsistent, delete that step directory")
        log.info("resumed from step %d", start)

    x_sh = sharding.named(mesh, (axes.BATCH, axes.D_IN))
    y_sh = sharding.named(mesh, (axes.BATCH, axes.D_OUT))
    step_fn = jax.jit(make_train_step(spec, tx, sched, cfg.train.dead_tokens),
                      in_shardings=(shardings, x_sh, y_sh), out_shardings=(shardings, None), donate_argnums=0)

    metrics_path = os.path.join(workdir, "metrics.jsonl")
    bar = tqdm(total=sched.total_steps, initial=start, disable=not progress, desc=f"train {spec.name}",
               unit="step", dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 10.0)
    pending: list[tuple[int, dict]] = []
    t_last, step_last = time.perf_counter(), start

    def flush(step_now: int):
        nonlocal t_last, step_last
        rows = []
        for s, m in jax.device_get(pending):
            row = {"step": s, **{k: float(v) for k, v in m.items()}}
            if not math.isfinite(row["loss"]):
                raise TrainingError(
                    f"loss is {row['loss']} at step {s}; the newest checkpoint in {ckpt.directory} is "
                    f"from step {ckpt.latest_step()}. Lower --config.train.lr or check the data for inf/nan.")
            rows.append(row)
        pending.clear()
        dt = time.perf_counter() - t_last
        tok_s = (step_now - step_last) * cfg.train.batch_size / max(dt, 1e-9)
        t_last, step_last = time.perf_counter(), step_now
        if rows:
            rows[-1]["tokens_per_s"] = tok_s
            if jax.process_index() == 0:  # one writer; every process computed the same metrics
                with open(metrics_path, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
            run.metrics.extend(rows)
            last = rows[-1]
            bar.set_postfix(loss=f"{last['loss']:.4g}", l0=f"{last['l0']:.1f}", fvu=f"{last['fvu']:.3f}",
                            dead=f"{last['dead_fraction']:.2f}", tok_s=f"{tok_s:.0f}")

    batches = pipeline.batches(source, sched.total_steps, data_state)

    def to_global(a, sh):  # this process's rows -> the global batch array
        return jax.make_array_from_process_local_data(sh, np.asarray(a, np.float32))

    with jax.set_mesh(mesh):  # latent-sharded ops (latent_ops) read the mesh from context
        for step in range(start, sched.total_steps):
            x, y = next(batches)
            state, m = step_fn(state, to_global(x, x_sh), to_global(y, y_sh))
            pending.append((step, m))
            done = step + 1
            if done % cfg.train.log_every == 0 or done == sched.total_steps:
                flush(done)
            if done % cfg.train.checkpoint_every == 0 or done == sched.total_steps:
                ckpt.save(done, state, manifest, batches.get_state())
            bar.update(1)
    if pending:
        flush(sched.total_steps)
    bar.close()
    ckpt.close()
    run.state = state
    finish(run, workdir)
    return run


def finish(run: Run, workdir: str) -> dict:
    """Export (SAELens format) and, for toy data, ground-truth recovery. With several processes the
    state is gathered to every host and process 0 writes."""
    from jaxsae.interop import saelens

    state = run.state
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        state = multihost_utils.process_allgather(state, tiled=True)
    sae = inference_sae(run.spec, state)
    meta = {"jaxsae_spec": run.spec.describe(), "dataset_path": run.cfg.data.path or run.cfg.data.source,
            "training_steps": run.schedule.total_steps, "training_tokens": run.schedule.total_steps * run.cfg.train.batch_size}
    if getattr(run.source, "site", None):  # activations of a language model: say which and where
        meta["hook_name"] = run.source.site
        meta["model_name"] = getattr(run.source, "model_name", None)
    if jax.process_index() != 0:
        return {}
    saelens.save(sae, os.path.join(workdir, "export"), meta)
    summary = {"export": os.path.join(workdir, "export"), "final": run.metrics[-1] if run.metrics else {}}
    if run.cfg.data.source == "toy":
        from jaxsae.evals.ground_truth import recovery

        feats = run.source.features
        truth = np.asarray(feats.out_dirs_no)
        summary["ground_truth_decoder"] = recovery(np.asarray(sae.params["W_dec"]), truth)
        if not run.spec.is_transcoder:
            summary["ground_truth_encoder"] = recovery(np.asarray(sae.params["W_enc"]).T, np.asarray(feats.dirs_nd))
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
