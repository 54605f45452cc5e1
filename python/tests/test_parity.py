"""bn2d.torch.BatchNorm2d against torch.nn.BatchNorm2d: outputs, running statistics,
num_batches_tracked and every gradient, over the problem list's parity shapes, dtypes, layouts,
modes and options."""
import math

import pytest
import torch

import bn2d
import bn2d.torch as bt
from conftest import pair, problems

# The parity shapes, and a 7x7 plane with 32 channels: the split CPU strategy's territory.
SHAPES = problems("parity") + [(4, 32, 7, 7)]
OPTIONS = {
    "default": {},
    "momentum_none": {"momentum": None},
    "affine_off": {"affine": False},
    "untracked": {"track_running_stats": False},
}
# Tolerances: float32 and float64 results differ from PyTorch's in summation order only;
# bfloat16 outputs by one rounding of an 8-bit mantissa.
TOLERANCE = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def layout(x, name):
    """The input in a layout: contiguous NCHW, channels_last, or a strided view (every other
    column of a wider tensor)."""
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "sliced":
        wide = torch.randn(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3], dtype=x.dtype)
        view = wide[..., ::2]
        view.copy_(x)
        return view
    return x


def check_close(ours, ref, tolerance, what):
    assert not torch.isnan(ours).any(), f"{what}: elements left unwritten (NaN poison)"
    torch.testing.assert_close(ours.to(ref.dtype), ref, **tolerance,
                               msg=lambda m: f"{what}: {m}")


def reference_for(ref, dtype):
    """PyTorch's module as the reference for `dtype`: itself, except for bfloat16, where its
    float64 copy on the same (bfloat16-valued) inputs is (PyTorch's bfloat16 backward sums in
    bfloat16 on CPU, far from the exact value bn2d's float32 sums get)."""
    return ref.double() if dtype == torch.bfloat16 else ref


def summation_bounds(module, x, grad):
    """Per-channel rounding bounds of float32 sums: grad_weight sums dy * xhat and grad_bias sums
    dy over N*H*W values, so a float32 result may be off the exact one by about eps * sum|term|
    (blocked and pairwise sums do better; PyTorch's CPU sums stay within a tenth of it). A
    channel whose terms cancel has a small result with the sum's full absolute error, which no
    relative tolerance covers."""
    x64, g64 = x.double(), grad.double()
    dims = (0, 2, 3)
    if module.training or not module.track_running_stats:
        mean, var = x64.mean(dims), x64.var(dims, unbiased=False)
    else:
        mean, var = module.running_mean.double(), module.running_var.double()
    xhat = (x64 - mean[None, :, None, None]) / (var + module.eps).sqrt()[None, :, None, None]
    eps = torch.finfo(torch.float32).eps
    return {"grad_weight": eps * (g64 * xhat).abs().sum(dims),
            "grad_bias": eps * g64.abs().sum(dims)}


def check_sum(ours, ref, bound, what):
    """|ours - ref| within both results' rounding bounds (each within `bound` of exact)."""
    assert not torch.isnan(ours).any(), f"{what}: elements left unwritten (NaN poison)"
    error = (ours.double() - ref.double()).abs()
    worst = int((error - 2 * bound).argmax())
    assert (error <= 2 * bound + 1e-6).all(), \
        f"{what}[{worst}]: {ours[worst].item()} vs {ref[worst].item()}, bound {bound[worst]:.3g}"


def run_steps(ref, ours, shape, dtype, layout_name, steps=2):
    """Forward and backward on fresh data, `steps` times; compares everything after each."""
    ref = reference_for(ref, dtype)
    tensor_tol = TOLERANCE[dtype]
    # Per-channel results are float32 sums (float64 for float64) in both implementations.
    channel_tol = TOLERANCE[torch.float64 if dtype == torch.float64 else torch.float32]
    for step in range(steps):
        x = layout(torch.randn(shape, dtype=dtype) * 2 + 0.5, layout_name)
        grad = torch.randn(shape, dtype=dtype)
        xr = x.detach().to(ref.weight.dtype if ref.affine else ref_dtype(dtype)).requires_grad_()
        xo = x.detach().clone().requires_grad_()
        bounds = summation_bounds(ours, x, grad)
        yr, yo = ref(xr), ours(xo)
        assert yo.dtype == dtype
        check_close(yo, yr, tensor_tol, f"step {step} output")
        params = [p for p in (ref.weight, ref.bias) if p is not None]
        ours_params = [p for p in (ours.weight, ours.bias) if p is not None]
        grads_r = torch.autograd.grad(yr, [xr] + params, grad.to(yr.dtype))
        grads_o = torch.autograd.grad(yo, [xo] + ours_params, grad)
        names = ["grad_input", "grad_weight", "grad_bias"]
        for name, go, gr in zip(names, grads_o, grads_r):
            if name == "grad_input":
                check_close(go, gr, tensor_tol, f"step {step} {name}")
            elif dtype == torch.float64:
                check_close(go, gr, channel_tol, f"step {step} {name}")
            else:
                check_sum(go, gr, bounds[name], f"step {step} {name}")
        for name in ("running_mean", "running_var"):
            r, o = getattr(ref, name), getattr(ours, name)
            if r is None:
                assert o is None
            else:
                check_close(o, r, channel_tol, name)
        if ref.num_batches_tracked is not None:
            assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item()


