"""The training loop: data source -> sharded, jitted train step -> checkpoints -> export.

Thin by design: every piece it wires (spec, optimiser, state, step, checkpointer, source) is a
separate module. Resumes exactly from the newest checkpoint in `workdir/checkpoints`.
"""

from __future__ import annotations

import contextlib
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

from jaxsae import axes, runlock, sharding
from jaxsae.atomic import atomic_write_text, remove_temporaries
from jaxsae.config import Config, DataConfig
from jaxsae.data import pipeline
from jaxsae.data.arrays import ArraySource, load_npy
from jaxsae.dictionaries.base import Dictionary
from jaxsae.train import data_init, fingerprint, optim, recipes
from jaxsae.train import state as state_lib
from jaxsae.train.checkpoint import Checkpointer, NonFiniteStateError
from jaxsae.train.export import inference_sae
from jaxsae.train.step import make_train_step

log = logging.getLogger("jaxsae")


# Steps dispatched ahead of the device: enough to overlap the host's batch assembly with the step,
# few enough that XLA's CPU runtime never holds a long queue of collective programs (with 8 fake
# devices on 2 cores an unbounded queue can leave one device's all-reduce waiting past its
# 40 s rendezvous timeout, which aborts the process).
MAX_IN_FLIGHT = 2


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


def make_source(d: DataConfig, seed: int, batch_size: int, whole_contexts: bool = False):
    """The batch source of `d`; whole_contexts: context batches with attention patterns (multitoken
    transcoders) from a contexts directory or the LM in the loop."""
    process = (jax.process_index(), jax.process_count())
    if d.source == "contexts" or (whole_contexts and d.source == "stream"):
        from jaxsae.data import contexts

        if d.source == "contexts":
            return contexts.from_directory(d.path, seed, batch_size, process)
        return contexts.ContextStreamSource(d, seed, batch_size, process)
    if d.source == "toy":
        if d.toy.layers > 0:
            from jaxsae.toy.layered import LayeredToySource

            return LayeredToySource(d.toy, seed, batch_size)
        from jaxsae.toy.synthetic import ToySource

        return ToySource(d.toy, seed, batch_size)
    if d.source == "npy":
        x = load_npy(d.path, "data.path")
        y = load_npy(d.y_path, "data.y_path") if d.y_path else None
        return ArraySource(x, y, seed, batch_size, process=(jax.process_index(), jax.process_count()))
    if d.source == "store" and d.paths:
        from jaxsae.data.store_source import ModelsStoreSource

        return ModelsStoreSource(d.paths, d.site, seed, batch_size, process=(jax.process_index(), jax.process_count()))
    if d.source == "store" and d.in_sites:
        from jaxsae.data.store_source import LayeredStoreSource

        return LayeredStoreSource(d.path, d.in_sites, d.out_sites, seed, batch_size,
                                  process=(jax.process_index(), jax.process_count()))
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
    already_finished: bool = False  # the run had finished before this call: nothing was changed
    resumed_with_changes: list[str] = dataclasses.field(default_factory=list)  # config edits since the checkpoint
    sweep: list[dict] | None = None  # a vmapped sweep's per-dictionary settings (jaxsae.train.sweep)


def _manifest(cfg: Config, spec: Dictionary, source) -> dict:
    manifest = {"spec": spec.describe(), "data": dataclasses.asdict(cfg.data), "seed": cfg.seed,
                "batch_size": cfg.train.batch_size, "d_in": source.d_in, "d_out": source.d_out,
                "config": dataclasses.asdict(cfg)}
    return json.loads(json.dumps(manifest))  # as it reads back from the checkpoint (tuples -> lists)


