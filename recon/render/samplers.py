"""Where to sample along rays: ray bounds, inverse-CDF sampling, SDF samplers.

Rays are batches of ``R`` origins ``(R, 3)`` and unit-length directions
``(R, 3)``; a sample is a distance ``t`` along its ray. The two SDF samplers
share one contract: they call ``sdf_fn`` (points ``(M, 3)`` -> SDF ``(M,)``)
under ``torch.no_grad`` and return sorted distances
``(R, cfg.n_importance + cfg.n_extra)`` within ``[near, far]`` (fewer with segments, see
``surface_guided_sample``), at which the renderer evaluates the field again, with gradients.

Given ``segments`` (the occupied stretches of each ray, from an occupancy grid),
a sampler works in the occupied length ``tau`` instead of ``t``: empty space is
cut out of the ray, so every sample (and every SDF evaluation) falls where the
surface can be, and the returned distances lie inside the segments.

``compact`` (see ``compact_rows``): True selects the rays that still need work by boolean
indexing and sizes tensors from the data (each a device->host sync, free on the CPU); False
keeps fixed shapes and masks instead, so that a CUDA step never waits for the GPU. Both give
the same samples, but for the error-bounded sampler's rounds past the one where every ray is done
(they add zero-length intervals) and the coarse count with segments (``_coarse_count``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from recon.render.compositing import weights_from_density
from recon.render.density import laplace_density

if TYPE_CHECKING:  # only read attributes: no import-time dependency on the config module
    from recon.config import RenderConfig

__all__ = [
    "SdfFn",
    "RaySegments",
    "compact_rows",
    "ray_sphere_near_far",
    "uniform_t",
    "sample_pdf",
    "interval_min_distance",
    "opacity_error_bound",
    "error_bounded_sample",
    "surface_guided_sample",
]

SdfFn = Callable[[Tensor], Tensor]
"""Maps points ``(M, 3)`` to signed distances ``(M,)`` (or ``(M, 1)``)."""

def compact_rows(device: torch.device) -> bool:
    """Whether work on ``device`` is cut down to the rows that need it (boolean indexing, data-sized
    tensors): on the CPU, where reading a value on the host costs nothing; not on a GPU, where each
    such read waits for every queued kernel."""
    return device.type == "cpu"


_MAX_ERROR_EXPONENT = 60.0  # exp(60) ~ 1e26: keeps the bound finite in float32
_EXP_CAP = 60.0  # exp(-60) ~ 1e-26: products stay normal floats


# ----------------------------------------------------------------------------- ray bounds


def ray_sphere_near_far(
    origins: Tensor, dirs: Tensor, radius: float = 1.0, min_near: float = 1e-3
) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays enter and leave a sphere of ``radius`` centred at the origin.

    Solves ``|o + t d|^2 = r^2``: with ``a = d.d``, ``b = o.d``, ``c = o.o - r^2``,

        t = (-b -+ sqrt(b^2 - a c)) / a.

    ``near`` is clamped to at least ``min_near`` (a camera inside the sphere
    starts sampling just in front of itself). A ray that misses the sphere, or
    meets it only behind ``min_near``, gets ``hit = False`` and the empty range
    ``near = far`` at its point closest to the centre (clamped likewise), so
    samplers return samples with zero-length intervals and zero opacity.

    Args:
        origins: ``(R, 3)``.
        dirs: ``(R, 3)``, non-zero (unit length for ``t`` to be a distance).
        radius: sphere radius.
        min_near: smallest ``near``.

    Returns:
        ``near (R,)``, ``far (R,)``, ``hit (R,)`` bool.
    """
    _check_rays(origins, dirs)
    a = (dirs * dirs).sum(-1)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - a * c
    root = disc.clamp(min=0.0).sqrt()
    near = ((-b - root) / a).clamp(min=min_near)
    far = (-b + root) / a
    hit = (disc > 0) & (far > min_near)
    closest = (-b / a).clamp(min=min_near)
    return torch.where(hit, near, closest), torch.where(hit, far, closest), hit


def uniform_t(
    near: Tensor, far: Tensor, n: int, perturb: bool, generator: torch.Generator | None = None
) -> Tensor:
    """``n`` samples spread evenly over ``[near, far]``, both ends included.

    Deterministic: ``t_i = near + (far - near) * i / (n - 1)``. With ``perturb``
    each sample is drawn uniformly in its stratum (between the midpoints to its
    neighbours; the first and last strata end at ``near`` and ``far``), so the
    samples stay sorted and inside the range.

    Args:
        near: ``(R,)``.
        far: ``(R,)``.
        n: samples per ray (>= 1).
        perturb: stratified random jitter.
        generator: random source for ``perturb``.

    Returns:
        ``t``, ``(R, n)``, sorted.
    """
    u = torch.linspace(0.0, 1.0, n, dtype=near.dtype, device=near.device).expand(near.shape[0], n)
    if perturb and n > 1:
        mids = 0.5 * (u[:, 1:] + u[:, :-1])
        lower = torch.cat([u[:, :1], mids], dim=-1)
        upper = torch.cat([mids, u[:, -1:]], dim=-1)
        jitter = torch.rand(u.shape, dtype=u.dtype, device=u.device, generator=generator)
        u = lower + (upper - lower) * jitter
    return near[:, None] + (far - near)[:, None] * u


