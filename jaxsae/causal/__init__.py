"""Causal toolkit: every intervention a pure model -> model rewrite (Penzai surgery on jaxsae's
hook sites) that composes with jit, vmap, grad and the mesh.

  patch(lm, clean, corrupt, sites, metric)            activation patching grids (interventions.py,
  path_patch(...)                                     patching.py), path patching
  attribution_patch(..., method="atp"|"ig")           AtP / integrated gradients, SAE latents and
                                                      error nodes (attribution.py)
  logit_diff, logprob, next_token_logprob, loss, kl   metrics (metrics.py)
  knock_out_heads, freeze_norms                       interventions.py
  induction_scores, previous_token_scores, ...        heads.py
  steering.add / add_latent / clamp_latents / ...     steering.py; curves in steering_eval.py
  patchscopes.identity_accuracy / patch_into          patchscopes.py
  circuits.discover / faithfulness / write            sparse feature circuits (circuits.py)
  facts.capital_facts / length_matched_pairs          offline factual-recall prompts (facts.py)
"""

from jaxsae.causal import (
           attribution,
           circuits,
           facts,
           patchscopes,
           steering,
           steering_eval,
)
from jaxsae.causal.attribution import attribution_patch
from jaxsae.causal.heads import (
           induction_scores,
           patterns,
           previous_token_scores,
           repeated_tokens,
)
from jaxsae.causal.interventions import freeze_norms, knock_out_heads
from jaxsae.causal.metrics import (
           kl,
           logit_diff,
           logprob,
           loss,
           next_token_logprob,
           normalized_effect,
)
from jaxsae.causal.patching import patch, path_patch

__all__ = ["attribution", "attribution_patch", "circuits", "facts", "freeze_norms", "induction_scores", "kl", "knock_out_heads", "logit_diff", "logprob",
           "loss", "next_token_logprob", "normalized_effect", "patch", "patchscopes", "path_patch", "patterns",
           "previous_token_scores", "repeated_tokens", "steering", "steering_eval"]
