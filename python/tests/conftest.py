"""Shared fixtures of the Python package's tests: fresh random data, poisoned outputs, the
problem list (tests/problems.txt) and the reference module (torch.nn.BatchNorm2d)."""
import math
import os
import pathlib
import random

import pytest
import torch

import bn2d.torch as bt

ROOT = pathlib.Path(__file__).resolve().parents[2]


def problems(set_name):
    """(N, C, H, W) of every problem in a set of tests/problems.txt."""
    shapes = []
    for line in (ROOT / "tests" / "problems.txt").read_text().splitlines():
        fields = line.split("#")[0].split()
        if len(fields) > 1 and set_name in fields[1:]:
            d = fields[0]
            n, rest = d[2:].split("ic")
            c, rest = rest.split("ih")
            h, w = rest.split("iw")
            shapes.append((int(n), int(c), int(h), int(w)))
    return shapes


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Fresh random inputs on every run; BN2D_TEST_SEED=<seed> replays a run (a failing test's
    report names its seed)."""
    seed = int(os.environ.get("BN2D_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(seed)
    request.node.bn2d_seed = seed
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed and hasattr(item, "bn2d_seed"):
        report.sections.append(("bn2d", f"replay with BN2D_TEST_SEED={item.bn2d_seed}"))


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every tensor bn2d.torch allocates for a kernel to write starts as NaN: a result with a
    NaN left in it has an element no kernel wrote."""
    monkeypatch.setattr(bt, "_empty_like", lambda t: torch.full_like(t, math.nan))
    monkeypatch.setattr(bt, "_empty", lambda *size, **kw: torch.full(size, math.nan, **kw))


def randomize(module):
    """Non-trivial parameters and running statistics (never the defaults 1, 0, 0, 1)."""
    with torch.no_grad():
        if module.affine:
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-1.0, 1.0)
        if module.track_running_stats:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return module


def pair(num_features, **options):
    """PyTorch's module and bn2d's, with the same random state."""
    ref = randomize(torch.nn.BatchNorm2d(num_features, **options))
    ours = bt.BatchNorm2d(num_features, **options)
    ours.load_state_dict(ref.state_dict())
    return ref, ours
