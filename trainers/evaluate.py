"""Evaluation at chosen probe resolutions: verification (k-fold accuracy, TAR@FAR, ROC AUC) on a
pairs protocol, same-resolution and cross-resolution, and rank-1/5 identification.

Probe images are made with the engine's own resize op (area down to ``r`` px, bicubic back
to 112), which draws nothing at random, so every model sees exactly the same probes. Models
with ``native_input = True`` (BTNet) get the r x r probes themselves, not up-sampled. A
:class:`ProbeRecipe` degrades the probes first (turbulence, occlusion, ...), every face by its
own key, so with it too every model sees the same probes. Embeddings are the usual
flip-concatenation, L2-normalised, compared by cosine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from degrade.engine import to_float
from degrade.ops.resize import Resize
from degrade.progress import progress_bar
from degrade.recipe import Recipe
from degrade.sources import Source
from degrade.sources.base import Faces, SourceError
from degrade.sources.pairs import BinSource, PairsSource
from degrade.text import as_ranges, counted

FARS = (1e-2, 1e-3)


def probe(images: torch.Tensor, side: int, native: bool = False) -> torch.Tensor:
    """(N, 3, S, S) in [0, 1] -> the same faces reduced to ``side`` px and brought back to S
    (or left at side x side when ``native``)."""
    size = images.shape[-1]
    if side >= size:
        return images
    op = Resize(sides=[side], size=size, output="native" if native else "input")
    return op.apply(images, {"side": torch.full((len(images),), side, device=images.device)})


@dataclasses.dataclass(frozen=True)
class ProbeRecipe:
    """Probes degraded by ``recipe`` (drawn with ``seed``) before they are reduced to each
    resolution; the recipe's LQ must be at the faces' size."""

    recipe: Recipe
    seed: int

    def __call__(self, images: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) faces in [0, 1] whose source keys are ``keys`` -> their LQ, (N, 3, S, S) in [0, 1]."""
        return self.recipe(images, keys, self.seed)[0]

    def describe(self) -> dict:
        return {"recipe": self.recipe.name, "seed": self.seed}


def faces_per_pass(device: str | torch.device) -> int:
    """How many faces (each with its flip) :func:`embed` runs through the model at once. On a CPU
    a pass is bound by memory once its activations outgrow the cache, and glibc maps and unmaps
    activations above 32 MB on every layer: the teacher on the 2-core machine embeds 259 faces/s
    in passes of 4 against 41 in passes of 256 (bit-identical embeddings). A GPU wants large passes."""
    return 4 if torch.device(device).type == "cpu" else 256


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, device: str | torch.device = "cpu",
          progress: tqdm | None = None) -> torch.Tensor:
    """Flip-concatenated, L2-normalised embeddings: (N, 3, S, S) in [0, 1] -> (N, 2 D) on the CPU.
    ``progress``, when given, advances by the faces embedded."""
    model.eval()
    model.to(device, memory_format=torch.channels_last)  # about 1.4x faster for depth-wise convs on CPU
    out = []
    for chunk in images.split(faces_per_pass(device)):
        chunk = chunk.to(device).contiguous(memory_format=torch.channels_last)
        both = model(torch.cat([chunk, chunk.flip(-1)])).float()
        out.append(nn.functional.normalize(torch.cat(both.chunk(2), dim=1), dim=1).cpu())
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out)


def embed_probes(model: nn.Module, faces: torch.Tensor, side: int, device: str | torch.device = "cpu",
                 progress: tqdm | None = None, keys: torch.Tensor | None = None,
                 degraded_by: ProbeRecipe | None = None) -> torch.Tensor:
    """:func:`embed` of uint8 faces (N, 3, S, S) probed at ``side`` px (as they are when ``side`` >= S),
    after ``degraded_by`` when given (``keys``: the faces' (N,) source keys), made on ``device`` and
    embedded 1,024 at a time, so memory does not grow with N (a float copy of LFW's folds 1-8 and
    one of its probes alone took 2 GB)."""
    native = getattr(model, "native_input", False)
    embedded = []
    for start in range(0, len(faces), 1024):
        images = to_float(faces[start:start + 1024].to(device))
        if degraded_by is not None:
            images = degraded_by(images, keys[start:start + 1024].to(device))
        embedded.append(embed(model, probe(images, side, native), device, progress))
    return torch.cat(embedded)


