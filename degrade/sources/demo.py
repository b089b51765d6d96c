"""The built-in ``demo`` source: procedurally drawn synthetic faces, no files needed.

Each identity has its own geometry and colours (face shape, eye spacing and colour, nose,
mouth, brows, hair, skin tone), all hashed from the identity number; each image varies
pose (roll, shift, scale, a yaw-like squash), expression (smile, eye openness), lighting
and background, hashed from the key. Everything is drawn at once for a batch with soft
(antialiased) masks on a coordinate grid. It is a source for demos and tests, not a
substitute for real faces.
"""

from __future__ import annotations

import math

import torch

from degrade.keyed import KeyedRandom
from degrade.sources.base import Faces

_IDENTITY_STREAM = 0x1D
_IMAGE_STREAM = 0x1E


def _soft(distance: torch.Tensor, width: float) -> torch.Tensor:
    """Coverage of a shape from a signed distance (negative inside), antialiased over ``width``."""
    return torch.sigmoid(-distance / width)


def _ellipse(u: torch.Tensor, v: torch.Tensor, cu, cv, ru, rv) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse, in the units of u and v."""
    return (torch.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1) * torch.minimum(ru, rv)


def _col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _blend(canvas: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Paint ``colour`` (N, 3) over ``canvas`` (N, 3, H, W) with coverage ``alpha`` (N, H, W), in place."""
    return canvas.lerp_(colour[:, :, None, None].expand_as(canvas), alpha[:, None])


# Faces drawn at once: a chunk's (16, 3, 112, 112) canvas stays in the CPU's cache through the
# dozens of passes that draw a face, where a batch of 256 (38 MB) went to memory and back each time.
_RENDER_CHUNK = 16


