"""Sharding the network with FSDP2 (``fully_shard``) under Lightning's ``ModelParallelStrategy``.

``ImageClassifier.configure_model`` calls :func:`fully_shard_network` when the strategy provides a device mesh
(``configs/trainer/fsdp2.yaml``). Lightning leaves the parallelisation plan to the module for this strategy;
there is no library plan for ConvNeXt, so the few lines that choose the FSDP units live here.
"""

from typing import Literal

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from convnext_pl.errors import UserError

ShardUnit = Literal["block", "stage"]


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