def kfold_accuracy(scores: torch.Tensor, same: torch.Tensor, fold: torch.Tensor) -> tuple[float, float]:
    """Verification accuracy, each fold tested at the threshold best on the other folds: (mean, std)."""
    folds = fold.unique()
    if len(folds) < 2:
        raise ValueError("k-fold accuracy needs at least two folds")
    accuracies = []
    for k in folds:
        train, test = fold != k, fold == k
        candidates = torch.cat([scores[train], scores[train].max()[None] + 1e-6])
        correct = ((scores[train][None, :] >= candidates[:, None]) == same[train][None, :]).float().mean(dim=1)
        threshold = candidates[correct.argmax()]
        accuracies.append(((scores[test] >= threshold) == same[test]).float().mean())
    accuracies = torch.stack(accuracies)
    return accuracies.mean().item(), accuracies.std(unbiased=False).item()


def tar_at_far(scores: torch.Tensor, same: torch.Tensor, far: float) -> float:
    """True-accept rate at the threshold where at most ``far`` of the different pairs are accepted."""
    negatives = scores[~same].sort(descending=True).values
    allowed = int(far * len(negatives))
    threshold = negatives[allowed] if allowed < len(negatives) else negatives[-1] - 1e-6
    return (scores[same] > threshold).float().mean().item()


def roc_auc(scores: torch.Tensor, same: torch.Tensor) -> float:
    """Probability that a same pair scores above a different pair (ties count half)."""
    positives, negatives = scores[same], scores[~same]
    above = (positives[:, None] > negatives[None, :]).float().mean()
    ties = (positives[:, None] == negatives[None, :]).float().mean()
    return (above + 0.5 * ties).item()


def verification_metrics(scores: torch.Tensor, same: torch.Tensor, fold: torch.Tensor) -> dict[str, float]:
    """k-fold accuracy, AUC, and TAR at each FAR that the different pairs can resolve: one of them
    accepted must be a share of at most that FAR (LFW's folds 7-8 have 600, too few for 1e-3,
    where the threshold would be the highest different pair's score: a TAR at FAR 0)."""
    mean, std = kfold_accuracy(scores, same, fold)
    different = int((~same).sum())
    metrics = {"accuracy": mean, "accuracy_std": std, "auc": roc_auc(scores, same), "different_pairs": different}
    metrics.update({f"tar@far={far:g}": tar_at_far(scores, same, far) for far in FARS if far * different >= 1})
    return metrics


@dataclasses.dataclass(frozen=True)
class VerificationFaces:
    """The faces of a pairs protocol's chosen pairs, decoded once for every model evaluated on them.

    faces: the faces in the pairs, each once (uint8 (N, 3, S, S) HQ and their source keys);
    left, right: (P,) int64 rows of ``faces`` in each pair; same: (P,) bool; fold: (P,) int64 from 0.
    """

    faces: Faces
    left: torch.Tensor
    right: torch.Tensor
    same: torch.Tensor
    fold: torch.Tensor


def verification_faces(source: PairsSource | BinSource, folds: list[int] | None = None) -> VerificationFaces:
    """The faces of ``source.pairs`` (optionally only ``folds``, numbered from 1); a SourceError
    naming one that cannot be read, the folds its pairs lie in, and those whose faces are all
    there (the official LFW pairs.txt of ten folds beside the images of eight: evaluate those)."""
    pairs = source.pairs
    chosen = torch.ones_like(pairs.same) if not folds else torch.isin(pairs.fold, torch.tensor(folds) - 1)
    keys, rows = torch.cat([pairs.left[chosen], pairs.right[chosen]]).unique(return_inverse=True)
    left, right = rows.chunk(2)
    faces = source.load(keys)
    if faces.skipped:
        unread = torch.tensor([key for key, _ in faces.skipped])
        broken = torch.isin(pairs.left, unread) | torch.isin(pairs.right, unread)
        broken_folds = set((pairs.fold[chosen & broken] + 1).tolist())
        whole_folds = sorted(set((pairs.fold[chosen] + 1).tolist()) - broken_folds)
        where = f", in {'fold' if len(broken_folds) == 1 else 'folds'} {', '.join(map(str, sorted(broken_folds)))}"
        hint = (f"; every image of the other folds is there: --folds {as_ranges(whole_folds)} evaluates them"
                if len(whole_folds) >= 2 else "")
        raise _unread(source, faces, "of its pairs", where, hint)
    return VerificationFaces(faces, left, right, pairs.same[chosen], pairs.fold[chosen])