def sample_pdf(
    bins: Tensor,
    weights: Tensor,
    n: int,
    det: bool,
    generator: torch.Generator | None = None,
    uniform_mix: float = 1e-3,
) -> Tensor:
    """Inverse-CDF sampling of a piecewise-constant density over bins.

    Bin ``i`` is ``[bins_i, bins_{i+1}]`` and gets probability
    ``p_i = (1 - m) w_i / sum(w) + m / S`` (``m = uniform_mix``; rays whose
    weights are all zero get ``p_i = 1 / S``), spread uniformly inside the bin.
    ``u`` is ``(k + 0.5) / n`` when ``det``, else sorted uniform draws; the
    sample is ``CDF^{-1}(u)`` by linear interpolation.

    Args:
        bins: sorted bin edges, ``(R, S + 1)``.
        weights: non-negative bin weights, ``(R, S)`` (need not sum to 1).
        n: samples per ray.
        det: deterministic, evenly spaced quantiles.
        generator: random source when not ``det``.
        uniform_mix: fraction of probability spread evenly over the bins.

    Returns:
        ``t``, ``(R, n)``, sorted, within ``[bins_0, bins_S]``.
    """
    n_rays, n_bins = weights.shape
    w = weights.clamp(min=0.0)
    total = w.sum(-1, keepdim=True)
    pdf = torch.where(total > 0, w / total.clamp(min=torch.finfo(w.dtype).tiny), 1.0 / n_bins)
    pdf = (1.0 - uniform_mix) * pdf + uniform_mix / n_bins
    cdf = torch.cumsum(pdf, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf / cdf[:, -1:]], dim=-1).contiguous()
    if det:
        u = (torch.arange(n, dtype=w.dtype, device=w.device) + 0.5) / n
        u = u.expand(n_rays, n).contiguous()
    else:
        u = torch.rand(n_rays, n, dtype=w.dtype, device=w.device, generator=generator)
        u = torch.sort(u, dim=-1).values
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, n_bins)
    hi = idx.clamp(0, n_bins)
    cdf_lo, cdf_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    bin_lo, bin_hi = bins.gather(1, lo), bins.gather(1, hi)
    span = cdf_hi - cdf_lo
    frac = torch.where(span > 0, (u - cdf_lo) / span.clamp(min=torch.finfo(w.dtype).tiny), 0.0)
    return bin_lo + frac.clamp(0.0, 1.0) * (bin_hi - bin_lo)


# ----------------------------------------------------------------------------- occupied segments


