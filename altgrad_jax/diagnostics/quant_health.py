"""Quantization health of weights (and optionally gradients) against their scaled format grids.

Where overflow (saturation) can happen, and where it cannot:

* **weights under the recipe scale** (``scale = tensor_scale(w, fmt)``, what the model does): the
  largest magnitude maps into ``[fmt.max / 2, fmt.max)``, so the overflow fraction is **0 by
  construction**. It is
  therefore not reported for weights unless you pass the scales actually used (``weight_scales``,
  e.g. from delayed scaling, where the current tensor can outgrow the amax history).
* **delayed scaling**: the scale comes from past amaxes; a growing tensor saturates.
* **unscaled formats** (``scale = 1``): anything beyond ``fmt.max`` saturates. This is where narrow
  formats (E0M7: max 127/128; E3M4: max 124) hurt gradients, and where wide ones (E5M2) do not.
* **gradients**: measured twice when given, against the amax-scaled grid (underflow only: overflow
  is again 0 by construction) and against the unscaled grid (``scale = 1``: overflow and underflow).

Underflow (flush to zero) is possible everywhere: under amax scaling it counts elements more than
``fmt.max / fmt.min_subnormal`` below the tensor's amax (the format's dynamic range).

All functions are pure and jit-safe (bind ``format_fn`` and ``grad_format`` statically).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from altgrad_jax.diagnostics._tree import as_format_fn, count, f32, leaves_with_paths, safe_div
from altgrad_jax.formats import FloatFormat, get_format
from altgrad_jax.quant import quantize, tensor_scale, ulp


def tensor_health_counts(x: jax.Array, fmt: FloatFormat | str, scale: jax.Array | float
                         ) -> dict[str, jax.Array]:
    """Raw float32 counts/sums for one tensor on ``fmt``'s grid scaled by ``scale``.

    Keys: ``n`` (elements), ``finite``, ``overflow`` (finite with ``|x| > max * scale``),
    ``nonzero`` (finite non-zero), ``underflow`` (finite non-zero that quantize to 0),
    ``grid_error_sum`` (sum over finite of ``|x - Q(x)| / ulp(x)``), ``log2_ulp_sum`` (sum over finite
    of ``log2 ulp(x)``), ``sq_err`` / ``sq_norm`` (for the relative L2 error).
    """
    fmt = get_format(fmt)
    x = f32(x)
    scale = f32(scale)
    finite = jnp.isfinite(x)
    xf = jnp.where(finite, x, 0.0)
    q = quantize(xf, fmt, scale)
    step = ulp(xf, fmt, scale)
    nonzero = finite & (x != 0)
    err = jnp.abs(xf - q)
    return {
        "n": jnp.float32(x.size),
        "finite": count(finite),
        "overflow": count(finite & (jnp.abs(x) > jnp.float32(fmt.max) * scale)),
        "nonzero": count(nonzero),
        "underflow": count(nonzero & (q == 0)),
        "grid_error_sum": jnp.sum(jnp.where(finite, err / step, 0.0)),
        "log2_ulp_sum": jnp.sum(jnp.where(finite, jnp.log2(step), 0.0)),
        "sq_err": jnp.sum(err * err),
        "sq_norm": jnp.sum(xf * xf),
    }


def _resolve_grad_format(grad_format: Any, fmt_of):
    if grad_format is None:
        return fmt_of
    if isinstance(grad_format, (str, FloatFormat)):
        fmt = get_format(grad_format)
        return lambda path: fmt
    return as_format_fn(grad_format)


def quantization_health(params: Any, format_fn: Any, *, grads: Any | None = None,
                        grad_format: Any | None = None,
                        weight_scales: dict[str, jax.Array] | None = None
                        ) -> dict[str, jax.Array]:
    """Underflow, grid alignment and ULP statistics of each quantized tensor.

    For a quantized weight ``w`` (format ``f``, scale ``s = tensor_scale(w, f)`` unless
    ``weight_scales[path]`` is given) over its finite elements:

    .. math::
       \\mathrm{underflow} = \\frac{\\#\\{w_i \\ne 0 : Q(w_i) = 0\\}}{\\#\\{w_i \\ne 0\\}},\\quad
       \\mathrm{grid\\_error} = \\mathrm{mean}_i \\frac{|w_i - Q(w_i)|}{\\mathrm{ulp}_f(w_i, s)},\\quad
       \\mathrm{log2\\_ulp} = \\mathrm{mean}_i \\log_2 \\mathrm{ulp}_f(w_i, s)

    ``grid_error`` is in grid steps: 0 for weights that live on the grid (the snap-to-grid regime),
    about 0.25 for float32 masters spread uniformly within grid cells, at most 0.5 without saturation.
    ``log2_ulp`` is the (log) absolute resolution the tensor gets on its scaled grid.

    Args:
      params: the (master) weights.
      format_fn: ``path -> FloatFormat | None`` or a `PrecisionRules`; unquantized leaves are skipped.
      grads: optional gradients (same structure) to measure as well.
      grad_format: the gradients' format: a name / `FloatFormat` for all leaves, a ``path ->
        format`` callable, or None to use each leaf's weight format.
      weight_scales: optional ``{path: scale}`` actually used for the weights (delayed scaling);
        for those leaves ``quant/overflow/<path>`` is reported too (it is 0 by construction
        otherwise, so it is not reported).

    Returns:
      float32 scalars, per quantized weight ``quant/underflow/<path>``, ``quant/grid_error/<path>``,
      ``quant/log2_ulp/<path>``, ``quant/rel_error/<path>`` (``||Q(w) - w|| / ||w||``),
      ``quant/overflow/<path>`` (with ``weight_scales``); totals over all quantized weights
      ``quant/underflow``, ``quant/grid_error`` (and ``quant/overflow``); with ``grads``, per leaf
      ``quant/grad_underflow/<path>`` (amax-scaled), ``quant/grad_overflow_unscaled/<path>``,
      ``quant/grad_underflow_unscaled/<path>`` and their totals without the ``/<path>``.
      Overflow fractions are over all elements, underflow over non-zero ones.

    Example:
      >>> h = quantization_health({"w": jnp.array([1.0, 1.03, 0.0, 1e-7])}, lambda _: "E4M3")
      >>> round(float(h["quant/underflow"]), 4)   # 1e-7 is 2^23 below the amax: beyond E4M3's 2^17.8
      0.3333
    """
    fmt_of = as_format_fn(format_fn)
    weight_scales = dict(weight_scales or {})
    out: dict[str, jax.Array] = {}
    z = jnp.float32(0)
    tot = {"n": z, "finite": z, "overflow": z, "nonzero": z, "underflow": z, "grid_error_sum": z}
    any_scales = False
    for path, w in leaves_with_paths(params):
        fmt = fmt_of(path)
        if fmt is None:
            continue
        given = path in weight_scales
        scale = f32(weight_scales[path]) if given else tensor_scale(f32(w), fmt)
        c = tensor_health_counts(w, fmt, scale)
        out[f"quant/underflow/{path}"] = safe_div(c["underflow"], c["nonzero"])
        out[f"quant/grid_error/{path}"] = safe_div(c["grid_error_sum"], c["finite"])
        out[f"quant/log2_ulp/{path}"] = safe_div(c["log2_ulp_sum"], c["finite"])
        out[f"quant/rel_error/{path}"] = safe_div(jnp.sqrt(c["sq_err"]), jnp.sqrt(c["sq_norm"]))
        if given:
            any_scales = True
            out[f"quant/overflow/{path}"] = c["overflow"] / jnp.maximum(c["n"], 1.0)
        else:
            c = dict(c, overflow=z)
        for k in tot:
            tot[k] = tot[k] + c[k]
    out["quant/underflow"] = safe_div(tot["underflow"], tot["nonzero"])
    out["quant/grid_error"] = safe_div(tot["grid_error_sum"], tot["finite"])
    if any_scales:
        out["quant/overflow"] = safe_div(tot["overflow"], tot["n"])

    if grads is not None:
        gfmt_of = _resolve_grad_format(grad_format, fmt_of)
        gt = {"n": z, "nz_s": z, "under_s": z, "over_1": z, "nz_1": z, "under_1": z}
        for path, g in leaves_with_paths(grads):
            fmt = gfmt_of(path)
            if fmt is None:
                continue
            g = f32(g)
            cs = tensor_health_counts(g, fmt, tensor_scale(jnp.where(jnp.isfinite(g), g, 0.0), fmt))
            c1 = tensor_health_counts(g, fmt, 1.0)
            out[f"quant/grad_underflow/{path}"] = safe_div(cs["underflow"], cs["nonzero"])
            out[f"quant/grad_overflow_unscaled/{path}"] = c1["overflow"] / jnp.maximum(c1["n"], 1.0)
            out[f"quant/grad_underflow_unscaled/{path}"] = safe_div(c1["underflow"], c1["nonzero"])
            gt = {"n": gt["n"] + c1["n"], "nz_s": gt["nz_s"] + cs["nonzero"],
                  "under_s": gt["under_s"] + cs["underflow"], "over_1": gt["over_1"] + c1["overflow"],
                  "nz_1": gt["nz_1"] + c1["nonzero"], "under_1": gt["under_1"] + c1["underflow"]}
        out["quant/grad_underflow"] = safe_div(gt["under_s"], gt["nz_s"])
        out["quant/grad_overflow_unscaled"] = safe_div(gt["over_1"], gt["n"])
        out["quant/grad_underflow_unscaled"] = safe_div(gt["under_1"], gt["nz_1"])
    return out


def make_quantization_health_fn(format_fn: Any, *, grad_format: Any | None = None):
    """A jitted ``(params, grads=None, weight_scales=None) -> quantization_health(...)``.

    ``format_fn`` and ``grad_format`` are bound statically; build it once outside the loop.
    """
    fn = as_format_fn(format_fn)

    @jax.jit
    def health(params, grads=None, weight_scales=None):
        return quantization_health(params, fn, grads=grads, grad_format=grad_format,
                                   weight_scales=weight_scales)

    return health
