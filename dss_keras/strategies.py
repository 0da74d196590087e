"""The `tf.distribute` strategy (or Keras distribution) a run trains under, and the chief.

| `TrainConfig.strategy` | devices                                   | `batch_size` is split over |
|------------------------|-------------------------------------------|----------------------------|
| `default`              | one (the first GPU, else the CPU)         | nothing                    |
| `mirrored`             | every GPU of this machine (else every     | the local replicas         |
|                        | logical CPU device)                       |                            |
| `multi_worker`         | every device of every worker in TF_CONFIG | all replicas of all workers|
| `tpu`                  | the cores of the Cloud TPU (TPU_NAME)     | the TPU cores              |

`batch_size` is always the global batch: each replica gets
`batch_size / num_replicas_in_sync` examples of it, and the token means of the
loss are over the global batch (see `DistillStepByStep.compute_task_losses`).

A process creates its strategy once: `make_strategy` returns the same object
for the same name, because TensorFlow allows one multi-worker or TPU strategy
per process.

On JAX the same names give a `keras.distribution.DataParallel`,
whose `scope()` stands for the strategy's:

| `TrainConfig.strategy`  | devices                                                      |
|-------------------------|--------------------------------------------------------------|
| `default`               | the distribution set by `keras.distribution.set_distribution`, |
|                         | else one device (the first)                                  |
| `mirrored`, `tpu`       | every device Keras lists (GPUs, TPU cores, or host devices)  |
| `multi_worker`          | the same, after `keras.distribution.initialize()` (its       |
|                         | `KERAS_DISTRIBUTION_*` variables name the processes)         |

Every name but `default` sets the process's distribution (as a TensorFlow
strategy is the process's): Keras then lays out each new weight on every
device and splits each batch over them. The loss is computed on the global
batch, so its token means are the global batch's with nothing to sum.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import keras

from dss_keras.config import STRATEGIES

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
"""Whether strategies are `tf.distribute`'s (else `keras.distribution`'s)."""

if ON_TENSORFLOW:
    import tensorflow as tf

logger = logging.getLogger(__name__)


def make_strategy(name: str = "default"):
    """The strategy named `name` (one of `dss_keras.config.STRATEGIES`).

    - `"default"`: TensorFlow's default strategy (one device, no replicas).
    - `"mirrored"`: `MirroredStrategy` over the machine's GPUs, or over its
      logical CPU devices when it has no GPU.
    - `"multi_worker"`: `MultiWorkerMirroredStrategy`; the cluster and this
      process's task come from the `TF_CONFIG` environment variable.
    - `"tpu"`: `TPUStrategy` on the Cloud TPU named by `TPU_NAME` (empty: the
      TPU VM's own TPU).

    On JAX it is a `keras.distribution.DataParallel` (see the module
    docstring).

    Args:
        name: The strategy's name.

    Returns:
        The strategy; the same object for the same name within a process
        (`"default"` is the strategy in scope, TensorFlow's default outside any).

    Raises:
        ValueError: for an unknown name, or `"multi_worker"` without `TF_CONFIG`.

    Examples:

    >>> make_strategy("default").num_replicas_in_sync
    1
    >>> make_strategy("default") is make_strategy("default")
    True
    >>> make_strategy("horovod")
    Traceback (most recent call last):
    ...
    ValueError: `strategy` must be one of default, mirrored, multi_worker, tpu. Received: strategy='horovod'
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {', '.join(STRATEGIES)}. "
                         f"Received: strategy={name!r}")
    if not ON_TENSORFLOW:
        if name == "default":
            return keras.distribution.distribution() or _one_device()
        return _data_parallel(name)
    if name == "default":
        return tf.distribute.get_strategy()
    return _distributed_strategy(name)


@functools.lru_cache(maxsize=None)
def _one_device():
    """`DataParallel` over the first device: one device, no process-wide setting."""
    return keras.distribution.DataParallel(devices=keras.distribution.list_devices()[:1])


@functools.lru_cache(maxsize=None)
def _data_parallel(name: str):
    """`DataParallel` over every device, set as the process's distribution."""
    if name == "multi_worker":
        if not os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):
            raise ValueError(
                "strategy='multi_worker' on JAX starts JAX's multi-process runtime with "
                "`keras.distribution.initialize()`, which reads the processes from "
                "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and "
                "KERAS_DISTRIBUTION_PROCESS_ID; KERAS_DISTRIBUTION_JOB_ADDRESSES is not set. "
                "Received: strategy='multi_worker'")
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    data_parallel = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(data_parallel)
    logger.info("Distribution %s: DataParallel over %d devices", name, len(devices))
    return data_parallel


def strategy_of(model: keras.Model):
    """The strategy `model` was created under (on JAX: the distribution in effect)."""
    if ON_TENSORFLOW:
        return model.distribute_strategy
    return make_strategy("default")


@functools.lru_cache(maxsize=None)
def _distributed_strategy(name: str):
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in devices])
    elif name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "strategy='multi_worker' reads the cluster from the TF_CONFIG environment "
                "variable, which is not set. Set it on each worker, e.g. TF_CONFIG="
                '\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\'')
        json.loads(os.environ["TF_CONFIG"])  # A malformed TF_CONFIG fails here, by name.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    logger.info("Strategy %s: %d replicas", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy=None) -> bool:
    """Whether this process writes the run directory, exports and reports.

    Every process is the chief except the workers of a multi-worker strategy
    other than the `"chief"` task (or, without one, worker 0); on JAX, the
    process of index 0.

    Args:
        strategy: The strategy (the current one when `None`).

    Examples:

    >>> is_chief(make_strategy("default"))
    True
    """
    if not ON_TENSORFLOW:
        if keras.backend.backend() != "jax":
            return True
        import jax

        return jax.process_index() == 0
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return (task_type == "worker" and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())
