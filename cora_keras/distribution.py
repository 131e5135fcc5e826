"""Data-parallel training: the engine a run uses and the TensorFlow pieces
that give the objective the global batch.

`train.distribution` selects the engine; `train.batch_size` is always the
global batch, over every device and host:

    none                   one device.
    data_parallel          keras.distribution.DataParallel over every device
                           (JAX). The jitted train step runs on globally
                           sharded arrays, so the model, its static phrase
                           budgets and the objective see the global batch
                           as it is. Several hosts: set
                           KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES
                           and _PROCESS_ID on each; `training_engine` then
                           calls keras.distribution.initialize().
    mirrored               tf.distribute.MirroredStrategy over the local
                           GPUs, else the logical CPU devices (TensorFlow).
    multi_worker_mirrored  tf.distribute.MultiWorkerMirroredStrategy, the
                           cluster read from TF_CONFIG (TensorFlow).

TensorFlow-only path: the Keras trainer runs the model and `compute_loss`
once per replica on that replica's part of the batch. There
`gather_replicas` concatenates every replica's embeddings and targets in
replica order (with gradients), so each replica computes the objective of
the global batch; `replica_share` divides that loss by the number of
replicas, so the strategy's sum of the replicas' gradients is the gradient
of the global loss; `replica_sum` adds a statistic over replicas (the image
tower's BatchNorm). Outside a TensorFlow replica context of two or more
replicas all three are the identity, so the model code stays backend-free.

Input: every engine cuts each global batch into contiguous parts
(`pipeline.InputShard`); each input pipeline (a JAX process, a TensorFlow
worker) builds only its own parts, reading only their images.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, ContextManager, Optional

import keras

from cora_keras.config import DISTRIBUTIONS, ConfigError

# Each engine of config.DISTRIBUTIONS -> the Keras backend it runs on (None: any).
ENGINE_BACKENDS = {
    "none": None,
    "data_parallel": "jax",
    "mirrored": "tensorflow",
    "multi_worker_mirrored": "tensorflow",
}
MULTI_HOST_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
)


class TrainingEngine:
    """A data-parallel engine: where to build the model and how to feed it.

    Build the model and the optimizer and call `fit` inside `scope()`;
    give `fit` the dataset of `distribute`.

    Args:
        name: the `train.distribution` value.
        strategy: the tf.distribute strategy (TensorFlow engines).
        distribution: the keras.distribution (JAX engine).
    """

    def __init__(
        self,
        name: str,
        strategy: Any = None,
        distribution: Optional[keras.distribution.Distribution] = None,
    ) -> None:
        self.name = name
        self.strategy = strategy
        self.distribution = distribution

    @property
    def num_replicas(self) -> int:
        """Devices the global batch is split over."""
        if self.strategy is not None:
            return self.strategy.num_replicas_in_sync
        if self.distribution is not None:
            return len(self.distribution.device_mesh.devices.flatten())
        return 1

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory: JAX process 0;
        on TensorFlow the cluster's chief task, else worker 0; a process
        outside a cluster."""
        if self.strategy is not None:
            return _is_tf_chief(getattr(self.strategy, "cluster_resolver", None))
        if self.distribution is not None:
            import jax

            return jax.process_index() == 0
        return True

    def scope(self) -> ContextManager:
        """The context to build the model and optimizer and to train in."""
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def check_batch_sizes(self, train: Any) -> None:
        """Raise ConfigError unless the batches of a `TrainConfig` split
        evenly over the devices: the training batch on every engine, the
        evaluation batch where predict splits it too (JAX)."""
        keys = ["batch_size"] + (["eval_batch_size"] if self.distribution is not None else [])
        for key in keys:
            size = getattr(train, key)
            if size % self.num_replicas:
                raise ConfigError(
                    f"train.{key} = {size} does not split over the {self.num_replicas} "
                    f"devices of train.distribution = {self.name!r}; use a multiple of "
                    f"{self.num_replicas}"
                )

    def distribute(self, make_dataset: Callable[[Any, bool], Any]) -> Any:
        """The training input for `fit`, from `make_dataset(shard, endless)`.

        `make_dataset` returns the tf.data.Dataset of a `pipeline.InputShard`
        (see `pipeline.training_dataset`), endless or one epoch per
        iteration. Give `fit` `steps_per_epoch`: on TensorFlow an input
        pipeline yields one element per local replica and step, so the
        dataset's length is not the number of steps, and Keras draws a first
        element to build; there the dataset is endless.
        """
        from cora_keras.data.pipeline import InputShard

        if self.strategy is not None:
            return self.strategy.distribute_datasets_from_function(
                lambda context: make_dataset(replica_input_shard(context), True)
            )
        if self.distribution is not None:
            import jax

            # Each process feeds its part; Keras assembles the global arrays.
            shard = InputShard(jax.process_count(), (jax.process_index(),), per_part_budgets=False)
            return make_dataset(shard, False)
        return make_dataset(InputShard(), False)


