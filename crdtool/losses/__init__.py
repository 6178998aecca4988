"""Distillation and GAN losses: CRD (relational), perceptual (VGG-16 / VGG-19), adversarial,
high-band amplitude spectrum, the fine-detail band, the teacher's inner features."""

from crdtool.losses.adversarial import GANLoss
from crdtool.losses.feature_distill import FeatureCapture, FeatureDistillLoss
from crdtool.losses.fine_detail import fine_detail, gaussian_blur
from crdtool.losses.perceptual import PerceptualLoss, VGG16Features, VGGFeatures, load_vgg, load_vgg16
from crdtool.losses.relational import CRDLoss, InstanceRKDLoss, rkd_angle, rkd_distance
from crdtool.losses.spectral import SpectralAmplitudeLoss

__all__ = ["CRDLoss", "InstanceRKDLoss", "PerceptualLoss", "VGG16Features", "VGGFeatures", "load_vgg", "load_vgg16",
           "GANLoss", "SpectralAmplitudeLoss", "FeatureCapture", "FeatureDistillLoss", "fine_detail", "gaussian_blur",
           "rkd_distance", "rkd_angle"]
