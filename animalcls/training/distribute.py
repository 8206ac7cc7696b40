"""Scale-out training on tf.distribute: strategy choice, global batch, dataset sharding and
mixed precision, for `train` and `finetune --unfreeze N`.

Rules (the README's "Training on several GPUs or machines" says the same):

* `--batch-size` is PER REPLICA; the global batch is `batch_size * replicas`, so a flag value
  keeps the per-device memory and BatchNorm batch it had on one device. The learning rate is
  not scaled for you.
* With more than one replica, BatchNorm layers compute SYNCHRONISED batch statistics over the
  global batch, so a mirrored step is the same computation as a single-device step on the
  global batch (and a run matches one on a single device within float rounding).
* Datasets get `AutoShardPolicy.DATA`: our pipelines start from an in-memory list of file
  names (`from_tensor_slices`), not from a set of input files, so FILE sharding cannot split
  them; with DATA every worker reads the same seeded order and keeps its 1/k of each batch.
* Mixed precision: `mixed_float16` on GPUs (Keras adds loss scaling), `mixed_bfloat16` on CPUs.
  The softmax layer always computes in float32 (models.py), and the saved checkpoint is a
  float32 copy, so serving never sees a reduced-precision graph.

The choice is checked by `check_request` without TensorFlow (the CLI calls it before importing
anything heavy); TensorFlow is imported only when a strategy is made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from animalcls.core.errors import AnimalclsError
from animalcls.core.settings import CPU_DEVICES_ENV, TF_CONFIG_ENV

STRATEGIES = ("none", "mirrored", "multiworker")


class DistributeError(AnimalclsError, ValueError):
    """A distribution request that cannot work here (bad TF_CONFIG, devices already set up...)."""


def check_request(kind: str, environ: Mapping[str, str] | None = None) -> None:
    """Validate a --distribute choice and its environment, without importing TensorFlow."""
    environ = os.environ if environ is None else environ
    if kind not in STRATEGIES:
        raise DistributeError(f"Unknown --distribute '{kind}': choose one of {', '.join(STRATEGIES)}.")
    cpu_devices(environ)
    if kind == "multiworker":
        check_tf_config(environ.get(TF_CONFIG_ENV))


def check_finetune_request(unfreeze_layers: int, kind: str, mixed_precision: bool) -> None:
    """Scale-out options need image training (`--unfreeze N`, N > 0)."""
    check_request(kind)
    if unfreeze_layers <= 0 and (kind != "none" or mixed_precision):
        raise DistributeError(
            "--distribute and --mixed-precision need --unfreeze N (N > 0): a head-only fine-tune trains on "
            "cached features in seconds and has nothing to scale out."
        )


def check_tf_config(raw: str | None) -> dict[str, Any]:
    """The parsed TF_CONFIG of a multi-worker run: a cluster with a non-empty worker list and
    this process's task (type and index) inside it."""
    example = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    if not raw:
        raise DistributeError(f"--distribute multiworker needs {TF_CONFIG_ENV}, e.g. {TF_CONFIG_ENV}='{example}'.")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DistributeError(f"{TF_CONFIG_ENV} is not valid JSON ({exc.msg} at character {exc.pos}).") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise DistributeError(f"{TF_CONFIG_ENV} needs a 'cluster' and a 'task' object, e.g. {example}.")
    workers = cluster.get("worker")
    if not isinstance(workers, list) or not workers or not all(isinstance(w, str) and ":" in w for w in workers):
        raise DistributeError(f"{TF_CONFIG_ENV}'s cluster needs a 'worker' list of host:port addresses.")
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind) if isinstance(kind, str) else None
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise DistributeError(f"{TF_CONFIG_ENV}'s task {task} is not a member of its cluster.")
    return config


