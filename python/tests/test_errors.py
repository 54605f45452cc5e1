"""What bn2d cannot run raises bn2d.Error with bn2d's message, and leaves the module's state
(running statistics, num_batches_tracked, parameters) as it was."""
import pytest
import torch

import bn2d
import bn2d.torch as bt
from conftest import pair


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed by a failed call"


@pytest.mark.parametrize("x, message", [
    (torch.randn(2, 8, 5), "must be 4-D"),
    (torch.randn(2, 8, 3, 3, 3), "must be 4-D"),
    (torch.randn(2, 5, 3, 3), "8 values \\(num_features\\) but the input has C = 5"),
    (torch.randn(2, 8, 3, 3, dtype=torch.float64), "float64"),  # PyTorch refuses the mix too
    (torch.randint(0, 5, (2, 8, 3, 3)), "bn2d runs float32, bfloat16, float16 and float64"),
    (torch.randn(2, 8, 3, 3, device="meta"), "runs CPU tensors"),
])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_bad_input_raises_and_keeps_state(x, message, mode):
    _, ours = pair(8, momentum=None)
    ours.train(mode == "train")
    ours(torch.randn(4, 8, 3, 3))  # a successful step first: state is not the defaults
    before = snapshot(ours)
    with pytest.raises(bn2d.Error, match=message):
        ours(x)
    assert_unchanged(ours, before)
    # The module still works afterwards.
    assert not torch.isnan(ours(torch.randn(4, 8, 3, 3))).any()


def test_one_value_per_channel():
    """Training on one value per channel is an error (PyTorch's check); eval mode normalizes it
    with the running statistics, as PyTorch does."""
    ref, ours = pair(8)
    x = torch.randn(1, 8, 1, 1)
    before = snapshot(ours)
    with pytest.raises(bn2d.Error, match="more than 1 value per channel"):
        ours(x)
    assert_unchanged(ours, before)
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x))


def test_error_is_a_runtime_error():
    assert issubclass(bn2d.Error, RuntimeError)


def test_functional_errors():
    x = torch.randn(4, 6, 3, 3)
    with pytest.raises(bn2d.Error, match="required when training is false"):
        bt.batch_norm(x, None, None, training=False)
    with pytest.raises(bn2d.Error, match="running_mean has 5 values"):
        bt.batch_norm(x, torch.zeros(5), torch.ones(5), training=True)
    with pytest.raises(bn2d.Error, match="eps must be finite"):
        bt.batch_norm(x, None, None, training=True, eps=-1.0)
    rm, rv = torch.zeros(6), torch.ones(6)
    with pytest.raises(bn2d.Error, match="weight is float64"):
        bt.batch_norm(x, rm, rv, torch.ones(6, dtype=torch.float64), None, True)
    assert torch.equal(rm, torch.zeros(6)) and torch.equal(rv, torch.ones(6))


def test_settings():
    assert bn2d.max_cpu_isa() in bn2d.compiled_cpu_isas()
    with pytest.raises(bn2d.Error, match="unknown CPU strategy"):
        bn2d.set_cpu_strategy("fastest")
    assert bn2d.cpu_strategy() == "automatic"
    info = bn2d.build_info()
    assert info["halide_version"] and info["kernels"]
