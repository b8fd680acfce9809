"""Judges for automated interpretability: anything that completes a chat.

  class Judge(Protocol):
      def complete(self, messages, *, max_tokens, seed, context=None) -> str

`context` carries the task in structured form for judges that can use it (autointerp passes
{"task": "explain" | "score", "latent", "examples": [[(token, active), ...]], "explanation"});
a judge that reads only the messages ignores it.

Back-ends:
  OpenAICompatibleJudge(base_url, model, api_key_env)  any /chat/completions server (OpenAI, vLLM,
                                                        llama.cpp, ...), standard library only
  PenzaiLMJudge(lm, tokenizer)                          a local model through jaxsae's own greedy
                                                        generation (small models: smoke tests; expect
                                                        parse failures, which autointerp counts)
  ScriptedJudge(responses)                              canned replies, in order
  LexicalJudge()                                        explains by the tokens active in the examples and
                                                        predicts an example active iff it holds one
  OracleJudge(token_sets)                               knows the planted token set of every latent
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from typing import Protocol

QUOTED = re.compile(r"'((?:[^'\\]|\\.)+)'")


class Judge(Protocol):
    def complete(self, messages: list[dict], *, max_tokens: int, seed: int, context: dict | None = None) -> str: ...


class JudgeError(RuntimeError):
    """The judge could not be reached or answered in an unexpected shape; the message says which."""


class OpenAICompatibleJudge:
    """POSTs {model, messages, max_tokens, seed, temperature: 0} to BASE_URL/chat/completions with the
    key from the environment variable `api_key_env` (if set) and returns the first choice's text."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.timeout_s = model, api_key_env, timeout_s

    def complete(self, messages: list[dict], *, max_tokens: int, seed: int, context: dict | None = None) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_tokens, "seed": seed,
                           "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as r:
                reply = json.loads(r.read())
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise JudgeError(f"judge at {self.url} failed: {e}") from e
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"judge at {self.url} answered without choices[0].message.content: "
                             f"{str(reply)[:200]}") from e


class PenzaiLMJudge:
    """A local language model as judge: the messages as plain text ("role: content" lines, then
    "assistant:"), answered by greedy generation."""

    def __init__(self, lm, tokenizer, context: int = 2048):
        self.lm, self.tokenizer, self.context = lm, tokenizer, context

    def complete(self, messages: list[dict], *, max_tokens: int, seed: int, context: dict | None = None) -> str:
        from jaxsae import generate

        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = [self.tokenizer.bos_id, *self.tokenizer.encode(text)][-(self.context - max_tokens):]
        new = generate.greedy(self.lm, [ids], max_tokens)[0]
        return self.tokenizer.decode([int(t) for t in new])


class ScriptedJudge:
    def __init__(self, responses: list[str]):
        self.responses, self.calls = list(responses), []

    def complete(self, messages: list[dict], *, max_tokens: int, seed: int, context: dict | None = None) -> str:
        self.calls.append(messages)
        if not self.responses:
            raise JudgeError("ScriptedJudge ran out of responses")
        return self.responses.pop(0)


def _quote(tokens) -> str:
    return ", ".join("'" + t.replace("\\", "\\\\").replace("'", "\\'") + "'" for t in sorted(tokens))


def _unquote(text: str) -> set[str]:
    return {re.sub(r"\\(.)", r"\1", t) for t in QUOTED.findall(text)}


class LexicalJudge:
    """Deterministic baseline on the structured task: the explanation quotes the tokens that were
    active in the examples; an example is predicted active iff it holds one of the quoted tokens."""

    def explain(self, context: dict) -> set[str]:
        return {tok.strip() for ex in context["examples"] for tok, active in ex if active and tok.strip()}

    def complete(self, messages: list[dict], *, max_tokens: int, seed: int, context: dict | None = None) -> str:
        if context is None:
            raise JudgeError(f"{type(self).__name__} needs the structured context autointerp passes")
        if context["task"] == "explain":
            return f"This latent activates on the tokens {_quote(self.explain(context))}"
        quoted = _unquote(context["explanation"])
        hits = [i + 1 for i, ex in enumerate(context["examples"]) if any(tok.strip() in quoted for tok, _ in ex)]
        return ", ".join(map(str, hits)) if hits else "None"


class OracleJudge(LexicalJudge):
    """Knows the planted token set of every latent (token_sets[latent]) and names all of it."""

    def __init__(self, token_sets: dict[int, set[str]]):
        self.token_sets = {int(k): {t.strip() for t in v} for k, v in token_sets.items()}

    def explain(self, context: dict) -> set[str]:
        return self.token_sets[int(context["latent"])]
