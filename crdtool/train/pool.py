"""The CycleGAN image pool (Shrivastava et al.): D sees a history of fakes, not only the latest.

Unlike the reference, randomness comes from the pool's own generator so runs resume exactly.
"""

from __future__ import annotations

import torch


class ImagePool:
    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() > 0.5:
                j = int(torch.randint(0, self.size, (1,), generator=self.gen).item())
                out.append(self.images[j].clone())
                self.images[j] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def pack(self, name: str, tensors: dict, state: dict) -> None:
        if self.images:
            tensors[f"pool.{name}"] = torch.cat(self.images, 0).cpu()
        tensors[f"pool.{name}.gen"] = self.gen.get_state()

    def unpack(self, name: str, tensors: dict, device: torch.device) -> None:
        imgs = tensors.get(f"pool.{name}")
        self.images = [] if imgs is None else [t.unsqueeze(0).to(device) for t in imgs]
        self.gen.set_state(tensors[f"pool.{name}.gen"])
