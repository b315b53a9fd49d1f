"""Images to model inputs: resize, rescale to [0, 1], normalise (SigLIP's mean 0.5, std 0.5 -> [-1, 1])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from scratchllm.errors import ScratchLLMError


class ImageProcessor:
    def __init__(self, size: int, mean: float = 0.5, std: float = 0.5):
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """(3, size, size) float tensor."""
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3) in [0, 1]
        x = (x - self.mean) / self.std
        return torch.from_numpy(x).permute(2, 0, 1).contiguous()

    def load(self, path: str | Path) -> torch.Tensor:
        path = Path(path)
        if not path.is_file():
            raise ScratchLLMError(f"image {path} does not exist")
        try:
            with Image.open(path) as image:
                image.load()
                return self(image)
        except Image.DecompressionBombError:
            raise ScratchLLMError(f"{path} is too large an image (over {Image.MAX_IMAGE_PIXELS:,} pixels); pass a smaller one") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise ScratchLLMError(f"{path} is not an image this tool can read (PNG, JPEG, ...); pass an image file") from None
