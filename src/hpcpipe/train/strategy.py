"""How the model is spread over the ranks (``train.strategy``): DDP, FSDP2 or hybrid sharding.

- ``ddp``: every rank holds the whole model, its gradients and optimizer state; DDP
  all-reduces the gradients. The default, and the path training had before strategies.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) on a 1-D mesh of all ranks:
  parameters, gradients and optimizer state are sharded (dim 0 of each parameter); a module's
  parameters are all-gathered just before it runs, its gradients reduce-scattered.
- ``hybrid``: FSDP2 on a 2-D mesh ``(nodes, ranks per node)``: sharded within a node,
  replicated across nodes (gradients reduce-scattered within a node, all-reduced across).

Every strategy averages the gradients over the ranks, and each rank's loss is the mean over its
slice of the global batch: the global batch size and the LR mean the same in all three. One
rank has nothing to shard and runs the model unwrapped; a sharded strategy still checkpoints
with torch.distributed.checkpoint (:mod:`~hpcpipe.train.checkpoint_dcp`), so its runs can
resume on another number of ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hpcpipe.runtime.environment import DistEnv

STRATEGIES = ("ddp", "fsdp", "hybrid")
DEFAULT = "ddp"


def strategy_of(train_cfg: dict[str, Any]) -> str:
    """``train.strategy`` (default ddp), or a ValueError naming the key."""
    kind = str(train_cfg.get("strategy", DEFAULT))
    if kind not in STRATEGIES:
        raise ValueError(f"train.strategy must be ddp, fsdp or hybrid, got {kind!r}")
    return kind


def mesh_shape(strategy: str, world_size: int, ranks_per_node: int | None) -> tuple[int, ...]:
    """The device mesh of a sharded strategy: ``(world,)`` for fsdp; ``(nodes, ranks per
    node)`` for hybrid, ranks numbered node by node (as torchrun and srun's block distribution
    number them), so each row of the mesh is one node.

    ``ranks_per_node`` comes from the launcher (``runtime.environment.ranks_per_node``); None
    means the nodes hold different numbers of ranks, which hybrid cannot split evenly.
    """
    if strategy == "fsdp":
        return (world_size,)
    if strategy != "hybrid":
        raise ValueError(f"train.strategy={strategy!r} has no device mesh")
    if ranks_per_node is None or ranks_per_node < 1 or world_size % ranks_per_node:
        raise ValueError(
            f"train.strategy=hybrid needs the same number of ranks on every node, got "
            f"{world_size} rank(s) with {ranks_per_node or 'uneven'} per node: start as many "
            "tasks on each node, or use train.strategy=fsdp"
        )
    return (world_size // ranks_per_node, ranks_per_node)


def describe_mesh(strategy: str, shape: tuple[int, ...]) -> str:
    if strategy == "hybrid":
        return (
            f"hybrid: sharded over {shape[1]} rank(s) per node, replicated over {shape[0]} node(s)"
        )
    return f"fsdp: sharded over {shape[0]} ranks"


def shard(
    model: nn.Module,
    strategy: str,
    shape: tuple[int, ...],
    device: torch.device,
    bf16: bool,
) -> nn.Module:
    """FSDP2 on ``model`` in place (collective): one unit per module that holds parameters
    of its own, then the root. With ``bf16``, FSDP2's mixed precision: bf16 parameters in
    forward and backward, float32 gradient reduction and float32 sharded master weights."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = ("replicate", "shard") if strategy == "hybrid" else ("shard",)
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for module in list(model.modules()):
        # Per-module units: only one module's full parameters exist at a time.
        if module is not model and next(module.parameters(recurse=False), None) is not None:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap(
    model: nn.Module,
    strategy: str,
    env: DistEnv,
    device: torch.device,
    bf16: bool,
    ranks_per_node: int | None,
) -> tuple[nn.Module, str]:
    """What runs ``model`` on this rank (DDP, or the model sharded in place), and a phrase
    for the log ("" for DDP, whose log line stays as it was)."""
    if env.world_size == 1:
        return model, "" if strategy == DEFAULT else f"{strategy}: one rank, nothing to shard"
    if strategy == DEFAULT:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids), ""
    shape = mesh_shape(strategy, env.world_size, ranks_per_node)
    return shard(model, strategy, shape, device, bf16), describe_mesh(strategy, shape)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as ordinary CPU tensors (``model.pt``'s state dict).

    For a sharded model a collective: every rank must call it; only rank 0 gets the tensors
    (the others an empty dict).
    """
    if not is_sharded(model):
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state (its shards when
    sharded). DDP's gradient buckets, a second copy of the gradients, are not counted."""
    params = list(model.parameters())
    out = {
        "parameters": sum(_local_bytes(p) for p in params),
        "gradients": sum(_local_bytes(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(
            _local_bytes(v)
            for state in optimizer.state.values()
            for v in state.values()
            if isinstance(v, torch.Tensor)
        ),
    }
    out["total"] = sum(out.values())
    return out
