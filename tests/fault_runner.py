"""Runs the training binary with one injected fault (for tests/test_faults.py):

  python tests/fault_runner.py FAULT[=N] -- --config=configs/toy.py --workdir=... [overrides]

  kill_at_step=N      SIGKILL when batch N is taken (mid-run, between checkpoints)
  sigint_at_step=N    SIGINT (Ctrl-C) when batch N is taken
  kill_during_save=N  SIGKILL while checkpoint N is being saved (written, not yet committed)
  kill_during_export  SIGKILL halfway through writing the exported weights
  blowup_from_step=N  every batch from step N on is scaled by 1e30 (the loss overflows: a divergence)
  nan_from_step=N     every batch from step N on holds a nan
  sleep_per_step=MS   a slow run: MS milliseconds per batch
"""

import os
import runpy
import signal
import sys
import time


def _wrap_batches(on_step):
    from jaxsae.data import pipeline

    original = pipeline.batches

    class Iter:
        def __init__(self, it, first):
            self.it, self.step = it, first

        def __iter__(self):
            return self

        def __next__(self):
            on_step(self.step)
            self.step += 1
            return next(self.it)

        def get_state(self):
            return self.it.get_state()

    def batches(source, total_steps, state=None, prefetch=2):
        return Iter(original(source, total_steps, state, prefetch), pipeline.position(state) if state else 0)

    pipeline.batches = batches


def _scale_batches(from_step, fn):
    from jaxsae.toy import synthetic

    original = synthetic.ToySource.batch

    def batch(self, step):
        x, y = original(self, step)
        return (fn(x), fn(y)) if step >= from_step else (x, y)

    synthetic.ToySource.batch = batch


_CHECKPOINTERS = []


def _remember_checkpointers():
    from jaxsae.train import checkpoint

    original = checkpoint.Checkpointer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        _CHECKPOINTERS.append(self)

    checkpoint.Checkpointer.__init__ = init


def _signal_between_checkpoints(sig):
    """The fault lands between checkpoints: a save still in flight finishes first (on a tiny model the
    async save's finalising thread can lag the training loop by many steps)."""
    for c in _CHECKPOINTERS:
        c.manager.wait_until_finished()
    os.kill(os.getpid(), sig)
    # Python runs the SIGINT handler at its next check, which could fall inside the data loader's own
    # code (a flake seen once in CI: the interrupt never reached the training loop). An interruptible
    # sleep here makes the KeyboardInterrupt rise in this frame, as a Ctrl-C between batches does.
    time.sleep(5)


def install(fault: str) -> None:
    name, _, arg = fault.partition("=")
    n = int(arg) if arg else None
    _remember_checkpointers()
    if name in ("kill_at_step", "sigint_at_step"):
        sig = signal.SIGKILL if name == "kill_at_step" else signal.SIGINT
        if sig == signal.SIGINT:  # as in a terminal, whatever the test runner's workers inherited (SIG_IGN)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _wrap_batches(lambda step: _signal_between_checkpoints(sig) if step == n else None)
    elif name == "sleep_per_step":
        _wrap_batches(lambda step: time.sleep(n / 1000))
    elif name == "kill_during_save":  # the data of checkpoint N are written; the kill lands before it is committed
        from orbax.checkpoint._src.path import atomicity

        original = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self, *a, **kw):
            if os.path.basename(str(self._final_path)) == str(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return await original(self, *a, **kw)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    elif name == "kill_during_export":
        from jaxsae.interop import saelens

        original = saelens.save_file

        def save_file(tensors, path):
            original(tensors, path)
            with open(path, "r+b") as f:  # as if the kill came halfway through the write
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        saelens.save_file = save_file
    elif name == "blowup_from_step":
        _scale_batches(n, lambda a: a * 1e30)
    elif name == "nan_from_step":
        def poison(a):
            import numpy as np

            a = np.array(a)
            a[0, 0] = float("nan")
            return a

        _scale_batches(n, poison)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault, sep, *args = sys.argv[1:]
    assert sep == "--"
    install(fault)
    sys.argv = ["experiments.train_sae", *args]
    runpy.run_module("experiments.train_sae", run_name="__main__")
