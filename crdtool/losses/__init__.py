"""Distillation and GAN losses: CRD (relational), perceptual (VGG-16 / VGG-19), adversarial."""

from crdtool.losses.adversarial import GANLoss
from crdtool.losses.perceptual import PerceptualLoss, VGG16Features, VGGFeatures, load_vgg, load_vgg16
from crdtool.losses.relational import CRDLoss, InstanceRKDLoss, rkd_angle, rkd_distance

__all__ = ["CRDLoss", "InstanceRKDLoss", "PerceptualLoss", "VGG16Features", "VGGFeatures", "load_vgg", "load_vgg16",
           "GANLoss", "rkd_distance", "rkd_angle"]
