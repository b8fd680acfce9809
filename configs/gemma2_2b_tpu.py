"""A bigger run: Gemma 2 2B, residual stream after block 12, TopK with 2^16 latents, on a TPU v5e
slice (e.g. v5litepod-16: mesh data=4 x model=4, latents sharded over `model`).

  python -m experiments.harvest   --config=configs/gemma2_2b_tpu.py --config.data.lm.path=/ckpt/gemma-2-2b
  python -m experiments.train_sae --config=configs/gemma2_2b_tpu.py --workdir=/mnt/disks/data/runs/g2b-l12
  python -m experiments.eval_sae  --config=configs/gemma2_2b_tpu.py --sae=/mnt/disks/data/runs/g2b-l12/export --out=/mnt/disks/data/runs/g2b-l12/eval

The model path must be set (an HF directory, or a Kaggle/Flax orbax checkpoint); the text is any
source jaxsae.data.text reads (e.g. --config.data.text.kind=hf_disk --config.data.text.path=...).
"""

from configs.base import get_base


def get_config():
    c = get_base()
    c.data.source = "store"
    c.data.path = "/mnt/disks/data/stores/gemma2-2b-l12"
    c.data.text.kind = "hf_disk"
    c.data.text.path = "/data/pile-uncopyrighted"
    c.data.lm.sites = ("blocks.12.hook_resid_post",)
    c.data.lm.context = 1024
    c.data.lm.batch_windows = 64
    c.data.lm.windows = 300_000  # ~300M tokens
    c.data.lm.dtype = "bfloat16"
    c.sae.architecture = "topk"
    c.sae.d_sae = 65536
    c.sae.k = 64.0
    c.train.steps = 75_000
    c.train.batch_size = 4096
    c.train.checkpoint_every = 2500
    c.mesh.data = 4
    c.mesh.model = 4
    return c
