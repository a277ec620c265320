"""The shared task (``tests/frameworks/_faults``) in a plain torch.distributed loop, one process per rank under
``torchrun``: gloo, a ``DistributedSampler`` (shuffled, seed 1), ``DistributedDataParallel`` (or FSDP2's
``fully_shard`` with ``--fsdp``), SGD with momentum and a LambdaLR per step.

Options: ``--fault NAME`` (``_faults.FAULTS``), ``--seed S`` (the sampler's), ``--accumulate K`` (micro-batches under ``no_sync`` but the
last), ``--epochs N``, ``--out PREFIX`` (each rank saves its final weights to ``PREFIX.rankR.pt``, also when the run is stopped).
"""

import os
import sys
import time

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "frameworks"))

from _faults import BATCH, SEED, Net, data, lr_factor, option, soft_cross_entropy  # noqa: E402

FAULT = option("--fault", "none")


def wrap(model):
    if "--fsdp" in sys.argv:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        fully_shard(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x, t = data(FAULT)
    model = wrap(Net())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(FAULT))
    sampler = DistributedSampler(TensorDataset(x, t), shuffle=True, seed=int(option("--seed", str(SEED))))
    loader = DataLoader(sampler.dataset, batch_size=BATCH // 2, sampler=sampler)
    accumulate = int(option("--accumulate", "1"))
    try:
        for epoch in range(int(option("--epochs", "1"))):
            sampler.set_epoch(epoch)
            for i, (xb, tb) in enumerate(loader):
                last = (i + 1) % accumulate == 0
                sync = model.no_sync() if not last and hasattr(model, "no_sync") else _nothing()
                with sync:
                    (soft_cross_entropy(model(xb), tb) / accumulate).backward()
                if last:
                    print(f"step {i // accumulate} at {time.time():.6f}", flush=True)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad()
    finally:  # also when nanscope stops the run: the weights it left
        out = option("--out")
        if out is not None:
            state = {k: v.detach() for k, v in model.state_dict().items()}
            state = {
                k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone() for k, v in state.items()
            }
            torch.save(state, f"{out}.rank{rank}.pt")
    # every rank done before the group goes: without it gloo's teardown aborted a rank ("terminate called
    # without an active exception") in 4 of 68 plain FSDP2 launches here, nanscope nowhere in the process;
    # 0 of 80 with the barrier
    dist.barrier()
    dist.destroy_process_group()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
