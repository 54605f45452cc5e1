"""bn2d.torch.convert on torchvision's ResNet-18 (random init, no downloads): the converted model
trains as the original does, and state_dicts go both ways."""
import copy

import torch
import torchvision

import bn2d.torch as bt


def resnet18():
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    # Non-default BN state, so that the comparison sees every buffer.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def bn_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_convert_replaces_every_batchnorm_and_shares_state():
    model = resnet18()
    before = {id(m.weight) for m in bn_modules(model)}
    model.eval()
    converted = bt.convert(model)
    bns = bn_modules(converted)
    assert len(bns) == 20 and all(type(m) is bt.BatchNorm2d for m in bns)
    assert {id(m.weight) for m in bns} == before  # the same Parameters, not copies
    assert not any(m.training for m in bns)  # the mode is kept
    assert bt.convert(torch.nn.BatchNorm2d(3)).__class__ is bt.BatchNorm2d


def train_side_by_side(ref, ours, dtype, steps, check_step):
    """SGD steps of both models from the same state on the same data; check_step(step, losses)
    after each backward."""
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (ref, ours)]
    for step in range(steps):
        x = torch.randn(8, 3, 64, 64, dtype=dtype)
        target = torch.randint(0, 10, (8,))
        losses = []
        for model, opt in zip((ref, ours), opts):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            losses.append(loss.item())
        check_step(step, losses)
        for opt in opts:
            opt.step()


def equal_in_float64(ref, ours):
    """A train_side_by_side check: equal losses and gradients, up to float64 rounding."""
    def check(step, losses):
        assert abs(losses[1] - losses[0]) < 1e-10 * abs(losses[0]), (step, losses)
        for (name, p_r), p_o in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(p_o.grad, p_r.grad, rtol=1e-7, atol=1e-9,
                                       msg=lambda m: f"step {step} {name}: {m}")
    return check


def test_training_steps_match_the_original_float64():
    """In float64 every loss, gradient, parameter and running statistic of the converted model
    equals the original's over several steps (float64 leaves no ReLU or max-pool decision to
    the last bits; see the float32 test)."""
    ref = resnet18().double()
    ours = bt.convert(copy.deepcopy(ref))

    train_side_by_side(ref, ours, torch.float64, 4, equal_in_float64(ref, ours))
    for r, o in zip(bn_modules(ref), bn_modules(ours)):
        torch.testing.assert_close(o.running_mean, r.running_mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(o.running_var, r.running_var, rtol=1e-9, atol=1e-12)
        assert o.num_batches_tracked.item() == r.num_batches_tracked.item() == 4
    for p_r, p_o in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(p_o, p_r, rtol=1e-8, atol=1e-10)
    ref.eval()
    ours.eval()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-8, atol=1e-10)


def test_training_steps_match_the_original_float32():
    """Float32 training of a ResNet is chaotic: a ReLU or max-pool decision can flip with the
    last bit of a batch-norm output (PyTorch's own float32 run drifts from its float64 run the
    same way), and a flipped decision changes every gradient upstream of it. So the float32
    comparison is of the losses, which stay within a small tolerance over the steps."""
    ref = resnet18()
    ours = bt.convert(copy.deepcopy(ref))

    def check(step, losses):
        assert abs(losses[1] - losses[0]) < 1e-2 * abs(losses[0]), (step, losses)

    train_side_by_side(ref, ours, torch.float32, 4, check)


def test_state_dict_round_trip_both_ways():
    ref = resnet18()
    ref.train()
    ref(torch.randn(4, 3, 32, 32))  # running statistics and counts that are not the defaults
    ours = bt.convert(resnet18())
    ours.load_state_dict(ref.state_dict())
    back = resnet18()
    back.load_state_dict(ours.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
        assert torch.equal(back.state_dict()[key], value), key


def fused_counts(model):
    kinds = [type(m) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return kinds.count(bt.BatchNormReLU2d), kinds.count(bt.BatchNorm2d)


def test_fuse_resnet18_trains_as_the_original_float64():
    """fuse() on ResNet-18: the stem's and every block's bn -> relu and bn + identity -> relu
    become BatchNormReLU2d (17), the downsample branches' batch norms stay plain (3); four
    float64 training steps give the original's losses and gradients; state_dict keys are kept."""
    ref = resnet18().double()
    fused = bt.fuse(copy.deepcopy(ref))
    assert fused_counts(fused) == (17, 3)
    assert list(fused.state_dict()) == list(ref.state_dict())

    train_side_by_side(ref, fused, torch.float64, 4, equal_in_float64(ref, fused))


def test_fuse_resnet50_bottlenecks():
    """Bottleneck blocks: bn1/bn2 -> relu and bn3 + identity -> relu (49 fused, 4 plain); the
    forward equals the original's in training and eval mode."""
    ref = torchvision.models.resnet50(weights=None, num_classes=10).double()
    fused = bt.fuse(copy.deepcopy(ref))
    assert fused_counts(fused) == (49, 4)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-8, atol=1e-10)
    ref.eval()
    fused.eval()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-8, atol=1e-10)

