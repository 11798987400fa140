"""Attention BCDU-Net bundle code: the network, the focal Tversky loss, CLAHE and the cardiothoracic ratio."""
