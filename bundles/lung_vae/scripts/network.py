"""The U-Net with variational data imputation of Selvan et al. (2020), "Lung segmentation from chest X-rays
using variational data imputation", following the authors' reference implementation (raghavian/lungVAE).

A segmentation U-Net (encoder E, decoder D) works at five levels separated by four downsamplings by 4, 4, 2
and 2, so its bottleneck sees a large part of the radiograph. The variational encoder V has the same layout
but downsamples by 2 four times; 1-D convolutions over its flattened feature map give the mean and
log-variance of q(z|x), and further 1-D convolutions turn z back into a feature map at the resolution of E's
bottleneck, where it is concatenated before the shared decoder. Those last steps flatten a fixed-size map,
so the network is built for one ``image_size`` (both sides divisible by 64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

# total downsampling of E (4 * 4 * 2 * 2) and of V (2 ** 4)
UNET_FACTORS = (4, 4, 2, 2)
VAE_FACTORS = (2, 2, 2, 2)
SIZE_MULTIPLE = 64


def conv_bn_relu(in_channels: int, out_channels: int) -> Convolution:
    """3x3 convolution, batch norm and ReLU: MONAI's default ``Convolution`` unit."""
    return Convolution(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, kernel_size=3, act="RELU", norm="BATCH"
    )


def down_block(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """Average-pool by ``factor`` (as the reference code), then two conv units."""
    return nn.Sequential(
        nn.AvgPool2d(factor), conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels)
    )


def up_block(in_channels: int, out_channels: int, factor: int) -> nn.Sequential:
    """Nearest-neighbour upsampling by ``factor``, then two conv units."""
    return nn.Sequential(
        UpSample(spatial_dims=2, scale_factor=factor, mode="nontrainable", interp_mode="nearest", align_corners=None),
        conv_bn_relu(in_channels, out_channels),
        conv_bn_relu(out_channels, out_channels),
    )


