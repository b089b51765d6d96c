"""Recipes: YAML data that composes ops into stages with probabilities and one-of groups.

A recipe file::

    name: maug
    description: one line shown by `degrade recipes`
    seed: 0            # default seed; `--seed` overrides
    size: 112          # HQ side in pixels
    stages:
      - op: resize     # a stage runs one op ...
        p: 1.0         # ... on a random fraction p of the samples (default 1)
        sides: [7, 14, 20]
        weights: [1, 1, 2]
      - name: blur     # ... or one option of a one-of group
        p: 0.5
        one_of:
          - {op: gaussian_blur, weight: 2, sigma: [0.2, 3]}
          - {weight: 1, stages: [{op: motion_blur}, {op: jpeg, quality: [40, 90]}]}
        split: random  # `random` (by weight) or `key` (option = (key + seed) mod count: exact shares
                       # of consecutive keys, and each epoch of a stream, with its own seed, shifts them)

Every random draw of a sample comes from (seed, key, stage path), where the stage path is the
dotted name of the op inside the recipe (``blur.gaussian_blur``), so adding a stage does not
change the draws of the others. A stage's own draws (whether it runs, which option) come from
``<stage>:stage``, a name no op's path can take: a one-op stage's op has the stage's name as its
path, and sharing that stream made the op's first draw the one that decided whether it ran (up to
version 0.3, ``{op: jpeg, p: 0.5, quality: [30, 90]}`` compressed only at qualities 30-60).
Names are letters, digits, ``_`` and ``-``; two stages (or two ops of one chain) of the same
name are told apart as ``jpeg``, ``jpeg_2``, ... The params of a batch are one flat dict of (N,)
tensors named ``<stage path>.<field>``, plus ``<stage>.applied`` and, for one-of groups,
``<stage>.choice``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import re
import zlib
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from degrade.keyed import MAX_SEED, KeyedRandom
from degrade.ops import ConfigError, Op, Params, op_class
from degrade.ops.base import PART_NAME, check_images, checked_batch, checked_keys, is_weight
from degrade.text import did_you_mean, first_few

# The fields that shape a recipe, and why one is refused where it would have no effect.
MISPLACED = {
    "p": "is a stage's probability; the options of one_of and the ops of an option's chain have none "
         "(weight the options instead)",
    "split": "goes with one_of",
    "one_of": "cannot stand inside one_of: groups do not nest",
    "weight": "weights an option of one_of; a stage outside one_of has none",
    "stages": "lists the ops of an option of one_of",
    "op": "cannot stand beside 'stages': an option is one op or a chain of them",
}
STRUCTURE_KEYS = {"name", *MISPLACED}

# The largest face side a recipe takes: FFHQ's 1024 four times over. A batch of such faces is already
# gigabytes; a side beyond it is a typo, refused here rather than by a failed allocation mid-build.
MAX_SIZE = 4096

# A stage's own params (beside its ops'), named like them by PART_NAME.
STAGE_PARAMS = ("applied", "choice")
NAME_RULE = ("letters, digits, '_' or '-' (it is part of the dotted paths of the params), and neither "
             + " nor ".join(STAGE_PARAMS))


def _is_part_name(value: object) -> bool:
    """Whether ``value`` can name a stage, option or op, or a param an op draws (see NAME_RULE)."""
    return isinstance(value, str) and PART_NAME.fullmatch(value) is not None and value not in STAGE_PARAMS


# A recipe's own fields, in the order a recipe file usually gives them.
RECIPE_FIELDS = ("name", "description", "seed", "size", "stages")

# A recipe's name is the folder its build goes to by default (``out/<name>``).
RECIPE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class RecipeError(ValueError):
    """A recipe that cannot be loaded; the message names the file, the stage and the field."""


def _stream_id(path: str) -> int:
    return zlib.crc32(path.encode())


@dataclasses.dataclass
class Leaf:
    """One op at a dotted path inside the recipe."""

    path: str
    op: Op


@dataclasses.dataclass
class Option:
    """One branch of a one-of group: a chain of leaves, chosen with relative ``weight``."""

    name: str
    weight: float
    leaves: list[Leaf]


@dataclasses.dataclass
class Stage:
    """A stage: runs its single option, or one option of several, on a fraction ``p`` of samples."""

    name: str
    p: float
    options: list[Option]
    split: str = "random"

    @property
    def is_group(self) -> bool:
        return len(self.options) > 1 or self.options[0].name != self.name


@dataclasses.dataclass
class Recipe:
    """A loaded, validated recipe. Call it on (N, 3, S, S) images in [0, 1] with (N,) keys."""

    name: str
    description: str
    seed: int
    size: int
    stages: list[Stage]
    text: str = ""

    @property
    def leaves(self) -> list[Leaf]:
        return [leaf for stage in self.stages for option in stage.options for leaf in option.leaves]

    @property
    def _last_leaf(self) -> Leaf:
        return self.stages[-1].options[0].leaves[-1]

    @property
    def makes_native_size(self) -> bool:
        """Whether LQ faces stay at their small native sides (a last ``resize`` with ``output: native``)
        rather than coming back at the input size."""
        return self._last_leaf.op.changes_size

    @property
    def output_size(self) -> int:
        """Side of the LQ tensor: the input size, or the canvas of a native-size resize."""
        return max(self._last_leaf.op.all_sides) if self.makes_native_size else self.size

    def native_sides(self, params: Params) -> torch.Tensor | None:
        """(N,) side of each native-size LQ inside its canvas, or None when LQ keeps the input size."""
        return params[f"{self._last_leaf.path}.side"] if self.makes_native_size else None

    @functools.cached_property
    def param_names(self) -> frozenset[str]:
        """The names of the params :meth:`sample` draws, which :meth:`apply` reads."""
        return frozenset(self.sample(torch.zeros(1, dtype=torch.int64)))

    def _check_params(self, params: Params, count: int) -> None:
        """Refuse params that are not this recipe's for ``count`` images: drawn by another recipe,
        or for other samples (they failed inside, with a KeyError or a size mismatch)."""
        owner = f"recipe {self.name!r}"
        missing = sorted(self.param_names - params.keys())
        if missing:
            raise ValueError(f"{owner}: params without {first_few(missing)}, which this recipe draws: were they drawn "
                             "by another recipe? Draw them with recipe.sample(keys)")
        drawn = len(params[f"{self.stages[0].name}.applied"])  # a recipe's params are drawn, and sliced, together
        if drawn != count:
            raise ValueError(f"{owner}: params of {drawn} samples for {count} images; give the params of the "
                             "images' own keys")

    def ran(self, params: Params) -> dict[str, torch.Tensor]:
        """Which samples each op runs on, from its stage's ``applied`` and one-of ``choice`` params:
        {leaf path: (N,) bool}. Every op draws params for every sample; only these are used."""
        ran = {}
        for stage in self.stages:
            applied = params[f"{stage.name}.applied"]
            for index, option in enumerate(stage.options):
                chosen = applied & (params[f"{stage.name}.choice"] == index) if stage.is_group else applied
                ran.update({leaf.path: chosen for leaf in option.leaves})
        return ran

    def leaves_applied(self, params: Params, index: int) -> list[Leaf]:
        """The ops that ran on sample ``index``, in order: ``ran`` for one sample, read from its
        scalars (the OpenCV loop of ``degrade bench`` asks this per image: 2 against 7 us per
        image of `mixed_no_turbulence` for slicing ``ran``'s inputs)."""
        leaves = []
        for stage in self.stages:
            if not bool(params[f"{stage.name}.applied"][index]):
                continue
            option = stage.options[int(params[f"{stage.name}.choice"][index])] if stage.is_group else stage.options[0]
            leaves += option.leaves
        return leaves

    def sample(self, keys: torch.Tensor | Sequence[int], seed: int | None = None) -> Params:
        """All params of samples ``keys`` ((N,) int64): a flat dict of (N,) tensors."""
        seed = self.seed if seed is None else seed
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"recipe {self.name!r}: seed {seed} is outside [0, {MAX_SEED}]")
        keys = checked_keys(keys, None, f"recipe {self.name!r}").to(torch.int64)
        params: Params = {}
        # a stage's own draws (applied, choice) from a stream no op's path can name (see the module docstring)
        streams = [name for stage in self.stages
                   for name in [f"{stage.name}:stage", *(leaf.path for option in stage.options for leaf in option.leaves)]]
        rngs = iter(KeyedRandom.for_stages(seed, keys, [_stream_id(name) for name in streams]))
        for stage in self.stages:
            rng = next(rngs)
            params[f"{stage.name}.applied"] = rng.bernoulli(stage.p) if stage.p < 1 else torch.ones_like(keys, dtype=torch.bool)
            if stage.is_group:
                if stage.split == "key":
                    params[f"{stage.name}.choice"] = (keys + seed) % len(stage.options)
                else:
                    params[f"{stage.name}.choice"] = rng.choice([o.weight for o in stage.options])
            for option in stage.options:
                for leaf in option.leaves:
                    drawn = leaf.op.draw(next(rngs))
                    params.update({f"{leaf.path}.{field}": value for field, value in drawn.items()})
        return params

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Degrade (N, 3, S, S) images in [0, 1] with recorded params; (N, 3, S', S') out.

        A stage that filters by one linear map per axis (a Gaussian blur) directly before a resize
        run on every sample is folded into the resize's matrices, which then cost the same as the
        resize alone; the result equals running the two in turn, to float rounding.

        ``images`` is never written to; the tensors made on the way are, where a stage changes
        some rows only (see ``_apply_chain``)."""
        check_images(images, f"recipe {self.name!r}")
        self._check_params(params, len(images))
        if len(images) == 0:  # nothing to degrade (some ops' FFTs refuse an empty batch)
            return images.clone()
        ran = self.ran(params)
        made_here = False
        stages = iter(zip(self.stages, self.stages[1:] + [None]))
        for stage, following in stages:
            prefilter = _foldable_prefilter(stage, following, params, images)
            if prefilter is not None:
                leaf = following.options[0].leaves[0]
                images, made_here = leaf.op.apply(images, leaf_params(params, leaf), prefilter=prefilter), True
                next(stages)  # the following stage has run, with this one folded in
                continue
            for option in stage.options:
                chosen = ran[option.leaves[0].path].to(images.device)
                out = _apply_chain(option.leaves, images, params, chosen, writable=made_here)
                images, made_here = out, made_here or out is not images
        return images

    def __call__(self, images: torch.Tensor, keys: torch.Tensor | Sequence[int], seed: int | None = None
                 ) -> tuple[torch.Tensor, Params]:
        """Degrade (N, 3, S, S) float images in [0, 1] whose sample keys are ``keys`` ((N,) integers):
        the LQ images and the params drawn for them (see :func:`degrade.ops.base.checked_batch`)."""
        keys = checked_batch(images, keys, f"recipe {self.name!r}")
        params = self.sample(keys.to(images.device), seed)
        return self.apply(images, params), params


def _mapping_expected(entry: object) -> str:
    """What a recipe says of a stage or option that is not a mapping; a bare op name gets the mapping
    it stands for."""
    if isinstance(entry, str):
        return f"expected a mapping, got the text {entry!r}; an op is written {{op: {entry}}}"
    return f"expected a mapping, got {entry!r}"


def leaf_params(params: Params, leaf: Leaf) -> Params:
    """One op's params out of a recipe's flat dict: '<leaf path>.<field>' -> {field: value}."""
    prefix = leaf.path + "."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix) and "." not in k[len(prefix):]}


def _foldable_prefilter(stage: Stage, following: Stage | None, params: Params,
                        images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``stage`` as a prefilter for ``following`` (see ``Op.takes_prefilter``) when it can be
    folded into it: one foldable op, followed by a one-op stage that takes a prefilter and runs
    on every sample, on square images. It leaves the matrices of the samples it skips as they are.
    None otherwise."""
    if following is None or following.is_group or following.p < 1 or stage.is_group:
        return None
    leaf, after = stage.options[0].leaves[0], following.options[0].leaves[0]
    if not (leaf.op.foldable and after.op.takes_prefilter) or images.shape[-2] != images.shape[-1]:
        return None
    own = leaf_params(params, leaf)
    applied = params[f"{stage.name}.applied"].to(device=images.device, dtype=images.dtype).view(-1, 1, 1)

    def prefilter(matrices: torch.Tensor) -> torch.Tensor:
        return torch.lerp(matrices, leaf.op.fold_into(matrices, own), applied)  # weight 0 or 1: exact

    return prefilter


