"""The CapsNet family: Sabour, Frosst and Hinton (2017), "Dynamic Routing Between Capsules".

One net (:class:`capszoo.models.capsnet.net.CapsNet`) with two constructor
choices, the routing iterations and the decoder, gives the entries the reference
implementations report: Wolfram's (decoder from the 16-D picked capsule), the
paper's and Keras's 2x2 ablation (routing 1 or 3, with the masked 160-D decoder
or none), and a deconvolution decoder (as in ethanleet's PyTorch CapsNet).

This module is light (no MXNet): the family, the recipe schema of its ``[net]``
and ``[loss]`` tables and the cards.  ``net.py`` holds the HybridBlocks,
``training.py`` the losses.
"""
from __future__ import annotations

import dataclasses

from ..._recipe import check_positive, check_finite_nonnegative, MAX_ROUTING_ITERATIONS
from ..._registry import Family, ModelCard, register_family, register_model
from ...errors import RecipeError
from .._common import MNIST_CLASSES, MNIST_PREPROCESSING, published

__all__ = ["NetSection", "LossSection", "DECODER_NAMES", "ENTRIES"]

#: ``decoder`` values (the keys of ``net.DECODERS``).
DECODER_NAMES = ("pick", "masked", "deconv", "none")


@dataclasses.dataclass(frozen=True)
class NetSection:
    """A CapsNet recipe's ``[net]``: the architecture (must equal the card's) and W's initialization."""

    routing_iterations: int
    pred_vects_init_scale: float
    #: ``Reconstruct``'s kind: "pick" (Wolfram's, from the 16-D capsule), "masked" (the paper's,
    #: from the masked 160-D output), "deconv" (transposed convolutions), "none".  Optional.
    decoder: str = "pick"

    def _check(self):
        check_positive(self, "routing_iterations", MAX_ROUTING_ITERATIONS)
        check_positive(self, "pred_vects_init_scale")
        if self.decoder not in DECODER_NAMES:
            raise RecipeError(f"net.decoder {self.decoder!r} is not a decoder; use one of: "
                              f"{', '.join(DECODER_NAMES)}")


@dataclasses.dataclass(frozen=True)
class LossSection:
    """A CapsNet recipe's ``[loss]``: the margin loss ``ClassLoss`` and the reconstruction loss ``RecoLoss``."""

    margin_m_plus: float
    margin_m_minus: float
    margin_lambda: float
    class_weight: float
    reco_weight: float

    def _check(self):
        if not 0.0 <= self.margin_m_minus < self.margin_m_plus <= 1.0:
            raise RecipeError(f"loss: need 0 <= margin_m_minus < margin_m_plus <= 1, got "
                              f"{self.margin_m_minus} and {self.margin_m_plus}")
        for name in ("margin_lambda", "class_weight", "reco_weight"):
            check_finite_nonnegative(self, name)


def check_recipe(recipe):
    """Cross-table rules of a CapsNet recipe."""
    if recipe.net.decoder == "none" and recipe.loss.reco_weight != 0:
        raise RecipeError(f"recipe {recipe.source}: net.decoder is 'none' but loss.reco_weight is "
                          f"{recipe.loss.reco_weight}; a net without a decoder has no reconstruction loss: "
                          "set reco_weight = 0 or choose a decoder")


register_family(Family(
    name="capsnet",
    build="capszoo.models.capsnet.net:CapsNet",
    build_training="capszoo.models.capsnet.training:CapsNetTrainingNet.from_recipe_and_net",
    initialize="capszoo.models.capsnet.training:initialize",
    net_section=NetSection, loss_section=LossSection, check_recipe=check_recipe))

_REFERENCE = ("S. Sabour, N. Frosst, G. E. Hinton, \"Dynamic Routing Between Capsules\", "
              "NeurIPS 2017, arXiv:1710.09829")
_LICENSE = "Apache-2.0 (code and weights); MNIST data: CC BY-SA 3.0"
_SUBNETS = ("ReLUConv1", "PrimaryCaps", "PrimaryPredVects", "DigitCaps", "Pick", "Reconstruct")
_DECODERS = {
    "pick": "a decoder reconstructs the digit from the 16-D capsule of the predicted class",
    "masked": "a decoder reconstructs the digit from the masked 160-D DigitCaps output (all capsules but "
              "the predicted class's zeroed), as in the paper",
    "deconv": "a deconvolution decoder (Dense 160-360, then transposed convolutions) reconstructs the digit "
              "from the masked 160-D DigitCaps output",
    "none": "no decoder: trained with the margin loss alone",
}


def _card(name, *, routing, decoder, params, layers, display, aliases=(), note="", runtime_graph=None):
    weights, metrics, training = published(name)
    has_decoder = decoder != "none"
    return ModelCard(
        name=name, aliases=tuple(aliases), display_name=display,
        description=(f"Capsule network with dynamic routing between capsules ({routing} routing "
                     f"iteration{'s' if routing > 1 else ''}) that classifies 28x28 handwritten digits; its "
                     f"16-D digit capsules encode pose; {_DECODERS[decoder]}.{note}"),
        task="image classification", classes=MNIST_CLASSES,
        input_shape=(1, 28, 28), input_dtype="float32", input_range=(0.0, 1.0),
        preprocessing=MNIST_PREPROCESSING, num_params=params, num_layers=layers,
        subnets=_SUBNETS if has_decoder else _SUBNETS[:-1],
        outputs=("probabilities", "capsule", "reconstruction") if has_decoder else ("probabilities", "capsule"),
        feature_slice=("ReLUConv1", "Pick"),
        reference=_REFERENCE, license=_LICENSE, recipe=name,
        weights=weights, metrics=metrics, training=training, runtime_graph=runtime_graph,
        arch="capsnet", arch_args={"routing_iterations": routing, "decoder": decoder}, tag="mnist")


#: The family's entries: name -> (routing iterations, decoder, parameters, layers, display name, aliases).
ENTRIES = {
    "capsnet-mnist": (3, "pick", 8_141_840, 82, "CapsNet Trained on MNIST Data",
                      ("CapsNet Trained on MNIST Data", "capsnet")),
    "capsnet-mnist-masked": (3, "masked", 8_215_568, 87, "CapsNet (masked decoder) Trained on MNIST Data",
                             ("capsnet-masked",)),
    "capsnet-mnist-r1-masked": (1, "masked", 8_215_568, 56,
                                "CapsNet (1 routing iteration, masked decoder) Trained on MNIST Data",
                                ("capsnet-r1-masked",)),
    "capsnet-mnist-noreco": (3, "none", 6_804_224, 75, "CapsNet (no decoder) Trained on MNIST Data",
                             ("capsnet-noreco",)),
    "capsnet-mnist-r1-noreco": (1, "none", 6_804_224, 44,
                                "CapsNet (1 routing iteration, no decoder) Trained on MNIST Data",
                                ("capsnet-r1-noreco",)),
    "capsnet-mnist-deconv": (3, "deconv", 7_054_345, 90, "CapsNet (deconvolution decoder) Trained on MNIST Data",
                             ("capsnet-deconv",)),
}

for _name, (_r, _d, _p, _l, _display, _aliases) in ENTRIES.items():
    register_model(_card(_name, routing=_r, decoder=_d, params=_p, layers=_l, display=_display, aliases=_aliases,
                         runtime_graph=f"{_name}.graph.onnx"))
