"""`DistillStepByStep`: a Keras model that trains a seq2seq LM on labels and rationales."""

from __future__ import annotations

from typing import Sequence

import keras

from dss_keras import objective
from dss_keras import optimizers as _optimizers  # noqa: F401  (registers them for loading)
from dss_keras.config import TASKS, TrainConfig, tasks_of
from dss_keras.generation import text_generator
from dss_keras.metrics.token_mean import TokenMean
from dss_keras.preprocessor import MultiTaskPreprocessor
from dss_keras.tf_fast_path import activations as _activations  # noqa: F401  (registers gelu_tanh)
from dss_keras.tf_fast_path.options import check_examples_per_row, check_length_multiple
from dss_keras.tf_fast_path.saved_names import names_lean_layers

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
"""Whether this process trains with the TensorFlow fast path (Keras' backend is TensorFlow)."""

if ON_TENSORFLOW:  # The fast path; other backends import no TensorFlow here.
    import tensorflow as tf

    from dss_keras.tf_fast_path import replicas
    from dss_keras.tf_fast_path.lean_t5 import use_keras_hub_layer_classes, use_lean_t5_layers
    from dss_keras.tf_fast_path.seq2seq_parts import Seq2SeqParts
    from dss_keras.tf_fast_path.task_losses import packs_rows, task_token_losses
    from dss_keras.tf_fast_path.train_function import flat_train_function


def _sum_over_replicas(value):
    """`value` summed over the replicas of a `tf.distribute` strategy; itself elsewhere."""
    return replicas.all_reduce_sum(value) if ON_TENSORFLOW else value


def _is_t5(seq2seq_lm) -> bool:
    return type(getattr(seq2seq_lm, "backbone", None)).__name__ == "T5Backbone"


@keras.saving.register_keras_serializable(package="dss_keras")
class DistillStepByStep(keras.Model):
    """Distilling step-by-step around any KerasHub `Seq2SeqLM`.

    The wrapped model learns two tasks that share all its weights, told apart
    by a prefix on the input: `predict: <x>` -> label and `explain: <x>` ->
    rationale. Training minimises

        alpha * label_loss + (1 - alpha) * rationale_loss

    where each task loss is the mean cross-entropy over the non-padding target
    tokens of that task in the (global) batch. In `"standard"` mode only the
    label task is trained: with human labels that is standard finetuning, with
    teacher labels standard distillation.

    Batches come from `dss_keras.data.make_dataset`: `(x, y, sample_weight)`
    where each is a dict keyed by task (`"label"`, `"rationale"`), `x[task]`
    holding KerasHub's four `encoder_*`/`decoder_*` tensors.

    The objective is written once, with `keras.ops`, in `compute_loss`
    (`dss_keras.objective`): on JAX and PyTorch Keras' own `train_step` trains
    it, under `keras.distribution` too. On TensorFlow the training step is the
    fast path of `dss_keras.tf_fast_path`, whose loss and gradients are those
    of `compute_loss` (`tests/tf_fast_path/test_fast_loss.py`); the options
    below that say "T5 only" or "not under XLA" are its options, and other
    backends keep them in the config but train the plain model.

    Args:
        seq2seq_lm: A `keras_hub.models.Seq2SeqLM` with a preprocessor (its
            tokenizer is used), e.g. `keras_hub.models.T5Seq2SeqLM`.
        alpha: Weight of the label loss, in [0, 1].
        mode: `"distill_step_by_step"` (both tasks) or `"standard"`.
        label_prefix, rationale_prefix: The task prefixes.
        max_input_length, max_label_length, max_rationale_length: Token
            budgets (end token included) for inputs and the two targets; also
            the generation budgets of `predict_labels()` and `explain()`.
        sequence_layout: The special ids of the sequences
            (`encoder_start_ids`, `decoder_start_ids`, `end_token_id`,
            `pad_token_id`); read off `seq2seq_lm.preprocessor` by default.
        logits_at_targets_only: Project onto the vocabulary only the decoder
            states of real target tokens, not padding (the same loss, less
            work; not under XLA, which needs static shapes).
        shared_encoder_pass: Run the `predict:` and `explain:` inputs through
            the encoder as one batch (T5 only); with packed rows, both tasks'
            examples share the rows and go through the encoder and the decoder
            in one call each (a smaller traced step: less memory). `None`
            (default): on when rows are packed, off otherwise (unpacked, it
            did not pay on CPU; see BENCHMARKS.md).
        rematerialize: Recompute each transformer layer in the backward pass
            instead of keeping its activations (T5 only): less memory for
            more compute, the same gradients (`dss_keras.tf_fast_path.remat`).
        examples_per_row: Pack up to this many examples of a batch into one
            row, with attention masks that keep them apart, so that the
            encoder and decoder do (almost) no work on padding (T5 only,
            not under XLA; `dss_keras.tf_fast_path.packing`). The loss and gradients are
            the padded batch's; 1 turns packing off.
        pad_to_multiple_of: With packing, round packed rows' lengths and the
            count of projected target tokens up to a multiple of this (extra
            positions weigh nothing), so that few shapes, and few of oneDNN's
            per-shape kernels, are made (BENCHMARKS.md). 1: exact lengths.

    With any of these options a T5 or BART model is called in pieces
    (`dss_keras.tf_fast_path.seq2seq_parts`); other models always run whole. The loss and
    its gradients are the same either way.

    A T5's tanh-GELU, norms, attention and feed-forward blocks compute as
    `dss_keras.tf_fast_path.lean_t5` says: the same outputs, fewer activations kept.

    Examples:

    >>> from dss_keras import testing
    >>> from dss_keras.data import make_dataset
    >>> model = DistillStepByStep(testing.tiny_seq2seq_lm(), max_label_length=4,
    ...                           max_rationale_length=16, max_input_length=48)
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> dataset, report = make_dataset(testing.toy_records(16), model.preprocessor,
    ...                                batch_size=8)
    >>> history = model.fit(dataset, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['label_loss', 'label_token_accuracy', 'loss', 'rationale_loss']
    >>> len(model.predict_labels(["Ana has 3 cups. Then Ana finds 2 more. "
    ...                           "How many cups does Ana have now?"]))
    1
    """

    def __init__(
        self,
        seq2seq_lm: keras.Model,
        alpha: float = TrainConfig.alpha,
        mode: str = TrainConfig.mode,
        label_prefix: str = TrainConfig.label_prefix,
        rationale_prefix: str = TrainConfig.rationale_prefix,
        max_input_length: int = TrainConfig.max_input_length,
        max_label_length: int = TrainConfig.max_label_length,
        max_rationale_length: int = TrainConfig.max_rationale_length,
        sequence_layout: dict | None = None,
        logits_at_targets_only: bool = True,
        shared_encoder_pass: bool | None = None,
        rematerialize: bool = False,
        examples_per_row: int = TrainConfig.examples_per_row,
        pad_to_multiple_of: int = 16,
        **kwargs,
    ):
        super().__init__(**kwargs)
        tasks_of(mode)  # checks it
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1]. Received: alpha={alpha}")
        self.seq2seq_lm = seq2seq_lm
        self.alpha = float(alpha)
        self.mode = mode
        self.logits_at_targets_only = bool(logits_at_targets_only)
        self._shared_encoder_pass = (None if shared_encoder_pass is None
                                     else bool(shared_encoder_pass))
        self.seq2seq_parts = Seq2SeqParts.of(seq2seq_lm) if ON_TENSORFLOW else None
        self._use_lean_layers()
        self.rematerialize = bool(rematerialize)
        if self.rematerialize and not _is_t5(seq2seq_lm):
            raise ValueError("`rematerialize=True` needs a T5 model (keras_hub.models."
                             f"T5Seq2SeqLM). Received: {type(seq2seq_lm).__name__}")
        self.examples_per_row = check_examples_per_row(examples_per_row)
        self.pad_to_multiple_of = check_length_multiple(pad_to_multiple_of,
                                                        "pad_to_multiple_of")
        self.preprocessor = MultiTaskPreprocessor.from_seq2seq_lm(
            seq2seq_lm,
            **(sequence_layout or {}),
            label_prefix=label_prefix,
            rationale_prefix=rationale_prefix,
            max_input_length=max_input_length,
            max_label_length=max_label_length,
            max_rationale_length=max_rationale_length,
        )
        self.loss_tracker = TokenMean(name="loss")
        self.task_loss_trackers = {task: TokenMean(name=f"{task}_loss") for task in TASKS}
        self.label_accuracy_tracker = TokenMean(name="label_token_accuracy")
        self._generate_functions = {}
        # All weights live in the (already built) seq2seq LM.
        self.built = True

    @property
    def tasks(self) -> tuple[str, ...]:
        """The trained tasks: both, or only `"label"` in standard mode."""
        return tasks_of(self.mode)

    @property
    def shared_encoder_pass(self) -> bool:
        """Whether both tasks go through the encoder together (see the class docstring)."""
        if self._shared_encoder_pass is None:  # on exactly when rows are packed
            return ON_TENSORFLOW and packs_rows(self)
        return self._shared_encoder_pass

    @property
    def metrics(self):
        trackers = [self.loss_tracker, self.task_loss_trackers["label"]]
        if "rationale" in self.tasks:
            trackers.append(self.task_loss_trackers["rationale"])
        return trackers + [self.label_accuracy_tracker]

    def call(self, inputs, training=False):
        """Logits of one task's four KerasHub inputs, or a dict of them per task."""
        if "encoder_token_ids" in inputs:
            return self.seq2seq_lm(inputs, training=training)
        return {task: self.seq2seq_lm(inputs[task], training=training) for task in inputs}

    # --- the objective, on every backend -------------------------------------

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss of a batch from the logits of each task (`dss_keras.objective`).

        Keras' own `train_step` and `test_step` call it with `y_pred =
        self(x)`; it updates the metrics too. Under `tf.distribute` it returns
        the replica's share (the token counts are summed over the replicas).

        Args:
            x, y, sample_weight: A batch of `dss_keras.data.make_dataset`.
            y_pred: `self(x)`, the logits of each task (computed when `None`).
            training: Whether dropout is on (when `y_pred` is computed here).

        Returns:
            The scalar loss.
        """
        if y_pred is None:
            y_pred = self(x, training=training)
        statistics = {
            task: objective.task_statistics(*objective.token_losses(y_pred[task], y[task]),
                                            sample_weight[task])
            for task in self.tasks
        }
        loss = objective.total_loss(statistics, self.mode, self.alpha, _sum_over_replicas)
        self._update_metrics(loss, statistics)
        return loss

    def _update_metrics(self, loss, statistics):
        # Like Keras, `loss` is averaged over batches weighted by their size. The
        # weight must come from the data: a constant increment has no data
        # dependency, so TF may run it before the iterator reports its end, and
        # the last (empty) call of an epoch would count one batch too many.
        examples = _sum_over_replicas(keras.ops.cast(statistics["label"][3], "float32"))
        self.loss_tracker.update_state(_sum_over_replicas(loss) * examples, examples)
        for task, (total, count, _, _) in statistics.items():
            self.task_loss_trackers[task].update_state(total, count)
        _, label_count, label_correct, _ = statistics["label"]
        self.label_accuracy_tracker.update_state(label_correct, label_count)

    # --- the TensorFlow fast path ---------------------------------------------

    def _use_lean_layers(self):
        """A T5's lean layers (`dss_keras.tf_fast_path.lean_t5`): same outputs, less kept."""
        if self.seq2seq_parts and self.seq2seq_parts.can_split_encoder:
            use_lean_t5_layers(self.seq2seq_parts.backbone)

    def compute_task_losses(self, x, y, sample_weight, training=False):
        """The fast path's loss (TensorFlow only): `compute_loss`'s value, with less work.

        Each task's token losses come from `dss_keras.tf_fast_path.task_losses`
        (packed rows, targets gathered, ...) and are reduced by
        `dss_keras.objective` as in `compute_loss`; the metrics are left alone.

        Returns:
            `(loss, statistics)`: the replica's loss share, and for each task
            `(token_loss_sum, token_count, correct_tokens, examples)` of this
            replica.
        """
        self._use_lean_layers()  # again, if a save gave the layers KerasHub's classes
        token_losses = task_token_losses(self, x, y, sample_weight, training)
        statistics = {task: objective.task_statistics(*token_losses[task],
                                                      examples=tf.shape(y[task])[0])
                      for task in self.tasks}
        loss = objective.total_loss(statistics, self.mode, self.alpha, _sum_over_replicas)
        return loss, statistics

    def _metric_results(self) -> dict:
        results = {m.name: m.result() for m in self.metrics}
        if replicas.across_workers():
            # Keras averages a multi-worker step's outputs with `strategy.reduce(MEAN,
            # axis=0)`, which needs an axis: one-element vectors come back as scalars.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not ON_TENSORFLOW:
            return super()._maybe_symbolic_build(iterator, data_batch)
        # Keras builds a model created under a strategy from a peeked batch, which it
        # reduces with `strategy.reduce`: that fails for nested batches under a
        # MultiWorkerMirroredStrategy. The weights and metrics here exist from the start;
        # only the optimizer's variables are left, and they need no batch.
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    def train_step(self, *args):
        if not ON_TENSORFLOW:  # Keras' own step: `compute_loss`, then the optimizer
            return super().train_step(*args)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(*args)
        with tf.GradientTape() as tape:
            loss, statistics = self.compute_task_losses(x, y, sample_weight, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_metrics(loss, statistics)
        return self._metric_results()

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        if (not ON_TENSORFLOW or self.run_eagerly or self.jit_compile
                or self.steps_per_execution != 1):
            return super().make_train_function(force=force)
        self.train_function = flat_train_function(self)
        return self.train_function

    def test_step(self, *args):
        if not ON_TENSORFLOW:
            return super().test_step(*args)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(*args)
        loss, statistics = self.compute_task_losses(x, y, sample_weight, training=False)
        self._update_metrics(loss, statistics)
        return self._metric_results()

    # --- generation ----------------------------------------------------------

    def _generate_function(self, task: str):
        if task not in self._generate_functions:
            self._generate_functions[task] = text_generator(self, task)
        return self._generate_functions[task]

    def generate_text(
        self, texts: Sequence[str], task: str = "label", batch_size: int = 64
    ) -> list[str]:
        """Greedy generation for raw inputs (the task prefix is added here).

        On TensorFlow it runs `dss_keras.decoding` (the exported SavedModel's
        decoding); on other backends KerasHub's own cached `generate_step`
        with a greedy sampler. Both tokenize with `preprocessor`.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a whole number, at least 1. "
                             f"Received: batch_size={batch_size!r}")
        generate = self._generate_function(task)
        outputs = []
        for start in range(0, len(texts), batch_size):
            outputs += generate(texts[start : start + batch_size])
        return outputs

    def predict_labels(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        """Generates the label of each input (greedy, up to `max_label_length`)."""
        return self.generate_text(texts, "label", batch_size)

    def explain(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        """Generates the rationale of each input (greedy, up to `max_rationale_length`)."""
        return self.generate_text(texts, "rationale", batch_size)

    # --- serialization ---------------------------------------------------------

    # Keras names a functional model's layers in a saved file after their class, and calls
    # these two before it walks the layers (`dss_keras.tf_fast_path.saved_names`).

    def save_own_variables(self, store):
        """Before the layers are written: KerasHub's T5 classes, as on every backend."""
        if self.seq2seq_parts and self.seq2seq_parts.can_split_encoder:
            use_keras_hub_layer_classes(self.seq2seq_parts.backbone)
        super().save_own_variables(store)

    def load_own_variables(self, store):
        """Before the layers are read: the classes that the file names them by."""
        lean = names_lean_layers(store)
        if self.seq2seq_parts and self.seq2seq_parts.can_split_encoder:
            if lean:
                use_lean_t5_layers(self.seq2seq_parts.backbone)
            else:
                use_keras_hub_layer_classes(self.seq2seq_parts.backbone)
        elif lean:
            raise ValueError(
                "This file was written by dss-keras 0.1 on TensorFlow, which named T5's "
                "layers after classes of TensorFlow's fast path. Load it on TensorFlow and "
                "save it again (`model.save(path)`) to use it on this backend. Received: "
                f"backend={keras.backend.backend()!r}")
        super().load_own_variables(store)

    def get_config(self) -> dict:
        config = super().get_config()
        pre = self.preprocessor
        config.update(
            {
                "seq2seq_lm": keras.saving.serialize_keras_object(self.seq2seq_lm),
                "alpha": self.alpha,
                "mode": self.mode,
                "label_prefix": pre.label_prefix,
                "rationale_prefix": pre.rationale_prefix,
                "max_input_length": pre.max_input_length,
                "max_label_length": pre.max_label_length,
                "max_rationale_length": pre.max_rationale_length,
                "logits_at_targets_only": self.logits_at_targets_only,
                "shared_encoder_pass": self._shared_encoder_pass,
                "rematerialize": self.rematerialize,
                "examples_per_row": self.examples_per_row,
                "pad_to_multiple_of": self.pad_to_multiple_of,
                "sequence_layout": {
                    "encoder_start_ids": pre.encoder_start_ids,
                    "decoder_start_ids": pre.decoder_start_ids,
                    "end_token_id": pre.end_token_id,
                    "pad_token_id": pre.pad_token_id,
                },
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # The wrapped LM's own compile settings are never used (this model compiles); Keras
        # would warn that it cannot restore them (KerasHub's tasks override `compile`).
        lm_config = {k: v for k, v in config["seq2seq_lm"].items() if k != "compile_config"}
        config["seq2seq_lm"] = keras.saving.deserialize_keras_object(lm_config)
        return cls(**config)
