"""Counter-based randomness keyed by (seed, sample key, stage, stream).

Every random number the engine uses is a pure function of the recipe seed, the sample's
integer key, the stage it belongs to and a counter. There is no generator state, so the
draws of a sample never depend on batch size, batch order, worker or device.

The hash is ``lowbias32`` (a splitmix-style 32-bit finaliser) evaluated in int64 tensors:
values are kept in [0, 2**32) and every product is masked back to 32 bits, which is exact
on CPU and CUDA alike because only the low 32 bits of a wrapped int64 product are used.
"""

from __future__ import annotations

import functools
import math

import torch

from degrade.fused import kernels_for

_MASK32 = 0xFFFFFFFF
MAX_SEED = _MASK32  # a seed is hashed as one 32-bit word: larger ones would repeat smaller ones' draws
_GOLDEN = 0x9E3779B9


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """Bijective 32-bit avalanche hash (lowbias32) of an int64 tensor (or an int) with values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def combine(h: torch.Tensor | int, value: torch.Tensor | int) -> torch.Tensor | int:
    """Fold ``value`` into the running hash ``h``; each an int64 tensor or an int. Ints stay ints
    (no tensor is made of them: on a GPU that would be a host-to-device copy, which waits for the
    device to finish its queued work)."""
    lo = value & _MASK32
    hi_mixed = (((value >> 32) & _MASK32) * _GOLDEN) & _MASK32  # the sum below keeps only 32 bits
    h = mix32(h ^ lo)
    return mix32((h + hi_mixed) & _MASK32)


def epoch_seed(seed: int, epoch: int) -> int:
    """The recipe seed of a stream's epoch ``epoch`` (>= 0): ``seed`` itself for the first, so a
    stream's first epoch is the build made with ``seed``; after it a hash of (seed, epoch), so each
    epoch degrades every face afresh, and the same way on every replay."""
    return seed if epoch == 0 else combine(seed, epoch)


def _as_int32(constant: int) -> int:
    return constant - (1 << 32) if constant >= (1 << 31) else constant


_M1_I32, _M2_I32, _GOLDEN_I32 = (_as_int32(c) for c in (0x7FEB352D, 0x846CA68B, _GOLDEN))


def _mix32_int32_(x: torch.Tensor) -> torch.Tensor:
    """:func:`mix32` in place on an int32 tensor holding the same 32 bits (wrapping products;
    logical shifts by masking). Bit-identical to ``mix32``; int32 and in place, it is about
    ten times faster on a CPU for large fields (no int64 passes). The shifted copies share one
    scratch tensor: 16.5 against 19.3 us per 3x112x112 normal field's words on one CPU core."""
    shifted = torch.empty_like(x)

    def xor_shifted_(shift: int) -> None:  # x ^= x >>> shift, a logical shift
        torch.bitwise_right_shift(x, shift, out=shifted)
        x.bitwise_xor_(shifted.bitwise_and_(0xFFFFFFFF >> shift))

    xor_shifted_(16)
    x.mul_(_M1_I32)
    xor_shifted_(15)
    x.mul_(_M2_I32)
    xor_shifted_(16)
    return x


