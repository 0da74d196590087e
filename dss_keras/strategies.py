"""The `tf.distribute` strategy a run trains under, and which process is the chief.

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
"""

from __future__ import annotations

import functools
import json
import logging
import os

import tensorflow as tf

from dss_keras.config import STRATEGIES

logger = logging.getLogger(__name__)


def make_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The strategy named `name` (one of `dss_keras.config.STRATEGIES`).

    - `"default"`: TensorFlow's default strategy (one device, no replicas).
    - `"mirrored"`: `MirroredStrategy` over the machine's GPUs, or over its
      logical CPU devices when it has no GPU.
    - `"multi_worker"`: `MultiWorkerMirroredStrategy`; the cluster and this
      process's task come from the `TF_CONFIG` environment variable.
    - `"tpu"`: `TPUStrategy` on the Cloud TPU named by `TPU_NAME` (empty: the
      TPU VM's own TPU).

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
    if name == "default":
        return tf.distribute.get_strategy()
    return _distributed_strategy(name)


@functools.lru_cache(maxsize=None)
def _distributed_strategy(name: str) -> tf.distribute.Strategy:
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


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process writes the run directory, exports and reports.

    Every process is the chief except the workers of a multi-worker strategy
    other than the `"chief"` task (or, without one, worker 0).

    Args:
        strategy: The strategy (the current one when `None`).

    Examples:

    >>> is_chief(make_strategy("default"))
    True
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    return (task_type == "worker" and task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())
