"""Small shared builders for the training tests."""

from jaxsae import config as C


def toy_config(arch="topk", steps=20, batch=256, d_sae=128, **over):
    sae = {"architecture": arch, "d_sae": d_sae}
    if arch in ("topk", "batchtopk", "matryoshka", "transcoder"):
        sae["k"] = 4
    sae.update(over.pop("sae", {}))
    train = {"steps": steps, "batch_size": batch, "log_every": 5, "checkpoint_every": 10,
             "norm_batches": 2, "b_dec_samples": 512, "dead_tokens": 2000}
    train.update(over.pop("train", {}))
    toy = {"d_in": 16, "n_features": 64, "firing_prob": 0.05}
    toy.update(over.pop("toy", {}))
    data = {"source": "toy", "toy": toy}
    return C.from_dict({"sae": sae, "train": train, "data": data, **over})


def batches_dying_after(real, n_batches: int):
    """A stand-in for jaxsae.data.pipeline.batches whose iterator raises KeyboardInterrupt (a kill)
    when asked for batch n_batches + 1; monkeypatch it over pipeline.batches."""

    def dying(*a, **k):
        it = real(*a, **k)

        class Dies:
            n = 0

            def __next__(self):
                Dies.n += 1
                if Dies.n > n_batches:
                    raise KeyboardInterrupt(f"killed at step {n_batches}")
                return next(it)

            def get_state(self):
                return it.get_state()

        return Dies()

    return dying


def train_killed_then_resumed(cfg, workdir: str, monkeypatch, kill_after: int, **train_kw):
    """Train `cfg` in `workdir`, killed (KeyboardInterrupt) when asking for batch kill_after + 1,
    then run the same command again; returns the resumed run."""
    import pytest

    from jaxsae.data import pipeline
    from jaxsae.train import loop

    real = pipeline.batches
    monkeypatch.setattr(pipeline, "batches", batches_dying_after(real, kill_after))
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, workdir, progress=False, **train_kw)
    monkeypatch.setattr(pipeline, "batches", real)
    return loop.train(cfg, workdir, progress=False, **train_kw)


def assert_same_params(a, b) -> None:
    """Two bound dictionaries hold bit-identical parameters."""
    import numpy as np

    assert set(a.params) == set(b.params)
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]), err_msg=k)
