"""bn2d.torch.SyncBatchNorm on 2 processes over gloo against single-process
torch.nn.BatchNorm2d on the whole batch: outputs, running statistics and gradients. The two
processes hold different batch sizes (3 and 5), so the merge must weigh them by count."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import bn2d.torch as bt

SIZES = (3, 5)  # batch per process
C, H, W = 6, 5, 7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank, port, data, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(SIZES))
    try:
        x_all, grad_all, state, momentum = data
        start = sum(SIZES[:rank])
        rows = slice(start, start + SIZES[rank])
        module = bt.SyncBatchNorm(C, momentum=momentum)
        module.load_state_dict(state)
        results = {}
        for step in range(2):
            x = x_all[step][rows].clone().requires_grad_()
            y = module(x)
            y.backward(grad_all[step][rows])
            results[step] = {"y": y.detach(), "grad_input": x.grad,
                             "grad_weight": module.weight.grad.clone(),
                             "grad_bias": module.bias.grad.clone()}
            module.zero_grad()
        results["state"] = {k: v.clone() for k, v in module.state_dict().items()}
        module.eval()
        results["eval"] = module(x_all[0][rows]).detach()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_two_processes_match_one_batch(tmp_path, momentum):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this torch build")
    n = sum(SIZES)
    x_all = [torch.randn(n, C, H, W) * 3 + 1 for _ in range(2)]
    grad_all = [torch.randn(n, C, H, W) for _ in range(2)]
    ref = torch.nn.BatchNorm2d(C, momentum=momentum)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    mp.spawn(worker, args=(free_port(), (x_all, grad_all, state, momentum), str(tmp_path)),
             nprocs=len(SIZES), join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(len(SIZES))]

    for step in range(2):
        x = x_all[step].clone().requires_grad_()
        y = ref(x)
        y.backward(grad_all[step])
        tol = dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.cat([r[step]["y"] for r in ranks]), y.detach(), **tol)
        torch.testing.assert_close(torch.cat([r[step]["grad_input"] for r in ranks]), x.grad,
                                   **tol)
        # Parameter gradients stay each process's own (data-parallel training sums them).
        torch.testing.assert_close(sum(r[step]["grad_weight"] for r in ranks), ref.weight.grad,
                                   **tol)
        torch.testing.assert_close(sum(r[step]["grad_bias"] for r in ranks), ref.bias.grad,
                                   **tol)
        ref.zero_grad()
    for r in ranks:
        for key, value in ref.state_dict().items():
            torch.testing.assert_close(r["state"][key], value, rtol=1e-5, atol=1e-6,
                                       msg=key)
    ref.eval()
    torch.testing.assert_close(torch.cat([r["eval"] for r in ranks]), ref(x_all[0]),
                               rtol=1e-4, atol=1e-5)


def test_single_process_is_batchnorm():
    """Without an initialized process group, SyncBatchNorm is bn2d's BatchNorm2d (as PyTorch's
    on one process), and convert_sync_batchnorm converts a model's batch norms to it."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    ref = torch.nn.BatchNorm2d(8)
    ref.load_state_dict(model[1].state_dict())
    model = bt.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[1]) is bt.SyncBatchNorm
    x = torch.randn(4, 8, 6, 6)
    torch.testing.assert_close(model[1](x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, ref.running_var)
