"""Fine-tuning a sparsified model under DDP and FSDP2 (2 processes, gloo, CPU) gives the
weights of one process training on the whole batch."""
import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tilesparse import Pruner, finalize, sparsify

WORLD = 2
STEPS = 4

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def make_model(final: bool, prune_with_pruner: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8)).double()
    pruner = None
    if prune_with_pruner:
        pruner = Pruner(model, 0.6, tile=8, schedule="cubic", start_step=0, end_step=STEPS - 1, frequency=1,
                        filter_fn=lambda m, f: f in ("0", "2"))
    else:
        sparsify(model, 0.6, tile=8, filter_fn=lambda m, f: f in ("0", "2"))
        if final:
            finalize(model)
    return model, pruner


def full_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(8, 8, generator=g, dtype=torch.float64)


def train(model, pruner, x, t, wrapped=None):
    net = wrapped if wrapped is not None else model
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    if pruner is not None:
        pruner.optimizer = opt
    for _ in range(STEPS):
        opt.zero_grad()
        F.mse_loss(net(x), t).backward()  # mean loss: the average of the two halves' means
        opt.step()
        if pruner is not None:
            pruner.step()


def full_state(model):
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return {k: v.detach().clone() for k, v in out.items()}


CASES = [("ddp", False, True), ("ddp", False, False), ("ddp", True, False), ("fsdp2", False, False),
         ("fsdp2", True, False)]


def worker(rank, init_file, out_dir):
    # tw_linear returns a view of its fresh output; FSDP2 warns about in-place ops on views (none here)
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    x, t = full_batch()
    xs, ts = x.chunk(WORLD)[rank], t.chunk(WORLD)[rank]
    for i, (kind, final, use_pruner) in enumerate(CASES):
        model, pruner = make_model(final, use_pruner)
        if kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            train(model, pruner, xs, ts, DDP(model))
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, nn.Linear) or hasattr(layer, "tile"):
                    fully_shard(layer)
            fully_shard(model)
            train(model, pruner, xs, ts)
        state = full_state(model)
        if rank == 0:
            torch.save(state, os.path.join(out_dir, f"case{i}.pt"))
        else:
            torch.save(state, os.path.join(out_dir, f"case{i}_rank1.pt"))
        dist.barrier()
    dist.destroy_process_group()
    open(os.path.join(out_dir, f"done{rank}"), "w").close()  # every case saved, the group torn down


def run_workers(d):
    """Runs the 2 workers; returns None when both finished every case, else what went wrong. A worker that
    dies after its done marker (a gloo thread still joinable at interpreter exit: "terminate called without
    an active exception", SIGABRT) has delivered its results, which are what the tests check."""
    try:
        mp.spawn(worker, args=(os.path.join(d, "init"), d), nprocs=WORLD, join=True)
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as e:
        if all(os.path.exists(os.path.join(d, f"done{r}")) for r in range(WORLD)):
            warnings.warn(f"a worker exited abnormally after finishing every case: {e}")
            return None
        return e
    return None


@pytest.fixture(scope="module")
def distributed_results():
    # One retry in a fresh directory where a worker died before finishing (seen once in CI under load, rank 0
    # aborting in gloo); the computation is deterministic, so a real failure fails twice, with both reasons.
    failures = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as d:
            err = run_workers(d)
            if err is None:
                if failures:
                    warnings.warn(f"the first distributed run failed, the retry passed: {failures[0]}")
                yield {i: (torch.load(os.path.join(d, f"case{i}.pt")), torch.load(os.path.join(d, f"case{i}_rank1.pt")))
                       for i in range(len(CASES))}
                return
            failures.append(f"{type(err).__name__}: {err}")
    pytest.fail("the distributed workers failed twice:\n" + "\n".join(failures))


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{k}-{'final' if f else 'masked'}{'-pruner' if p else ''}"
                                                       for k, f, p in CASES])
def test_matches_single_process(distributed_results, i):
    kind, final, use_pruner = CASES[i]
    model, pruner = make_model(final, use_pruner)
    x, t = full_batch()
    train(model, pruner, x, t)
    ref = full_state(model)
    got0, got1 = distributed_results[i]
    assert set(got0) == set(ref)
    for k, v in ref.items():
        if v.is_floating_point():
            torch.testing.assert_close(got0[k], v, atol=1e-12, rtol=1e-10, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(got0[k], v), k  # masks and index buffers identical
        assert torch.equal(got0[k], got1[k]), k  # both ranks hold the same model
    if use_pruner:
        assert abs(pruner.current_sparsity - 0.6) < 1e-12