def _apply_chain(leaves: list[Leaf], images: torch.Tensor, params: Params, chosen: torch.Tensor,
                 writable: bool) -> torch.Tensor:
    """Run a chain of ops on the chosen rows only; other rows pass through unchanged.

    The chosen rows' results are written into ``images`` itself when it is ``writable`` (made by
    an earlier stage of the recipe), else into a copy: a one-of stage copies the batch once, not
    once per option (on one CPU core a copy of a chunk of 16 faces costs ~50 us). A chain that
    changes the size runs on every row (validation guarantees they are all chosen); a single op
    that takes ``chosen`` gets it."""
    if len(leaves) == 1 and leaves[0].op.takes_chosen:
        own = {k: v.to(images.device) for k, v in leaf_params(params, leaves[0]).items()}
        return leaves[0].op.apply(images, {**own, "chosen": chosen})
    every_row = leaves[-1].op.changes_size or bool(chosen.all())
    rows = slice(None) if every_row else torch.nonzero(chosen).squeeze(1)
    if not every_row and len(rows) == 0:
        return images
    subset = images[rows]
    leaf_rows = rows if every_row else rows.cpu()
    for leaf in leaves:
        subset = leaf.op.apply(subset, {k: v[leaf_rows].to(images.device) for k, v in leaf_params(params, leaf).items()})
    if every_row:
        return subset
    out = images if writable else images.clone()
    out[rows] = subset
    return out


