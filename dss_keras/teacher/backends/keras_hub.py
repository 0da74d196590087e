"""A local KerasHub `CausalLM` (Gemma, Llama, Mistral, GPT-2, ...) as the teacher.

Prompts are generated in batches of `batch_size`; each prompt is repeated `n`
times in its batch for `n` samples. Temperature 0 decodes greedily, a
positive temperature samples from the softmax at that temperature. The
completion is cut at the first stop sequence. Token usage counts the
tokenizer's tokens of prompts and completions.
"""

from __future__ import annotations

from typing import Sequence

from dss_keras.teacher.backends.base import Backend, Generation, cut_at_stop
from dss_keras.teacher.backends.adaptation import DEFAULT_BUDGET


class KerasHubBackend(Backend):
    """A teacher that runs a KerasHub causal LM in this process.

    Args:
        model: A preset (`"gemma2_instruct_2b_en"`), a preset directory, or a
            built `keras_hub.models.CausalLM`.
        batch_size: Sequences generated together (prompts times samples).
        seed: Seed of the sampler when the temperature is positive.
        dtype: Weights dtype when loading a preset, e.g. `"bfloat16"`.
    """

    def __init__(self, model, batch_size: int = 8, seed: int | None = None,
                 dtype: str | None = None):
        import keras_hub

        if isinstance(model, str):
            self.causal_lm = keras_hub.models.CausalLM.from_preset(model, dtype=dtype)
            self.model = model
        else:
            self.causal_lm = model
            self.model = getattr(model, "name", type(model).__name__)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
        self.batch_size = batch_size
        self.seed = seed
        self._temperature = None

    def describe(self) -> dict:
        return {"backend": "keras-hub", "model": self.model}

    def _compile_for(self, temperature: float) -> None:
        import keras_hub

        if temperature == self._temperature:
            return
        sampler = ("greedy" if temperature <= 0 else
                   keras_hub.samplers.RandomSampler(temperature=temperature, seed=self.seed))
        self.causal_lm.compile(sampler=sampler)
        self._temperature = temperature

    def _count_tokens(self, texts: Sequence[str]) -> list[int]:
        tokenizer = self.causal_lm.preprocessor.tokenizer
        return [int(len(ids)) for ids in tokenizer(list(texts))] if texts else []

    def generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Generation]:
        """One `Generation` per prompt, generating `batch_size` sequences at a time."""
        texts = [getattr(p, "text", p) for p in prompts]
        max_tokens = DEFAULT_BUDGET if max_tokens is None else max_tokens
        self._compile_for(temperature)
        repeated = [t for t in texts for _ in range(n)]
        outputs = []
        for start in range(0, len(repeated), self.batch_size):
            batch = repeated[start:start + self.batch_size]
            # Room for the longest prompt (and its start token) plus the completion.
            length = max(self._count_tokens(batch)) + 2 + max_tokens
            length = -(-length // 64) * 64  # fewer distinct shapes, fewer retraces
            generated = self.causal_lm.generate(batch, max_length=length, strip_prompt=True)
            outputs += [generated] if isinstance(generated, str) else list(generated)
        generations = []
        for i, text in enumerate(texts):
            samples = [cut_at_stop(o, stop) for o in outputs[i * n:(i + 1) * n]]
            usage = {"prompt_tokens": self._count_tokens([text])[0] * n,
                     "completion_tokens": sum(self._count_tokens(samples))}
            generations.append(Generation(tuple(samples), (None,) * n, usage,
                                          request={"n": n, "max_tokens": max_tokens}))
        return generations
