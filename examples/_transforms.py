"""The examples' preprocessing: torchvision's transforms when installed, else the same steps in torch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

try:
    from torchvision import transforms

    preproc = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        transforms.Resize((100, 100)),
    ])
except ImportError:
    _MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    _STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def preproc(img: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        x = (x - _MEAN) / _STD
        return torch.nn.functional.interpolate(x[None], size=(100, 100), mode="bilinear", antialias=True)[0]