def bits_to_uniform(bits: torch.Tensor) -> torch.Tensor:
    """Map 32-bit integers (int32 or int64) to float32 uniforms in (0, 1), 24 bits of resolution."""
    return (((bits >> 8) & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


@functools.lru_cache(maxsize=64)
def constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small tensor of ``values`` on ``device``, made once: on a GPU a tensor made from Python
    values is a host-to-device copy that waits for the device's queued work. Every caller gets
    the same tensor, so it is read only: index it or compute from it, never write into it."""
    return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _counter(count: int, device: torch.device) -> torch.Tensor:
    """(count,) int32: i times the golden-ratio constant, wrapped to 32 bits."""
    return torch.arange(count, device=device, dtype=torch.int32) * _GOLDEN_I32


def field_bits(seeds: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` hashed 32-bit words for each seed: (N,) int64 -> (N, count) int32."""
    return _mix32_int32_(seeds.to(torch.int32)[:, None] + _counter(count, seeds.device)[None, :])


def uniform_field(seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniforms in (0, 1): (N,) int64 seeds -> (N, *shape), a pure function of each seed.

    Drawn in float32 whatever ``dtype`` is, so a float64 pipeline sees the same values.
    """
    count = math.prod(shape)
    return bits_to_uniform(field_bits(seeds, count)).to(dtype).reshape(len(seeds), *shape)


def byte_field(seeds: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Uniform 8-bit values in [0, 255]: (N,) int64 seeds -> (N, *shape) uint8, a pure function of
    each seed. Each hashed word gives four values (its bytes, in little-endian order on every
    device), so a field costs a quarter of the hashing of :func:`uniform_field`."""
    count = math.prod(shape)
    words = field_bits(seeds, (count + 3) // 4)
    return words.view(torch.uint8)[:, :count].reshape(len(seeds), *shape)


@functools.lru_cache(maxsize=8)
def normal_quantiles(device: torch.device) -> torch.Tensor:
    """(65536,) float32: standard normal quantiles at (i + 0.5) / 65536."""
    p = (torch.arange(65536, dtype=torch.float64) + 0.5) / 65536
    return (math.sqrt(2) * torch.erfinv(2 * p - 1)).to(device=device, dtype=torch.float32)


def normal_field(seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 shared: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal draws: (N,) int64 seeds -> (N, *shape), a pure function of each seed.

    Inverse-CDF sampling from a table: each 16-bit half of a hashed word picks one of 65,536
    normal quantiles (tails end at ±4.32). Two draws per hash and no transcendental functions
    make it 2-3x faster than Box-Muller on a CPU, and a table look-up is bit-identical on
    every device. ``shared``: (N,) bool, samples whose channels (the first axis of ``shape``)
    all repeat the first channel's draws.

    On a GPU with Triton this is one kernel (``triton_kernels.normal_field``, the same bits):
    the torch code below runs about fifteen passes over the field (the hash's shifts, masks and
    products, the split into halves, the look-up).
    """
    kernels = kernels_for(seeds)
    if kernels is not None:
        none_shared = torch.zeros(len(seeds), dtype=torch.bool, device=seeds.device)
        return kernels.normal_field(seeds, shape, none_shared if shared is None else shared).to(dtype)
    count = math.prod(shape)
    half = (count + 1) // 2
    bits = field_bits(seeds, half)
    index = bits.new_empty(len(seeds), 2 * half)
    torch.bitwise_and(bits, 0xFFFF, out=index[:, :half])
    torch.bitwise_right_shift(bits, 16, out=index[:, half:])
    index[:, half:] &= 0xFFFF  # the arithmetic shift copied the sign bit
    # index_select takes the int32 index as it is; plain indexing converts it to int64 first:
    # 22 against 73 us per 3x112x112 field on one CPU core (the gaussian_noise line of `degrade bench`).
    draws = normal_quantiles(seeds.device).index_select(0, index[:, :count].flatten())
    field = draws.to(dtype).reshape(len(seeds), *shape)
    if shared is not None and len(shape) > 1 and shape[0] > 1:
        weight = shared.to(dtype).view(-1, *[1] * len(shape))
        field[:, 1:].lerp_(field[:, :1].expand(-1, shape[0] - 1, *shape[1:]), weight)  # weight 1 copies exactly
    return field


# Streams hashed at once: the first draw of a KeyedRandom hashes this many consecutive streams
# as one (N, 8) tensor, and the next seven draws take a column of it. A draw hashed alone is a
# few dozen tensor ops on (N,) tensors (kernel launches on a GPU).
_STREAM_BLOCK = 8


def _hash_block(sample_hash: torch.Tensor, first_stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashes of streams ``first_stream`` ... ``first_stream + 7`` of (...) sample hashes, and
    the first uniform of each (``uniform_field(hash, (1,))``): two (..., 8) tensors, int64 and
    float32."""
    streams = constant(tuple(range(first_stream, first_stream + _STREAM_BLOCK)), sample_hash.device, torch.int64)
    hashes = combine(sample_hash[..., None], streams)
    return hashes, bits_to_uniform(_mix32_int32_(hashes.to(torch.int32)))  # counter 0 adds nothing


class KeyedRandom:
    """Per-sample random draws for one stage of one recipe.

    ``KeyedRandom(seed, keys, stage)`` hands out independent streams: each call of
    :meth:`uniform`, :meth:`normal`, :meth:`integers` or :meth:`seeds` uses the next stream
    number, so an op's parameters depend only on (seed, key, stage, call order inside the op).

    Args:
        seed: recipe seed.
        keys: (N,) int64 sample keys.
        stage: stage index (or any integer naming a sub-stream).
    """

    def __init__(self, seed: int, keys: torch.Tensor, stage: int) -> None:
        keys = keys.to(torch.int64)
        sample_hash = combine(combine(mix32(seed & _MASK32), stage), keys)
        self._begin(keys, sample_hash, _hash_block(sample_hash, 1))

    @classmethod
    def for_stages(cls, seed: int, keys: torch.Tensor, stages: list[int]) -> list[KeyedRandom]:
        """``[KeyedRandom(seed, keys, stage) for stage in stages]``, the same draws, with every
        stage's sample hashes and first block of streams hashed together as (N, stages, ...)
        tensors: for a recipe's dozen stages, about 70 tensor ops instead of 900."""
        keys = keys.to(torch.int64)
        bases = tuple(combine(mix32(seed & _MASK32), stage) for stage in stages)
        sample_hashes = combine(constant(bases, keys.device, torch.int64), keys[:, None])  # (N, stages)
        hashes, uniforms = _hash_block(sample_hashes, 1)
        rngs = []
        for index in range(len(stages)):
            rng = cls.__new__(cls)
            rng._begin(keys, sample_hashes[:, index], (hashes[:, index], uniforms[:, index]))
            rngs.append(rng)
        return rngs

    def _begin(self, keys: torch.Tensor, sample_hash: torch.Tensor,
               first_block: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.keys = keys
        self._sample_hash = sample_hash
        self._stream = 0
        self._block_first = 1
        self._block_hashes, self._block_uniforms = first_block

    def __len__(self) -> int:
        return len(self.keys)

    def _next_column(self) -> int:
        """Move to the next stream; its column in the block, hashing the next block when needed."""
        self._stream += 1
        if self._stream >= self._block_first + _STREAM_BLOCK:
            self._block_first = self._stream
            self._block_hashes, self._block_uniforms = _hash_block(self._sample_hash, self._stream)
        return self._stream - self._block_first

    def _next_hash(self) -> torch.Tensor:
        column = self._next_column()
        return self._block_hashes[:, column]

    def seeds(self) -> torch.Tensor:
        """(N,) int64 seeds in [0, 2**32) for noise fields regenerated later from params."""
        return self._next_hash()

    def uniform(self, low: float = 0.0, high: float = 1.0, count: int | None = None) -> torch.Tensor:
        """Uniform in (low, high): shape (N,) or (N, count), float32."""
        if count is None:
            column = self._next_column()
            return low + (high - low) * self._block_uniforms[:, column]
        return low + (high - low) * uniform_field(self._next_hash(), (count,))

    def normal(self, count: int | None = None) -> torch.Tensor:
        """Standard normal: shape (N,) or (N, count), float32."""
        z = normal_field(self._next_hash(), (count or 1,))
        return z if count else z[:, 0]

    def integers(self, low: int, high: int) -> torch.Tensor:
        """Integers in [low, high] inclusive, (N,) int64."""
        u = self.uniform()
        return (low + torch.floor(u * (high - low + 1))).to(torch.int64).clamp_(low, high)

    def bernoulli(self, p: float) -> torch.Tensor:
        """(N,) bool, True with probability p."""
        return self.uniform() < p

    def choice(self, weights: list[float]) -> torch.Tensor:
        """(N,) int64 index into ``weights`` (non-negative, need not sum to one)."""
        w = constant(tuple(weights), self.keys.device, torch.float64)
        cdf = torch.cumsum(w / w.sum(), 0)
        idx = torch.searchsorted(cdf, self.uniform().to(torch.float64)[:, None]).squeeze(1)
        return idx.clamp_(max=len(weights) - 1)