def _init_stats(cfg: Config, source, sched: recipes.Schedule, spec: Dictionary):
    """Normalisation scales and the b_dec init, estimated from the first batches (deterministic)."""
    n_norm = max(1, cfg.train.norm_batches)
    tokens_per_batch = cfg.train.batch_size * spec.tokens_per_example
    n_batches = max(n_norm, -(-cfg.train.b_dec_samples // tokens_per_batch))
    whole = getattr(source, "global_batch", source.batch)  # every process estimates from the same rows
    xs, ys = zip(*(whole(i) for i in range(n_batches)))
    x_all, y_all = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    n_rows = n_norm * cfg.train.batch_size
    if spec.tokens_per_example > 1:  # whole contexts: estimate from their token rows, in order
        x_all, y_all = spec.stat_rows(x_all, y_all)
        n_rows = len(x_all) * n_norm // n_batches
    if x_all.ndim == 3:  # [N, L, d]: each layer normalised on its own, scales [L, 1]
        c_in = np.float32([[data_init.norm_scale(x_all[:n_rows, i], sched.normalize)] for i in range(x_all.shape[1])])
        c_out = np.float32([[data_init.norm_scale(y_all[:n_rows, i], sched.normalize)] for i in range(y_all.shape[1])])
    else:
        c_in = np.float32(data_init.norm_scale(x_all[:n_rows], sched.normalize))
        c_out = np.float32(data_init.norm_scale(y_all[:n_rows], sched.normalize)) if spec.is_transcoder else c_in
    need_rows = cfg.train.b_dec_samples
    init = cfg.train.b_dec_init
    y_s = y_all[:need_rows] * c_out
    if init == "geometric_median":
        median = data_init.geometric_median
        b_dec = median(jnp.asarray(y_s)) if y_s.ndim == 2 else jax.vmap(median, in_axes=1)(jnp.asarray(y_s))
    elif init == "mean":
        b_dec = jnp.asarray(y_s.mean(0))
    else:
        b_dec = jnp.zeros(y_s.shape[1:], jnp.float32)
    return c_in, c_out, np.asarray(b_dec)  # host values: identical on every process


def setup(cfg: Config, mesh=None, sweep: list[dict] | None = None) -> Run:
    """Wire a run. With `sweep` (a list of {k, sparsity_coefficient, lr, seed}) the spec is a
    jaxsae.train.sweep.Sweep training one dictionary per entry in the same compiled step."""
    cfg = cfg.validate()
    mesh = mesh if mesh is not None else sharding.make_mesh(cfg.mesh.data, cfg.mesh.model)
    whole = cfg.sae.architecture == "multitoken_transcoder"
    source = make_source(cfg.data, cfg.seed, cfg.train.batch_size, whole_contexts=whole)
    is_tc = source.d_out != source.d_in or cfg.sae.architecture in ("transcoder", "clt", "multitoken_transcoder")
    d_out = source.d_out if is_tc else None
    if cfg.sae.d_out is not None and cfg.sae.d_out != source.d_out:
        raise ValueError(f"sae.d_out={cfg.sae.d_out} but the data's target width is {source.d_out}")
    spec = recipes.spec_from_config(cfg.sae, source.d_in, d_out, cfg.train.steps,
                                    n_layers=getattr(source, "n_layers", None),
                                    data_fields=getattr(source, "spec_fields", None))
    if axes.LAYER in spec.input_axes() and not getattr(source, "n_layers", None):
        raise ValueError(f"sae.architecture={cfg.sae.architecture} reads several layers, but the data gives one "
                         "site; set data.in_sites/out_sites (store, stream) or data.toy.layers (toy)")
    sched = recipes.resolve(cfg.sae.architecture, cfg.sae.activation, cfg.sae.d_sae, cfg.train)
    n_data = mesh.shape[sharding.DATA]
    if cfg.train.batch_size % n_data:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the mesh's data axis "
                         f"({n_data} devices); use a multiple of {n_data}")
    if sweep is not None:
        from jaxsae.train import sweep as sweep_lib

        spec = sweep_lib.build(cfg, spec, sched, sweep)
    return Run(cfg, spec, sched, mesh, source, sweep=sweep)


def init_state(run: Run):
    """(optimizer, abstract state, state shardings, init_fn) for abstract-first sharded init:
    shapes from eval_shape, then `jit(init_fn, out_shardings=...)` builds every array straight
    into its sharding (nothing is built on one device and resharded)."""
    spec, sched = run.spec, run.schedule
    tx = optim.make_optimizer(sched, spec.unit_norm_decoder, getattr(spec, "lr_factors", None))

    def init_fn(key, b_dec, c_in, c_out):
        return state_lib.create(spec, tx, key, b_dec, c_in, c_out)

    key = jax.random.key(run.cfg.seed)
    n_layers = getattr(run.source, "n_layers", None) if axes.LAYER in spec.input_axes() else None
    scale = jnp.ones((n_layers, 1), jnp.float32) if n_layers else jnp.float32(1)
    b_dec_shape = (n_layers, spec.out_dim) if n_layers else (spec.out_dim,)
    dummy = (key, jnp.zeros(b_dec_shape, jnp.float32), scale, scale)
    abstract = jax.eval_shape(init_fn, *dummy)
    shardings = sharding.fit_shardings(run.mesh, state_lib.logical_axes(spec, tx, abstract), abstract)
    sharding.check_placement(abstract, shardings)
    return tx, abstract, shardings, init_fn


def train(cfg: Config, workdir: str, mesh=None, progress: bool = True, sweep: list[dict] | None = None) -> Run:
    """Train (or resume) a dictionary; write checkpoints, metrics.jsonl and the SAELens export.

    One writer per `workdir` (a lock file, see jaxsae.runlock). Resumes from the newest checkpoint
    that verifies; a run that already finished changes nothing. Raises TrainingError when the run
    diverges (nothing non-finite is ever saved) and Interrupted on Ctrl-C."""
    run = setup(cfg, mesh, sweep)
    with runlock.hold(workdir, "training", enabled=jax.process_index() == 0):
        return _train(run, workdir, progress)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says which checkpoint a rerun resumes from."""


def _config_changes(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill: dropped
                continue
    return rows


def _trim_metrics(path: str, start: int) -> None:
    """Keep only rows of steps before `start` (the resume step), rewritten atomically, so every
    step appears once however often the run was killed and resumed (a line cut short by a kill is
    dropped too, so the next row never runs into it)."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        raw = f.read()
    rows = read_metrics(path)
    keep = [r for r in rows if isinstance(r.get("step"), int) and r["step"] < start]
    if len(keep) != raw.count(b"\n") or (raw and not raw.endswith(b"\n")):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
        if len(rows) > len(keep):
            log.info("metrics.jsonl: dropped %d rows of steps >= %d (recomputed from the checkpoint)",
                     len(rows) - len(keep), start)


def _train(run: Run, workdir: str, progress: bool) -> Run:
    cfg, spec, sched, mesh, source = run.cfg, run.spec, run.schedule, run.mesh, run.source
    writer = jax.process_index() == 0
    log.info("mesh %s | %s | schedule %s", sharding.describe(mesh), spec.describe(), sched)
    tx, abstract, shardings, init_fn = init_state(run)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.train.keep_checkpoints, writer=writer)
    manifest = _manifest(cfg, spec, source)
    abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = ckpt.restore(abstract_sharded, manifest)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    data_state = None
    if restored is None:
        c_in, c_out, b_dec = _init_stats(cfg, source, sched, spec)
        state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(cfg.seed), b_dec, c_in, c_out)
        start = 0
    else:
        start, state = restored.step, restored.state
        data_state = restored.data or {"next_index": start}
        if pipeline.position(data_state) != start:
            raise TrainingError(f"checkpoint {start} holds a data iterator at step {pipeline.position(data_state)}; "
                                f"the checkpoint is inconsistent: move {ckpt.directory}/{start} away to resume "
                                "from an older one")
        if start > sched.total_steps:
            raise TrainingError(f"the checkpoint in {ckpt.directory} is at step {start}, past "
                                f"train.steps={sched.total_steps}; raise --config.train.steps or use a fresh --workdir")
        changes = _config_changes(restored.manifest.get("config", {}), manifest["config"])
        if changes and start < sched.total_steps:
            log.warning("resuming from step %d with a changed config: %s. From step %d on the run follows the new "
                        "settings (it is no longer identical to an uninterrupted run with either).",
                        start, "; ".join(changes), start)
        # every change since the run began travels on in the checkpoints' manifests, into summary.json
        manifest["config_changes"] = list(restored.manifest.get("config_changes", [])) + changes
        run.resumed_with_changes = manifest["config_changes"]
        log.info("resumed from step %d", start)
    if writer:
        _trim_metrics(metrics_path, start)
    run.metrics = read_metrics(metrics_path) if start else []

    if restored is not None and start == sched.total_steps and _finished(workdir, sched.total_steps):
        ckpt.close()
        run.state = state
        log.info("the run in %s already finished at step %d: nothing to do (export/ and summary.json unchanged). "
                 "Raise --config.train.steps to train on, or use a fresh --workdir.", workdir, start)
        run.already_finished = True
        return run

    x_sh = sharding.named(mesh, spec.input_axes())
    y_sh = sharding.named(mesh, spec.target_axes())
    step_fn = jax.jit(make_train_step(spec, tx, sched, cfg.train.dead_tokens),
                      in_shardings=(shardings, x_sh, y_sh), out_shardings=(shardings, None), donate_argnums=0)

    bar = tqdm(total=sched.total_steps, initial=start, disable=not progress, desc=f"train {spec.name}",
               unit="step", dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 10.0)
    pending: list[tuple[int, dict]] = []
    t_last, step_last = time.perf_counter(), start

    def finished_saves() -> list[int]:
        with contextlib.suppress(Exception):  # a failed save simply is not among the steps listed
            ckpt.wait()  # a save in flight holds good state: count it once it is on disk
        return ckpt.saved_steps()

    def diverged(step: int, what: str) -> TrainingError:
        good = finished_saves()
        lr = sched.lr
        resume = (f"the newest good checkpoint is step {good[-1]} (kept: {good} in {ckpt.directory})" if good else
                  "no checkpoint was saved yet")
        return TrainingError(
            f"training diverged: {what} at step {step}; nothing from this point on was saved and {resume}. "
            f"Fix: rerun the same command with a lower --config.train.lr (now {lr:g}; e.g. {lr / 3:.2g}): it resumes "
            f"from {'step ' + str(good[-1]) if good else 'scratch'} with the new lr. If the inputs hold nan/inf, "
            "clean the data instead.")

    def flush(step_now: int):
        nonlocal t_last, step_last
        rows = []
        bad = None
        for s, m in jax.device_get(pending):
            row = {"step": s, **{k: float(v) for k, v in m.items()}}
            nonfinite_inputs = row.pop("nonfinite_inputs")
            if nonfinite_inputs:
                bad = (s, f"the batch holds {int(nonfinite_inputs)} nan/inf input values (the data, not the lr)")
                break
            if not math.isfinite(row["loss"]):
                bad = (s, f"the loss is {row['loss']}")
                break
            rows.append(row)
        pending.clear()
        dt = time.perf_counter() - t_last
        tok_s = (step_now - step_last) * cfg.train.batch_size * spec.tokens_per_example / max(dt, 1e-9)
        t_last, step_last = time.perf_counter(), step_now
        if rows:
            rows[-1]["tokens_per_s"] = tok_s
            if writer:  # one writer; every process computed the same metrics
                with open(metrics_path, "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
                    f.flush()
                    os.fsync(f.fileno())  # durable before any checkpoint that follows them
            run.metrics.extend(rows)
            last = rows[-1]
            bar.set_postfix(loss=f"{last['loss']:.4g}", l0=f"{last['l0']:.1f}", fvu=f"{last['fvu']:.3f}",
                            dead=f"{last['dead_fraction']:.2f}", tok_s=f"{tok_s:.0f}")
        if bad is not None:
            if "data" in bad[1]:
                good = finished_saves()
                raise TrainingError(
                    f"{bad[1]} at step {bad[0]}; nothing from this point on was saved "
                    f"(checkpoints kept: {good} in {ckpt.directory}). Remove the nan/inf rows from the data "
                    "(for an activation store: harvest it again, e.g. in float32).")
            raise diverged(*bad)

    batches = pipeline.batches(source, sched.total_steps, data_state)

    def to_global(a, sh):  # this process's rows -> the global batch array
        return jax.make_array_from_process_local_data(sh, np.asarray(a, np.float32))

    step = start
    try:
        with jax.set_mesh(mesh):  # latent-sharded ops (latent_ops) read the mesh from context
            for step in range(start, sched.total_steps):
                x, y = next(batches)
                state, m = step_fn(state, to_global(x, x_sh), to_global(y, y_sh))
                pending.append((step, m))
                if len(pending) > MAX_IN_FLIGHT:  # bound the steps queued ahead of the device
                    jax.block_until_ready(pending[-MAX_IN_FLIGHT - 1][1]["loss"])
                done = step + 1
                save_now = done % cfg.train.checkpoint_every == 0 or done == sched.total_steps
                if save_now or done % cfg.train.log_every == 0:
                    flush(done)  # a nan loss stops the run here, before anything is saved
                if save_now:
                    try:
                        ckpt.save(done, state, manifest, batches.get_state())
                    except NonFiniteStateError as e:
                        raise diverged(step, f"the state holds nan/inf ({', '.join(e.leaves[:3])})") from None
                bar.update(1)
        if pending:
            flush(sched.total_steps)
        ckpt.close()
    except BaseException as e:
        bar.close()  # the progress bar's last line must not follow (and hide) the error message
        sys.stderr.write("\n")
        with contextlib.suppress(Exception):  # the original error is what we report
            ckpt.close()  # saves in flight hold good state: let them finish (or be left as temporaries)
        if isinstance(e, KeyboardInterrupt):
            good = ckpt.saved_steps()  # after close(): every finished save
            where = f"resume from step {good[-1]}" if good else "start again from step 0 (no checkpoint was saved yet)"
            raise Interrupted(f"interrupted at step {step}; rerun the same command to {where}") from None
        raise
    bar.close()
    run.state = state
    try:
        finish(run, workdir)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted while exporting; training finished and is checkpointed at step "
                          f"{sched.total_steps}: rerun the same command to export") from None
    return run


