"""The benchmarks' phantom scan: a smooth T2-like image with noise and three tumours (one
GTVp, two GTVn), at any size, with the tumours scaled to the field of view."""

from __future__ import annotations

import numpy as np

TUMOURS = ((1, (0, -20, 0), 16), (2, (-45, 10, -10), 9), (2, (45, 5, 14), 8))  # mm, mm


def phantom_scan(
    size: tuple[int, int, int],
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    shift: float = 0.0,
    jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(t2 float32, mask uint8) arrays in (z, y, x) order for `size` (x, y, z) voxels at
    `spacing` (x, y, z) mm; the tumours moved by `shift` mm along x and by up to `jitter`
    mm at random (rng) per axis."""
    nx, ny, nz = size
    z, y, x = np.ogrid[:nz, :ny, :nx]
    # physical coordinates in mm, centred
    zm, ym, xm = (z - nz / 2) * spacing[2], (y - ny / 2) * spacing[1], (x - nx / 2) * spacing[0]
    scale = nx / 512
    body = (xm / (110 * scale)) ** 2 + (ym / (90 * scale)) ** 2 < 1
    t2 = np.broadcast_to(np.where(body, 400.0, 20.0), (nz, ny, nx)).astype(np.float32)
    t2 += (60 * np.sin(xm / 7.0) * np.cos(ym / 9.0) * np.cos(zm / 11.0)).astype(np.float32)
    t2 += rng.normal(0, 15, t2.shape).astype(np.float32)
    mask = np.zeros(t2.shape, np.uint8)
    for label, (cx, cy, cz), r in TUMOURS:
        centre = np.array([cx + shift, cy, cz], float)
        if jitter:
            centre += rng.uniform(-jitter, jitter, 3)
        c = centre * scale
        inside = ((xm - c[0]) ** 2 + (ym - c[1]) ** 2 + (zm - c[2]) ** 2) < (r * scale) ** 2
        mask[inside] = label
        t2[inside] += 250
    return t2, mask
