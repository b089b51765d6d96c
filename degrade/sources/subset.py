"""A source restricted to some of its samples, with keys and identity labels renumbered from 0."""

from __future__ import annotations

import dataclasses

import torch

from degrade.sources import Source
from degrade.sources.base import Faces
from degrade.sources.pairs import PairsSource
from degrade.text import matchable


class SubsetSource:
    """``source`` seen through ``keys``: key k here is ``keys[k]`` there; identities are renumbered
    0..C-1 in ascending order of the original identity, so they can serve directly as class labels."""

    def __init__(self, source, keys: torch.Tensor) -> None:
        self.source, self.keys = source, keys.to(torch.int64)
        whole = len(keys) == len(source)
        self.name = source.name if whole else f"{source.name} ({len(keys):,} of its {len(source):,} samples)"
        self.size = source.size
        self.original_identity, self.labels = source.identities[self.keys].unique(return_inverse=True)

    @property
    def identities(self) -> torch.Tensor:
        return self.labels

    @property
    def num_identities(self) -> int:
        return len(self.original_identity)

    def __len__(self) -> int:
        return len(self.keys)

    def identity_name(self, identity: int) -> str:
        return self.source.identity_name(int(self.original_identity[identity]))

    def sample_name(self, key: int) -> str:
        return self.source.sample_name(int(self.keys[key]))

    def load(self, keys: torch.Tensor, out: torch.Tensor | None = None) -> Faces:
        faces = self.source.load(self.keys[keys], out)
        local_of = dict(zip(self.keys[keys].tolist(), keys.tolist()))
        local = torch.tensor([local_of[k] for k in faces.key.tolist()], dtype=torch.int64)
        skipped = [(local_of[k], reason) for k, reason in faces.skipped]
        return dataclasses.replace(faces, key=local, identity=self.labels[local], skipped=skipped)


def identities_outside_pairs(source: Source, pairs_source: PairsSource, folds: list[int]) -> torch.Tensor:
    """Keys of ``source`` whose identity names do not appear in ``folds`` (from 1) of a pairs protocol."""
    pairs = pairs_source.pairs
    chosen = torch.isin(pairs.fold, torch.tensor(folds) - 1)
    used = {matchable(pairs_source.identity_name(int(i)))
            for i in torch.cat([pairs_source.identities[pairs.left[chosen]], pairs_source.identities[pairs.right[chosen]]])}
    identities = source.identities
    excluded = torch.tensor([i for i in identities.unique().tolist() if matchable(source.identity_name(i)) in used],
                            dtype=identities.dtype)
    return torch.nonzero(~torch.isin(identities, excluded)).flatten()  # names looked up once per identity