def _finished(workdir: str, total_steps: int) -> bool:
    """The export and summary.json of this run's last step are there (not those of a shorter run
    that this one extends)."""
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            summary = json.load(f)
        with open(os.path.join(workdir, "export", "cfg.json")) as f:
            export_cfg = json.load(f)
        meta = export_cfg.get("metadata", {})
        files = export_cfg.get("files", ["sae_weights.safetensors"])  # circuit-tracer layouts list theirs
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("steps") == total_steps
            and meta.get("training_steps") == total_steps
            and all(os.path.isfile(os.path.join(workdir, "export", name)) for name in files))


def finish(run: Run, workdir: str) -> dict:
    """Export (SAELens format) and summary.json, plus ground-truth recovery for toy data. With several
    processes the state is gathered to every host and process 0 writes. A dictionary holding nan/inf
    is never exported: the previous export, if any, stays as it was."""
    from jaxsae.interop import saelens

    state = run.state
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        state = multihost_utils.process_allgather(state, tiled=True)
    if run.spec.export_format == "sweep":
        if jax.process_index() != 0:
            return {}
        from jaxsae.train import sweep as sweep_lib

        return sweep_lib.finish(run, state, workdir, run.sweep)
    sae = inference_sae(run.spec, state)
    bad = fingerprint.nonfinite(sae.params)
    if bad:
        raise TrainingError(f"the trained dictionary holds nan/inf in {bad}; not exported (any earlier "
                            f"{os.path.join(workdir, 'export')} is unchanged)")
    meta = {"jaxsae_spec": run.spec.describe(), "dataset_path": run.cfg.data.path or run.cfg.data.source,
            "training_steps": run.schedule.total_steps, "training_tokens": run.schedule.total_steps * run.cfg.train.batch_size * run.spec.tokens_per_example}
    if getattr(run.source, "site", None):  # activations of a language model: say which and where
        meta["hook_name"] = run.source.site
        meta["model_name"] = getattr(run.source, "model_name", None)
    if jax.process_index() != 0:
        return {}
    remove_temporaries(os.path.join(workdir, "export"))  # left by a writer killed mid-export
    if run.spec.export_format == "circuit_tracer":
        from jaxsae.interop import circuit_tracer

        meta["in_sites"] = list(getattr(run.source, "in_sites", ()))
        meta["out_sites"] = list(getattr(run.source, "out_sites", ()))
        circuit_tracer.save(sae, os.path.join(workdir, "export"), meta)
    elif run.spec.export_format == "multitoken":
        from jaxsae.interop import multitoken

        meta["in_sites"] = list(getattr(run.source, "in_sites", ()))
        meta["out_sites"] = list(getattr(run.source, "out_sites", ()))
        multitoken.save(sae, os.path.join(workdir, "export"), meta)
    elif run.spec.export_format == "crosscoder":
        from jaxsae.interop import crosscoder

        meta["sites"] = list(getattr(run.source, "in_sites", ()))
        meta["models"] = list(getattr(run.source, "models", ()))
        crosscoder.save(sae, os.path.join(workdir, "export"), meta)
    else:
        saelens.save(sae, os.path.join(workdir, "export"), meta)
    summary = {"export": os.path.join(workdir, "export"), "steps": run.schedule.total_steps,
               "final": run.metrics[-1] if run.metrics else {}}
    if run.resumed_with_changes:
        summary["resumed_with_changes"] = run.resumed_with_changes
    if run.cfg.data.source == "toy" and run.cfg.data.toy.layers and run.spec.name == "clt":
        from jaxsae.toy.layered import clt_recovery

        summary["ground_truth"] = clt_recovery(sae.params, run.source.features)
    elif run.cfg.data.source == "toy" and run.cfg.data.toy.layers and run.spec.name == "crosscoder":
        from jaxsae.toy.layered import crosscoder_recovery

        summary["ground_truth"] = crosscoder_recovery(sae.params, run.source.features)
    elif run.cfg.data.source == "toy" and not run.cfg.data.toy.layers:
        from jaxsae.evals.ground_truth import recovery

        feats = run.source.features
        truth = np.asarray(feats.out_dirs_no)
        summary["ground_truth_decoder"] = recovery(np.asarray(sae.params["W_dec"]), truth)
        if not run.spec.is_transcoder:
            summary["ground_truth_encoder"] = recovery(np.asarray(sae.params["W_enc"]).T, np.asarray(feats.dirs_nd))
    atomic_write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary
