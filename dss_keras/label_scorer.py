"""A closed label set, scored in one pass: the most likely of the known labels.

When a task's labels are a known set, there is no need to generate a label
token by token: the decoder can read every candidate label at once (teacher
forcing, `Decoder.sequence_log_probabilities`) and the most likely one wins.
That is one batched pass instead of one pass per generated token, and the
answer is always one of the labels (greedy generation may spell a label that
is not one).

`LabelSet` says where a row's candidates come from:

- a fixed set, e.g. NLI's `entailment,neutral,contradiction` or the labels of
  a custom task's answer format (`--answer-format positive,negative,mixed`);
- `choices`: each input's own multiple-choice lines, `(a) text` one per line
  (the layout of CommonsenseQA inputs); the candidate is the text after the
  letter, which is what such a model is trained to answer.

A candidate's score is the log-probability of its tokens and end token, the
same target the label task trains on (`MultiTaskPreprocessor.encode_targets`);
`probabilities` are those scores normalised over the row's candidates. A
`choices` row without any choice line has no candidate: its label is then
generated greedily, as `serving_default` would.

Examples:

>>> LabelSet.parse("entailment, neutral, contradiction").labels
('entailment', 'neutral', 'contradiction')
>>> LabelSet.parse("choices").candidates(
...     ["Where?\\nAnswer Choices:\\n(a) den\\n(b) river bank"]).to_list()
[[b'den', b'river bank']]
>>> label_set_for_data("cqa"), label_set_for_data("svamp")
(LabelSet(labels=(), choices=True), None)
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from dss_keras.data.teacher_outputs import NLI_LABELS

CHOICES = "choices"
"""The `LabelSet` spec of multiple-choice inputs."""

# A choice line: `(a) text`, any letter, the text not empty.
_CHOICE_LINE = r"\s*\([a-zA-Z]\)\s*\S.*"
_CHOICE_LETTER = r"^\s*\([a-zA-Z]\)"


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """The labels a closed-set signature chooses among.

    Args:
        labels: A fixed set of at least two labels (empty with `choices`).
        choices: Each input's own `(a) text` lines are its candidates.
    """

    labels: tuple[str, ...] = ()
    choices: bool = False

    def __post_init__(self):
        if self.choices == bool(self.labels):
            raise ValueError(
                "A label set is either fixed labels or `choices`, not both or neither. "
                f"Received: labels={self.labels!r}, choices={self.choices!r}"
            )
        if not self.choices and (len(set(self.labels)) != len(self.labels) or
                                 len(self.labels) < 2 or not all(self.labels)):
            raise ValueError(
                "A fixed label set needs at least two distinct, non-empty labels. "
                f"Received: labels={self.labels!r}"
            )

    @classmethod
    def parse(cls, spec: str) -> "LabelSet":
        """`"choices"`, or labels separated by commas (`"yes,no"`; spaces around them dropped)."""
        if spec.strip() == CHOICES:
            return cls(choices=True)
        return cls(labels=tuple(label.strip() for label in spec.split(",")))

    @property
    def spec(self) -> str:
        """The string `parse` reads back."""
        return CHOICES if self.choices else ",".join(self.labels)

    def candidates(self, texts) -> tf.RaggedTensor:
        """Strings `[batch]` -> each row's candidate labels, string `[batch, (candidates)]`."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if not self.choices:
            labels = tf.constant(self.labels, tf.string)
            rows = tf.tile(labels[None, :], [tf.shape(texts)[0], 1])
            return tf.RaggedTensor.from_tensor(rows)
        lines = tf.strings.split(texts, "\n")
        is_choice = tf.strings.regex_full_match(lines.flat_values, _CHOICE_LINE)
        choice = tf.strings.strip(tf.strings.regex_replace(lines.flat_values, _CHOICE_LETTER, ""))
        return tf.ragged.boolean_mask(lines.with_flat_values(choice),
                                      lines.with_flat_values(is_choice))


def label_set_for_data(data: str | None) -> LabelSet | None:
    """The label set of a named dataset (`TrainConfig.data`), or `None` when it has none.

    CQA's inputs carry their choices; e-SNLI's and ANLI's labels are NLI's three.
    """
    name = (data or "").removeprefix("tfds:")
    if name == "cqa":
        return LabelSet(choices=True)
    if name in ("esnli", "anli1"):
        return LabelSet(labels=NLI_LABELS)
    return None


def choose_label(decoder, preprocessor, texts, label_set: LabelSet, generate=None) -> dict:
    """Scores every candidate of every row in one pass; returns the most likely ones.

    Args:
        decoder: The model's `dss_keras.decoding.Decoder`.
        preprocessor: A `MultiTaskPreprocessor` (in the serving graph, on its
            TensorFlow Text tokenizer).
        texts: string `[batch]`, the raw inputs.
        label_set: Where the candidates come from.
        generate: `texts -> labels`, for rows without a candidate (greedy
            generation); required for a `choices` set.

    Returns:
        A dict of `label` (string `[batch]`), `probabilities` (float32
        `[batch, candidates]`, 0 past a row's own candidates) and
        `candidates` (string `[batch, candidates]`, `""` past them).
    """
    texts = tf.convert_to_tensor(texts, tf.string)
    candidates = label_set.candidates(texts)
    counts = candidates.row_lengths()
    target_ids, target_mask = preprocessor.encode_targets(candidates.flat_values, "label")
    inputs = preprocessor.encode_inputs(texts, "label")
    scores = decoder.sequence_log_probabilities(
        inputs["encoder_token_ids"],
        inputs["encoder_padding_mask"],
        tf.RaggedTensor.from_row_lengths(target_ids, counts).to_tensor(preprocessor.pad_token_id),
        tf.RaggedTensor.from_row_lengths(target_mask, counts).to_tensor(0),
        decoder_start_ids=preprocessor.decoder_start_ids,
    )
    present = tf.sequence_mask(counts, tf.shape(scores)[1])
    scores = tf.where(present, scores, tf.constant(-float("inf")))
    # One more column that never wins, so that a batch without any candidate has one.
    padded = tf.pad(scores, [[0, 0], [0, 1]], constant_values=-float("inf"))
    best = tf.argmax(padded, axis=1, output_type=tf.int32)
    # Softmax over each row's own candidates (a row without any gets zeros).
    shifted = tf.exp(scores - tf.reduce_max(tf.where(present, scores, 0.0), 1, keepdims=True))
    shifted = tf.where(present, shifted, 0.0)
    probabilities = tf.math.divide_no_nan(shifted, tf.reduce_sum(shifted, 1, keepdims=True))
    names = candidates.to_tensor("")
    label = tf.gather(tf.pad(names, [[0, 0], [0, 1]]), best, batch_dims=1)
    if label_set.choices:
        if generate is None:
            raise ValueError("A `choices` label set needs `generate` for rows without "
                             "choices. Received: generate=None")
        has_choices = counts > 0
        generated = tf.cond(tf.reduce_all(has_choices), lambda: label,
                            lambda: generate(texts))
        label = tf.where(has_choices, label, generated)
    return {"label": label, "probabilities": probabilities, "candidates": names}
