"""The authors' optimizer (linear decay, clipping, epsilon) and loss scaling for float16."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import experiments, optimizers, testing
from dss_keras.config import TrainConfig
from dss_keras.training import make_optimizer


def test_linear_schedule_at_the_start_middle_and_end():
    config = TrainConfig(lr_schedule="linear", learning_rate=2e-3, steps=100, eval_every=25)
    schedule = make_optimizer(config).learning_rate  # evaluated at step 0
    assert float(schedule) == pytest.approx(2e-3)
    decay = make_optimizer(config)._learning_rate
    for step, expected in [(0, 2e-3), (50, 1e-3), (75, 0.5e-3), (100, 0.0), (130, 0.0)]:
        assert float(decay(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    # With accumulation the schedule counts optimizer steps (Keras passes batches).
    accumulated = make_optimizer(config.replace(gradient_accumulation_steps=4))._learning_rate
    assert accumulated.decay_steps == 25
    assert float(accumulated(4 * 12 + 3)) == pytest.approx(2e-3 * (1 - 12 / 25))


def test_each_update_uses_the_learning_rate_of_its_step():
    """Hugging Face's convention: update t (from 0) uses lr * (1 - t / steps)."""
    steps, lr = 4, 1e-2
    optimizer = make_optimizer(TrainConfig(lr_schedule="linear", learning_rate=lr, steps=steps,
                                           eval_every=steps, adam_epsilon=1e-12))
    variable = keras.Variable([0.0])
    moves = []
    for _ in range(steps):
        before = float(variable.numpy()[0])
        # A constant gradient: each Adam update moves the weight by the learning rate.
        optimizer.apply([tf.constant([1.0])], [variable])
        moves.append(before - float(variable.numpy()[0]))
    np.testing.assert_allclose(moves, [lr * (1 - t / steps) for t in range(steps)], rtol=1e-4)


def test_clipping_to_the_global_norm():
    grads = [tf.constant([3.0, 0.0]), None, tf.constant([[0.0], [4.0]])]  # global norm 5
    assert float(optimizers.clip_factor(grads, 1.0)) == pytest.approx(0.2)
    assert float(optimizers.clip_factor(grads, 10.0)) == 1.0  # below the norm: untouched
    assert make_optimizer(TrainConfig(clip_global_norm=1.0)).global_clipnorm == 1.0
    assert make_optimizer(TrainConfig()).global_clipnorm is None  # off by default


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, np.inf])
def test_clip_factor_is_keras_clipping(scale):
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    rng = np.random.default_rng(0)
    grads = [tf.constant(rng.normal(size=(30, 7)).astype("float32") * scale), None,
             tf.constant(rng.normal(size=(5,)).astype("float32"))]
    factor = optimizers.clip_factor(grads, 1.0)
    want = clip_by_global_norm([g for g in grads if g is not None], 1.0)
    for got_one, want_one in zip([grads[0] * factor, grads[2] * factor], want):
        # A gradient with an infinite norm becomes NaN, as in Keras.
        np.testing.assert_allclose(got_one, want_one, rtol=1e-6)


def _train_both(gradient_scales, accumulation=None, weight_decay=0.0, clip=1.0):
    """Keras' AdamW and ours from the same start on the same gradients: weights, moments."""
    rng = np.random.default_rng(1)
    starts = [rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(3,)).astype("float32")]
    steps = [[rng.normal(size=s.shape).astype("float32") * scale for s in starts]
             for scale in gradient_scales]
    results = []
    for cls in (keras.optimizers.AdamW, optimizers.AdamW):
        variables = [keras.Variable(start) for start in starts]
        optimizer = cls(learning_rate=1e-2, weight_decay=weight_decay, epsilon=1e-8,
                        global_clipnorm=clip, gradient_accumulation_steps=accumulation)

        @tf.function
        def step(gradients):
            optimizer.apply(gradients, variables)

        for gradients in steps:
            step([tf.constant(g) for g in gradients])
        if cls is optimizers.AdamW:
            moments = [(optimizer.first_moment(v), optimizer.second_moment(v)) for v in variables]
        else:
            moments = [(optimizer._momentums[i], optimizer._velocities[i])
                       for i in range(len(variables))]
        results.append(([v.numpy() for v in variables],
                        [[np.asarray(m) for m in pair] for pair in moments]))
    assert np.abs(results[1][0][0] - starts[0]).max() > 1e-2  # it moved
    return results


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("accumulation", [None, 2])
def test_clipping_in_the_kernels_scalars_is_keras_adamw(weight_decay, accumulation):
    # Norms far above the clip, below it and at it, in changing order.
    scales = [30.0, 0.01, 1.0, 1000.0, 0.3, 5.0, 0.05, 200.0]
    (want, want_moments), (got, got_moments) = _train_both(scales, accumulation, weight_decay)
    for got_one, want_one in zip(got, want):
        np.testing.assert_allclose(got_one, want_one, rtol=1e-5, atol=1e-6)
    for got_pair, want_pair in zip(got_moments, want_moments):
        for got_one, want_one in zip(got_pair, want_pair):
            np.testing.assert_allclose(got_one, want_one, rtol=1e-4, atol=1e-12)