def ref_dtype(dtype):
    return torch.float64 if dtype in (torch.bfloat16, torch.float64) else torch.float32


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_float32_nchw(shape, option, mode):
    ref, ours = pair(shape[1], **OPTIONS[option])
    ref.train(mode == "train")
    ours.train(mode == "train")
    run_steps(ref, ours, shape, torch.float32, "contiguous")


@pytest.mark.parametrize("shape", [(20, 100, 35, 45), (3, 7, 13, 17), (4, 32, 7, 7)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout_name", ["channels_last", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layouts_and_dtypes(shape, layout_name, dtype, mode):
    ref, ours = pair(shape[1])
    if dtype == torch.float64:
        ref.double()
        ours.double()
    ref.train(mode == "train")
    ours.train(mode == "train")
    run_steps(ref, ours, shape, dtype, layout_name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_nchw_dtypes_train(dtype):
    ref, ours = pair(64)
    run_steps(ref, ours, (8, 64, 14, 14), dtype, "contiguous", steps=3)


@pytest.mark.parametrize("strategy", ["fused", "split"])
def test_cpu_strategies(strategy):
    """Both CPU strategies give PyTorch's results (automatic picks by plane size)."""
    previous = bn2d.cpu_strategy()
    bn2d.set_cpu_strategy(strategy)
    try:
        ref, ours = pair(32)
        run_steps(ref, ours, (4, 32, 9, 9), torch.float32, "contiguous")
    finally:
        bn2d.set_cpu_strategy(previous)


def test_output_mask_follows_requires_grad():
    """Only what autograd asks for is computed: frozen parameters get no gradient, and an input
    that needs none gets none."""
    ref, ours = pair(16)
    for m in (ref, ours):
        m.weight.requires_grad_(False)
    x = torch.randn(4, 16, 5, 5)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr).sum().backward()
    ours(xo).sum().backward()
    assert ours.weight.grad is None and ref.weight.grad is None
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-4)
    # Parameters only: the input needs no gradient.
    ours.zero_grad()
    ours.weight.requires_grad_(True)
    ours(torch.randn(4, 16, 5, 5)).sum().backward()
    assert ours.weight.grad is not None and not torch.isnan(ours.weight.grad).any()


def test_gradcheck_float64():
    for training in (True, False):
        x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
        w = torch.rand(4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(4, dtype=torch.float64, requires_grad=True)
        rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5

        def f(x, w, b):
            return bt.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

        assert torch.autograd.gradcheck(f, (x, w, b))


def test_functional_matches_torch():
    """bn2d.torch.batch_norm has torch.nn.functional.batch_norm's signature and semantics."""
    x = torch.randn(6, 12, 8, 9)
    w, b = torch.rand(12) + 0.5, torch.randn(12)
    for training in (True, False):
        rm_r, rv_r = torch.randn(12), torch.rand(12) + 0.5
        rm_o, rv_o = rm_r.clone(), rv_r.clone()
        yr = torch.nn.functional.batch_norm(x, rm_r, rv_r, w, b, training, 0.3, 1e-3)
        yo = bt.batch_norm(x, rm_o, rv_o, w, b, training, 0.3, 1e-3)
        torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(rm_o, rm_r)
        torch.testing.assert_close(rv_o, rv_r)
    # No running statistics: batch statistics, as PyTorch.
    yr = torch.nn.functional.batch_norm(x, None, None, w, b, True)
    torch.testing.assert_close(bt.batch_norm(x, None, None, w, b, True), yr, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("residual", [False, True])
def test_fused_relu_and_residual(residual):
    """BatchNormReLU2d: relu(bn(x) (+ z)) and its gradients, against PyTorch's modules."""
    ref, _ = pair(24)
    ours = bt.BatchNormReLU2d(24)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 24, 10, 10)
    z = torch.randn(4, 24, 10, 10)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    zr, zo = z.clone().requires_grad_(), z.clone().requires_grad_()
    yr = torch.relu(ref(xr) + zr) if residual else torch.relu(ref(xr))
    yo = ours(xo, zo) if residual else ours(xo)
    torch.testing.assert_close(yo, yr, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(yr)
    inputs_r = [xr, ref.weight, ref.bias] + ([zr] if residual else [])
    inputs_o = [xo, ours.weight, ours.bias] + ([zo] if residual else [])
    for go, gr in zip(torch.autograd.grad(yo, inputs_o, g), torch.autograd.grad(yr, inputs_r, g)):
        torch.testing.assert_close(go, gr, rtol=1e-4, atol=1e-4)


def test_module_behaves_as_torch():
    """isinstance, repr, state_dict keys, modes and .double() are nn.BatchNorm2d's."""
    ref, ours = pair(10, momentum=None)
    assert isinstance(ours, torch.nn.BatchNorm2d)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert ours.eval() is ours and not ours.training
    ours.double()
    assert ours.weight.dtype == torch.float64 and ours.running_var.dtype == torch.float64
    assert not math.isnan(ours(torch.randn(2, 10, 3, 3, dtype=torch.float64)).sum().item())