class DemoSource:
    """Synthetic identities; key k shows identity ``k // images_per_identity``.

    Args:
        identities: number of identities.
        images_per_identity: images of each identity.
        size: side of the square images in pixels.
        seed: changes every face.
    """

    name = "demo"

    def __init__(self, identities: int = 100, images_per_identity: int = 10, size: int = 112, seed: int = 0) -> None:
        self.num_identities = identities
        self.images_per_identity = images_per_identity
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def identity_of(self, keys: torch.Tensor) -> torch.Tensor:
        return keys // self.images_per_identity

    @property
    def identities(self) -> torch.Tensor:
        """(len,) int64 identity of every key."""
        return self.identity_of(torch.arange(len(self)))

    def identity_name(self, identity: int) -> str:
        return f"demo_{identity:05d}"

    def sample_name(self, key: int) -> str:
        return f"{self.identity_name(key // self.images_per_identity)}/{key:07d}.png"

    def load(self, keys: torch.Tensor, out: torch.Tensor | None = None) -> Faces:
        """Render faces for (N,) int64 keys: uint8 (N, 3, S, S), nothing ever skipped; into the
        first N rows of ``out`` when it is given."""
        keys = keys.to(torch.int64)
        if len(keys) and (int(keys.min()) < 0 or int(keys.max()) >= len(self)):
            raise IndexError(f"demo source has keys 0..{len(self) - 1}, asked for {keys.min()}..{keys.max()}")
        identities = self.identity_of(keys)
        hq = torch.empty(len(keys), 3, self.size, self.size, dtype=torch.uint8) if out is None else out[:len(keys)]
        for start in range(0, len(keys), _RENDER_CHUNK):
            rows = slice(start, start + _RENDER_CHUNK)
            hq[rows] = (self.render(identities[rows], keys[rows]) * 255).round_().to(torch.uint8)
        return Faces(key=keys, identity=identities, hq=hq)

    def render(self, identities: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) float in [0, 1]."""
        who = KeyedRandom(self.seed, identities, _IDENTITY_STREAM)
        shot = KeyedRandom(self.seed, keys, _IMAGE_STREAM)
        n, s = len(keys), self.size
        pixel = 2.0 / s

        # Per-image pose: roll, scale, shift and a yaw-like horizontal squash of the features.
        roll = shot.uniform(-12, 12) * math.pi / 180
        scale = shot.uniform(0.92, 1.08)
        shift_u, shift_v = shot.uniform(-0.06, 0.06), shot.uniform(-0.05, 0.05)
        yaw = shot.uniform(-0.12, 0.12)
        axis = torch.linspace(-1 + pixel / 2, 1 - pixel / 2, s)
        v0, u0 = torch.meshgrid(axis, axis, indexing="ij")
        cos, sin = _col(torch.cos(roll)), _col(torch.sin(roll))
        u = (cos * (u0 - _col(shift_u)) + sin * (v0 - _col(shift_v))) / _col(scale)
        v = (-sin * (u0 - _col(shift_u)) + cos * (v0 - _col(shift_v))) / _col(scale)
        feature_u = u - _col(yaw) * (1 - v.abs().clamp(max=1))

        # Identity: shape and colours.
        skin = torch.stack([who.uniform(0.35, 0.95), who.uniform(0.25, 0.75), who.uniform(0.2, 0.6)], 1)
        skin[:, 1] = torch.minimum(skin[:, 1], skin[:, 0] * 0.9)
        skin[:, 2] = torch.minimum(skin[:, 2], skin[:, 1] * 0.95)
        hair = torch.stack([who.uniform(0.02, 0.6)] * 3, 1) * torch.stack(
            [who.uniform(0.8, 1.0), who.uniform(0.55, 0.8), who.uniform(0.3, 0.6)], 1)
        iris = torch.stack([who.uniform(0.1, 0.5), who.uniform(0.15, 0.55), who.uniform(0.1, 0.6)], 1)
        face_w, face_h = who.uniform(0.52, 0.68), who.uniform(0.72, 0.86)
        eye_gap, eye_v, eye_r = who.uniform(0.2, 0.3), who.uniform(-0.2, -0.08), who.uniform(0.07, 0.1)
        brow_lift, brow_w = who.uniform(0.1, 0.16), who.uniform(0.012, 0.03)
        nose_len, nose_w = who.uniform(0.14, 0.26), who.uniform(0.05, 0.09)
        mouth_v, mouth_w = who.uniform(0.33, 0.45), who.uniform(0.14, 0.24)
        hairline = who.uniform(-0.6, -0.35)
        hair_volume = who.uniform(1.0, 1.25)

        # Per-image expression, lighting and background.
        smile = shot.uniform(-0.4, 1.0)
        openness = shot.uniform(0.35, 1.0)
        light_angle = shot.uniform(0, 2 * math.pi)
        light_strength = shot.uniform(0.0, 0.35)
        background = torch.stack([shot.uniform(0.1, 0.9) for _ in range(3)], 1)
        background_tilt = shot.uniform(-0.3, 0.3)

        canvas = background[:, :, None, None] * (1 + _col(background_tilt)[:, None] * v0[None, None])
        canvas = canvas.expand(n, 3, s, s).clone()
        head = _ellipse(u, v, 0.0, -0.05, _col(face_w * hair_volume), _col(face_h * 1.05))
        canvas = _blend(canvas, hair, _soft(head, pixel) * (v < _col(hairline) + 0.25).float())
        canvas = _blend(canvas, skin * 0.9, _soft(_ellipse(u, v, 0.0, 0.12, _col(face_w * 0.35), _col(face_h * 0.8)), 2 * pixel)
                        * (v > 0.55).float())
        face = _ellipse(u, v, 0.0, 0.02, _col(face_w), _col(face_h))
        canvas = _blend(canvas, skin, _soft(face, pixel))
        hair_cap = _soft(_ellipse(u, v, 0.0, _col(hairline) - 0.35, _col(face_w * 1.02), _col(face_h * 0.55)), pixel)
        canvas = _blend(canvas, hair, hair_cap * _soft(face, pixel))
        for side in (-1.0, 1.0):
            cu = side * _col(eye_gap)
            white = _soft(_ellipse(feature_u, v, cu, _col(eye_v), _col(eye_r) * 1.3, _col(eye_r * openness) * 0.8), pixel)
            canvas = _blend(canvas, torch.full_like(skin, 0.92), white)
            canvas = _blend(canvas, iris, white * _soft(_ellipse(feature_u, v, cu, _col(eye_v), _col(eye_r) * 0.6,
                                                                  _col(eye_r) * 0.6), pixel))
            canvas = _blend(canvas, torch.full_like(skin, 0.03), white * _soft(
                _ellipse(feature_u, v, cu, _col(eye_v), _col(eye_r) * 0.25, _col(eye_r) * 0.25), pixel))
            brow = _ellipse(feature_u, v, cu, _col(eye_v - brow_lift), _col(eye_r) * 1.6, _col(brow_w) + 0.01)
            canvas = _blend(canvas, hair * 0.8, _soft(brow, pixel))
        nose = _ellipse(feature_u, v, 0.0, _col(eye_v + nose_len * 0.6 + 0.05), _col(nose_w) * 0.5, _col(nose_len) * 0.7)
        canvas = _blend(canvas, skin * 0.75, _soft(nose, 1.5 * pixel) * 0.7)
        for side in (-1.0, 1.0):
            nostril = _ellipse(feature_u, v, side * _col(nose_w) * 0.6, _col(eye_v + nose_len + 0.09),
                               _col(nose_w) * 0.35, _col(nose_w) * 0.22)
            canvas = _blend(canvas, skin * 0.45, _soft(nostril, pixel))
        curve = _col(mouth_v) - _col(smile) * 0.12 * ((feature_u / _col(mouth_w)) ** 2 - 0.5)
        lips = torch.maximum((v - curve).abs() - 0.022, feature_u.abs() - _col(mouth_w))
        canvas = _blend(canvas, torch.stack([skin[:, 0] * 0.7, skin[:, 1] * 0.35, skin[:, 2] * 0.35], 1), _soft(lips, pixel))

        light = torch.cos(_col(light_angle)) * u0 + torch.sin(_col(light_angle)) * v0
        canvas = canvas * (1 + _col(light_strength)[:, None] * light[:, None])
        return canvas.clamp(0, 1)
