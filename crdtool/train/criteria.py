"""The loss functions of one distillation run, built once from the recipe's [loss] and [discriminator]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from crdtool.recipe import Recipe
from crdtool.runtime import Runtime


@dataclass
class Criteria:
    """``gan`` for every adversarial term; ``crd``, ``irkd``, ``perceptual`` and ``spectral`` for the student
    (None: off)."""

    gan: Any
    crd: nn.Module | None
    irkd: nn.Module | None
    perceptual: nn.Module | None
    spectral: nn.Module | None = None


def build_criteria(recipe: Recipe, rt: Runtime) -> Criteria:
    from crdtool.losses import CRDLoss, GANLoss, InstanceRKDLoss, PerceptualLoss, SpectralAmplitudeLoss, load_vgg16

    L = recipe.loss
    gan = GANLoss(recipe.discriminator.gan_mode)
    crd = CRDLoss(patch_size=L.patch_size, rows=L.rows, columns=L.columns, patches=L.patches,
                  distance_weight=L.distance_weight, angle_weight=L.angle_weight,
                  per_image=recipe.task == "pix2pix") if L.kd == "crd" else None
    irkd = InstanceRKDLoss() if L.kd == "instance_rkd" else None
    perceptual = None
    if L.vgg_weights is not None and (L.lambda_style > 0 or L.lambda_feature > 0):
        perceptual = rt.module(PerceptualLoss(load_vgg16(L.vgg_weights)))
    spectral = SpectralAmplitudeLoss(L.spectral_min_freq, L.spectral_pool) if L.lambda_spectral > 0 else None
    return Criteria(gan, crd, irkd, perceptual, spectral)
