#!/usr/bin/env python3
"""A real training run with bn2d from PyTorch: a small CNN on scikit-learn's bundled digits
(1,797 8x8 images, no download), trained twice from the same seed, once with PyTorch's
BatchNorm2d and once converted to bn2d's. Prints both loss curves and test accuracies, and
plots them (--plot FILE.png).

    .venv-python/bin/python examples/python/train_digits.py --plot digits.png
"""
import argparse
import copy
import time

import torch
from torch import nn

import bn2d.torch


def digits(seed):
    """The digits data set as float32 NCHW tensors, standardized, split 80/20 by a fixed seed."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = (x[order] - 0.5) / 0.5, y[order]
    split = int(0.8 * len(y))
    return (x[:split], y[:split]), (x[split:], y[split:])


def cnn():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]
    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                         *block(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 10))


def train(model, data, epochs, seed, batch=64, lr=0.05):
    """SGD with momentum; returns the per-epoch mean training loss, the test accuracy (%) and
    the training time (s)."""
    (x, y), (x_test, y_test) = data
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    batches = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=batches)
        total = 0.0
        for i in range(0, len(y) - batch + 1, batch):  # full batches only
            idx = order[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item()
        curve.append(total / (len(y) // batch))
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item() * 100
    return curve, accuracy, seconds


def compare(epochs=15, seed=0):
    """Both runs: {"torch": (curve, accuracy, seconds), "bn2d": (...)}."""
    data = digits(seed)
    torch.manual_seed(seed)
    reference = cnn()
    converted = bn2d.torch.convert(copy.deepcopy(reference))
    return {"torch": train(reference, data, epochs, seed),
            "bn2d": train(converted, data, epochs, seed)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the two loss curves to this PNG")
    args = parser.parse_args()
    runs = compare(args.epochs, args.seed)
    print("epoch  loss(torch)  loss(bn2d)")
    for e, (a, b) in enumerate(zip(runs["torch"][0], runs["bn2d"][0]), 1):
        print(f"{e:5d}  {a:11.5f}  {b:10.5f}")
    for name, (_, accuracy, seconds) in runs.items():
        print(f"{name:>5}: test accuracy {accuracy:.2f}%, training {seconds:.2f} s")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, style in (("torch", "-"), ("bn2d", "--")):
            curve, accuracy, _ = runs[name]
            label = f"{name} BatchNorm2d (test accuracy {accuracy:.1f}%)"
            ax.plot(range(1, len(curve) + 1), curve, style, label=label)
        ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log",
               title="CNN on scikit-learn digits, same seed")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print("plot:", args.plot)


if __name__ == "__main__":
    main()