def replica_input_shard(context: Any) -> Any:
    """The `InputShard` of a tf.distribute.InputContext: one part per local
    replica of its input pipeline (worker), in replica order, as the
    strategy hands a pipeline's elements to its replicas in turn."""
    from cora_keras.data.pipeline import InputShard

    local = context.num_replicas_in_sync // context.num_input_pipelines
    first = context.input_pipeline_id * local
    return InputShard(context.num_replicas_in_sync, tuple(range(first, first + local)))


def _is_tf_chief(resolver: Any) -> bool:
    """The chief of a tf.distribute cluster: task "chief", else worker 0."""
    tasks = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not tasks or resolver.task_type is None:
        return True
    if "chief" in tasks:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def training_engine(name: str) -> TrainingEngine:
    """The engine of `train.distribution = name` on the current backend."""
    if name not in DISTRIBUTIONS:
        raise ConfigError(
            f"train.distribution = {name!r}: unknown; allowed: {', '.join(DISTRIBUTIONS)}"
        )
    backend = keras.backend.backend()
    needed = ENGINE_BACKENDS[name]
    if needed is not None and needed != backend:
        raise ConfigError(
            f"train.distribution = {name!r} runs on the {needed} backend "
            f"(KERAS_BACKEND={needed}); this process runs {backend}. "
            f"Engines per backend: {_engines_by_backend()}"
        )
    if name == "data_parallel":
        if any(variable in os.environ for variable in MULTI_HOST_VARIABLES):
            keras.distribution.initialize()
        distribution = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False
        )
        return TrainingEngine(name, distribution=distribution)
    if name in ("mirrored", "multi_worker_mirrored"):
        return TrainingEngine(name, strategy=_tf_strategy(name))
    return TrainingEngine(name)


def _engines_by_backend() -> str:
    pairs = [f"{engine}: {backend}" for engine, backend in ENGINE_BACKENDS.items() if backend]
    return "; ".join(pairs) + "; none: any (PyTorch has only none)"


@functools.cache
def _tf_strategy(name: str) -> Any:
    """One strategy per engine and process: the collective ops of a second
    MirroredStrategy clash with the first's (mismatched shapes)."""
    import tensorflow as tf

    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])


# ------------------------------------------- TensorFlow replica collectives


def _replica_context() -> Any:
    """The TensorFlow replica context of two or more replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def gather_replicas(structure: Any) -> Any:
    """Every replica's tensors concatenated along axis 0, in replica order.

    Differentiable: a replica's gradient is the sum over replicas of the
    gradients of its own slice. Boolean tensors travel as int32; a static
    batch size stays static (times the number of replicas).
    """
    context = _replica_context()
    if context is None:
        return structure
    import tensorflow as tf

    def gather(tensor):
        if tensor.dtype == tf.bool:
            gathered = tf.cast(context.all_gather(tf.cast(tensor, tf.int32), axis=0), tf.bool)
        else:
            gathered = context.all_gather(tensor, axis=0)
        batch = tensor.shape[0]
        global_batch = None if batch is None else batch * context.num_replicas_in_sync
        gathered.set_shape([global_batch, *tensor.shape[1:]])
        return gathered

    return tf.nest.map_structure(gather, structure)


def replica_sum(tensor: Any) -> Any:
    """`tensor` summed over the replicas (differentiable)."""
    context = _replica_context()
    if context is None:
        return tensor
    import tensorflow as tf

    return context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)


def replica_share(loss: Any) -> Any:
    """This replica's share of a loss every replica computed on the global
    batch: `loss / replicas`, so that the strategy's sum of the replicas'
    gradients is the global loss's gradient."""
    context = _replica_context()
    if context is None:
        return loss
    return loss / context.num_replicas_in_sync
