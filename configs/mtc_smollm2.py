"""A multitoken transcoder replacing the attention of layer 18 of the packaged SmolLM2-135M (the
layer of its strongest induction head, score 0.89 on repeated random tokens): latents read
`blocks.18.ln1.hook_normalized` at every source position, move through the layer's 9 frozen
attention patterns with a learned per-latent head mixture (plus the identity), and write
`blocks.18.hook_attn_out`. The LM runs in the loop on 64-token windows, 16 contexts per step.

  python -m experiments.train_sae --config=configs/mtc_smollm2.py --workdir=runs/mtc18
"""

from configs.base import get_base

LAYER = 18


def get_config():
    c = get_base()
    c.data.source = "stream"
    c.data.in_sites = (f"blocks.{LAYER}.ln1.hook_normalized",)
    c.data.out_sites = (f"blocks.{LAYER}.hook_attn_out",)
    c.data.lm.sites = c.data.out_sites
    c.data.lm.context = 64
    c.sae.architecture = "multitoken_transcoder"
    c.sae.activation = "topk"
    c.sae.d_sae = 4096
    c.sae.k = 32
    c.train.steps = 600
    c.train.batch_size = 16  # contexts (1,024 tokens)
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.dead_tokens = 500_000
    c.train.b_dec_samples = 4096
    c.train.norm_batches = 4
    return c