@dataclass
class RaySegments:
    """The occupied stretches of ``R`` rays: ``K`` disjoint segments per ray, in order.

    Segment ``k`` of a ray is ``[start_k, end_k]`` (distances along the ray); rays with
    fewer segments are padded with empty ones at their last end. ``cum_end`` is the
    occupied length up to each segment's end, so ``length = cum_end[:, -1]``.

    The occupied length ``tau`` in ``[0, length]`` parametrises the union of the
    segments: ``to_t`` maps it to distances, ``to_tau`` back.
    """

    start: Tensor
    end: Tensor
    cum_end: Tensor

    @classmethod
    def from_bins(cls, edges: Tensor, occupied: Tensor, compact: bool = True) -> RaySegments:
        """Merge runs of occupied bins: sorted bin edges ``(R, M + 1)``, ``occupied`` bool ``(R, M)``.

        ``K`` is the most segments any ray has (``compact``), or the most ``M`` bins can hold,
        ``ceil(M / 2)``, which needs no look at the data.
        """
        n_bins = occupied.shape[1]
        index = torch.arange(n_bins, device=occupied.device)
        none = torch.zeros_like(occupied[:, :1])
        first = occupied & ~torch.cat([none, occupied[:, :-1]], dim=-1)
        last = occupied & ~torch.cat([occupied[:, 1:], none], dim=-1)
        if not compact:
            k = max((n_bins + 1) // 2, 1)
        else:
            k = max(int(first.sum(-1).max()), 1) if n_bins else 1
        first_i = torch.where(first, index, n_bins).sort(dim=-1).values[:, :k]
        last_i = torch.where(last, index, n_bins).sort(dim=-1).values[:, :k]
        valid = first_i < n_bins
        start = edges.gather(1, first_i.clamp(max=max(n_bins - 1, 0)))
        end = edges.gather(1, (last_i + 1).clamp(max=n_bins))
        n_valid = valid.sum(-1, keepdim=True)
        pad = torch.where(n_valid > 0, end.gather(1, (n_valid - 1).clamp(min=0)), edges[:, :1])
        start, end = torch.where(valid, start, pad), torch.where(valid, end, pad)
        return cls(start, end, torch.cumsum(end - start, dim=-1))

    @property
    def length(self) -> Tensor:
        """Occupied length of each ray, ``(R,)``."""
        return self.cum_end[:, -1]

    def select(self, rows: Tensor) -> RaySegments:
        """The segments of the rays ``rows`` (an index or a bool mask)."""
        return RaySegments(self.start[rows], self.end[rows], self.cum_end[rows])

    def to_t(self, tau: Tensor) -> Tensor:
        """Distances ``(R, S)`` at occupied lengths ``tau`` ``(R, S)`` (within ``[0, length]``)."""
        k = torch.searchsorted(self.cum_end, tau.contiguous()).clamp(max=self.cum_end.shape[1] - 1)
        start, end = self.start.gather(1, k), self.end.gather(1, k)
        t = end - (self.cum_end.gather(1, k) - tau)
        return torch.minimum(torch.maximum(t, start), end)

    def to_tau(self, t: Tensor) -> Tensor:
        """Occupied lengths ``(R, S)`` at distances ``t`` ``(R, S)`` (clamped into the segments)."""
        k = (torch.searchsorted(self.start, t.contiguous(), right=True) - 1).clamp(min=0)
        start, end, cum_end = self.start.gather(1, k), self.end.gather(1, k), self.cum_end.gather(1, k)
        return cum_end - (end - torch.minimum(torch.maximum(t, start), end))


class _RaySdf:
    """The SDF along ``R`` rays at distances, or at occupied lengths when ``segments`` is given."""

    def __init__(
        self, sdf_fn: SdfFn, origins: Tensor, dirs: Tensor, segments: RaySegments | None, compact: bool
    ) -> None:
        self.sdf_fn, self.origins, self.dirs, self.segments = sdf_fn, origins, dirs, segments
        self.compact = compact

    def distances(self, t: Tensor, rows: Tensor | None = None) -> Tensor:
        """``t`` (or ``tau``) ``(R', S)`` -> distances along the rays (``rows`` selects R' of the R)."""
        if self.segments is None:
            return t
        return (self.segments if rows is None else self.segments.select(rows)).to_t(t)

    def __call__(self, t: Tensor) -> Tensor:
        """SDF at ``t`` ``(R, K)`` on every ray -> ``(R, K)``."""
        return _sdf_along_rays(self.sdf_fn, self.origins, self.dirs, self.distances(t)).to(t.dtype)

    def on_rows(self, t: Tensor, rows: Tensor, fill: Tensor) -> Tensor:
        """SDF at ``t`` on the rows where ``rows`` (bool ``(R,)``) holds; ``fill`` elsewhere (evaluated
        on those rows only when ``compact``, else on every row and then masked)."""
        if not self.compact:
            return torch.where(rows[:, None], self(t).to(fill.dtype), fill)
        out = fill.clone()
        if bool(rows.any()):
            dist = self.distances(t[rows], rows)
            out[rows] = _sdf_along_rays(self.sdf_fn, self.origins[rows], self.dirs[rows], dist).to(fill.dtype)
        return out


def _ray_range(near: Tensor, far: Tensor, segments: RaySegments | None) -> tuple[Tensor, Tensor]:
    """The range a sampler works on: ``[near, far]``, or ``[0, occupied length]``."""
    if segments is None:
        return near, far
    return torch.zeros_like(near), segments.length.to(near.dtype)


def _coarse_count(
    n_eval: int, near: Tensor, far: Tensor, segments: RaySegments | None, minimum: int, compact: bool = True
) -> int:
    """Coarse samples per ray: ``n_eval``, or with segments (and ``compact``) as few as keep the
    spacing of 9 rays in 10 no wider than ``n_eval`` samples over their whole ``[near, far]`` would
    give, and no ray's more than twice as wide (a few grazing rays with long occupied stretches do
    not set every ray's count). Without ``compact`` the count may not depend on the data: ``n_eval``."""
    if segments is None or not compact:
        return n_eval
    if segments.length.numel() == 0:
        return minimum
    fraction = (segments.length / (far - near).clamp(min=torch.finfo(far.dtype).tiny)).clamp(max=1.0).float()
    share = max(float(torch.quantile(fraction, 0.9)), 0.5 * float(fraction.max()))
    return min(max(1 + math.ceil((n_eval - 1) * share), minimum), n_eval)


# ----------------------------------------------------------------------------- helpers


def _check_rays(origins: Tensor, dirs: Tensor, near: Tensor | None = None, far: Tensor | None = None) -> None:
    """Raise ``ValueError`` naming the bad shape unless origins, dirs are ``(R, 3)`` and near, far ``(R,)``."""
    if origins.dim() != 2 or origins.shape[-1] != 3:
        raise ValueError(f"origins must have shape (R, 3), got {tuple(origins.shape)}")
    if dirs.shape != origins.shape:
        raise ValueError(f"dirs must have the shape of origins {tuple(origins.shape)}, got {tuple(dirs.shape)}")
    for name, x in (("near", near), ("far", far)):
        if x is not None and x.shape != origins.shape[:1]:
            raise ValueError(f"{name} must have shape ({origins.shape[0]},), got {tuple(x.shape)}")


def _check_counts(cfg: RenderConfig, min_eval: int) -> None:
    """Raise ``ValueError`` unless the sampler's sample counts are usable."""
    if cfg.n_eval < min_eval:
        raise ValueError(f"render.n_eval must be at least {min_eval}, got {cfg.n_eval}")
    if cfg.n_importance < 0 or cfg.n_extra < 0 or cfg.n_importance + cfg.n_extra < 1:
        raise ValueError(
            f"render.n_importance and render.n_extra must be >= 0 and not both 0, "
            f"got {cfg.n_importance} and {cfg.n_extra}"
        )


def _sdf_along_rays(sdf_fn: SdfFn, origins: Tensor, dirs: Tensor, t: Tensor) -> Tensor:
    """SDF at ``o + t d``: ``(R, 3), (R, 3), (R, K) -> (R, K)``."""
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    return sdf_fn(points.reshape(-1, 3)).reshape(t.shape)


def _merge(t_a: Tensor, s_a: Tensor, t_b: Tensor, s_b: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted union of two sample sets with their SDFs, ``(R, A) + (R, B) -> (R, A + B)``."""
    t, order = torch.sort(torch.cat([t_a, t_b], dim=-1), dim=-1)
    return t, torch.cat([s_a, s_b], dim=-1).gather(1, order)


def _pick_from_set(t: Tensor, n: int, random: bool, generator: torch.Generator | None) -> Tensor:
    """``n`` of each ray's samples ``(R, K)``: random indices, or evenly strided ones."""
    n_rays, k = t.shape
    if n == 0:
        return t[:, :0]
    if not random:
        idx = torch.linspace(0, k - 1, n, device=t.device).round().long().expand(n_rays, n)
    elif n <= k:
        keys = torch.rand(n_rays, k, device=t.device, generator=generator)
        idx = keys.topk(n, dim=-1).indices
    else:
        idx = torch.randint(0, k, (n_rays, n), device=t.device, generator=generator)
    return t.gather(1, idx)


def interval_min_distance(s_left: Tensor, s_right: Tensor, deltas: Tensor) -> Tensor:
    """Lower bound ``d*`` on the distance to the surface inside each interval.

    An SDF is 1-Lipschitz, so no surface lies in the open balls of radius
    ``a = |s_left|`` and ``b = |s_right|`` around the interval's ends, which are
    ``c = delta`` apart. The closest point to the segment outside both balls is:

    - on the segment itself (``d* = 0``) when ``a + b <= c``;
    - on the circle where the two spheres meet, at the height of the triangle
      with sides ``a, b, c`` over side ``c``, ``d* = 2 Area / c`` (Heron), when
      both angles at side ``c`` are acute;
    - no closer than ``min(a, b)`` otherwise (the circle lies beyond one end).

    Args:
        s_left: SDF at interval starts, ``(R, K)``.
        s_right: SDF at interval ends, ``(R, K)``.
        deltas: interval lengths, ``(R, K)``.

    Returns:
        ``d*``, ``(R, K)``, non-negative.
    """
    a, b, c = s_left.abs(), s_right.abs(), deltas
    p = 0.5 * (a + b + c)
    area_sq = (p * (p - a) * (p - b) * (p - c)).clamp(min=0.0)
    height = 2.0 * area_sq.sqrt() / c.clamp(min=torch.finfo(c.dtype).tiny)
    obtuse = (a * a >= b * b + c * c) | (b * b >= a * a + c * c)
    d_star = torch.where(obtuse, torch.minimum(a, b), height)
    return torch.where(a + b <= c, torch.zeros_like(d_star), d_star)


def _bound_terms(s_left: Tensor, d_star: Tensor, deltas: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Transmittance estimate at interval starts and per-interval integral errors.

    Returns ``exp(-R_k)`` with ``R_k = sum_{i<k} sigma(s_i) delta_i`` and
    ``e_k = delta_k^2 exp(-d*_k / beta) / (4 beta^2)``, both ``(R, K)``;
    ``beta`` is ``(R, 1)``.
    """
    riemann = laplace_density(s_left, beta) * deltas
    excl = torch.cumsum(riemann, dim=-1) - riemann
    # exponents capped where exp(-x) ~ 0 anyway: float32 denormals are slow on CPUs
    decay = torch.exp(-(d_star / beta).clamp(max=_EXP_CAP))
    err = deltas * deltas * decay / (4.0 * beta * beta)
    return torch.exp(-excl.clamp(max=_EXP_CAP)), err


def opacity_error_bound(s_left: Tensor, d_star: Tensor, deltas: Tensor, beta: Tensor) -> Tensor:
    """VolSDF's bound on the opacity error of the left Riemann sum along each ray.

    With ``sigma = Psi_beta(-s) / beta`` and ``|d sigma / dt| <= exp(-d* / beta) / (2 beta^2)``
    on an interval, the left Riemann sum of ``int sigma`` errs by at most
    ``e_i = delta_i^2 exp(-d*_i / beta) / (4 beta^2)`` there. With
    ``E_{k+1} = sum_{i<=k} e_i``, the opacity ``1 - exp(-int_0^t sigma)`` on interval
    ``k`` is then approximated within ``exp(-R_k) (exp(E_{k+1}) - 1)``, and

        B(beta) = max_k exp(-R_k) * (exp(E_{k+1}) - 1).

    Args:
        s_left: SDF at interval starts, ``(R, K)``.
        d_star: ``interval_min_distance``, ``(R, K)``.
        deltas: interval lengths, ``(R, K)``.
        beta: ``(R, 1)`` (or a float).

    Returns:
        ``B``, ``(R,)``.
    """
    beta = torch.as_tensor(beta, dtype=s_left.dtype, device=s_left.device)
    trans, err = _bound_terms(s_left, d_star, deltas, beta)
    total = torch.cumsum(err, dim=-1).clamp(max=_MAX_ERROR_EXPONENT)
    return (trans * torch.expm1(total)).amax(dim=-1)


def _intervals(t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(s_left, d_star, deltas)`` of the intervals between sorted samples, each ``(R, K-1)``."""
    deltas = t[:, 1:] - t[:, :-1]
    return s[:, :-1], interval_min_distance(s[:, :-1], s[:, 1:], deltas), deltas


def _bisect_beta(
    s_left: Tensor, d_star: Tensor, deltas: Tensor, lo: Tensor, hi: Tensor, eps: float, steps: int
) -> Tensor:
    """Smallest beta in ``[lo, hi]`` (``(R,)`` each) with bound <= eps, by bisection in log beta.

    Assumes ``B(hi) <= eps``; returns the upper end of the final bracket.
    """
    for _ in range(steps):
        mid = (lo * hi).sqrt()
        ok = opacity_error_bound(s_left, d_star, deltas, mid[:, None]) <= eps
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def _initial_beta_plus(near: Tensor, far: Tensor, n: int, eps: float) -> Tensor:
    """A beta for which ``n`` evenly spaced samples meet the bound whatever the SDF.

    With ``d* = 0`` everywhere, ``E = L^2 / (4 (n - 1) beta^2)`` for a ray of
    length ``L``, and ``exp(E) - 1 <= eps`` holds for
    ``beta >= sqrt(L^2 / (4 (n - 1) log(1 + eps)))``.
    """
    length = (far - near).clamp(min=0.0)
    return length / math.sqrt(4.0 * max(n - 1, 1) * math.log1p(eps))


# ----------------------------------------------------------------------------- SDF samplers


def error_bounded_sample(
    sdf_fn: SdfFn,
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    beta: float | Tensor,
    cfg: RenderConfig,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    segments: RaySegments | None = None,
    compact: bool = True,
) -> Tensor:
    """VolSDF's error-bounded sampler (its Algorithm 1), vectorised over rays.

    1. ``T`` = ``cfg.n_eval`` evenly spaced samples on ``[near, far]``; ``beta+``
       starts where the bound holds for any SDF (``_initial_beta_plus``).
    2. Each round: rays whose bound ``B_T(beta) <= cfg.eps`` at the learnt
       ``beta`` are done (``beta+ = beta``). Every other ray draws ``cfg.n_eval``
       new samples with probability proportional to the transmittance-weighted
       interval errors ``exp(-R_k) e_k`` at ``beta+`` (inverse CDF), evaluates
       the SDF there and merges them into ``T``; then, if ``B_T(beta+) <= eps``,
       ``beta+`` is lowered by ``cfg.n_bisection`` bisection steps (in
       ``log beta``) on ``[beta, beta+]`` to the smallest value meeting the bound.
       At most ``cfg.max_rounds`` rounds.
    3. ``cfg.n_importance`` samples by inverse CDF from the opacity weights of
       ``T`` computed with ``beta+``, plus ``cfg.n_extra`` samples of ``T``, sorted.

    All rays run every round together: a ray that is already done "adds" copies
    of its first ``cfg.n_eval`` samples (zero-length intervals, no SDF
    evaluation), so tensors stay rectangular and the SDF is evaluated only on
    rays still refining.

    Args:
        sdf_fn: points ``(M, 3)`` -> SDF ``(M,)``; called under ``no_grad``.
        origins: ``(R, 3)``.
        dirs: unit directions, ``(R, 3)``.
        near: ``(R,)``.
        far: ``(R,)``.
        beta: the density's current Laplace scale.
        cfg: ``n_eval``, ``eps``, ``n_bisection``, ``max_rounds``,
            ``n_importance``, ``n_extra`` are read.
        perturb: training mode: jittered first samples, random quantiles and
            random ``n_extra`` indices. Otherwise deterministic (evenly spaced
            quantiles and evenly strided extra samples).
        generator: random source for ``perturb``.
        segments: occupied stretches of the rays (``RaySegments``); the
            algorithm then runs on the occupied length, with ``n_eval`` samples.
        compact: refine only the rays still refining, and stop once all are done
            (host syncs); else every ray runs every round (see the module's doc).

    Returns:
        ``t``, ``(R, cfg.n_importance + cfg.n_extra)``, sorted, within ``[near, far]``
        (within the segments when given).
    """
    _check_rays(origins, dirs, near, far)
    _check_counts(cfg, min_eval=2)
    ray_sdf = _RaySdf(sdf_fn, origins, dirs, segments, compact)
    near, far = _ray_range(near, far, segments)
    with torch.no_grad():
        t0 = uniform_t(near, far, cfg.n_eval, perturb, generator)
        s0 = ray_sdf(t0)
        t, s = t0, s0
        beta_t = torch.as_tensor(beta, dtype=near.dtype, device=near.device).expand_as(near)
        beta_plus = torch.maximum(_initial_beta_plus(near, far, cfg.n_eval, cfg.eps), beta_t)
        intervals = _intervals(t, s)
        for round_index in range(cfg.max_rounds + 1):
            done = opacity_error_bound(*intervals, beta_t[:, None]) <= cfg.eps
            beta_plus = torch.where(done, beta_t, beta_plus)
            if round_index == cfg.max_rounds or (compact and bool(done.all())):
                break
            active = ~done
            trans, err = _bound_terms(*intervals, beta_plus[:, None])
            t_new = sample_pdf(t, trans * err, cfg.n_eval, det=not perturb, generator=generator)
            t_new = torch.where(active[:, None], t_new, t0)
            s_new = ray_sdf.on_rows(t_new, active, fill=s0)
            t, s = _merge(t, s, t_new, s_new)
            intervals = _intervals(t, s)
            beta_plus = _tighten_beta_plus(intervals, active, beta_t, beta_plus, cfg, compact)
        s_left, _, deltas = intervals
        weights = weights_from_density(laplace_density(s_left, beta_plus[:, None]), deltas)
        t_imp = sample_pdf(t, weights, cfg.n_importance, det=not perturb, generator=generator)
        t_extra = _pick_from_set(t, cfg.n_extra, perturb, generator)
        t_out = torch.sort(torch.cat([t_imp, t_extra], dim=-1), dim=-1).values
        return ray_sdf.distances(torch.minimum(torch.maximum(t_out, near[:, None]), far[:, None]))


def _tighten_beta_plus(
    intervals: tuple[Tensor, Tensor, Tensor], active: Tensor, beta: Tensor, beta_plus: Tensor, cfg: RenderConfig,
    compact: bool = True,
) -> Tensor:
    """Bisect ``beta+`` down towards ``beta`` on the active rays whose bound holds at ``beta+``.

    ``intervals`` is ``_intervals(t, s)``; ``active``, ``beta``, ``beta_plus`` are ``(R,)``. Without
    ``compact`` every ray is bisected and the inactive ones keep their ``beta+``.
    """
    if not compact:
        ok = opacity_error_bound(*intervals, beta_plus[:, None]) <= cfg.eps
        tightened = _bisect_beta(*intervals, beta, beta_plus, cfg.eps, cfg.n_bisection)
        return torch.where(active & ok, tightened, beta_plus)
    s_left, d_star, deltas = (x[active] for x in intervals)
    hi = beta_plus[active]
    ok = opacity_error_bound(s_left, d_star, deltas, hi[:, None]) <= cfg.eps
    tightened = _bisect_beta(s_left, d_star, deltas, beta[active], hi, cfg.eps, cfg.n_bisection)
    out = beta_plus.clone()
    out[active] = torch.where(ok, tightened, hi)
    return out


def _first_crossing(t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """First outside-to-inside sign change per ray: ``(hit, i, t_a, t_b, s_a, s_b)``, each ``(R,)``.

    The change lies between samples ``i`` and ``i + 1``: ``s_a > 0 >= s_b`` on
    hit rays; ``i = K - 1`` and the other values are placeholders elsewhere.
    """
    crossing = (s[:, :-1] > 0) & (s[:, 1:] <= 0)
    hit = crossing.any(dim=-1)
    i = crossing.to(torch.int8).argmax(dim=-1, keepdim=True)
    t_a, t_b = t.gather(1, i)[:, 0], t.gather(1, i + 1)[:, 0]
    s_a, s_b = s.gather(1, i)[:, 0], s.gather(1, i + 1)[:, 0]
    return hit, torch.where(hit, i[:, 0], s.shape[1] - 1), t_a, t_b, s_a, s_b


def _secant(t_a: Tensor, t_b: Tensor, s_a: Tensor, s_b: Tensor) -> Tensor:
    """Zero of the line through ``(t_a, s_a)`` and ``(t_b, s_b)`` (``s_a > 0 >= s_b``)."""
    return t_a + (t_b - t_a) * s_a / (s_a - s_b).clamp(min=torch.finfo(s_a.dtype).tiny)


def _closest_approach(t: Tensor, s: Tensor, last: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Parabola through the smallest SDF sample up to index ``last`` and its neighbours.

    Fits ``s(t) ~ s_v + a (t - t_v)^2`` through samples ``k - 1, k, k + 1``
    (``k`` the argmin over samples ``<= last``, kept off the ends). ``a`` is
    the second divided difference; ``t_v`` is clamped to ``[t_{k-1}, t_{k+1}]``
    and falls back to ``t_k`` when ``a <= 0``.

    Returns:
        ``t_v``, ``a``, ``t_{k-1}``, ``s_{k-1}`` and whether ``k < last`` (the
        bracket lies before sample ``last``), each ``(R,)``.
    """
    index = torch.arange(s.shape[1], device=s.device)
    masked = torch.where(index <= last[:, None], s, torch.full_like(s, torch.inf))
    k = masked.argmin(dim=-1, keepdim=True).clamp(1, s.shape[1] - 2)
    t1, t2, t3 = t.gather(1, k - 1)[:, 0], t.gather(1, k)[:, 0], t.gather(1, k + 1)[:, 0]
    s1, s2, s3 = s.gather(1, k - 1)[:, 0], s.gather(1, k)[:, 0], s.gather(1, k + 1)[:, 0]
    tiny = torch.finfo(t.dtype).tiny
    slope_12 = (s2 - s1) / (t2 - t1).clamp(min=tiny)
    slope_23 = (s3 - s2) / (t3 - t2).clamp(min=tiny)
    a = (slope_23 - slope_12) / (t3 - t1).clamp(min=tiny)
    # vertex of the parabola: where its slope, slope_12 + a (2 t - t1 - t2), vanishes
    t_v = 0.5 * (t1 + t2) - slope_12 / (2.0 * a).clamp(min=tiny)
    t_v = torch.where(a > 0, torch.minimum(torch.maximum(t_v, t1), t3), t2)
    return t_v, a, t1, s1, k[:, 0] < last


def surface_guided_sample(
    sdf_fn: SdfFn,
    origins: Tensor,
    dirs: Tensor,
    near: Tensor,
    far: Tensor,
    beta: float | Tensor,
    cfg: RenderConfig,
    *,
    perturb: bool = False,
    generator: torch.Generator | None = None,
    refine_steps: int = 2,
    window: tuple[float, float] = (6.0, 8.0),
    segments: RaySegments | None = None,
    compact: bool = True,
) -> Tensor:
    """Root-finding sampler: dense samples where the ray meets (or skims) the surface.

    1. ``cfg.n_eval`` evenly spaced samples; the first interval where the SDF
       goes from positive to non-positive brackets the surface ("hit").
    2. A parabola through the smallest SDF sample before that interval (all
       samples on rays without one) and its two neighbours gives the closest
       approach ``t_v``; the SDF is evaluated there (one evaluation). A thin
       part the coarse samples stepped over shows up as ``s(t_v) <= 0`` and
       becomes the first crossing. Rays still without a crossing are near
       misses (or start inside, when their first sample is inside).
    3. Hits: ``refine_steps`` regula-falsi steps (one evaluation each) shrink
       the bracket; the root ``t*`` is its final secant zero and
       ``g = (s_a - s_b) / (t_b - t_a)`` (>= 0.1) estimates ``|ds/dt|``.
    4. Dense window, ``ceil(n_importance / 2)`` evenly spaced samples:
       hits ``[t* - w_0 beta / g, t* + w_1 beta / g]`` (``window = (w_0, w_1)``:
       the density rises over ``~beta / g`` and the ray is opaque a few beta
       past ``t*``); near misses ``t_v +- sqrt(6 beta / a)`` (where the SDF is
       within ``6 beta`` of its minimum; at most a quarter of the ray); rays
       starting inside ``[near, near + w_1 beta]``.
    5. The other ``floor(n_importance / 2)`` samples by inverse CDF from coarse
       weights that give each interval the density of its closest possible
       point (``laplace_density(d*)`` when both ends are outside); then
       ``cfg.n_extra`` samples of the coarse set, as in ``error_bounded_sample``.

    SDF evaluations per ray: ``n_eval``, plus 1 for the closest approach (on
    rays with samples before their crossing), plus ``refine_steps`` on hits.

    With ``segments`` every step runs on the occupied length ``tau`` (empty space
    cut out of the ray), with as few coarse samples as keep each ray's spacing no
    wider than ``n_eval`` samples over its whole ``[near, far]`` (``_coarse_count``),
    and the kept coarse samples cut in the same proportion: ``ceil(n_extra * K / n_eval)``
    for ``K`` coarse samples (the rest of the ray holds no density).

    Args:
        sdf_fn, origins, dirs, near, far, beta, cfg, perturb, generator: as in
            ``error_bounded_sample`` (``cfg.n_eval``, ``n_importance``,
            ``n_extra`` are read).
        refine_steps: regula-falsi steps.
        window: extent of the hit window before and after ``t*``, in ``beta / g``.
        segments: occupied stretches of the rays (``RaySegments``).
        compact: evaluate the probes on the rays that need them only, and cut the coarse count
            with segments (host syncs); else fixed shapes (see the module's doc).

    Returns:
        ``t``, ``(R, cfg.n_importance + cfg.n_extra)`` (fewer kept samples with segments),
        sorted, within ``[near, far]`` (within the segments when given).
    """
    _check_rays(origins, dirs, near, far)
    _check_counts(cfg, min_eval=3)
    beta_t = torch.as_tensor(beta, dtype=near.dtype, device=near.device)
    ray_sdf = _RaySdf(sdf_fn, origins, dirs, segments, compact)
    n_eval = _coarse_count(cfg.n_eval, near, far, segments, minimum=3, compact=compact)
    near, far = _ray_range(near, far, segments)
    with torch.no_grad():
        t0 = uniform_t(near, far, n_eval, perturb, generator)
        s0 = ray_sdf(t0)
        lo, hi = _surface_window(ray_sdf, t0, s0, beta_t, refine_steps, window)
        n_dense = (cfg.n_importance + 1) // 2
        t_dense = uniform_t(lo, hi, n_dense, perturb, generator)
        weights = _coarse_weights(t0, s0, beta_t)
        t_pdf = sample_pdf(t0, weights, cfg.n_importance - n_dense, det=not perturb, generator=generator)
        t_extra = _pick_from_set(t0, math.ceil(cfg.n_extra * n_eval / cfg.n_eval), perturb, generator)
        t_out = torch.sort(torch.cat([t_dense, t_pdf, t_extra], dim=-1), dim=-1).values
        return ray_sdf.distances(torch.minimum(torch.maximum(t_out, near[:, None]), far[:, None]))


def _surface_window(
    ray_sdf: _RaySdf,
    t0: Tensor,
    s0: Tensor,
    beta: Tensor,
    refine_steps: int,
    window: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """Steps 1-4 of ``surface_guided_sample``: the dense window ``[lo, hi]`` of each ray, ``(R,)`` each."""
    near, far = t0[:, 0], t0[:, -1]
    hit, i_cross, t_a, t_b, s_a, s_b = _first_crossing(t0, s0)
    t_v, curv, t_1, s_1, probe = _closest_approach(t0, s0, i_cross)
    s_v = ray_sdf.on_rows(t_v[:, None], probe, fill=s_1[:, None])[:, 0]
    found = probe & (s_1 > 0) & (s_v <= 0)
    t_a, s_a = torch.where(found, t_1, t_a), torch.where(found, s_1, s_a)
    t_b, s_b = torch.where(found, t_v, t_b), torch.where(found, s_v, s_b)
    hit = hit | found
    for _ in range(refine_steps):
        t_m = _secant(t_a, t_b, s_a, s_b)
        s_m = ray_sdf.on_rows(t_m[:, None], hit, fill=s_a[:, None])[:, 0]
        outside = s_m > 0
        t_a, s_a = torch.where(outside, t_m, t_a), torch.where(outside, s_m, s_a)
        t_b, s_b = torch.where(outside, t_b, t_m), torch.where(outside, s_b, s_m)
    tiny = torch.finfo(t0.dtype).tiny
    root = torch.where(hit, _secant(t_a, t_b, s_a, s_b), near)
    slope = ((s_a - s_b) / (t_b - t_a).clamp(min=tiny)).clamp(min=0.1)
    half = torch.minimum((6.0 * beta / curv.clamp(min=tiny)).sqrt(), 0.25 * (far - near))
    inside = ~hit & (s0[:, 0] <= 0)
    lo_miss = torch.where(inside, near, t_v - half)
    hi_miss = torch.where(inside, near + window[1] * beta, t_v + half)
    lo = torch.where(hit, root - window[0] * beta / slope, lo_miss)
    hi = torch.where(hit, root + window[1] * beta / slope, hi_miss)
    lo = torch.minimum(torch.maximum(lo, near), far)
    return lo, torch.minimum(torch.maximum(hi, lo), far)


def _coarse_weights(t: Tensor, s: Tensor, beta: Tensor | float) -> Tensor:
    """Opacity weights of the coarse intervals from the density of their closest possible point.

    An interval with both ends outside gets ``sigma = laplace_density(d*)``, an upper
    bound of the density inside it; others get the density at their smaller SDF.
    Returns ``(R, K - 1)`` for samples ``(R, K)``.
    """
    s_left, d_star, deltas = _intervals(t, s)
    s_right = s[:, 1:]
    outside = (s_left > 0) & (s_right > 0)
    guide = torch.where(outside, d_star, torch.minimum(s_left, s_right))
    return weights_from_density(laplace_density(guide, beta), deltas)
