"""Teacher backends: one small interface over HTTP endpoints and local models.

A backend turns prompts into completions:

```
backend.generate(prompts, n=1, temperature=0.0, max_tokens=None, stop=None)
    -> [Generation, ...]          # one per prompt, in order
backend.iter_generate(..., admit=None)
    -> (index, Generation), ...   # as each is done; no new prompt once admit() is False
```

A `Generation` holds the `n` sampled texts of one prompt, their finish
reasons, the token usage and, when the request failed for good, an `error`
(the texts are then empty). Backends never raise for one failed prompt.
`max_tokens=None` lets the backend choose the budget (256 tokens, more for
a reasoning model).

- `OpenAIBackend` (`openai_compatible.py`): any OpenAI-compatible server
  through the official `openai` client, asynchronous with bounded
  concurrency, retries and backoff.
- `KerasHubBackend` (`keras_hub.py`): a KerasHub `CausalLM` preset or
  directory, batched generation. Imports KerasHub only when built.
"""

from __future__ import annotations

from dss_keras.teacher.backends.base import Backend, Generation, TeacherError, cut_at_stop

__all__ = ["Backend", "Generation", "TeacherError", "cut_at_stop", "make_backend"]


def make_backend(kind: str, model: str, **options) -> Backend:
    """Builds a backend by name: `"openai"` or `"keras-hub"`.

    Examples:

    >>> make_backend("openai", "my-model", base_url="http://127.0.0.1:9/v1").model
    'my-model'
    """
    if kind == "openai":
        from dss_keras.teacher.backends.openai_compatible import OpenAIBackend

        return OpenAIBackend(model, **options)
    if kind == "keras-hub":
        from dss_keras.teacher.backends.keras_hub import KerasHubBackend

        return KerasHubBackend(model, **options)
    raise ValueError(f"Unknown backend; expected openai or keras-hub. Received: backend={kind!r}")
