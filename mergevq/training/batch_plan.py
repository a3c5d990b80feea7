"""The batch plan of a training run: world size, per-device batch, accumulation and the global batch.

global batch = ``data.params.batch_size`` (per process) x world size x accumulation, where the world
size is ``trainer.devices`` x ``trainer.num_nodes`` as the launcher started it.

``trainer.global_batch_size`` (optional) fixes the global batch of a recipe: the accumulation
(``model.params.accumulate_grad_batches``) is then derived from it for whatever number of nodes the
job runs on, so adding nodes does not silently change the recipe. A global batch that is not a whole
multiple of per-device batch x world size, or an explicit accumulation that disagrees, is a one-line
error naming the numbers and the keys.

The accumulation has one home, the model's ``accumulate_grad_batches`` parameter: :func:`plan_batch`
only computes the value that ``mergevq.training.run`` writes there (and so into the run's
``config.yaml``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from mergevq.errors import ConfigError

__all__ = ["ACCUMULATION_KEY", "BATCH_KEY", "GLOBAL_BATCH_KEY", "BatchPlan", "launched_world_size", "plan_batch"]

BATCH_KEY = "data.params.batch_size"
ACCUMULATION_KEY = "model.params.accumulate_grad_batches"
GLOBAL_BATCH_KEY = "trainer.global_batch_size"


@dataclass(frozen=True)
class BatchPlan:
    """What one optimizer step of the run consumes."""

    world_size: int
    devices: int
    num_nodes: int
    per_device_batch: int
    accumulation: int
    global_batch: int
    derived: bool  # the accumulation was derived from trainer.global_batch_size

    def describe(self, *, config_files: Sequence[str] = ()) -> str:
        """The block ``mergevq train`` prints at start (several lines, no trailing newline)."""
        source = f"derived from {GLOBAL_BATCH_KEY}" if self.derived else ACCUMULATION_KEY
        lines = [
            "batch plan:",
            f"  world size        {self.world_size} = {self.num_nodes} node(s) x {self.devices} device(s)",
            f"  per-device batch  {self.per_device_batch} ({BATCH_KEY})",
            f"  accumulation      {self.accumulation} ({source})",
            f"  global batch      {self.global_batch} = {self.per_device_batch} x {self.world_size} x "
            f"{self.accumulation}",
        ]
        lines.extend(f"config: {path}" for path in config_files)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def launched_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """The process count a launcher (torchrun, the launch scripts) announced in ``WORLD_SIZE``;
    None when the process was not started by one."""
    value = (os.environ if env is None else env).get("WORLD_SIZE")
    if value is None or value == "":
        return None
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"the environment variable WORLD_SIZE={value!r} is not an integer") from None
    if size < 1:
        raise ConfigError(f"the environment variable WORLD_SIZE={size} must be >= 1")
    return size


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def plan_batch(
    *,
    per_device_batch: int,
    devices: int,
    num_nodes: int,
    accumulation: int | None,
    global_batch_size: int | None,
    world_size: int | None = None,
) -> BatchPlan:
    """The run's :class:`BatchPlan`.

    ``accumulation``: the config's explicit ``model.params.accumulate_grad_batches`` (None: not set,
    i.e. 1 unless derived). ``world_size``: what the launcher started (:func:`launched_world_size`,
    or Lightning's ``trainer.world_size``); None: ``devices`` x ``num_nodes``. A launcher that
    started a different number of processes than the config describes is an error here rather than
    a run with another global batch.
    """
    per_device_batch = _positive(BATCH_KEY, per_device_batch)
    devices = _positive("trainer.devices", devices)
    num_nodes = _positive("trainer.num_nodes", num_nodes)
    if accumulation is not None:
        accumulation = _positive(ACCUMULATION_KEY, accumulation)
    configured = devices * num_nodes
    if world_size is not None and world_size != configured:
        raise ConfigError(
            f"the launcher started {world_size} processes (WORLD_SIZE) but trainer.devices x trainer.num_nodes = "
            f"{devices} x {num_nodes} = {configured}; pass the node count and devices per node the job really has"
        )
    if global_batch_size is None:
        steps = 1 if accumulation is None else accumulation
        return BatchPlan(world_size=configured, devices=devices, num_nodes=num_nodes,
                         per_device_batch=per_device_batch, accumulation=steps,
                         global_batch=per_device_batch * configured * steps, derived=False)
    global_batch_size = _positive(GLOBAL_BATCH_KEY, global_batch_size)
    per_step = per_device_batch * configured
    if global_batch_size % per_step:
        raise ConfigError(
            f"{GLOBAL_BATCH_KEY}={global_batch_size} is not a whole multiple of {BATCH_KEY} x world size = "
            f"{per_device_batch} x {configured} = {per_step}; change {GLOBAL_BATCH_KEY} or {BATCH_KEY}"
            + (f" (e.g. {BATCH_KEY}={global_batch_size // configured})"
               if global_batch_size % configured == 0 and global_batch_size // configured >= 1 else "")
        )
    derived = global_batch_size // per_step
    if accumulation is not None and accumulation != derived:
        raise ConfigError(
            f"{ACCUMULATION_KEY}={accumulation} disagrees with {GLOBAL_BATCH_KEY}={global_batch_size}, which "
            f"needs {global_batch_size} / ({per_device_batch} x {configured}) = {derived}; set only one of the two"
        )
    return BatchPlan(world_size=configured, devices=devices, num_nodes=num_nodes, per_device_batch=per_device_batch,
                     accumulation=derived, global_batch=global_batch_size, derived=True)
