"""Autointerp with planted ground truth: a dictionary whose latents fire exactly on known tokens (at
the embedding site of a tiny model). The oracle judge scores 1.0, shuffled explanations score near
the base rate of inactive examples, parse failures are counted, sampling is fixed by the seed, the
OpenAI-compatible judge speaks the protocol (to a fake server on loopback), and the result loads in
SAEBench's output class."""

import http.server
import json
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_lm import make_tiny_lm

from jaxsae import dictionaries as D
from jaxsae import models, sites
from jaxsae.data import text as text_lib
from jaxsae.data import tokens as tokens_lib
from jaxsae.dictionaries.bound import SAE
from jaxsae.evals import autointerp as ai
from jaxsae.evals import judges

SITE = "blocks.0.hook_resid_pre"  # the token embeddings: a latent can read one token exactly
CFG = ai.AutointerpConfig(n_latents=6, dead_latent_threshold=15, total_tokens=80 * 64, context=64, buffer=5,
                          n_random_score=10, batch_windows=16)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = make_tiny_lm(str(tmp_path_factory.mktemp("lm")), layers=1)
    lm, tok = models.load(d), models.load_tokenizer(d)
    ds = tokens_lib.windows(text_lib.read_documents("shakespeare")[:1], tok, CFG.context, seed=0)
    toks = tokens_lib.batch_array(ds, 0, 80)
    counts = np.bincount(toks[:, 1:].ravel(), minlength=tok.vocab_size)
    strings = [tok.decode([i]).strip() for i in range(tok.vocab_size)]
    unique = {s for s in strings if strings.count(s) == 1 and s}
    # planted tokens: frequent enough to be alive, rare enough that random windows are mostly inactive
    chosen = [i for i in np.argsort(-counts) if strings[i] in unique and 20 <= counts[i] <= 150][:8]
    emb = np.asarray(sites.run_with_cache(lm, np.asarray([[int(i) for i in chosen]]), [SITE])[1][SITE])[0]
    w_enc = (emb / (emb**2).sum(1, keepdims=True)).T  # x . e_t / |e_t|^2 = 1 exactly on token t
    f = len(chosen)
    spec = D.build("relu", d_in=emb.shape[1], d_sae=f)
    sae = SAE(spec, {"W_enc": jnp.asarray(w_enc), "b_enc": jnp.full((f,), -0.99), "W_dec": jnp.zeros((f, emb.shape[1])),
                     "b_dec": jnp.zeros(emb.shape[1])})
    w, t, i, _ = ai.collect(lm, sae, SITE, toks, tokens_lib.special_ids(tok), 16)
    for latent, token in enumerate(chosen):  # the latent fires exactly where its token is
        assert set(zip(w[i == latent], t[i == latent])) == set(zip(*np.nonzero(toks == token))) - {
            (a, 0) for a in range(len(toks))}
    return lm, tok, ds, sae, {k: {strings[c]} for k, c in enumerate(chosen)}


def test_oracle_judge_scores_one(planted):
    from sae_bench.evals.autointerp.eval_output import AutoInterpEvalOutput

    lm, tok, ds, sae, truth = planted
    r = ai.run(lm, sae, SITE, tok, ds, judges.OracleJudge(truth), CFG, progress=False)
    m = r["eval_result_metrics"]["autointerp"]
    assert m["n_latents_scored"] == 6 and m["autointerp_score"] == 1.0 and m["parse_failures"] == 0
    logs = r["eval_result_unstructured"]
    assert all(set(log["predicted"]) == set(log["active"]) for log in logs)
    AutoInterpEvalOutput(**r)
    lexical = ai.run(lm, sae, SITE, tok, ds, judges.LexicalJudge(), CFG, progress=False)
    assert lexical["eval_result_metrics"]["autointerp"]["autointerp_score"] == 1.0  # token-level latents
    again = ai.run(lm, sae, SITE, tok, ds, judges.OracleJudge(truth), CFG, progress=False)
    assert again["eval_result_unstructured"] == logs  # sampling fixed by the seed


def test_shuffled_explanations_score_near_the_base_rate(planted):
    lm, tok, ds, sae, truth = planted
    keys = sorted(truth)
    wrong = {k: truth[keys[(j + 1) % len(keys)]] for j, k in enumerate(keys)}
    r = ai.run(lm, sae, SITE, tok, ds, judges.OracleJudge(wrong), CFG, progress=False)
    logs = r["eval_result_unstructured"]
    # chance: the accuracy of predictions made independently of the truth, at the same rates
    p = np.array([len(log["active"]) / 14 for log in logs])
    q = np.array([len(log["predicted"]) / 14 for log in logs])
    base = float(np.mean(p * q + (1 - p) * (1 - q)))
    assert abs(r["eval_result_metrics"]["autointerp"]["autointerp_score"] - base) < 0.1, (base, logs)
    assert r["eval_result_metrics"]["autointerp"]["autointerp_score"] < 0.9


def test_parse_failures_are_counted_not_dropped(planted):
    lm, tok, ds, sae, _ = planted
    replies = []
    for k in range(6):
        replies += ["This neuron activates on words", ["3, 99", "None", "no idea", "1,2", "none.", "7"][k]]
    r = ai.run(lm, sae, SITE, tok, ds, judges.ScriptedJudge(replies), CFG, progress=False)
    m = r["eval_result_metrics"]["autointerp"]
    assert m["n_latents_scored"] == 6 and m["parse_failures"] == 2  # "3, 99" (out of range) and "no idea"
    assert [log["parse_failed"] for log in r["eval_result_unstructured"]] == [True, False, True, False, False, False]
    assert r["eval_result_unstructured"][0]["explanation"] == "words"


def test_parsers():
    assert ai.parse_explanation("This neuron activates on the word 'king'.") == "the word 'king'"
    assert ai.parse_explanation("kings and queens") == "kings and queens"
    assert ai.parse_predictions("1, 4,7", 14) == {1, 4, 7} and ai.parse_predictions("None", 14) == set()
    assert ai.parse_predictions("15", 14) is None and ai.parse_predictions("?", 14) is None


def test_openai_compatible_judge_on_a_loopback_server(monkeypatch):
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers.get("Authorization"), body))
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "3, 5"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()  # exactly one request
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = judges.OpenAICompatibleJudge(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "JUDGE_KEY",
                                         timeout_s=10)
    out = judge.complete([{"role": "user", "content": "hi"}], max_tokens=7, seed=3, context={"task": "score"})
    server.server_close()
    assert out == "3, 5"
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body == {"model": "judge-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7,
                    "seed": 3, "temperature": 0}
    with pytest.raises(judges.JudgeError, match="failed"):
        judges.OpenAICompatibleJudge(f"http://127.0.0.1:{server.server_port}/v1", "m", None, timeout_s=2).complete(
            [{"role": "user", "content": "hi"}], max_tokens=1, seed=0)


@pytest.mark.slow
def test_a_local_model_judge_runs_and_its_failures_are_counted(planted):
    lm, tok, ds, sae, _ = planted
    cfg = ai.AutointerpConfig(**{**CFG.__dict__, "n_latents": 1, "max_tokens_in_explanation": 6})
    r = ai.run(lm, sae, SITE, tok, ds, judges.PenzaiLMJudge(lm, tok), cfg, progress=False)
    m = r["eval_result_metrics"]["autointerp"]
    log = r["eval_result_unstructured"][0]
    assert m["n_latents_scored"] == 1 and isinstance(log["reply"], str)  # a random tiny model rarely parses:
    assert m["parse_failures"] == int(log["parse_failed"])  # whatever it said is scored and accounted for
