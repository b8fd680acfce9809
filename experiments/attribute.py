"""An attribution graph for one prompt over a transcoder replacement model (circuit-tracer's
algorithm, jaxsae.causal.attribution_graph): OUT/{slug}.json in circuit-tracer's graph schema
(plus graph-metadata.json, so its frontend serves OUT), OUT/graph.html, OUT/graph.npz (the whole
adjacency) and OUT/summary.json (replacement and completeness scores, sizes, the strongest path).

  python -m experiments.attribute --transcoders=runs/clt/export --prompt="The capital of France is" \
      --out=runs/graph/france

--transcoders is a directory in circuit-tracer's CLT or transcoder-set layout (what
`experiments.train_sae --config.sae.architecture=clt` exports); the model comes from the config
(the packaged SmolLM2 by default). A second run with the same settings reuses the graph.
"""

from absl import flags
from ml_collections import config_flags

from experiments import cli

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config preset (the model: data.lm).")
_TC = flags.DEFINE_string("transcoders", None, "circuit-tracer-layout CLT or transcoder-set directory.", required=True)
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt (BOS is prepended).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_SLUG = flags.DEFINE_string("slug", "graph", "The graph's name in circuit-tracer's frontend.")
_BATCH = flags.DEFINE_integer("batch", 64, "Targets per backward pass (split over the mesh's data axis).")
_MAX_FEATURES = flags.DEFINE_integer("max_feature_nodes", None, "Visit at most this many features, most influential first.")
_MAX_LOGITS = flags.DEFINE_integer("max_n_logits", 10, "At most this many logit targets.")
_LOGIT_P = flags.DEFINE_float("desired_logit_prob", 0.95, "Logit targets until this cumulative probability.")
_NODE_T = flags.DEFINE_float("node_threshold", 0.8, "Keep the nodes with this share of the influence.")
_EDGE_T = flags.DEFINE_float("edge_threshold", 0.98, "Keep the edges with this share of the edge influence.")


def main(argv):
    import json
    import os

    from jaxsae import config as config_lib
    from jaxsae import runlock, sharding
    from jaxsae.causal import attribution_graph as ag
    from jaxsae.data import harvest
    from jaxsae.interop import circuit_tracer

    cfg = config_lib.from_configdict(_CONFIG.value)
    transcoders = circuit_tracer.load(_TC.value)
    input_kind = _input_kind(_TC.value)
    settings = {"prompt": _PROMPT.value, "transcoders": os.path.abspath(_TC.value), "slug": _SLUG.value,
                "model": os.path.abspath(harvest.model_path(cfg.data.lm)), "max_feature_nodes": _MAX_FEATURES.value,
                "max_n_logits": _MAX_LOGITS.value, "desired_logit_prob": _LOGIT_P.value,
                "node_threshold": _NODE_T.value, "edge_threshold": _EDGE_T.value}
    os.makedirs(_OUT.value, exist_ok=True)
    done = os.path.join(_OUT.value, "summary.json")
    with runlock.hold(_OUT.value, "attribution"):
        if os.path.isfile(done) and json.load(open(done)).get("settings") == json.loads(json.dumps(settings)):
            print(f"{done} already holds this graph")
            print(open(done).read())
            return
        lm, tok = harvest.load_lm(cfg.data.lm)
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(_PROMPT.value)
        mesh = sharding.make_mesh()
        g = ag.attribute(lm, ids, transcoders, batch_size=_BATCH.value, max_feature_nodes=_MAX_FEATURES.value,
                         max_n_logits=_MAX_LOGITS.value, desired_logit_prob=_LOGIT_P.value, input_kind=input_kind,
                         mesh=mesh if mesh.devices.size > 1 else None, tokenizer=tok, prompt=_PROMPT.value)
        summary = ag.write(g, _OUT.value, _SLUG.value, _NODE_T.value, _EDGE_T.value, settings=settings)
    print(json.dumps(summary, indent=1))


def _input_kind(path: str) -> str:
    """The transcoders' input site kind, from their config.yaml (circuit-tracer's feature_input_hook)."""
    import os

    import yaml

    p = os.path.join(path, "config.yaml")
    hook = yaml.safe_load(open(p)).get("feature_input_hook") if os.path.isfile(p) else None
    hook = hook or "ln2.hook_normalized"
    if hook not in ("ln2.hook_normalized", "hook_resid_mid"):
        raise ValueError(f"{p}: feature_input_hook={hook!r}; jaxsae attributes transcoders that read "
                         "ln2.hook_normalized or hook_resid_mid")
    return hook


if __name__ == "__main__":
    cli.run(main)
