"""Sharding the network with FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``.

``ImageClassifier.configure_model`` calls :func:`fully_shard_network` when the strategy provides a device mesh
(``configs/trainer/fsdp2.yaml``). Lightning leaves the parallelisation plan to the module for this strategy;
there is no library plan for ConvNeXt, so the few lines that choose the FSDP units live here, with
:class:`FSDP2Strategy`, whose mesh follows ``--trainer.devices`` and ``--trainer.num_nodes``, and
:func:`refuse_what_this_machine_cannot_run`, which turns an accelerator, strategy or device count this machine
cannot honour into one sentence before the Trainer (or any process) starts.
"""

import importlib
from typing import Any, Literal

import torch
import torch.nn as nn
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from convnext_pl.errors import UserError

ShardUnit = Literal["block", "stage"]


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` sharding data-parallel over every process, whatever the device count.

    Lightning's defaults (``"auto"``) make ``data_parallel_size`` the node count and ``tensor_parallel_size``
    the devices per node, and explicit sizes must be edited with every change of ``--trainer.devices``; a
    mismatch shows as a traceback per rank once the processes run. Here ``data_parallel_size`` ``"auto"`` is
    devices x nodes / ``tensor_parallel_size`` (default 1: ConvNeXt has no tensor-parallel plan), and sizes
    that do not multiply to devices x nodes are a :class:`UserError` when the ``Trainer`` is built, in the
    launching process, before any other starts.

    Args:
        data_parallel_size: processes each parameter is sharded over; "auto": all of them (divided by the
            tensor-parallel size).
        tensor_parallel_size: processes of a tensor-parallel group (1: pure FSDP).
        **kwargs: the other arguments of ``ModelParallelStrategy`` (``save_distributed_checkpoint`` ...).
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        **kwargs,
    ):
        super().__init__(
            data_parallel_size=data_parallel_size, tensor_parallel_size=tensor_parallel_size, **kwargs
        )

    def _configure_launcher(self) -> None:
        # The Trainer calls this once it has set the devices and the node count, before launching processes.
        self._data_parallel_size, self._tensor_parallel_size = mesh_sizes(
            self._data_parallel_size, self._tensor_parallel_size, self.num_processes * self.num_nodes
        )
        super()._configure_launcher()


def mesh_sizes(
    data_parallel: Literal["auto"] | int, tensor_parallel: int, world_size: int
) -> tuple[int, int]:
    """``(data_parallel, tensor_parallel)`` for ``world_size`` processes; "auto" data-parallel takes the rest.

    Raises:
        UserError: for sizes that do not multiply to ``world_size``.
    """
    where = "trainer.strategy.init_args"
    if data_parallel == "auto":
        if tensor_parallel < 1 or world_size % tensor_parallel:
            raise UserError(
                f"{where}.tensor_parallel_size {tensor_parallel} does not divide devices x num_nodes "
                f"({world_size}); set it to a divisor, or to 1 for pure data-parallel sharding"
            )
        data_parallel = world_size // tensor_parallel
    if data_parallel * tensor_parallel != world_size:
        raise UserError(
            f"{where}.data_parallel_size {data_parallel} x tensor_parallel_size {tensor_parallel} is "
            f"{data_parallel * tensor_parallel}, but devices x num_nodes is {world_size}; remove "
            "data_parallel_size (it follows the devices) or change --trainer.devices / --trainer.num_nodes"
        )
    return data_parallel, tensor_parallel


def shard_units(net: nn.Module, unit: ShardUnit) -> list[nn.Module]:
    """The submodules that become FSDP2 units, in forward order.

    ``"block"``: every residual block (the finest unit: one block's weights are all-gathered at a time).
    ``"stage"``: every stage's sequence of blocks (fewer, larger all-gathers; more memory held at once).
    Stems, downsampling layers, the final norm and the head stay in the root unit; they are small.

    Args:
        net: a ConvNeXt-style network: ``stages`` (a list of block sequences) or, isotropic, ``blocks``.
        unit: ``"block"`` or ``"stage"``.
    """
    net = getattr(net, "encoder", net)  # an FCMAE network's units are its encoder's blocks
    if hasattr(net, "stages"):
        stages = list(net.stages)
    elif hasattr(net, "blocks"):
        stages = [net.blocks]
    else:
        raise UserError(
            f"FSDP2 sharding needs a network with `stages` or `blocks` and got {type(net).__name__}; "
            "use a ConvNeXt model or trainer.strategy ddp."
        )
    if unit == "stage":
        return stages
    if unit == "block":
        return [block for stage in stages for block in stage]
    raise UserError(f"model.shard_unit must be 'block' or 'stage', not {unit!r}.")


def fully_shard_network(net: nn.Module, device_mesh: DeviceMesh, unit: ShardUnit = "block") -> None:
    """Apply ``fully_shard`` to each unit of ``net`` and then to ``net`` itself (the root unit), in place.

    Parameters become DTensors sharded along dim 0 over the mesh's ``data_parallel`` dimension; their names,
    and so checkpoint keys and weight-decay groups, stay the same. Calling it again is a no-op.

    Args:
        net: the network.
        device_mesh: the mesh of ``ModelParallelStrategy`` (dims ``data_parallel`` x ``tensor_parallel``).
        unit: what becomes one FSDP unit, see :func:`shard_units`.
    """
    if isinstance(net, FSDPModule):
        return
    tensor_parallel = device_mesh["tensor_parallel"].size()
    if tensor_parallel > 1:
        # Lightning's default sizes are data_parallel = nodes, tensor_parallel = devices per node; ConvNeXt has
        # no tensor-parallel plan, so that would leave the devices of a node training on the same samples.
        raise UserError(
            f"ModelParallelStrategy has tensor_parallel_size {tensor_parallel} but ConvNeXt is only sharded "
            "data-parallel; set trainer.strategy.init_args.tensor_parallel_size to 1 and data_parallel_size "
            f"to devices x num_nodes ({device_mesh.size()})."
        )
    data_parallel_mesh = device_mesh["data_parallel"]
    for module in shard_units(net, unit):
        fully_shard(module, mesh=data_parallel_mesh)
    fully_shard(net, mesh=data_parallel_mesh)


def refuse_what_this_machine_cannot_run(trainer: Any) -> None:
    """Refuse, in one sentence that says what to do, trainer settings Lightning would reject on this machine
    with a traceback (FSDPStrategy off CUDA, ``devices: -1`` on the CPU) or without naming a fix (``gpu``
    without a GPU). Called on the parsed ``trainer`` section, before the Trainer is built.

    Args:
        trainer: the ``trainer`` section of the config (``accelerator``, ``devices``, ``strategy``).

    Raises:
        UserError: for the first such setting.
    """
    accelerator = str(trainer.get("accelerator") or "auto")
    devices = trainer.get("devices")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if _is_fsdp1(trainer.get("strategy")) and (accelerator not in ("gpu", "cuda", "auto") or not cuda):
        here = f"trainer.accelerator is {accelerator}" if cuda else "torch finds none on this machine"
        raise UserError(
            f"Lightning's FSDPStrategy (configs/trainer/fsdp.yaml) runs on CUDA GPUs only and {here}; use "
            "--config configs/trainer/fsdp2.yaml (FSDP2) instead, which shards over CPU processes too"
        )
    if (accelerator == "gpu" and not (cuda or mps)) or (accelerator == "cuda" and not cuda):
        count = "" if _positive_int(devices) else " and --trainer.devices N (the number of CPU processes)"
        raise UserError(
            f"trainer.accelerator is {accelerator} but torch finds no GPU on this machine; add "
            f"--trainer.accelerator cpu{count}, or run on a GPU machine"
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not (cuda or mps))
    if on_cpu and devices not in (None, "auto") and not _positive_int(devices):
        raise UserError(
            f"trainer.devices {devices} does not count CPU processes (-1 means every GPU); give "
            "--trainer.devices N, the number of processes to train on the CPU"
        )


def _is_fsdp1(strategy: Any) -> bool:
    """Whether a ``trainer.strategy`` value (a registry name, a ``class_path`` section or an instance) is
    Lightning's FSDPStrategy."""
    if isinstance(strategy, str):
        entry = StrategyRegistry[strategy] if strategy in StrategyRegistry else None  # .get() builds one
        return entry is not None and issubclass(entry["strategy"], FSDPStrategy)
    class_path = strategy.get("class_path") if hasattr(strategy, "get") else None
    if isinstance(class_path, str):
        module_name, _, class_name = class_path.rpartition(".")
        try:
            strategy = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError):
            return False  # Lightning reports a class it cannot import itself
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return issubclass(cls, FSDPStrategy)


def _positive_int(value: Any) -> bool:
    try:
        return int(value) >= 1 and not isinstance(value, bool)
    except (TypeError, ValueError):
        return False