def test_huge_gradients_are_clipped_without_overflow():
    # c is about 1e-18: 1e-3 c**2 is below float32's normal range, not float64's.
    (want, _), (got, _) = _train_both([1e17, 1e17, 1.0])
    assert all(np.isfinite(g).all() for g in got)
    for got_one, want_one in zip(got, want):
        np.testing.assert_allclose(got_one, want_one, rtol=1e-5, atol=1e-6)


def test_a_weight_without_a_gradient_keeps_its_moments():
    rng = np.random.default_rng(2)
    starts = [rng.normal(size=(3, 2)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    steps = [([tf.constant(rng.normal(size=s.shape).astype("float32") * scale) for s in starts],
              both) for scale, both in [(5.0, True), (0.1, False), (3.0, True)]]
    results = []
    for cls in (keras.optimizers.AdamW, optimizers.AdamW):
        variables = [keras.Variable(start) for start in starts]
        optimizer = cls(learning_rate=1e-2, global_clipnorm=1.0)
        for grads, both in steps:
            optimizer.apply(grads if both else [grads[0], None], variables)
            if not both:  # the second weight got no update: neither did its moments
                index = optimizer._get_variable_index(variables[1])
                moments = ((optimizer.first_moment(variables[1]),
                            optimizer.second_moment(variables[1]))
                           if cls is optimizers.AdamW else
                           (optimizer._momentums[index], optimizer._velocities[index]))
                results.append([np.asarray(m) for m in moments])
        results.append([v.numpy() for v in variables])
    (want_moments, want), (got_moments, got) = results[:2], results[2:]
    for got_one, want_one in zip(got_moments + got, want_moments + want):
        np.testing.assert_allclose(got_one, want_one, rtol=1e-5, atol=1e-7)


def test_clipped_gradients_are_read_by_the_norm_and_the_kernel_only():
    variable = keras.Variable(np.ones((4, 3), "float32"))
    optimizer = optimizers.AdamW(learning_rate=0.1, global_clipnorm=1.0)
    optimizer.build([variable])

    @tf.function
    def step(gradient):
        optimizer.apply([gradient], [variable])

    graph = step.get_concrete_function(tf.TensorSpec([4, 3], "float32")).graph
    (gradient,) = [op for op in graph.get_operations() if op.type == "Placeholder"
                   and op.outputs[0].shape == (4, 3)]
    readers = {op.type for op in graph.get_operations()
               if any(t.op is gradient for t in op.inputs)}
    # Keras' clipping multiplies every gradient by the clipping factor, a whole-tensor op.
    assert readers == {"L2Loss", "ResourceApplyAdam"}


def test_sparse_gradients_are_summed_before_adam():
    """A row looked up twice gets Adam's moments of the summed gradient."""
    dense, sparse = keras.Variable([[1.0], [1.0]]), keras.Variable([[1.0], [1.0]])
    dense_optimizer, sparse_optimizer = optimizers.AdamW(0.1), optimizers.AdamW(0.1)
    for _ in range(3):
        dense_optimizer.apply([tf.constant([[0.3], [0.0]])], [dense])
        sparse_optimizer.apply(
            [tf.IndexedSlices(tf.constant([[0.1], [0.2]]), tf.constant([0, 0]),
                              tf.constant([2, 1]))], [sparse])
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-6)


def test_the_recipes_train_with_the_authors_optimizer():
    config = experiments.BenchmarkRecipe("cqa").config()
    assert (config.lr_schedule, config.clip_global_norm, config.adam_epsilon,
            config.weight_decay) == ("linear", 1.0, 1e-8, 0.0)
    optimizer = make_optimizer(config)
    assert optimizer.epsilon == 1e-8 and optimizer.global_clipnorm == 1.0
    assert optimizer.epsilon_placement == "pytorch"
    assert optimizer._learning_rate.decay_steps == config.steps


def _pytorch_adamw(gradients, lr, eps, b1=0.9, b2=0.999):
    """`torch.optim.AdamW` with weight decay 0, in float64: the weight after `gradients`."""
    weight, m, v = np.zeros(len(gradients[0])), 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        g = np.asarray(g, "float64")
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        weight -= lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return weight


@pytest.mark.parametrize("fused", [True, False])
def test_epsilon_placement_pytorch_is_the_authors_adamw(fused):
    """Gradients near epsilon tell the placements apart (Keras' is 31.6x larger at step 1)."""
    gradients = [np.array([3e-9, -1e-8, 2e-6, 0.5], "float32"),
                 np.array([1e-8, 1e-8, -3e-6, 0.2], "float32"),
                 np.array([-2e-8, 4e-9, 1e-6, -0.1], "float32")]
    expected = _pytorch_adamw(gradients, lr=0.01, eps=1e-8)
    for placement in ("pytorch", "keras"):
        optimizer = optimizers.AdamW(learning_rate=0.01, epsilon=1e-8, weight_decay=0.0,
                                     epsilon_placement=placement)
        if not fused:  # Keras' own update, as under a strategy or off TensorFlow
            optimizer._fuses = lambda variable: False
        weight = keras.Variable(np.zeros(4, "float32"))
        for g in gradients:
            optimizer.apply([tf.constant(g)], [weight])
        close = np.allclose(weight.numpy(), expected, rtol=1e-5, atol=0)
        assert close == (placement == "pytorch"), (placement, weight.numpy(), expected)
        if placement == "keras":  # and Keras' placement is Keras' AdamW
            reference = keras.optimizers.AdamW(learning_rate=0.01, epsilon=1e-8,
                                               weight_decay=0.0)
            other = keras.Variable(np.zeros(4, "float32"))
            for g in gradients:
                reference.apply([tf.constant(g)], [other])
            np.testing.assert_allclose(weight.numpy(), other.numpy(), rtol=1e-4)


def test_epsilon_placement_is_saved_and_checked():
    optimizer = optimizers.AdamW(epsilon_placement="pytorch")
    restored = optimizers.AdamW.from_config(optimizer.get_config())
    assert restored.epsilon_placement == "pytorch"
    with pytest.raises(ValueError, match="epsilon_placement"):
        optimizers.AdamW(epsilon_placement="torch")
    with pytest.raises(ValueError, match="adam_epsilon_placement"):
        TrainConfig(adam_epsilon_placement="torch")


def test_settings_that_keep_older_runs_unchanged():
    config = TrainConfig()
    assert (config.lr_schedule, config.clip_global_norm, config.adam_epsilon,
            config.strategy) == ("constant", 0.0, 1e-7, "default")
    with pytest.raises(ValueError, match="clip_global_norm"):
        TrainConfig(clip_global_norm=-1.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


@pytest.mark.slow
def test_mixed_float16_scales_the_loss_and_skips_overflowing_steps(tmp_path):
    from dss_keras.data import make_dataset
    from dss_keras.training import build_model

    config = TrainConfig(dtype_policy="mixed_float16", vocabulary_size=120, hidden_dim=16,
                         intermediate_dim=32, num_layers=1, num_heads=2, max_input_length=48,
                         max_label_length=4, max_rationale_length=16, batch_size=8)
    records = testing.toy_records(16)
    model = build_model(config, records, str(tmp_path / "vocabulary.spm"))
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.seq2seq_lm.backbone.compute_dtype == "float16"
    assert float(optimizer.scale_loss(1.0)) == 2.0**15  # the initial dynamic scale

    scaled = []
    scale_loss = optimizer.scale_loss
    optimizer.scale_loss = lambda loss: scaled.append(loss) or scale_loss(loss)
    dataset, _ = make_dataset(records, model.preprocessor, batch_size=8, seed=0)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(dataset.take(1), epochs=1, verbose=0)
    assert scaled, "train_step did not scale the loss"
    changed = not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # A finite step updates the weights at the same scale; a non-finite one (KerasHub's T5
    # attention adds -1e9 in float16, i.e. -inf, to its masks: NaN on CPU) is skipped and
    # halves the scale. Either way the weights never take a non-finite update.
    if np.isfinite(history.history["loss"][0]):
        assert changed and float(optimizer.dynamic_scale.numpy()) == 2.0**15
    else:
        assert not changed and float(optimizer.dynamic_scale.numpy()) == 2.0**14
    assert float(optimizer.scale_loss(1.0)) == float(optimizer.dynamic_scale.numpy())

    # An overflowing step is skipped and halves the scale.
    after_step = [w.copy() for w in model.get_weights()]
    scale = float(optimizer.dynamic_scale.numpy())
    variables = model.trainable_variables
    optimizer.apply([tf.fill(v.shape, np.inf) for v in variables], variables)
    assert all(np.array_equal(a, b) for a, b in zip(after_step, model.get_weights()))
    assert float(optimizer.dynamic_scale.numpy()) == scale / 2


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_update_is_keras_adamw(weight_decay):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 4)).astype("float32")
    gradients = [rng.normal(size=(6, 4)).astype("float32") for _ in range(5)]
    weights = []
    for cls in (keras.optimizers.AdamW, optimizers.AdamW):
        variable = keras.Variable(start)
        optimizer = cls(learning_rate=1e-2, weight_decay=weight_decay, epsilon=1e-8)
        step = _apply_function(optimizer, variable)
        for gradient in gradients:
            step(tf.constant(gradient))
        weights.append(variable.numpy())
    assert np.abs(weights[1] - start).max() > 1e-2  # it moved
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-5, atol=1e-6)


