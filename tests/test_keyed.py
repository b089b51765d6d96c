"""Keyed randomness: a pure function of (seed, key, stage, stream), well distributed."""

import torch

from degrade.keyed import KeyedRandom, byte_field, normal_field, uniform_field


def test_uniforms_are_uniform_in_the_open_unit_interval():
    u = uniform_field(torch.arange(64), (4096,))
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002
    assert abs(u.var().item() - 1 / 12) < 0.001
    histogram = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(histogram, torch.full((10,), 0.1), atol=0.003)


def test_bytes_cover_all_256_levels_evenly():
    levels = byte_field(torch.arange(16), (3, 64, 64)).flatten()
    counts = torch.bincount(levels.long(), minlength=256).float()
    assert levels.dtype == torch.uint8 and (counts > 0).all()
    assert (counts / counts.mean() - 1).abs().max() < 0.12
    assert not torch.equal(byte_field(torch.tensor([1]), (64,)), byte_field(torch.tensor([2]), (64,)))


def test_normals_have_unit_variance_and_no_correlation_between_neighbours():
    z = normal_field(torch.arange(32), (8192,))
    assert abs(z.mean().item()) < 0.01
    assert abs(z.std().item() - 1) < 0.01
    neighbour_correlation = (z[:, 1:] * z[:, :-1]).mean().item()
    assert abs(neighbour_correlation) < 0.01


def test_draws_of_a_key_do_not_depend_on_the_other_keys_in_the_batch():
    keys = torch.tensor([5, 900, 3, 123456789012])
    together = KeyedRandom(7, keys, stage=2).uniform(count=3)
    alone = torch.cat([KeyedRandom(7, keys[i:i + 1], stage=2).uniform(count=3) for i in range(4)])
    assert torch.equal(together, alone)
    reversed_order = KeyedRandom(7, keys.flip(0), stage=2).uniform(count=3)
    assert torch.equal(reversed_order.flip(0), together)


def _draws(rng: KeyedRandom) -> list[torch.Tensor]:
    """Twelve draws of every kind: they run past the first block of eight hashed streams."""
    return [rng.uniform(), rng.seeds(), rng.normal(count=3), rng.integers(2, 9), rng.uniform(1, 5, count=2),
            rng.choice([1, 2]), *(rng.uniform() for _ in range(5)), rng.bernoulli(0.3)]


def test_stages_hashed_together_draw_exactly_what_each_stage_draws_alone():
    keys = torch.tensor([0, 7, 2**31 + 3, 2**32 + 9, 2**40])
    stages = [3, 2**31 + 5, 0]
    together = [_draws(rng) for rng in KeyedRandom.for_stages(11, keys, stages)]
    alone = [_draws(KeyedRandom(11, keys, stage)) for stage in stages]
    for stage_together, stage_alone in zip(together, alone):
        for a, b in zip(stage_together, stage_alone):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert not torch.equal(together[0][0], together[1][0])


def test_seed_stage_and_stream_each_change_the_draws():
    keys = torch.arange(16)
    base = KeyedRandom(1, keys, 0).uniform()
    assert not torch.equal(base, KeyedRandom(2, keys, 0).uniform())
    assert not torch.equal(base, KeyedRandom(1, keys, 1).uniform())
    rng = KeyedRandom(1, keys, 0)
    first, second = rng.uniform(), rng.uniform()
    assert torch.equal(first, base) and not torch.equal(first, second)


def test_choice_follows_its_weights():
    picks = KeyedRandom(0, torch.arange(20000), 0).choice([1, 1, 2])
    frequencies = torch.bincount(picks, minlength=3) / len(picks)
    assert torch.allclose(frequencies, torch.tensor([0.25, 0.25, 0.5]), atol=0.01)


def test_integers_cover_the_inclusive_range_evenly():
    values = KeyedRandom(0, torch.arange(30000), 0).integers(3, 7)
    counts = torch.bincount(values, minlength=8)[3:] / len(values)
    assert values.min() == 3 and values.max() == 7
    assert torch.allclose(counts, torch.full((5,), 0.2), atol=0.01)
