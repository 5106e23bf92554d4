"""An independent NF4 (4-bit NormalFloat) quantizer with double quantization, from the published codebook.

It exists to check bitsandbytes: the same packed codes and dequantized values, bit for bit.
Layout (QLoRA paper, bitsandbytes): weights are cut into blocks of 64; each block is divided by its
absmax and every value maps to the nearest of the 16 NF4 codes (ties go to the upper code, as with
midpoint buckets); two 4-bit codes pack into one byte, the first in the high nibble. Double
quantization subtracts the mean absmax and quantizes the absmax values in blocks of 256 to 8 bits
with the signed dynamic map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spec.quantization import NF4_CODES

BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256


def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The signed 8-bit dynamic quantization map (Dettmers, "8-bit optimizers via block-wise quantization").

    For each exponent i (0..6) the interval [0.1, 1] is split into 2**i + 1 boundaries; the midpoints,
    scaled by 10**(i − 6), and their negatives are codes; then 0 and 1. Sorted, 256 values.
    """
    values: list[float] = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1
        boundaries = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        values += (scale * means).tolist()
        values += (-scale * means).tolist()
    values += [0.0, 1.0]
    assert len(values) == 2**total_bits, len(values)
    return torch.tensor(sorted(values), dtype=torch.float32)


def _nearest(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, midpoints, out_int32=True)


def _blockwise_absmax(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled values in [-1, 1], absmax per block); the last block may be short."""
    n = flat.numel()
    if n % blocksize == 0:
        grid = flat.reshape(-1, blocksize)
        absmax = grid.abs().max(dim=-1)[0]
        scaled = torch.clamp(grid * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
        return scaled, absmax
    full = n - n % blocksize
    scaled_full, absmax_full = _blockwise_absmax(flat[:full], blocksize) if full else (flat[:0], flat[:0])
    tail = flat[full:]
    am = tail.abs().max().clamp(min=1e-38)
    return torch.cat([scaled_full, torch.clamp(tail / am, -1, 1)]), torch.cat([absmax_full, am.unsqueeze(0)])


@dataclass
class NF4Tensor:
    packed: torch.Tensor  # uint8, two codes per byte (high nibble first)
    absmax: torch.Tensor  # float32 per block, or uint8 when double-quantized
    shape: tuple
    offset: float | None = None  # double quant: mean absmax
    nested_absmax: torch.Tensor | None = None  # double quant: float32 per 256 absmax values


def quantize(weight: torch.Tensor, double_quant: bool = False) -> NF4Tensor:
    flat = weight.reshape(-1).float()
    scaled, absmax = _blockwise_absmax(flat, BLOCKSIZE)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    codes = _nearest(scaled, torch.tensor(NF4_CODES, dtype=torch.float32)).to(torch.uint8)
    packed = ((codes[::2] << 4) | codes[1::2]).unsqueeze(1)
    if not double_quant:
        return NF4Tensor(packed, absmax, tuple(weight.shape))
    offset = absmax.mean()
    centred = absmax - offset
    nested_scaled, nested_absmax = _blockwise_absmax(centred, NESTED_BLOCKSIZE)
    qabsmax = _nearest(nested_scaled, dynamic_map()).to(torch.uint8)
    return NF4Tensor(packed, qabsmax, tuple(weight.shape), float(offset), nested_absmax)


def block_absmax(t: NF4Tensor) -> torch.Tensor:
    """The float32 absmax per block (undoing double quantization where it was used)."""
    if t.offset is None:
        return t.absmax
    code = dynamic_map()[t.absmax.long()]
    n = code.numel()
    reps = torch.repeat_interleave(t.nested_absmax, NESTED_BLOCKSIZE)[:n]
    return code * reps + torch.tensor(t.offset, dtype=torch.float32)


def dequantize(t: NF4Tensor, dtype=torch.float32) -> torch.Tensor:
    codes = torch.empty(t.packed.numel() * 2, dtype=torch.int64)
    flat = t.packed.reshape(-1)
    codes[0::2] = (flat >> 4).long()
    codes[1::2] = (flat & 0xF).long()
    n = 1
    for d in t.shape:
        n *= d
    values = torch.tensor(NF4_CODES, dtype=torch.float32)[codes][:n]
    absmax = block_absmax(t)
    scales = torch.repeat_interleave(absmax, BLOCKSIZE)[:n]
    return (values * scales).reshape(t.shape).to(dtype)


def uniform_round(weight: torch.Tensor, levels: int = 16) -> torch.Tensor:
    """The handbook's W_q = round(W/S) read literally: a uniform 4-bit grid on [-absmax, absmax] per block."""
    flat = weight.reshape(-1).float()
    scaled, absmax = _blockwise_absmax(flat, BLOCKSIZE)
    half = (levels - 1) / 2
    q = torch.round(scaled * half) / half
    return (q * torch.repeat_interleave(absmax, BLOCKSIZE)[: q.numel()]).reshape(weight.shape)