def _apply_function(optimizer, variable):
    @tf.function
    def step(gradient):
        optimizer.apply([gradient], [variable])

    return step


def _decay_ops_and_their_inputs(optimizer_class, weight_decay):
    """The traced train step's `AssignSubVariableOp`s, each with the ops it waits for."""
    variable = keras.Variable(np.ones((4, 3), "float32"))
    optimizer = optimizer_class(learning_rate=0.1, weight_decay=weight_decay)
    optimizer.build([variable])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.matmul(x, variable))
        optimizer.apply(tape.gradient(loss, [variable]), [variable])

    graph = step.get_concrete_function(tf.TensorSpec([2, 4], "float32")).graph
    decays = [op for op in graph.get_operations() if op.type == "AssignSubVariableOp"]
    waits = []
    for decay in decays:
        seen, stack = set(), [decay]
        while stack:
            op = stack.pop()
            for parent in [t.op for t in op.inputs] + list(op.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
        waits.append(seen)
    return decays, waits


def _waits_for_gradient(ops_inputs):
    return [any(name.startswith("gradient_tape/") for name in seen) for seen in ops_inputs]


def test_zero_weight_decay_adds_no_work_to_the_step():
    decays, _ = _decay_ops_and_their_inputs(optimizers.AdamW, 0.0)
    assert decays == []  # the fused update is ResourceApplyAdam; no decay op
    # Keras' AdamW subtracts 0 * lr * weight from each weight, every step, and does not
    # wait for the gradient to do it (its Adam update, also an AssignSub, does).
    _, keras_waits = _decay_ops_and_their_inputs(keras.optimizers.AdamW, 0.0)
    assert sorted(_waits_for_gradient(keras_waits)) == [False, True]


def test_weight_decay_waits_for_the_gradient():
    # Run before the gradient is known, the decay would update a weight that the forward
    # pass still holds, and TensorFlow would copy the weight instead of updating it in place.
    decays, waits = _decay_ops_and_their_inputs(optimizers.AdamW, 0.01)
    assert len(decays) == 1 and _waits_for_gradient(waits) == [True]
    _, keras_waits = _decay_ops_and_their_inputs(keras.optimizers.AdamW, 0.01)
    assert sorted(_waits_for_gradient(keras_waits)) == [False, True]
