"""FLOPs per image of the CapsNet, counted from the architecture (a multiply-add is 2 FLOPs).

Only the multiply-accumulate work is counted (convolutions, prediction
vectors, routing's weighted sums and agreements, decoder); element-wise work
(biases, ReLU, squash, softmax, lengths: about 0.1 MFLOP) is left out, as is
usual.  The layer shapes are capszoo's (``capszoo/_net.py``); the parameter
count computed from the same shapes is checked against 8,141,840.
"""
from __future__ import annotations

IMAGE = 28
CONV1 = dict(cin=1, cout=256, k=9, stride=1)
CONV2 = dict(cin=256, cout=256, k=9, stride=2)
NUM_PRIMARY, PRIMARY_DIM, NUM_CLASSES, DIGIT_DIM = 1152, 8, 10, 16
DECODER = (16, 512, 1024, 784)
NUM_PARAMS = 8_141_840


def _conv(size, cin, cout, k, stride):
    out = (size - k) // stride + 1
    return out, 2 * cout * out * out * cin * k * k, cout * cin * k * k + cout


def forward_flops(routing_iterations=3):
    """``{part: FLOPs per image}`` of one forward pass (inference)."""
    s1, conv1, _ = _conv(IMAGE, **CONV1)
    s2, conv2, _ = _conv(s1, **CONV2)
    assert CONV2["cout"] // PRIMARY_DIM * s2 * s2 == NUM_PRIMARY
    pred = 2 * NUM_PRIMARY * NUM_CLASSES * DIGIT_DIM * PRIMARY_DIM
    one = 2 * NUM_CLASSES * NUM_PRIMARY * DIGIT_DIM          # one batched weighted sum or agreement
    routing = routing_iterations * one + (routing_iterations - 1) * one
    decoder = sum(2 * a * b for a, b in zip(DECODER[:-1], DECODER[1:]))
    parts = {"ReLUConv1": conv1, "PrimaryCaps": conv2, "PrimaryPredVects": pred, "DigitCaps (routing)": routing,
             "Reconstruct": decoder}
    parts["total"] = sum(parts.values())
    return parts


def training_flops(routing_iterations=3):
    """FLOPs per image of a training step: forward + backward (data and weight gradients),
    about 3x the forward, except that ReLUConv1 needs no gradient for its input (2x)."""
    f = forward_flops(routing_iterations)
    return 3 * f["total"] - f["ReLUConv1"]


def num_params():
    _, _, p1 = _conv(IMAGE, **CONV1)
    s1 = (IMAGE - CONV1["k"]) // CONV1["stride"] + 1
    _, _, p2 = _conv(s1, **CONV2)
    pred = NUM_PRIMARY * NUM_CLASSES * DIGIT_DIM * PRIMARY_DIM
    dec = sum(a * b + b for a, b in zip(DECODER[:-1], DECODER[1:]))
    return p1 + p2 + pred + dec


assert num_params() == NUM_PARAMS, num_params()
