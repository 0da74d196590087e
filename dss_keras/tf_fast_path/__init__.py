"""The TensorFlow training step's fast path: the same loss and gradients, less time and memory.

For maintainers; nothing here is API. `DistillStepByStep` uses these modules
on the TensorFlow backend, and the tests prove each equal to the plain
computation it replaces (`tests/tf_fast_path/`), the whole step equal to the
objective every backend trains (`dss_keras.objective`; on JAX too,
`tests/test_jax_backend.py`). BENCHMARKS.md has what each is worth.

| module                | what it does                                                        |
|-----------------------|---------------------------------------------------------------------|
| `task_losses`         | each task's token losses, from the pieces below                     |
| `packing`             | several examples (both tasks') per row, kept apart by masks         |
| `seq2seq_parts`       | a T5 or BART called in pieces: encoder, decoder, vocabulary logits  |
| `remat`               | a transformer layer computed again in the backward pass             |
| `lean_t5`             | T5 norms and attention that keep less for the gradient; KerasHub's  |
|                       | layers back for tracing a graph that needs no gradient (export)     |
| `lean_feed_forward`   | T5's feed-forward block, keeping its input and two projections      |
| `activations`         | tanh-GELU keeping only its input                                    |
| `token_cross_entropy` | the token cross-entropy as separate ops                             |
| `train_function`      | one flat `tf.function` per step; glibc's heap back after the first  |
| `replicas`            | sums over the replicas of a `tf.distribute` strategy                |
| `cpu_runtime`         | pooled CPU memory and oneDNN kernels, when the user asks            |
| `options`             | checks of `examples_per_row` and `pad_to_multiple_of`               |
| `saved_names`         | T5's layer names in saved files: the same on every backend          |

Importing this package imports nothing; `cpu_runtime`, `options`, `saved_names`
and `activations` import no TensorFlow (every backend validates the options,
reads saved files and builds a tiny T5 with `gelu_tanh`).
"""
