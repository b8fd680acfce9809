"""Metrics for causal experiments: logits [batch, seq, vocab] -> one number per row [batch].

Each metric is a small pytree (its token ids and reference logits are array leaves, its
positions static), so a patching grid or an attribution pass compiles once per metric *kind*
and reruns with new targets. Any plain function `logits -> [batch]` works too (it is then a
static argument: a new function object compiles anew).

  logit_diff(good_id, bad_id)          l[good] - l[bad] at the last position (ids: int or [batch])
  logprob(target_id)                   log p(target) at the last position
  next_token_logprob(tokens, start)    mean log p(tokens[t+1] | tokens[:t+1]) over t in [start, stop)
  loss(tokens)                         mean next-token cross-entropy over the sequence
  kl(reference_logits)                 KL(softmax(reference) || softmax(logits)), mean over positions
  normalized_effect(m, m_clean, m_corrupt) = (m - m_corrupt) / (m_clean - m_corrupt)
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def _ids(ids) -> jax.Array:
    return jnp.asarray(np.asarray(ids, np.int32))


def _at(logits_bsv: jax.Array, position: int) -> jax.Array:
    return logits_bsv[:, position].astype(jnp.float32)


def _pick(values_bv: jax.Array, ids) -> jax.Array:
    ids_b = jnp.broadcast_to(ids, values_bv.shape[:1])
    return jnp.take_along_axis(values_bv, ids_b[:, None], axis=1)[:, 0]


@flax.struct.dataclass
class LogitDiff:
    good: jax.Array
    bad: jax.Array
    position: int = flax.struct.field(pytree_node=False, default=-1)

    def __call__(self, logits_bsv: jax.Array) -> jax.Array:
        last_bv = _at(logits_bsv, self.position)
        return _pick(last_bv, self.good) - _pick(last_bv, self.bad)


def logit_diff(good_id, bad_id, position: int = -1) -> LogitDiff:
    """Logit of `good_id` minus logit of `bad_id` at `position` (the last by default); each id is
    one int for every row or a [batch] array."""
    return LogitDiff(_ids(good_id), _ids(bad_id), position)


@flax.struct.dataclass
class LogProb:
    target: jax.Array
    position: int = flax.struct.field(pytree_node=False, default=-1)

    def __call__(self, logits_bsv: jax.Array) -> jax.Array:
        return _pick(jax.nn.log_softmax(_at(logits_bsv, self.position)), self.target)


def logprob(target_id, position: int = -1) -> LogProb:
    """log p(target_id) at `position` (the last by default); target_id is an int or [batch]."""
    return LogProb(_ids(target_id), position)


@flax.struct.dataclass
class NextTokenLogProb:
    tokens: jax.Array  # [batch, seq] the tokens whose probabilities are read (teacher forcing)
    start: int = flax.struct.field(pytree_node=False, default=0)
    stop: int | None = flax.struct.field(pytree_node=False, default=None)

    def __call__(self, logits_bsv: jax.Array) -> jax.Array:
        stop = logits_bsv.shape[1] - 1 if self.stop is None else self.stop
        logp = jax.nn.log_softmax(logits_bsv[:, self.start : stop].astype(jnp.float32))
        nxt = self.tokens[:, self.start + 1 : stop + 1]
        return jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0].mean(axis=1)


def next_token_logprob(tokens, start: int = 0, stop: int | None = None) -> NextTokenLogProb:
    """Mean log-probability of `tokens[:, t + 1]` given the prefix, over positions t in
    [start, stop) (stop defaults to the last prediction). Read off a corrupted run with the clean
    tokens, this is how much of the clean continuation the run still predicts."""
    tokens = _ids(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"next_token_logprob takes tokens [batch, seq], got shape {tokens.shape}")
    return NextTokenLogProb(tokens, start, stop)


@flax.struct.dataclass
class Loss:
    inner: NextTokenLogProb

    def __call__(self, logits_bsv: jax.Array) -> jax.Array:
        return -self.inner(logits_bsv)


def loss(tokens, start: int = 0, stop: int | None = None) -> Loss:
    """Mean next-token cross-entropy of `tokens` over positions [start, stop)."""
    return Loss(next_token_logprob(tokens, start, stop))


@flax.struct.dataclass
class KL:
    reference: jax.Array  # [batch, seq, vocab] or [batch, vocab] (then read at `position`)
    position: int | None = flax.struct.field(pytree_node=False, default=None)

    def __call__(self, logits_bsv: jax.Array) -> jax.Array:
        logits = logits_bsv.astype(jnp.float32)
        if self.position is not None:
            logits = logits[:, self.position][:, None]
        ref = self.reference.astype(jnp.float32)
        ref = ref[:, None] if ref.ndim == 2 else ref
        logp_ref, logp = jax.nn.log_softmax(ref), jax.nn.log_softmax(logits)
        return (jnp.exp(logp_ref) * (logp_ref - logp)).sum(-1).mean(-1)


def kl(reference_logits, position: int | None = None) -> KL:
    """KL(reference || model) per row, averaged over positions (or at one `position`). Pass the
    reference run's logits [batch, seq, vocab], or [batch, vocab] with a position."""
    ref = jnp.asarray(reference_logits, jnp.float32)
    if ref.ndim == 2 and position is None:
        raise ValueError("kl: reference logits [batch, vocab] need the position they were read at (position=-1)")
    return KL(ref, position)


def normalized_effect(m_patched, m_clean, m_corrupt):
    """(m_patched - m_corrupt) / (m_clean - m_corrupt): 1 where a patch restores the clean
    behaviour, 0 where it changes nothing of the corrupted one."""
    return (m_patched - m_corrupt) / (m_clean - m_corrupt)


def split(metric):
    """(static part, array leaves) of a metric, so jitted code takes the arrays as arguments and
    compiles once per metric kind; a plain function is all static."""
    leaves, treedef = jax.tree.flatten(metric)
    if leaves and all(isinstance(x, (jax.Array, np.ndarray)) for x in leaves):
        return treedef, tuple(leaves)
    return _Opaque(metric), ()


def join(static, leaves):
    return static.fn if isinstance(static, _Opaque) else jax.tree.unflatten(static, leaves)


class _Opaque:
    """A metric that is a plain function, hashed by identity."""

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _Opaque) and other.fn is self.fn
