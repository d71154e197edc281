"""Bit-exact ExMy floating-point formats: specification, registry, and bit-level codecs."""

from altgrad_jax.formats.codec import bits_float32, decode, encode, float32_bits, round_magnitude_bits
from altgrad_jax.formats.registry import (BUILTIN_FORMATS, SEED_FORMATS, format_names, get_format,
                                          make_format, register_format, unregister_format)
from altgrad_jax.formats.spec import NAN_INF_POLICIES, FloatFormat

__all__ = [
    "FloatFormat", "NAN_INF_POLICIES", "SEED_FORMATS", "get_format", "make_format", "register_format",
    "unregister_format", "BUILTIN_FORMATS", "format_names", "encode", "decode", "float32_bits", "bits_float32", "round_magnitude_bits",
]