class Encoder(nn.Module):
    """Five levels with ``features * 2**level`` channels; returns every level's output (the skips)."""

    def __init__(self, in_channels: int, features: int, factors: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(in_channels, features), conv_bn_relu(features, features))
        self.downs = nn.ModuleList(
            down_block(features * 2**level, features * 2 ** (level + 1), factor) for level, factor in enumerate(factors)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        levels = [self.stem(x)]
        for down in self.downs:
            levels.append(down(levels[-1]))
        return levels


class LatentBottleneck(nn.Module):
    """q(z|x) from V's deepest features, and z back to a feature map of E's bottleneck size.

    As in the reference code: a 1x1 convolution reduces the channels to one map, a 1-D convolution over its
    flattened positions gives the mean and log-variance; z is expanded by four 1-D convolutions to
    ``16 * features`` channels at ``image_size / 64``.
    """

    def __init__(self, features: int, latent_size: int, image_size: Sequence[int]) -> None:
        super().__init__()
        rows, cols = int(image_size[0]), int(image_size[1])
        self.latent_size = latent_size
        self.channels = 16 * features
        self.bottleneck_shape = (rows // SIZE_MULTIPLE, cols // SIZE_MULTIPLE)
        vae_positions = (rows // 16) * (cols // 16)
        unet_positions = self.bottleneck_shape[0] * self.bottleneck_shape[1]
        self.to_single_map = nn.Sequential(nn.Conv1d(self.channels, 1, kernel_size=1), nn.ReLU())
        self.to_moments = nn.Conv1d(vae_positions, 2 * latent_size, kernel_size=1)
        self.to_positions = nn.Sequential(nn.Conv1d(latent_size, unet_positions, kernel_size=1), nn.ReLU())
        self.to_channels = nn.Sequential(
            nn.Conv1d(1, features, kernel_size=1),
            nn.ReLU(),
            nn.Conv1d(features, 4 * features, kernel_size=1),
            nn.ReLU(),
            nn.Conv1d(4 * features, self.channels, kernel_size=1),
            nn.ReLU(),
        )

    def moments(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance, each ``(batch, latent_size)``, from ``(batch, 16F, rows/16, cols/16)``."""
        single = self.to_single_map(features.flatten(2))
        moments = self.to_moments(single.permute(0, 2, 1)).squeeze(-1)
        mean, log_var = torch.chunk(moments, 2, dim=1)
        return mean, log_var

    def feature_map(self, z: torch.Tensor) -> torch.Tensor:
        """``(batch, 16F, rows/64, cols/64)`` from ``(batch, latent_size)``."""
        positions = self.to_positions(z.unsqueeze(-1))
        channels = self.to_channels(positions.permute(0, 2, 1))
        return channels.reshape(z.shape[0], self.channels, self.bottleneck_shape[0], self.bottleneck_shape[1])


def kl_to_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL[N(mean, exp(log_var)) || N(0, I)] per sample, summed over the latent dimensions."""
    return 0.5 * torch.sum(mean.pow(2) + log_var.exp() - 1.0 - log_var, dim=1)


class LungVAE(nn.Module):
    """U-Net with (``variational=True``, the proposed model) or without (the baseline) the variational encoder.

    ``forward(x)`` returns segmentation logits ``(batch, out_channels, rows, cols)``. Training asks for
    ``forward(x, return_kl=True)``, which returns ``(logits, kl)`` with the per-sample KL divergence of
    q(z|x) from N(0, I) (zeros for the baseline); going through ``forward`` keeps DistributedDataParallel's
    gradient hooks. z is sampled (reparameterisation trick) in training mode or when ``sample_latent`` is
    set, and is the posterior mean otherwise, so evaluation is deterministic.
    """

    __constants__ = ["variational"]

    def __init__(
        self,
        image_size: Sequence[int] = (640, 512),
        in_channels: int = 1,
        out_channels: int = 1,
        features: int = 16,
        latent_size: int = 8,
        variational: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = [int(s) for s in image_size]
        if len(self.image_size) != 2 or any(s <= 0 or s % SIZE_MULTIPLE for s in self.image_size):
            raise ValueError(f"image_size must be two positive multiples of {SIZE_MULTIPLE}, got {list(image_size)}")
        self.variational = variational
        self.latent_size = latent_size
        self.sample_latent = False
        self.unet_encoder = Encoder(in_channels, features, UNET_FACTORS)
        self.vae_encoder = Encoder(in_channels, features, VAE_FACTORS) if variational else nn.Identity()
        self.latent = LatentBottleneck(features, latent_size, self.image_size) if variational else nn.Identity()
        bottom = 16 * features * (2 if variational else 1)
        self.ups = nn.ModuleList(
            [
                up_block(bottom, 8 * features, UNET_FACTORS[3]),
                up_block(16 * features, 4 * features, UNET_FACTORS[2]),
                up_block(8 * features, 2 * features, UNET_FACTORS[1]),
                up_block(4 * features, features, UNET_FACTORS[0]),
            ]
        )
        self.head = nn.Sequential(
            conv_bn_relu(2 * features, features),
            Convolution(spatial_dims=2, in_channels=features, out_channels=out_channels, kernel_size=3, conv_only=True),
        )

    def _latent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and its per-sample KL term from the variational encoder."""
        mean, log_var = self.latent.moments(self.vae_encoder(x)[-1])
        kl = kl_to_standard_normal(mean, log_var)
        if self.training or self.sample_latent:
            mean = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        return self.latent.feature_map(mean), kl

    def forward(self, x: torch.Tensor, return_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.shape[2] != self.image_size[0] or x.shape[3] != self.image_size[1]:
            raise ValueError(f"LungVAE was built for inputs of {self.image_size} (rows, cols), got {list(x.shape[2:])}")
        levels = self.unet_encoder(x)
        features = levels[-1]
        kl = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        if self.variational:
            z_map, kl = self._latent(x)
            features = torch.cat((z_map, features), dim=1)
        for index, up in enumerate(self.ups):
            features = torch.cat((up(features), levels[len(levels) - 2 - index]), dim=1)
        logits = self.head(features)
        if return_kl:
            return logits, kl
        return logits
