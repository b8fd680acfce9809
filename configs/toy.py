"""Toy ground-truth run: 512 known features in 64 dimensions, TopK with 1024 latents.

Trains in well under a minute on a 2-core CPU and reports how well the true features are
recovered (summary.json). Any architecture: --config.sae.architecture=jumprelu etc.
"""

from configs.base import get_base


def get_config():
    c = get_base()
    c.data.source = "toy"
    c.data.toy.d_in = 64
    c.data.toy.n_features = 512
    c.data.toy.firing_prob = 0.01
    c.sae.architecture = "topk"
    c.sae.d_sae = 1024
    c.sae.k = 8.0
    c.train.steps = 3000
    c.train.batch_size = 1024
    c.train.lr = 3e-3
    c.train.dead_tokens = 200_000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.b_dec_samples = 4096
    c.train.norm_batches = 4
    return c
