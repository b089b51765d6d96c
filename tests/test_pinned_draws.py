"""What every built-in recipe draws is pinned across versions: a build made today and one made
from the same (recipe, seed, key) by a later version get the same params and noise fields, so
their pairs differ by float rounding at most. The values are in ``pinned_draws.json``; a change
that means to draw otherwise rewrites it with ``python3 tests/test_pinned_draws.py`` and says so.

Integers and booleans (sides, choices, boxes, field seeds) must match exactly; floats, whose last
bit may depend on the CPU's vector width, to a millionth."""

import json
import math
from pathlib import Path

import pytest
import torch

from degrade.keyed import byte_field, normal_field, uniform_field
from degrade.recipe import builtin_recipes, load_recipe

PINNED = Path(__file__).with_name("pinned_draws.json")
# The first keys, and keys far apart, so the hashing of a key's high bits is pinned too.
KEYS = [0, 1, 2, 3, 4, 5, 6, 7, 1000, 123_456, 2**31 + 5, 2**40 + 3]
FIELD_SEEDS = [0, 1, 2**32 - 1]
FIELDS = {"uniform": uniform_field, "byte": byte_field, "normal": normal_field}


def current_draws() -> dict[str, list]:
    """``"RECIPE PARAM"``: the param of every built-in recipe for ``KEYS`` at its own seed, and
    ``"field KIND"``: the noise fields of ``FIELD_SEEDS``, as JSON values."""
    keys, seeds = torch.tensor(KEYS), torch.tensor(FIELD_SEEDS)
    draws = {f"{name} {path}": value.tolist()
             for name in sorted(builtin_recipes()) for path, value in load_recipe(name).sample(keys).items()}
    for kind, field in FIELDS.items():
        draws[f"field {kind}"] = field(seeds, (6,)).tolist()
    return draws


def _same(pinned, current) -> bool:
    if isinstance(pinned, list):
        return isinstance(current, list) and len(pinned) == len(current) and all(map(_same, pinned, current))
    if isinstance(pinned, float) or isinstance(current, float):
        return math.isclose(pinned, current, rel_tol=1e-6, abs_tol=1e-7)
    return pinned == current and type(pinned) is type(current)


@pytest.fixture(scope="module")
def draws() -> tuple[dict, dict]:
    return json.loads(PINNED.read_text()), current_draws()


def _of(draws: dict, owner: str) -> dict:
    """The draws of ``owner`` (a recipe's name, or "field"), by the rest of their names."""
    prefix = f"{owner} "
    return {name.removeprefix(prefix): value for name, value in draws.items() if name.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_a_built_in_recipe_draws_the_pinned_params_for_each_key(draws, name):
    pinned, current = (_of(d, name) for d in draws)
    assert pinned, f"{name} has no pinned draws: rewrite {PINNED.name} (see this module's docstring)"
    assert sorted(current) == sorted(pinned), "the recipe's params paths changed"
    changed = [path for path in pinned if not _same(pinned[path], current[path])]
    assert not changed, f"{name} draws otherwise for {', '.join(changed)}"


@pytest.mark.parametrize("kind", FIELDS)
def test_the_noise_fields_of_a_seed_are_the_pinned_ones(draws, kind):
    pinned, current = (d[f"field {kind}"] for d in draws)
    assert _same(pinned, current), f"{kind}_field: {current} where {pinned} was pinned"


if __name__ == "__main__":
    lines = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in current_draws().items()]
    PINNED.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {PINNED}")
