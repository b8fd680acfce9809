"""Logical axis names and the shape-letter legend.

Arrays carry logical axis names (never mesh axis names); `jaxsae.sharding.RULES` maps them onto
the device mesh. Variable names end in shape letters, e.g. `w_enc_df`, `x_bd`:

  B  batch of tokens        (BATCH)
  T  sequence position      (SEQ)
  D  input/model width      (D_IN)
  O  output width           (D_OUT, transcoders; equals D for plain SAEs)
  F  dictionary latents     (D_SAE)
  K  top-k slots            (no axis name: always local)
  L  layers                 (LAYER)
  N  dictionaries of a sweep (SWEEP)
"""

BATCH = "batch"
SEQ = "seq"
D_IN = "d_in"
D_OUT = "d_out"
D_SAE = "d_sae"
LAYER = "layer"
VOCAB = "vocab"
NEURONS = "neurons"  # an LM's MLP hidden units
HEADS = "heads"  # an LM's attention heads (Penzai's heads / head_groups / query_heads)
SWEEP = "sweep"  # the dictionaries of a vmapped sweep (jaxsae.train.sweep)

ALL = (BATCH, SEQ, D_IN, D_OUT, D_SAE, LAYER, VOCAB, NEURONS, HEADS, SWEEP)

# Penzai model axis names -> logical axes (unlisted names, e.g. "embedding", stay replicated)
PENZAI = {"vocabulary": VOCAB, "neurons": NEURONS, "heads": HEADS, "head_groups": HEADS, "query_heads": HEADS,
          "batch": BATCH, "seq": SEQ}
