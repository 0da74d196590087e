"""Packing puts each example's tokens in one row, apart from the others, and changes no result."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import testing
from dss_keras.data import make_dataset
from dss_keras.model import DistillStepByStep
from dss_keras.tf_fast_path.packing import check_examples_per_row, pack_task, round_up
from dss_keras.tf_fast_path.seq2seq_parts import Seq2SeqParts
from dss_keras.tf_fast_path.task_losses import packs_rows


def _inputs(encoder_lengths, decoder_lengths, seed=0):
    """A padded batch whose real tokens all have different ids (1, 2, ...)."""
    rng = np.random.default_rng(seed)
    batch = len(encoder_lengths)

    def side(lengths):
        width = max(lengths) + int(rng.integers(0, 3))
        mask = np.arange(width)[None, :] < np.array(lengths)[:, None]
        ids = rng.permutation(np.arange(1, batch * width + 1)).reshape(batch, width)
        return np.where(mask, ids, 0), mask.astype("int32")

    encoder_ids, encoder_mask = side(encoder_lengths)
    decoder_ids, decoder_mask = side(decoder_lengths)
    return {"encoder_token_ids": encoder_ids, "encoder_padding_mask": encoder_mask,
            "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}


def _segments(mask_rows):
    """Per row, the runs of positions that attend to each other (from a packed self mask)."""
    return [{tuple(np.flatnonzero(row)) for row in rows if row.any()} for rows in mask_rows]


@pytest.mark.parametrize("length_multiple", [1, 8])
@pytest.mark.parametrize("examples_per_row", [1, 2, 3, 4, 7, 9])
def test_every_example_sits_whole_in_one_row_and_sees_only_itself(examples_per_row,
                                                                   length_multiple):
    rng = np.random.default_rng(examples_per_row)
    encoder_lengths = rng.integers(1, 30, size=7).tolist()
    decoder_lengths = rng.integers(1, 12, size=7).tolist()
    inputs = _inputs(encoder_lengths, decoder_lengths)
    packed = pack_task(inputs, examples_per_row, length_multiple)
    rows = packed.rows.numpy()
    num_rows = -(-7 // examples_per_row)
    assert packed.encoder_token_ids.shape[0] == packed.decoder_token_ids.shape[0] == num_rows
    assert np.bincount(rows, minlength=num_rows).max() <= examples_per_row
    # No work on padding beyond each row's end: rows are as long as the longest row,
    # rounded up to the multiple.
    for side, lengths in (("encoder", encoder_lengths), ("decoder", decoder_lengths)):
        row_sums = np.bincount(rows, weights=lengths, minlength=num_rows)
        width = getattr(packed, f"{side}_token_ids").shape[1]
        assert width == round_up(int(row_sums.max()), length_multiple)
        assert width % length_multiple == 0
    assert packed.encoder_token_ids.shape[1] <= round_up(
        max(encoder_lengths) * min(examples_per_row, 7), length_multiple)
    for side, lengths in (("encoder", encoder_lengths), ("decoder", decoder_lengths)):
        ids = getattr(packed, f"{side}_token_ids").numpy()
        mask = getattr(packed, f"{side}_attention_mask").numpy()
        segments = _segments(mask)
        for example, length in enumerate(lengths):
            real = inputs[f"{side}_token_ids"][example, :length]
            row = ids[rows[example]]
            starts = [s for s in range(len(row) - length + 1)
                      if (row[s:s + length] == real).all()]
            assert len(starts) == 1, (side, example)
            # The example's positions attend to each other and to nothing else.
            assert tuple(range(starts[0], starts[0] + length)) in segments[rows[example]]
        # Every real token was placed once: packed non-padding equals the batch's.
        assert (ids != 0).sum() == (inputs[f"{side}_token_ids"] != 0).sum()
    # Cross-attention: a decoder token sees exactly its example's encoder tokens.
    cross = packed.cross_attention_mask.numpy()
    encoder_mask = packed.encoder_attention_mask.numpy()
    decoder_ids = packed.decoder_token_ids.numpy()
    for row in range(num_rows):
        for query in np.flatnonzero(decoder_ids[row]):
            keys = np.flatnonzero(cross[row, query])
            assert len(keys) and tuple(keys) in _segments(encoder_mask[row:row + 1])[0]


def test_snake_order_keeps_rows_balanced():
    # Four long and four short examples: each of two rows gets two of each.
    packed = pack_task(_inputs([40, 38, 36, 34, 5, 4, 3, 2], [3] * 8), examples_per_row=4)
    assert packed.encoder_token_ids.shape == (2, 40 + 34 + 5 + 2)


def test_states_gathered_from_packed_rows_equal_the_padded_batch():
    lm = testing.tiny_seq2seq_lm(hidden_dim=32, num_layers=2)
    model = DistillStepByStep(lm, max_input_length=48, max_label_length=4,
                              max_rationale_length=16, examples_per_row=1)
    dataset, _ = make_dataset(testing.toy_records(9), model.preprocessor, batch_size=9,
                              shuffle=False, bucket_boundaries=[])
    x, _, weights = next(iter(dataset))
    parts = Seq2SeqParts.of(lm)
    inputs = x["rationale"]
    padded = parts.hidden_states(inputs)
    packed = pack_task(inputs, 4)
    encoded = parts.encode(packed.encoder_token_ids, None,
                           attention_mask=packed.encoder_attention_mask)
    hidden = parts.decode(packed.decoder_token_ids, None, encoded, None,
                          attention_mask=packed.decoder_attention_mask,
                          encoder_attention_mask=packed.cross_attention_mask)
    positions = tf.where(inputs["decoder_padding_mask"] > 0)
    np.testing.assert_allclose(packed.decoder_states_at(hidden, positions),
                               tf.gather_nd(padded, positions), atol=1e-5)
    assert hidden.shape[0] == 3 and hidden.shape[1] < 4 * padded.shape[1]


def test_packing_is_only_for_t5_outside_xla_and_options_are_checked():
    model = testing.tiny_model(examples_per_row=4)
    assert packs_rows(model)
    model.compile(optimizer="adam", jit_compile=True)
    assert not packs_rows(model)  # XLA wants static shapes: the padded batch runs
    for wrong in (0, 2.0, "2", True):
        with pytest.raises(ValueError, match="examples_per_row"):
            testing.tiny_model(examples_per_row=wrong)
    assert check_examples_per_row(np.int64(3)) == 3  # e.g. from a tuner or a NumPy config
    for wrong in (0, 8.0, None):
        with pytest.raises(ValueError, match="pad_to_multiple_of"):
            testing.tiny_model(pad_to_multiple_of=wrong)
    assert testing.tiny_model().pad_to_multiple_of == 16
    assert type(check_examples_per_row(np.int64(3))) is int


@pytest.mark.parametrize("shared_encoder_pass, calls", [(True, 1), (False, 2)])
def test_both_tasks_share_the_rows_with_a_shared_encoder_pass(monkeypatch, shared_encoder_pass,
                                                              calls):
    model = testing.tiny_model(examples_per_row=2, shared_encoder_pass=shared_encoder_pass)
    dataset, _ = make_dataset(testing.toy_records(6), model.preprocessor, batch_size=6)
    x, y, w = next(iter(dataset))
    rows = []
    for name in ("encode", "decode"):
        call = getattr(model.seq2seq_parts, name)
        monkeypatch.setattr(model.seq2seq_parts, name, lambda ids, *a, _call=call, **k:
                            rows.append(ids.shape[0]) or _call(ids, *a, **k))
    model.compute_task_losses(x, y, w)
    # Six examples per task in rows of two: three rows per task, or six for both at once.
    assert rows == [6 // calls] * (2 * calls)


def test_a_packed_model_fits_and_lowers_its_loss():
    model = testing.tiny_model(examples_per_row=4)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    dataset, _ = make_dataset(testing.toy_records(32), model.preprocessor, batch_size=8)
    losses = model.fit(dataset, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]


def test_configs_carry_the_packing_and_old_ones_load_as_unpacked(tmp_path):
    import json

    from dss_keras.config import TrainConfig

    config = TrainConfig()
    assert config.examples_per_row == 4  # `dss-keras train` and the recipes pack
    config.save(tmp_path / "new.json")
    assert TrainConfig.load(tmp_path / "new.json").examples_per_row == 4
    saved = config.to_dict()
    del saved["examples_per_row"]  # a run directory from before packing existed
    (tmp_path / "old.json").write_text(json.dumps(saved))
    assert TrainConfig.load(tmp_path / "old.json").examples_per_row == 1
    with pytest.raises(ValueError, match="examples_per_row"):
        TrainConfig(examples_per_row=0)


def test_an_empty_batch_packs_and_gives_no_loss():
    """A replica may get no example of a short last batch under a tf.distribute strategy."""
    model = testing.tiny_model(examples_per_row=4)
    dataset, _ = make_dataset(testing.toy_records(4), model.preprocessor, batch_size=4)
    empty = tf.nest.map_structure(lambda t: t[:0], next(iter(dataset)))
    with tf.GradientTape() as tape:
        loss, statistics = model.compute_task_losses(*empty, training=True)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert float(loss) == 0.0 and all(float(s[1]) == 0.0 for s in statistics.values())
    assert all(float(tf.reduce_sum(tf.abs(tf.convert_to_tensor(g)))) == 0.0
               for g in gradients if g is not None)
