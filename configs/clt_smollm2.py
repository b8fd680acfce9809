"""A cross-layer transcoder over all 30 layers of the packaged SmolLM2-135M: layer-l latents read
`blocks.l.ln2.hook_normalized` and write every `blocks.l'.hook_mlp_out` (l' >= l). Streams the
activations (60 sites of 576 floats per token are ~140 kB; a store of the whole corpus would be
27 GB), JumpReLU latents with the tanh penalty, 256 latents per layer (7,680 in all).

  python -m experiments.train_sae --config=configs/clt_smollm2.py --workdir=runs/clt
  python -m jaxsae.train.aot --arch=clt --activation=jumprelu --n_layers=30 --d_in=576 --d_sae=256 \
      --batch=512 --devices=1 --model=1          # memory check first
"""

from configs.base import get_base

LAYERS = 30


def get_config():
    c = get_base()
    ins = tuple(f"blocks.{i}.ln2.hook_normalized" for i in range(LAYERS))
    outs = tuple(f"blocks.{i}.hook_mlp_out" for i in range(LAYERS))
    c.data.source = "stream"
    c.data.in_sites = ins
    c.data.out_sites = outs
    c.data.lm.sites = ins + outs
    c.data.lm.context = 128
    c.data.lm.batch_windows = 8
    c.data.lm.buffer_batches = 4  # ~4k tokens mixed per buffer (0.6 GB of activations)
    c.sae.architecture = "clt"
    c.sae.activation = "jumprelu"
    c.sae.d_sae = 256
    c.train.steps = 2000
    c.train.batch_size = 512
    c.train.log_every = 50
    c.train.checkpoint_every = 200
    c.train.dead_tokens = 200_000
    c.train.b_dec_samples = 2048
    c.train.norm_batches = 4
    return c
