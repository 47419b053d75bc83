"""The reference CapsNet in PyTorch: capszoo's architecture, written the way PyTorch code is.

Same layers, shapes and parameter count (8,141,840) as ``capszoo.models.capsnet.net.CapsNet``,
and the same parameter names, so capszoo's ``.params`` weights load directly
(:func:`load_capszoo_weights`, through ``capszoo._weights.read_params``; the
benchmark converts them once to ``.npz`` with :func:`save_npz`, so that the
PyTorch process never imports capszoo, and with it MXNet) and the outputs can be compared number for number.

Routing is the textbook loop over ``einsum``/``softmax`` on ``(N, 10, 1152, 16)``
prediction vectors; prediction vectors are one ``einsum`` with ``W`` of shape
``(1152, 10, 16, 8)``.  ``model(x)`` returns ``(probabilities, capsule,
reconstruction)`` like capszoo's net; ``model.losses(x, label)`` returns the
training recipe's per-sample ``(ClassLoss, RecoLoss, probabilities)`` with the
decoder fed the true class's capsule, as ``CapsNetTrainingNet`` does.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CapsNet", "squash", "load_capszoo_weights", "read_capszoo_weights", "save_npz", "build", "NUM_PARAMS", "margin_loss", "reconstruction_loss",
           "train_step", "make_optimizer"]

NUM_PARAMS = 8_141_840
NUM_CLASSES, NUM_PRIMARY, PRIMARY_DIM, DIGIT_DIM = 10, 1152, 8, 16
EPS = 1e-9


def squash(s: torch.Tensor, dim: int) -> torch.Tensor:
    """``|s|^2 / (1 + |s|^2) * s / |s|`` along ``dim`` (capszoo's formula, same epsilon)."""
    sq = (s * s).sum(dim=dim, keepdim=True)
    return s * (sq / (1.0 + sq) / torch.sqrt(sq + EPS))


class PrimaryCaps(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(256, 256, kernel_size=9, stride=2)

    def forward(self, x):
        y = self.conv(x)                                    # (N,256,6,6)
        n = y.shape[0]
        y = y.reshape(n, 32, PRIMARY_DIM, 36).transpose(2, 3).reshape(n, NUM_PRIMARY, PRIMARY_DIM)
        return squash(y, dim=2)                            # (N,1152,8), capsule i = 36*type + 6*y + x


class CapsNet(nn.Module):
    """CapsNet (Sabour, Frosst, Hinton 2017) for 28x28 digits, as in capszoo.

    Parameters
    ----------
    routing_iterations : int
        Iterations of routing by agreement (3).
    """

    def __init__(self, routing_iterations: int = 3):
        super().__init__()
        self.routing_iterations = routing_iterations
        self.conv1 = nn.Conv2d(1, 256, kernel_size=9)
        self.primary = PrimaryCaps()
        self.W = nn.Parameter(torch.empty(NUM_PRIMARY, NUM_CLASSES, DIGIT_DIM, PRIMARY_DIM).uniform_(-0.005, 0.005))
        self.decoder = nn.Sequential(nn.Linear(16, 512), nn.ReLU(inplace=True), nn.Linear(512, 1024),
                                     nn.ReLU(inplace=True), nn.Linear(1024, 784), nn.Sigmoid())

    def digit_capsules(self, x: torch.Tensor) -> torch.Tensor:
        u = self.primary(F.relu(self.conv1(x)))                       # (N,1152,8)
        # one contiguous copy: the routing einsums below read u_hat five times (~10 % faster at batch 128)
        u_hat = torch.einsum("ijdk,nik->njid", self.W, u).contiguous()  # (N,10,1152,16)
        b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)  # (N,10,1152)
        for it in range(self.routing_iterations):
            c = torch.softmax(b, dim=1)                               # coupling over the 10 classes
            v = squash(torch.einsum("nji,njid->njd", c, u_hat), dim=2)  # (N,10,16)
            if it + 1 < self.routing_iterations:
                b = b + torch.einsum("njid,njd->nji", u_hat, v)      # agreement
        return v

    @staticmethod
    def lengths(caps):
        return torch.sqrt((caps * caps).sum(dim=2) + EPS)

    def decode(self, capsule):
        return self.decoder(capsule).reshape(-1, 1, 28, 28)

    def forward(self, x):
        caps = self.digit_capsules(x)
        probs = self.lengths(caps)
        capsule = caps[torch.arange(caps.shape[0], device=caps.device), probs.argmax(dim=1)]
        return probs, capsule, self.decode(capsule)

    def losses(self, x, label, *, m_plus=0.9, m_minus=0.1, lam=0.5, class_weight=1.0, reco_weight=0.392):
        """Per-sample ``(ClassLoss, RecoLoss, probabilities)`` of the capsnet-mnist recipe."""
        caps = self.digit_capsules(x)
        probs = self.lengths(caps)
        reco = self.decode(caps[torch.arange(caps.shape[0], device=caps.device), label])
        return (margin_loss(probs, label, m_plus, m_minus, lam) * class_weight,
                reconstruction_loss(reco, x) * reco_weight, probs)


def margin_loss(lengths, label, m_plus=0.9, m_minus=0.1, lam=0.5):
    t = F.one_hot(label, NUM_CLASSES).to(lengths.dtype)
    return (t * F.relu(m_plus - lengths) ** 2 + lam * (1 - t) * F.relu(lengths - m_minus) ** 2).sum(dim=1)


def reconstruction_loss(reco, image):
    return ((reco - image) ** 2).mean(dim=(1, 2, 3))


#: capszoo parameter name -> this module's.
NAME_MAP = {
    "ReLUConv1.weight": "conv1.weight", "ReLUConv1.bias": "conv1.bias",
    "PrimaryCaps.weight": "primary.conv.weight", "PrimaryCaps.bias": "primary.conv.bias",
    "PrimaryPredVects.weight": "W",
    "Reconstruct.0.weight": "decoder.0.weight", "Reconstruct.0.bias": "decoder.0.bias",
    "Reconstruct.1.weight": "decoder.2.weight", "Reconstruct.1.bias": "decoder.2.bias",
    "Reconstruct.2.weight": "decoder.4.weight", "Reconstruct.2.bias": "decoder.4.bias",
}


def read_capszoo_weights(path):
    """``{capszoo name: float32 array}`` from a capszoo ``.params`` file (``capszoo._weights.read_params``)
    or from an ``.npz`` of the same arrays (:func:`save_npz`: lets a process load them without
    importing capszoo, whose package import loads MXNet and its OpenMP runtime)."""
    if str(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    from capszoo import read_params
    return read_params(path)


def save_npz(params_path, npz_path):
    """Convert a capszoo ``.params`` file into an ``.npz`` of the same named arrays."""
    np.savez(npz_path, **read_capszoo_weights(params_path))
    return npz_path


def load_capszoo_weights(model: CapsNet, path) -> CapsNet:
    """Copy capszoo weights (``.params``, or ``.npz`` from :func:`save_npz`) into ``model``;
    names and shapes are checked."""
    arrays = read_capszoo_weights(path)
    if set(arrays) != set(NAME_MAP):
        raise ValueError(f"{path}: parameters {sorted(arrays)} are not capszoo CapsNet's {sorted(NAME_MAP)}")
    state = {NAME_MAP[k]: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in arrays.items()}
    model.load_state_dict(state, strict=True)
    return model


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_optimizer(model, lr=0.001):
    """Adam as in the recipe (MXNet's defaults: betas (0.9, 0.999), eps 1e-8)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_step(model, optimizer, x, label):
    """One step of the recipe: mean over the batch of ClassLoss + RecoLoss, Adam."""
    optimizer.zero_grad(set_to_none=True)
    cl, rl, probs = model.losses(x, label)
    (cl + rl).mean().backward()
    optimizer.step()
    return float(cl.sum()), float(rl.sum()), int((probs.argmax(dim=1) == label).sum())


def build(weights=None, routing_iterations=3) -> CapsNet:
    model = CapsNet(routing_iterations)
    n = num_params(model)
    assert n == NUM_PARAMS, f"PyTorch CapsNet has {n:,} parameters, capszoo's has {NUM_PARAMS:,}"
    if weights is not None:
        load_capszoo_weights(model, weights)
    return model