def cpu_devices(environ: Mapping[str, str] | None = None) -> int:
    """How many logical CPU devices to split the CPU into ($ANIMALCLS_CPU_DEVICES; default 1).
    Mirrored training uses them when there is no GPU: useful to test the distributed path."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(CPU_DEVICES_ENV) or "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise DistributeError(f"{CPU_DEVICES_ENV} must be a whole number from 1 to 64, got '{raw}'.")
    return int(raw)


def configure_cpu_devices(count: int) -> None:
    """Split the physical CPU into `count` logical devices; must run before TensorFlow
    initialises its devices (before the first op)."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    if count <= 1 or len(tf.config.get_logical_device_configuration(cpus[0]) or []) == count:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        raise DistributeError(
            f"{CPU_DEVICES_ENV}={count} came too late: TensorFlow had already set up its devices in this process."
        ) from None


def make_strategy(kind: str) -> Any:
    """The tf.distribute strategy for `kind`: the default (one device), MirroredStrategy over
    every local GPU (else every logical CPU), or MultiWorkerMirroredStrategy from TF_CONFIG."""
    import tensorflow as tf

    check_request(kind)
    configure_cpu_devices(cpu_devices())
    if kind == "none":
        return tf.distribute.get_strategy()
    # One per process and kind: a second MirroredStrategy over the same devices reused the
    # first one's collective keys, and its gradient all-reduce failed with a shape mismatch.
    if kind not in _STRATEGIES:
        if kind == "multiworker":
            _STRATEGIES[kind] = tf.distribute.MultiWorkerMirroredStrategy()
        else:
            devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
            _STRATEGIES[kind] = tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
    return _STRATEGIES[kind]


_STRATEGIES: dict[str, Any] = {}


def precision_policy(mixed: bool) -> str:
    """ "float32", or the mixed policy this machine's accelerator suits."""
    if not mixed:
        return "float32"
    import tensorflow as tf

    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


@dataclass
class Plan:
    """What a training run does to scale out: the strategy, its replica count and the dtype policy."""

    kind: str
    strategy: Any
    policy: str

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the checkpoint: always, except in a multi-worker run,
        where only the chief (or worker 0 when the cluster names no chief) does."""
        resolver = getattr(self.strategy, "cluster_resolver", None)
        if resolver is None or not resolver.task_type:
            return True
        if resolver.task_type == "chief":
            return True
        return (
            resolver.task_type == "worker"
            and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict()
        )

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.kind, "replicas": self.replicas, "dtype_policy": self.policy}


def make_plan(kind: str = "none", mixed_precision: bool = False) -> Plan:
    """Make the strategy (which sets up TensorFlow's devices, or joins the cluster) and choose
    the dtype policy. Models built inside `training_scope(plan)` are distributed."""
    return Plan(kind, make_strategy(kind), precision_policy(mixed_precision))


@contextmanager
def training_scope(plan: Plan) -> Iterator[Plan]:
    """Enter `plan`'s strategy scope under its dtype policy; the global policy is restored on exit."""
    import keras

    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(plan.policy)
    try:
        with plan.strategy.scope():
            yield plan
    finally:
        keras.config.set_dtype_policy(previous)


def shard_by_data(dataset: Any) -> Any:
    """`dataset` with the DATA auto-shard policy (see the module docstring for why)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def set_batchnorm_sync(model: Any, synchronized: bool) -> int:
    """Turn cross-replica BatchNorm statistics on or off in `model` and its nested models;
    returns how many BatchNorm layers were set."""
    from keras import layers

    count = 0
    for layer in _all_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.synchronized = synchronized
            count += 1
    return count


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def float32_copy(model: Any, build: Callable[[], Any]) -> Any:
    """A float32, single-device, unsynchronised copy of a trained `model`, for saving and
    evaluating: `build()` makes the same architecture under the float32 policy, then takes
    `model`'s weights (the variables are float32 under mixed policies too). Call it after
    leaving `training_scope`."""
    import keras
    import tensorflow as tf

    if tf.distribute.has_strategy():
        raise DistributeError("float32_copy must be called outside the strategy scope.")
    set_batchnorm_sync(model, False)
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("float32")
    try:
        copy = build()
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy
