"""Image decoding and resizing shared by the file-based datasets."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112


def _upright_8bit(img: Image.Image) -> Image.Image:
    """The image as a camera app shows it (EXIF orientation applied: phone photos are stored sideways)
    and, for 16/32-bit greyscale (PNG, TIFF), scaled to 8 bits: Pillow's own convert clips those
    values at 255, which turned a 16-bit PNG all white."""
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    return img


def decode(source: str | IO[bytes], size: int, channels: int = 3, center_crop: bool = True) -> np.ndarray:
    """Decode one image file to a (size, size, channels) uint8 array.

    JPEG `draft` lets libjpeg decode at a reduced scale, which is most of the speed-up when
    200 px faces become 32 px tensors. A non-square image is centre-cropped to a square first (its
    longer side loses both ends equally), unless `center_crop` is false (then it is stretched).
    """
    with Image.open(source) as img:
        img.draft("RGB" if channels == 3 else "L", (size, size))
        img = _upright_8bit(img).convert("RGB" if channels == 3 else "L")
        if center_crop and img.width != img.height:
            side = min(img.width, img.height)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
        img = img.resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Resize an (N, H, W, C) uint8 array; a no-op when it already has the size."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class LazyImages:
    """A file-based dataset's images before decoding: one key per image (in the dataset's order) and a
    reader that decodes the images of the keys it is given, in that order. Selecting with a boolean mask
    keeps it undecoded, so that data.max_samples and data.imbalance pick their samples before the
    costly part."""

    def __init__(self, keys: list, read: Callable[[list], Iterator[np.ndarray]], name: str):
        self.keys, self.read, self.name = list(keys), read, name

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, mask: np.ndarray) -> LazyImages:
        return LazyImages([k for k, keep in zip(self.keys, mask) if keep], self.read, self.name)

    def decode(self) -> np.ndarray:
        from tqdm import tqdm

        arrays = list(tqdm(self.read(self.keys), total=len(self.keys), desc=self.name, unit="img", mininterval=2))
        if len(arrays) != len(self.keys):
            raise RuntimeError(f"{self.name}: {len(arrays)} images decoded for {len(self.keys)} keys")
        return np.stack(arrays)


def pixels(images: np.ndarray | LazyImages, size: int) -> np.ndarray:
    """(N, size, size, C) uint8: decoded (when still lazy) and resized."""
    return resize_batch(images.decode() if isinstance(images, LazyImages) else images, size)
