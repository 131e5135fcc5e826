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

Several processes (JAX processes, TensorFlow workers) run the same
program; only the chief (`TrainingEngine.is_chief`) writes files. A step
every process must take together (a collective) must never run in the
chief alone: the chief saves weights `without_distribution()` on JAX, and
on TensorFlow `fit` runs outside the strategy's scope
(`TrainingEngine.fit_scope`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, ContextManager, Iterator, Optional

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

    Build the model and the optimizer inside `scope()`, call
    `prepare_fit(model)`, then `fit` inside `fit_scope()` on the dataset of
    `distribute`.

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
        """The context to build the model and optimizer in."""
        if self.strategy is not None:
            return self.strategy.scope()
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def fit_scope(self) -> ContextManager:
        """The context to call `fit` in: the distribution's scope on JAX,
        which the train step and its input need; none on TensorFlow, where
        the model keeps its strategy and the callbacks then run outside it,
        so a process writing files alone creates no strategy variables
        (creating one is a step of every worker)."""
        if self.distribution is not None:
            return self.distribution.scope()
        return contextlib.nullcontext()

    def prepare_fit(self, model: keras.Model) -> None:
        """Let `fit` run on MultiWorkerMirroredStrategy (TensorFlow-only path).

        Keras' `fit` reduces over the replicas in two ways that strategy
        cannot (keras-team/keras#20329, #20585):
        - it first reduces one batch to build the model, and that is a dict
          of tensors. `model` is built and compiled, so the batch is not
          needed: the rest (the optimizer) is built without it;
        - it averages each step's logs over the replicas with an axis-0
          reduction, which fails on scalars: the logs leave the train step
          as vectors of one value (their average is the same scalar).
        """
        if self.name != "multi_worker_mirrored":
            return
        train_step = model.train_step
        model.train_step = lambda data: {
            name: keras.ops.reshape(value, (1,)) for name, value in train_step(data).items()
        }

        def build_without_a_batch(iterator=None, data_batch=None):
            with self.strategy.scope():
                model._symbolic_build()

        model._maybe_symbolic_build = build_without_a_batch

    def check_batch_sizes(self, train: Any) -> None:
        """Raise ConfigError unless the batches of a `TrainConfig` split
        evenly over the devices: the training batch on every engine, the
        evaluation batch where predict splits it too (JAX)."""
        if train.captions_per_image > 1 and self.name != "none":
            raise ConfigError(
                f"train.captions_per_image = {train.captions_per_image} needs "
                f"train.distribution = 'none' (got {self.name!r}): image-grouped "
                "batches are not sharded over devices"
            )
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
        iteration; here always endless, so give `fit` `steps_per_epoch`.
        On TensorFlow an input pipeline yields one element per local replica
        and step, so the dataset's length is not the number of steps, and
        Keras draws a first element to build. On JAX, `fit` restarting a
        finished one-epoch dataset stalled the first step of each later
        epoch by 10-34 s (demo shapes, 2 cores; 33 s epochs took 42-65 s).
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
            return make_dataset(shard, True)
        return make_dataset(InputShard(), True)


@contextlib.contextmanager
def without_distribution() -> Iterator[None]:
    """Runs the block outside the current keras.distribution (JAX).

    For a process writing files alone (the chief): saving weights creates
    throw-away Keras variables, and under a distribution over several
    processes creating a variable is a step of every process, so a process
    doing it alone would wait for the others forever.
    """
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


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
        tensor = _placed(context, tensor)
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

    return context.all_reduce(tf.distribute.ReduceOp.SUM, _placed(context, tensor))


def _placed(context: Any, tensor: Any) -> Any:
    """`tensor` on the worker's device when the worker has one device.

    There MultiWorkerMirroredStrategy hands a replica's collective the
    plain tensor and takes the tensor's device as the destination; inside
    Keras' train function that is empty, and the collective fails
    ("destinations can not be empty").
    """
    import tensorflow as tf

    devices = context.strategy.extended.worker_devices
    if tensor.device or len(devices) != 1:
        return tensor
    with tf.device(devices[0]):
        return tf.identity(tensor)


def replica_share(loss: Any) -> Any:
    """This replica's share of a loss every replica computed on the global
    batch: `loss / replicas`, so that the strategy's sum of the replicas'
    gradients is the global loss's gradient."""
    context = _replica_context()
    if context is None:
        return loss
    return loss / context.num_replicas_in_sync