# ---- loading and validation -------------------------------------------------------------


def builtin_recipes() -> dict[str, Path]:
    """Names and files of the recipes shipped in ``recipes/``."""
    folder = importlib.resources.files("degrade.recipes")
    return {Path(str(f)).stem: Path(str(f)) for f in folder.iterdir() if str(f).endswith(".yaml")}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A built-in recipe name or a path to a YAML file -> the file's path. A built-in name is one
    even where a file or folder of that name lies in the current folder (a build's ``--out
    maug``, which made the next ``--recipe maug`` look for a recipe file there); ``./maug`` is the file."""
    known = builtin_recipes()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RecipeError(f"{path}: {'a folder, not a recipe file' if path.is_dir() else 'no such recipe file'}")
        return path
    raise RecipeError(f"unknown recipe {str(name_or_path)!r}{did_you_mean(str(name_or_path), known)} (built-in "
                      f"recipes: {', '.join(sorted(known))}; or give a path to a .yaml file)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    without a word, so ``{op: jpeg, quality: [30, 40], quality: [80, 90]}`` compressed at 80-90
    (YAML itself requires a mapping's keys to be unique)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be given again
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # refused as such by the construction below
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"line {key_node.start_mark.line + 1}: the key {key!r} is given twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep)


# PyYAML follows YAML 1.1, where a float's exponent needs a dot before it and a sign (1.0e-3): it
# read 1e-3, 2e1 and 1.5e3 as text, which a numeric field then refused. YAML 1.2 reads them as numbers.
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                       re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                       list("-+0123456789"))


def recipe_data(text: str) -> Any:
    """The data of a recipe's YAML ``text``; a yaml.YAMLError where it is not YAML, or gives a key twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by built-in name or file path; raises :class:`RecipeError`."""
    path = resolve_recipe(name_or_path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: not UTF-8 text (byte {error.start + 1}); a recipe is a YAML file in UTF-8") from None
    except OSError as error:
        raise RecipeError(f"{path}: cannot be read ({error.strerror})") from None
    try:
        data = recipe_data(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    return parse_recipe(data, source=str(path), text=text)


def parse_recipe(data: Any, source: str = "<recipe>", text: str = "") -> Recipe:
    """Validate recipe data (as loaded from YAML) and build the :class:`Recipe`; raises
    :class:`RecipeError` naming ``source``, the stage and the field."""
    return _RecipeParser(source).parse(data, text)


def _unique(base: str, used: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3`` ... when names in ``used`` take it; marked used."""
    candidate, count = base, 1
    while candidate in used:
        count += 1
        candidate = f"{base}_{count}"
    used.add(candidate)
    return candidate


class _RecipeParser:
    """One recipe's data checked top-down: the top-level fields, then each stage (one op, or a
    one-of group of options, each one op or a chain of them), then where native-size ops stand."""

    size: int  # the recipe's face size, read by parse before any op: ops with a size field default to it

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> RecipeError:
        return RecipeError(f"{self.source}: {where}: {message}")

    def parse(self, data: Any, text: str) -> Recipe:
        if not isinstance(data, dict):
            raise self.fail("top level", "expected a mapping with 'stages' (and optionally name, description, seed, size)")
        unknown = set(data) - set(RECIPE_FIELDS)
        if unknown:
            typo = did_you_mean(next(iter(unknown)), RECIPE_FIELDS) if len(unknown) == 1 else ""
            raise self.fail("top level", f"unknown field(s) {', '.join(sorted(map(str, unknown)))}{typo} (a recipe's "
                                         f"fields: {', '.join(RECIPE_FIELDS)})")
        name = data.get("name", Path(self.source).stem)
        if "name" in data and not (isinstance(name, str) and RECIPE_NAME.fullmatch(name)):
            raise self.fail("field 'name'", "expected letters, digits, '_', '-' or '.', not first (it names the default "
                                            f"output folder, out/<name>), got {name!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail("field 'description'", f"expected one line of text, got {description!r}")
        seed, self.size = data.get("seed", 0), data.get("size", 112)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise self.fail("field 'seed'", f"expected an integer in [0, {MAX_SEED}], got {seed!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= MAX_SIZE:
            raise self.fail("field 'size'", f"expected an integer in [8, {MAX_SIZE}], got {self.size!r}")
        stages_data = data.get("stages")
        if not isinstance(stages_data, list) or not stages_data:
            raise self.fail("field 'stages'", "expected a non-empty list of stages")
        stage_names: set[str] = set()
        stages = [self.stage(number, entry, stage_names) for number, entry in enumerate(stages_data, start=1)]
        self.check_native_size_last(stages)
        return Recipe(name=str(name), description=description, seed=seed, size=self.size, stages=stages, text=text)

    def stage(self, number: int, entry: Any, stage_names: set[str]) -> Stage:
        """Stage ``number`` of the recipe; its name is made unique among ``stage_names``."""
        label = entry.get("name") or entry.get("op") or "one_of" if isinstance(entry, dict) else "?"
        where = f"stage {number} ({label})"
        if not isinstance(entry, dict):
            raise self.fail(where, _mapping_expected(entry))
        p = entry.get("p", 1.0)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise self.fail(where, f"field 'p': expected a probability in [0, 1], got {p!r}")
        split = entry.get("split", "random")
        if split not in ("random", "key"):
            raise self.fail(where, f"field 'split': expected 'random' or 'key', got {split!r}")
        if ("op" in entry) == ("one_of" in entry):
            raise self.fail(where, "a stage has exactly one of 'op' or 'one_of'")
        if "op" in entry:
            leaf = self.op(entry, where, "", {"op", "name", "p"}, stage_names)
            return Stage(name=leaf.path, p=float(p), options=[Option(leaf.path, 1.0, [leaf])])
        self.refuse_fields(entry, where, {"name", "p", "one_of", "split"}, "a one_of stage")
        group = _unique(self.named(entry, where, "one_of"), stage_names)
        options_data = entry["one_of"]
        if not isinstance(options_data, list) or len(options_data) < 2:
            raise self.fail(where, "field 'one_of': expected a list of at least two options")
        options: list[Option] = []
        for k, option in enumerate(options_data, start=1):
            options.append(self.option(option, f"{where}, option {k}", f"option{k}", group, split))
            if any(earlier.name == options[-1].name for earlier in options[:-1]):
                raise self.fail(f"{where}, option {k}", f"two options are named {options[-1].name!r}; give them "
                                                        "distinct 'name's")
        if not any(option.weight for option in options):
            raise self.fail(where, "field 'one_of': every option has weight 0; give one a positive weight")
        return Stage(name=group, p=float(p), options=options, split=split)

    def option(self, option: Any, where: str, default_name: str, group: str, split: str) -> Option:
        """An option of the one-of group ``group``: one op, or a chain of them under 'stages'."""
        if not isinstance(option, dict):
            raise self.fail(where, _mapping_expected(option))
        if split == "key" and "weight" in option:
            raise self.fail(where, "field 'weight': split: key takes the options in turn by key, in equal shares; "
                                   "weights go with split: random")
        weight = option.get("weight", 1.0)
        if not is_weight(weight):
            raise self.fail(where, f"field 'weight': expected a finite number >= 0, got {weight!r}")
        if "stages" not in option:
            leaf = self.op(option, where, f"{group}.", {"op", "name", "weight"}, None)
            return Option(leaf.path.split(".")[-1], float(weight), [leaf])
        self.refuse_fields(option, where, {"name", "weight", "stages"}, "an option with 'stages'")
        name = self.named(option, where, default_name)
        chain = option["stages"]
        if not isinstance(chain, list) or not chain:
            raise self.fail(where, "field 'stages': expected a non-empty list of ops")
        chain_names: set[str] = set()
        leaves = [self.op(entry, f"{where}, op {j}", f"{group}.{name}.", {"op", "name"}, chain_names)
                  for j, entry in enumerate(chain, start=1)]
        return Option(name, float(weight), leaves)

    def op(self, entry: Any, where: str, path_prefix: str, structure: set[str], used: set[str] | None) -> Leaf:
        """The op of ``entry``, which may also hold the recipe fields in ``structure``. Its name is
        made unique among ``used`` (the stages of the recipe, the ops of a chain) when given."""
        if not isinstance(entry, dict) or "op" not in entry:
            nested = isinstance(entry, dict) and "one_of" in entry
            raise self.fail(where, f"field 'one_of' {MISPLACED['one_of']}" if nested
                            else "expected a mapping with an 'op' field")
        op_name = entry["op"]
        try:
            cls = op_class(str(op_name))
        except ConfigError as error:
            raise self.fail(where, str(error).split(": ", 1)[1]) from None
        fields = {f.name for f in dataclasses.fields(cls)}
        self.refuse_fields(entry, where, structure, f"op {op_name!r}", fields)
        config = {k: v for k, v in entry.items() if k not in STRUCTURE_KEYS}
        if "size" in fields:  # only a native-size resize changes the size, and it comes last
            if config.setdefault("size", self.size) != self.size:
                raise self.fail(where, f"field 'size': {config['size']!r} is not the recipe's size, {self.size} (every "
                                       "op takes the recipe's faces; leave the field out)")
        try:
            op = cls(**config)
        except ConfigError as error:
            raise self.fail(where, f"field {error.field!r}: {str(error).split(': ', 1)[1]}") from None
        except TypeError as error:
            raise self.fail(where, f"bad configuration: {error}") from None
        self.check_draws(op, where)
        if not type(op).__module__.startswith("degrade."):
            self.check_own_apply(op, where)
        leaf_name = self.named(entry, where, cls.name)
        return Leaf(path=path_prefix + (leaf_name if used is None else _unique(leaf_name, used)), op=op)

    def named(self, entry: dict, where: str, default: str) -> str:
        """The entry's own 'name', checked, or ``default``."""
        value = entry.get("name", default)
        if not _is_part_name(value):
            raise self.fail(where, f"field 'name': expected {NAME_RULE}, got {value!r}")
        return value

    def refuse_fields(self, entry: dict, where: str, structure: set[str], owner: str,
                      own: set[str] = frozenset()) -> None:
        """Fail on a field that would be ignored here: one that shapes recipes elsewhere, or one
        that is not among ``owner``'s ``own`` fields."""
        extra = sorted(set(entry) - structure - own, key=str)
        if not extra:
            return
        if extra[0] in MISPLACED:
            raise self.fail(where, f"field {extra[0]!r} {MISPLACED[extra[0]]}")
        fields = sorted(own or structure)
        raise self.fail(where, f"field {extra[0]!r} is not a field of {owner}{did_you_mean(extra[0], fields)} "
                               f"(its fields: {', '.join(fields)})")

    def check_draws(self, op: Op, where: str) -> None:
        """Fail on params that a build could not store: each one (N,) bool, int or float, named by PART_NAME."""
        for field, value in op.draw(KeyedRandom(0, torch.arange(2), 0)).items():
            if not _is_part_name(field):
                raise self.fail(where, f"op {op.name!r} draws a param named {field!r}: expected {NAME_RULE}")
            if not (isinstance(value, torch.Tensor) and value.shape == (2,) and not value.is_complex()):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise self.fail(where, f"op {op.name!r} draws {field!r} as {shape} for 2 samples; a param is one "
                                       "bool, integer or float per sample, (N,)")

    def check_own_apply(self, op: Op, where: str) -> None:
        """Fail on an op of your own whose ``apply``, run on two faces of the recipe's size, does not
        give what the chain needs: new float images of their dtype and size (unless the op changes
        the size), finite and in [0, 1]. Each of these went into a build without a word: a 100 px LQ
        of 112 px faces, uint8 values made white, NaN made black."""
        images = torch.rand(2, 3, self.size, self.size, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
        given = images.clone()
        try:
            out = op.apply(images, op.draw(KeyedRandom(0, torch.arange(2), 0)))
        except Exception as error:
            raise self.fail(where, f"op {op.name!r} fails on two faces of {self.size} px: "
                                   f"{type(error).__name__}: {error}") from None
        if not isinstance(out, torch.Tensor) or out.dtype != images.dtype:
            got = out.dtype if isinstance(out, torch.Tensor) else type(out).__name__
            raise self.fail(where, f"op {op.name!r} returns {got} for float32 images; an op returns float images "
                                   "of the dtype it is given, in [0, 1]")
        if out.shape != images.shape and not op.changes_size:
            raise self.fail(where, f"op {op.name!r} returns {tuple(out.shape)} for {tuple(images.shape)} images; an op "
                                   "returns images of the size it is given")
        if not torch.equal(images, given):
            raise self.fail(where, f"op {op.name!r} writes into the images it is given; return new ones "
                                   "(images.mul(w) rather than images.mul_(w))")
        low, high = torch.stack(torch.aminmax(out)).tolist()  # NaN where any value is NaN
        if not (-0.01 <= low and high <= 1.01):
            values = "NaN or infinite values" if not bool(out.isfinite().all()) else f"values in [{low:g}, {high:g}]"
            raise self.fail(where, f"op {op.name!r} returns {values} for images in [0, 1]; an op returns images "
                                   "in [0, 1] (clamp them)")

    def check_native_size_last(self, stages: list[Stage]) -> None:
        """An op whose output keeps its native size (BTNet's resize) must come last: nothing after it
        could take images of several sizes in one batch."""
        for number, stage in enumerate(stages, start=1):
            for option in stage.options:
                for leaf in option.leaves:
                    if leaf.op.changes_size and (number != len(stages) or stage.is_group or stage.p < 1
                                                 or leaf is not option.leaves[-1]):
                        raise self.fail(f"stage {number} ({stage.name})", "an op with native-size output must be the "
                                                                          "last stage, with p: 1, outside one_of")


def describe(recipe: Recipe, params: Params, index: int) -> list[str]:
    """Short lines naming what was applied to sample ``index`` and its key params."""
    lines = []
    for leaf in recipe.leaves_applied(params, index):
        shown = [f"{field}={_short(value[index])}" for field, value in leaf_params(params, leaf).items()
                 if not field.endswith("seed") and field not in ("applied", "choice")]
        lines.append(f"{leaf.op.name} " + " ".join(shown))
    return lines


def _short(value: torch.Tensor) -> str:
    """A param's value in a few characters: two significant digits, whole numbers from 100 on
    (an angle of 104.2 degrees is "104", where two digits alone would write "1e+02")."""
    if value.dtype == torch.bool:
        return "y" if bool(value) else "n"
    if value.dtype.is_floating_point:
        number = float(value)
        return f"{number:.0f}" if abs(number) >= 100 else f"{number:.2g}"
    return str(int(value))