def evaluate_pairs(model: nn.Module, pairs: VerificationFaces, resolutions: list[int],
                   device: str | torch.device = "cpu", progress: str | None = None,
                   degraded_by: ProbeRecipe | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Verification of ``model`` on ``pairs`` at each resolution.

    Returns {"same": {r: metrics}, "cross": {r: metrics}}: ``same`` degrades both faces of a
    pair, ``cross`` compares the HQ left face with the degraded right face. ``degraded_by``:
    a recipe for the probes before each resolution (at the faces' own size, the recipe alone).
    ``progress``: the label of a progress bar over the faces embedded (None: no bar).
    """
    faces, a, b = pairs.faces, pairs.left, pairs.right
    size = faces.hq.shape[-1]
    results: dict[str, dict[str, dict[str, float]]] = {"same": {}, "cross": {}}
    probed = [side for side in resolutions if side < size or degraded_by is not None]  # the others are the HQ
    faces_embedded = len(faces.hq) * (1 + len(probed))
    with progress_bar(total=faces_embedded, desc=progress, unit="face", disable=progress is None) as bar:
        hq_embedding = embed_probes(model, faces.hq, size, device, bar)
        for side in resolutions:
            lq_embedding = (embed_probes(model, faces.hq, side, device, bar, faces.key, degraded_by)
                            if side in probed else hq_embedding)
            same_side, cross = (lq_embedding[a] * lq_embedding[b]).sum(1), (hq_embedding[a] * lq_embedding[b]).sum(1)
            results["same"][str(side)] = verification_metrics(same_side, pairs.same, pairs.fold)
            results["cross"][str(side)] = verification_metrics(cross, pairs.same, pairs.fold)
    return results


def _unread(source: Source, faces: Faces, which: str, where: str = "", hint: str = "") -> SourceError:
    """The error for ``faces`` loaded with some skipped, naming the first: a score over the others
    would silently be another measurement. ``which``: what they are to the evaluation; ``where``:
    where they lie; ``hint``: what can be evaluated instead."""
    return SourceError(f"{source.name}: {counted(len(faces.skipped), 'image')} {which} could not be read{where} "
                       f"({faces.skipped[0][1]}){hint}")


@dataclasses.dataclass(frozen=True)
class IdentificationFaces:
    """A gallery and its probes, decoded once for every model evaluated on them.

    faces: uint8 (N, 3, S, S) HQ faces, their identities and source keys; gallery, probes: (N,)
    bool, which faces are gallery entries and which are probes (a face is at most one of them).
    """

    faces: Faces
    gallery: torch.Tensor
    probes: torch.Tensor


def identification_faces(source: Source, keys: torch.Tensor) -> IdentificationFaces:
    """The samples ``keys`` of ``source`` as a gallery and probes: among the identities with two or
    more images, the first image of each is its gallery entry, its other images are probes
    (identities with one image are left out: they would be gallery entries no probe belongs to).
    A SourceError naming a face that cannot be read; a ValueError when no identity has two images,
    or when faces have no identity (-1, as a .bin verification set's: they would all be one)."""
    if bool((source.identities[keys] < 0).any()):
        raise ValueError(f"{source.name}: identification needs faces labelled by identity; these have none (as a "
                         ".bin verification set's: pairs, not people)")
    faces = source.load(keys)
    if faces.skipped:
        raise _unread(source, faces, "of its gallery and probes")
    identity = faces.identity
    _, group = torch.unique(identity, return_inverse=True)
    rows = torch.arange(len(identity))
    first_rows = torch.full_like(rows, len(rows)).scatter_reduce(0, group, rows, "amin")  # per identity, then unused
    first = torch.isin(rows, first_rows)
    probes = ~first
    if not probes.any():
        raise ValueError(f"{source.name}: identification needs identities with two or more images (the first of "
                         "each is the gallery, the others its probes); every identity here has one")
    return IdentificationFaces(faces, first & torch.isin(identity, identity[probes]), probes)


def identification(model: nn.Module, chosen: IdentificationFaces, resolutions: list[int],
                   device: str | torch.device = "cpu", progress: str | None = None,
                   degraded_by: ProbeRecipe | None = None) -> dict[str, dict[str, float]]:
    """Rank-1 / rank-5 identification of ``model`` on ``chosen``: gallery entries HQ, probes at each
    resolution. Rank 5 only with more than 5 gallery entries; ``gallery``: their number.
    ``progress`` and ``degraded_by`` (the probes only) as in :func:`evaluate_pairs`."""
    faces, gallery, probes = chosen.faces, chosen.gallery, chosen.probes
    gallery_identity, probe_identity, probe_faces = faces.identity[gallery], faces.identity[probes], faces.hq[probes]
    results = {}
    embedded = int(gallery.sum()) + len(probe_faces) * len(resolutions)
    with progress_bar(total=embedded, desc=progress, unit="face", disable=progress is None) as bar:
        gallery_embedding = embed_probes(model, faces.hq[gallery], faces.hq.shape[-1], device, bar)
        for side in resolutions:
            probe_embedding = embed_probes(model, probe_faces, side, device, bar, faces.key[probes], degraded_by)
            ranking = (probe_embedding @ gallery_embedding.T).argsort(dim=1, descending=True)
            hits = gallery_identity[ranking] == probe_identity[:, None]
            results[str(side)] = {"rank1": hits[:, :1].any(1).float().mean().item(), "gallery": len(gallery_identity)}
            if len(gallery_identity) > 5:  # with 5 or fewer entries every probe is within rank 5
                results[str(side)]["rank5"] = hits[:, :5].any(1).float().mean().item()
    return results


def format_table(name: str, results: dict) -> str:
    """Accuracy table: one row per mode, one column per resolution."""
    sides = list(results["same"])
    lines = [f"{name:<24}" + "".join(f"{s + ' px':>16}" for s in sides)]
    for mode in ("same", "cross"):
        cells = [f"{100 * results[mode][s]['accuracy']:6.2f} ± {100 * results[mode][s]['accuracy_std']:4.2f}"
                 for s in sides]
        lines.append(f"  {mode + '-resolution':<22}" + "".join(f"{c:>16}" for c in cells))
    if "identification" in results:
        lines.append(f"  {'rank-1 identification':<22}" + "".join(
            f"{100 * results['identification'][s]['rank1']:>16.2f}" for s in sides))
    if "probe_recipe" in results:
        lines.append(f"  probes: recipe {results['probe_recipe']['recipe']} (seed {results['probe_recipe']['seed']}), "
                     "then each resolution")
    return "\n".join(lines)


def plot_accuracy(runs: dict[str, dict], out: str | Path) -> None:
    """PNG: accuracy against probe resolution, one line per model and mode; a model's two lines
    share its colour (solid: same-resolution, dashed: cross-resolution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, (name, results) in enumerate(runs.items()):
        for mode, style in (("same", "-o"), ("cross", "--s")):
            sides = [int(s) for s in results[mode]]
            axes.plot(sides, [100 * results[mode][str(s)]["accuracy"] for s in sides], style,
                      color=colours[number % len(colours)], label=f"{name} ({mode})")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sides, [str(s) for s in sides])
    recipes = {f"{run['probe_recipe']['recipe']} (seed {run['probe_recipe']['seed']})"
               for run in runs.values() if "probe_recipe" in run}
    axes.set_xlabel("probe resolution (px)" + "".join(f", after recipe {recipe}" for recipe in sorted(recipes)))
    axes.set_ylabel("verification accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)


def write_results(runs: dict[str, dict], out: str | Path) -> None:
    """``runs`` (model name -> its results, as :func:`evaluate_pairs` returns them) as JSON at ``out``."""
    Path(out).write_text(json.dumps(runs, indent=2, sort_keys=True))
