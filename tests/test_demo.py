"""The demo source: deterministic synthetic faces whose identity shows through pose and lighting."""

import torch
import torch.nn.functional as F

from degrade.sources.demo import DemoSource


def test_demo_faces_are_deterministic_uint8_rgb():
    source = DemoSource(identities=10, images_per_identity=4)
    faces = source.load(torch.tensor([0, 5, 39]))
    images, identities = faces.hq, faces.identity
    again = source.load(torch.tensor([39, 0])).hq
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 112, 112)
    assert identities.tolist() == [0, 1, 9]
    assert torch.equal(again[0], images[2]) and torch.equal(again[1], images[0])
    assert len(source) == 40
    many = source.load(torch.arange(40)).hq  # drawn in several chunks
    assert torch.equal(many[[0, 5, 39]], images)


def test_images_of_one_identity_differ_but_resemble_each_other_more_than_others():
    source = DemoSource(identities=20, images_per_identity=5)
    faces = source.load(torch.arange(100))
    images, identities = faces.hq, faces.identity
    face = F.interpolate(images[:, :, 28:84, 28:84].float() / 255, size=14, mode="area").flatten(1)
    distance = torch.cdist(face, face)
    same = identities[:, None] == identities[None, :]
    off_diagonal = ~torch.eye(100, dtype=torch.bool)
    assert distance[same & off_diagonal].min() > 0  # every image varies
    assert distance[same & off_diagonal].mean() < 0.7 * distance[~same].mean()
    nearest_other = distance.masked_fill(~off_diagonal, float("inf")).argmin(dim=1)
    assert (identities[nearest_other] == identities).float().mean() > 0.8
