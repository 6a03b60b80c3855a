"""Sharding the network with FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``.

``ImageClassifier.configure_model`` calls :func:`fully_shard_network` when the strategy provides a device mesh
(``configs/trainer/fsdp2.yaml``). Lightning leaves the parallelisation plan to the module for this strategy;
there is no library plan for ConvNeXt, so the few lines that choose the FSDP units live here, with
:class:`FSDP2Strategy`, whose mesh follows ``--trainer.devices`` and ``--trainer.num_nodes``.
"""

from typing import Literal

import torch.nn as nn
from lightning.pytorch.strategies import ModelParallelStrategy
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
