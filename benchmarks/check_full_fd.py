"""Accuracy of the full mitigation's finite-difference estimates on the digits CNN, against autograd.

Run from a project whose prepare and train@0-plain stages have run (for example after `make run`):

    python benchmarks/check_full_fd.py

For a freshly initialised and for the trained plain model (on 64 training images of class 8), and
a random unit direction v, prints the cosine and relative error of the finite-difference
Hessian-vector product (g(θ+εv) − g(θ))/ε against double backward, and of the eigenvalue
gradient's second difference (g(θ+εv) − 2g(θ) + g(θ−εv))/ε² against third-order backward of vᵀHv,
at ε = 0.1, 0.01 and 0.001.
"""
import torch
import torch.nn.functional as F

from fairprune import artifacts, models
from fairprune.data import load_prepared


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def check(model: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, label: str) -> None:
    model.eval()
    params = list(model.parameters())

    def grad(create: bool = False):
        return torch.autograd.grad(F.cross_entropy(model(xb), yb), params, create_graph=create)

    g = grad(create=True)
    v = [torch.randn_like(p) for p in params]
    v = [t / flat(v).norm() for t in v]
    hv = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params, create_graph=True)
    third = flat(torch.autograd.grad(sum((a * b).sum() for a, b in zip(hv, v)), params))
    hv, g0 = flat(hv).detach(), flat(grad()).detach()

    def shifted(step: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=step)
        out = flat(grad()).detach()
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=step)
        return out

    for eps in (0.1, 0.01, 0.001):
        plus, minus = shifted(eps), shifted(-eps)
        fd_hv, fd_third = (plus - g0) / eps, (plus - 2 * g0 + minus) / eps ** 2
        print(f"{label:>5} eps {eps}: HVP cos {cosine(fd_hv, hv):.3f} rel. error "
              f"{float((fd_hv - hv).norm() / hv.norm()):.2f} | eigenvalue gradient cos {cosine(fd_third, third):.3f}, "
              f"norm {float(fd_third.norm()):.3g} vs autograd {float(third.norm()):.3g}")


def main() -> None:
    torch.manual_seed(0)
    data = load_prepared(artifacts.PREPARED)
    x, y, groups = data.subset("train")
    rows = groups == 8
    xb, yb = x[rows][:64].float() / 255, y[rows][:64]
    check(models.build("small_cnn", data), xb, yb, "init")
    check(models.load(artifacts.dense_model(0, "plain"))[0], xb, yb, "plain")


if __name__ == "__main__":
    main()
