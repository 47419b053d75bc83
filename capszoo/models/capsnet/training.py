"""The CapsNet family's training: the net with its two losses, ClassLoss and RecoLoss, and its
seeded initialization."""
from __future__ import annotations

import mxnet as mx
from mxnet.gluon import HybridBlock

from .net import CapsNet, NUM_CLASSES, capsule_lengths

__all__ = ["MarginLoss", "ReconstructionLoss", "CapsNetTrainingNet", "initialize"]


def initialize(net, recipe, ctx):
    """Xavier for the dense layers and transposed convolutions, He (MSRA) for the two capsule
    convolutions, W ~ Uniform(-s, s) for the prediction vectors (``net.pred_vects_init_scale``).
    The caller seeds MXNet's and numpy's generators."""
    net.initialize(mx.init.Xavier(), ctx=ctx)
    for conv in (net["ReLUConv1"].weight, net["PrimaryCaps"].weight):
        conv.initialize(mx.init.MSRAPrelu(factor_type="in", slope=0.0), ctx=ctx, force_reinit=True)
    w = net["PrimaryPredVects"].weight
    scale = recipe.net.pred_vects_init_scale
    w.set_data(mx.nd.random.uniform(-scale, scale, shape=w.shape))
    return net


class MarginLoss(HybridBlock):
    """Margin loss per sample: ``sum_k T_k max(0, m+ - |v_k|)^2 + lambda (1-T_k) max(0, |v_k| - m-)^2``.

    Parameters
    ----------
    m_plus, m_minus, lam : float
        0.9, 0.1 and 0.5 in the paper.
    weight : float
        Scale of the loss.
    """

    def __init__(self, m_plus=0.9, m_minus=0.1, lam=0.5, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.m_plus, self.m_minus, self.lam, self.weight = m_plus, m_minus, lam, weight

    def hybrid_forward(self, F, lengths, label):
        t = F.one_hot(label, depth=NUM_CLASSES)
        present = F.square(F.relu(self.m_plus - lengths))
        absent = F.square(F.relu(lengths - self.m_minus))
        per_class = t * present + self.lam * (1.0 - t) * absent
        return F.sum(per_class, axis=1) * self.weight


class ReconstructionLoss(HybridBlock):
    """Mean squared error per sample between reconstruction and input, scaled by ``weight``."""

    def __init__(self, weight=0.392, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def hybrid_forward(self, F, reconstruction, image):
        return F.mean(F.square(reconstruction - image), axis=(1, 2, 3)) * self.weight


class CapsNetTrainingNet(HybridBlock):
    """The CapsNet with its losses attached, as in Wolfram's training net.

    ``train_net(x, label)`` returns ``(ClassLoss, RecoLoss, probabilities)``:
    two per-sample losses ``(N,)`` and the class probabilities ``(N,10)``.  In
    training the decoder is fed the capsule of the true class.

    The inner net is ``train_net.net`` (a :class:`CapsNet`, sharing the
    parameters); the losses are the children ``"ClassLoss"`` and ``"RecoLoss"``.
    """

    def __init__(self, net=None, *, m_plus=0.9, m_minus=0.1, lam=0.5, class_weight=1.0,
                 reco_weight=0.392, routing_iterations=3, decoder="pick", **kwargs):
        super().__init__(prefix="", **kwargs)
        with self.name_scope():
            self.net = net if net is not None else CapsNet(routing_iterations=routing_iterations, decoder=decoder)
            self.register_child(MarginLoss(m_plus, m_minus, lam, class_weight, prefix="ClassLoss_"),
                                "ClassLoss")
            self.register_child(ReconstructionLoss(reco_weight, prefix="RecoLoss_"), "RecoLoss")

    @classmethod
    def from_recipe(cls, recipe, net=None):
        """Build the training net that ``recipe`` describes."""
        loss = recipe.loss
        return cls(net, m_plus=loss.margin_m_plus, m_minus=loss.margin_m_minus, lam=loss.margin_lambda,
                   class_weight=loss.class_weight, reco_weight=loss.reco_weight,
                   routing_iterations=recipe.net.routing_iterations, decoder=recipe.net.decoder)

    @classmethod
    def from_recipe_and_net(cls, net, recipe):
        """The family's ``build_training`` hook: ``recipe``'s training net around ``net``."""
        return cls.from_recipe(recipe, net)

    def __getitem__(self, name):
        if name in ("ClassLoss", "RecoLoss"):
            return self._children[name]
        return self.net[name]

    def hybrid_forward(self, F, x, label):
        net = self.net
        caps = net.digit_capsules(F, x)
        probs = capsule_lengths(F, caps)
        class_loss = self._children["ClassLoss"](probs, label)
        if net.decoder == "none":   # no decoder: a zero reconstruction loss keeps the loop's three outputs
            return class_loss, F.zeros_like(class_loss), probs
        reco = net.decode(F, net["Pick"](caps, label), label)
        return class_loss, self._children["RecoLoss"](reco, x), probs
