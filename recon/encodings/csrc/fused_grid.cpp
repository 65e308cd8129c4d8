// Fused CPU multi-resolution grid encoding, float32, OpenMP-parallel.
//
// Computes exactly what recon/encodings/torch_backend.py computes (tiny-cuda-nn's conventions:
// float32 level scales, +0.5 offset, dense indexing while res^3 fits, uint32 hash with
// primes 1 / 2654435761 / 805459861, modulo the level size, one flat table level after
// level with F features contiguous per vertex), one compiled pass per autograd step:
//
//   forward      x (N, 3), table (P) -> features (N, L F) [+ d/ds and mixed d2/ds2, each (L, N, F, 3)]
//   grad_x       go (N, L F) -> d loss / dx (N, 3), from the saved derivatives (no table read)
//   grad_x_back  ggx (N, 3) -> d / d go (N, L F) and d / dx (N, 3): the eikonal's double backward
//   scatter      table gradient (P) of go * w (the features' own) plus go2 * (dw/ds . ggx ds)
//                (the eikonal term's), both in one pass
//
// Work goes in batches of kBatch points, level by level: first every corner index of the
// batch (arithmetic only), then the gathers (or scatter-adds), each prefetching the rows
// kAhead points ahead, so that many cache misses are in flight at once. Points are split
// across threads, except in the scatter: there each thread owns whole levels (or, with
// fewer levels than threads, a range of rows) and adds only to its own rows: no atomics,
// the same sums in the same order on every run. An atomic-add scatter is kept to measure
// against (docs/DECISIONS.md).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/utils/pybind.h>

#include <omp.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr uint32_t kPrimeZ = 805459861u;
constexpr int64_t kBatch = 128;  // points located together (and the unit of parallel work)
constexpr int64_t kAhead = 8;    // prefetch distance, in points
constexpr int kMaxFeatures = 64;

struct Level {
  float scale;
  float ds_smooth;   // 6 scale, rounded to float (smoothstep: ds = frac (1 - frac) 6 scale)
  float d2s_smooth;  // scale^2, rounded to float (smoothstep: d2s = (6 - 12 frac) scale^2)
  int64_t res;
  int64_t size;
  int64_t offset;
  bool hashed;
};

// The static layout: levels, features per vertex, interpolation.
struct Grid {
  std::vector<Level> levels;
  int64_t n_features;
  bool smooth;
  int64_t n_params;

  Grid(const std::vector<double>& scales, const std::vector<int64_t>& res, const std::vector<int64_t>& sizes,
       const std::vector<int64_t>& offsets, const std::vector<bool>& hashed, int64_t n_features, bool smooth)
      : n_features(n_features), smooth(smooth), n_params(0) {
    TORCH_CHECK(n_features >= 1 && n_features <= kMaxFeatures, "features per vertex must be in [1, 64]");
    const size_t n = scales.size();
    TORCH_CHECK(n >= 1 && res.size() == n && sizes.size() == n && offsets.size() == n && hashed.size() == n,
                "one scale, resolution, size, offset and flag per level");
    for (size_t l = 0; l < n; ++l) {
      TORCH_CHECK(sizes[l] >= 1 && (!hashed[l] || (sizes[l] & (sizes[l] - 1)) == 0),
                  "level sizes must be positive, and powers of two when hashed");
      levels.push_back({static_cast<float>(scales[l]), static_cast<float>(6.0 * scales[l]),
                        static_cast<float>(scales[l] * scales[l]), res[l], sizes[l], offsets[l], hashed[l]});
      n_params = std::max(n_params, (offsets[l] + sizes[l]) * n_features);
    }
  }

  int64_t n_levels() const { return static_cast<int64_t>(levels.size()); }
};

// One level's view of up to kBatch consecutive points.
struct Batch {
  int64_t begin, count;
  int64_t idx[kBatch][8];  // absolute vertex index (level offset included), corner c = cx + 2 cy + 4 cz
  float s[kBatch][3];      // frac, or smoothstep(frac)
  float ds[kBatch][3];     // d s / d x
  float d2s[kBatch][3];    // d2 s / d x2 (0 when linear)
};

inline float clamp01(float v) { return v > 0.0f ? (v < 1.0f ? v : 1.0f) : 0.0f; }  // NaN -> 0: indices stay valid

// Coordinates in the cell (and, with want_idx, the corner indices) of points [begin, begin + count).
void locate(const Grid& grid, const Level& lv, const float* x, int64_t begin, int64_t count, bool want_idx,
            Batch& b) {
  b.begin = begin;
  b.count = count;
  for (int64_t j = 0; j < count; ++j) {
    int64_t cell[3];
    for (int d = 0; d < 3; ++d) {
      const float pos = clamp01(x[3 * (begin + j) + d]) * lv.scale + 0.5f;
      const int64_t floor_pos = static_cast<int64_t>(pos);  // pos >= 0.5: truncation is floor
      const float frac = pos - static_cast<float>(floor_pos);
      cell[d] = floor_pos;
      if (grid.smooth) {
        b.s[j][d] = frac * frac * (3.0f - 2.0f * frac);
        b.ds[j][d] = frac * (1.0f - frac) * lv.ds_smooth;
        b.d2s[j][d] = (6.0f - 12.0f * frac) * lv.d2s_smooth;
      } else {
        b.s[j][d] = frac;
        b.ds[j][d] = lv.scale;
        b.d2s[j][d] = 0.0f;
      }
    }
    if (!want_idx) continue;
    int64_t* idx = b.idx[j];
    if (lv.hashed) {
      const uint32_t mask = static_cast<uint32_t>(lv.size - 1);
      const uint32_t hx = static_cast<uint32_t>(cell[0]);
      const uint32_t hy = static_cast<uint32_t>(cell[1]) * kPrimeY;
      const uint32_t hz = static_cast<uint32_t>(cell[2]) * kPrimeZ;
      for (int c = 0; c < 8; ++c) {
        const uint32_t h = (hx + (c & 1)) ^ (hy + ((c >> 1) & 1) * kPrimeY) ^ (hz + ((c >> 2) & 1) * kPrimeZ);
        idx[c] = lv.offset + (h & mask);
      }
    } else {
      const int64_t res = lv.res, base = cell[0] + cell[1] * res + cell[2] * res * res;
      for (int c = 0; c < 8; ++c) {
        int64_t i = base + (c & 1) + ((c >> 1) & 1) * res + ((c >> 2) & 1) * res * res;
        if (i >= lv.size) i %= lv.size;  // corners past the far face wrap, as in tiny-cuda-nn
        idx[c] = lv.offset + i;
      }
    }
  }
}

// ds and d2s only (no indices): constant for linear interpolation, so no positions needed.
void locate_derivatives(const Grid& grid, const Level& lv, const float* x, int64_t begin, int64_t count, Batch& b) {
  if (grid.smooth) {
    locate(grid, lv, x, begin, count, false, b);
    return;
  }
  b.begin = begin;
  b.count = count;
  for (int64_t j = 0; j < count; ++j) {
    for (int d = 0; d < 3; ++d) {
      b.ds[j][d] = lv.scale;
      b.d2s[j][d] = 0.0f;
    }
  }
}

template <int kRW>
inline void prefetch_rows(const float* table, const int64_t* idx, int64_t F) {
  for (int c = 0; c < 8; ++c) __builtin_prefetch(table + idx[c] * F, kRW, 1);
}

// Trilinear weights of the 8 corners.
inline void weights(const float* s, float* w) {
  for (int c = 0; c < 8; ++c) {
    const float wx = (c & 1) ? s[0] : 1.0f - s[0];
    const float wy = (c & 2) ? s[1] : 1.0f - s[1];
    const float wz = (c & 4) ? s[2] : 1.0f - s[2];
    w[c] = wz * wy * wx;
  }
}

// sum_d v[d] d w_c / d s_d for the trilinear weights (the eikonal term's table weights).
inline void directional_weights(const float* s, const float* v, float* u) {
  for (int c = 0; c < 8; ++c) {
    const float ax = (c & 1) ? s[0] : 1.0f - s[0], bx = (c & 1) ? v[0] : -v[0];
    const float ay = (c & 2) ? s[1] : 1.0f - s[1], by = (c & 2) ? v[1] : -v[1];
    const float az = (c & 4) ? s[2] : 1.0f - s[2], bz = (c & 4) ? v[2] : -v[2];
    u[c] = bz * (ay * ax) + az * (by * ax + ay * bx);
  }
}

// Trilinear interpolation of 8 corner values g at s (along x, then y, then z, as grid.py),
// with d/ds (grad) and the mixed d2/ds_a ds_b for (x, y), (x, z), (y, z) when asked.
inline float interpolate(const float* g, const float* s, float* grad, float* mixed) {
  float dx[4], ax[4];
  for (int zy = 0; zy < 4; ++zy) {
    dx[zy] = g[2 * zy + 1] - g[2 * zy];
    ax[zy] = g[2 * zy] + s[0] * dx[zy];
  }
  const float dy0 = ax[1] - ax[0], dy1 = ax[3] - ax[2];
  const float ay0 = ax[0] + s[1] * dy0, ay1 = ax[2] + s[1] * dy1;
  if (grad != nullptr) {
    const float dxy0 = dx[1] - dx[0], dxy1 = dx[3] - dx[2];
    const float dx_y0 = dx[0] + s[1] * dxy0, dx_y1 = dx[2] + s[1] * dxy1;
    grad[0] = dx_y0 + s[2] * (dx_y1 - dx_y0);
    grad[1] = dy0 + s[2] * (dy1 - dy0);
    grad[2] = ay1 - ay0;
    mixed[0] = dxy0 + s[2] * (dxy1 - dxy0);
    mixed[1] = dx_y1 - dx_y0;
    mixed[2] = dy1 - dy0;
  }
  return ay0 + s[2] * (ay1 - ay0);
}

// at::empty, with a large buffer's pages asked to be 2 MiB ones (Linux, before first touch):
// the first write then faults once per 2 MiB instead of once per 4 KiB, which on a table-
// sized gradient (48 MB) saves most of the time it takes to fill it.
at::Tensor fresh(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice only
#endif
  return t;
}

int threads_for(int64_t n) { return n < 2 * kBatch ? 1 : std::max(1, at::get_num_threads()); }

int64_t n_batches(int64_t n) { return (n + kBatch - 1) / kBatch; }

void check_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), what,
              " must be a contiguous float32 CPU tensor");
}

void check_shape(const at::Tensor& t, int64_t rows, int64_t width, const char* what) {
  check_float(t, what);
  TORCH_CHECK(t.numel() == rows * width && t.size(0) == rows, what, " must be (", rows, ", ", width, ")");
}

void check_points(const at::Tensor& x) {
  check_float(x, "points");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "points must be (N, 3)");
}

// ---------------------------------------------------------------------------------------
// forward

template <int kF>
void forward_impl(const Grid& grid, const float* x, const float* table, int64_t n, float* out, float* dgrad,
                  float* dmixed) {
  const int64_t F = kF > 0 ? kF : grid.n_features, L = grid.n_levels(), width = L * F;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(n))
  for (int64_t batch = 0; batch < n_batches(n); ++batch) {
    Batch b;
    float g[kMaxFeatures][8];
    const int64_t begin = batch * kBatch, count = std::min(kBatch, n - begin);
    for (int64_t l = 0; l < L; ++l) {
      locate(grid, grid.levels[l], x, begin, count, true, b);
      for (int64_t j = 0; j < std::min(kAhead, count); ++j) prefetch_rows<0>(table, b.idx[j], F);
      for (int64_t j = 0; j < count; ++j) {
        if (j + kAhead < count) prefetch_rows<0>(table, b.idx[j + kAhead], F);
        for (int c = 0; c < 8; ++c) {
          const float* row = table + b.idx[j][c] * F;
          for (int64_t f = 0; f < F; ++f) g[f][c] = row[f];
        }
        const int64_t i = begin + j;
        float* o = out + i * width + l * F;
        if (dgrad == nullptr) {
          for (int64_t f = 0; f < F; ++f) o[f] = interpolate(g[f], b.s[j], nullptr, nullptr);
          continue;
        }
        const int64_t at = (l * n + i) * F * 3;
        for (int64_t f = 0; f < F; ++f) o[f] = interpolate(g[f], b.s[j], dgrad + at + 3 * f, dmixed + at + 3 * f);
      }
    }
  }
}

std::vector<at::Tensor> forward(const Grid& grid, const at::Tensor& x, const at::Tensor& table, bool want_derivatives) {
  check_points(x);
  check_float(table, "table");
  TORCH_CHECK(table.numel() == grid.n_params, "table must hold ", grid.n_params, " values");
  const int64_t n = x.size(0), L = grid.n_levels(), F = grid.n_features;
  at::Tensor out = fresh({n, L * F}, x.options()), dgrad, dmixed;
  if (want_derivatives) {
    dgrad = fresh({L, n, F, 3}, x.options());
    dmixed = fresh({L, n, F, 3}, x.options());
  }
  float* pg = want_derivatives ? dgrad.data_ptr<float>() : nullptr;
  float* pm = want_derivatives ? dmixed.data_ptr<float>() : nullptr;
  const float *px = x.data_ptr<float>(), *pt = table.data_ptr<float>();
  float* po = out.data_ptr<float>();
  switch (F) {
    case 1: forward_impl<1>(grid, px, pt, n, po, pg, pm); break;
    case 2: forward_impl<2>(grid, px, pt, n, po, pg, pm); break;
    case 4: forward_impl<4>(grid, px, pt, n, po, pg, pm); break;
    case 8: forward_impl<8>(grid, px, pt, n, po, pg, pm); break;
    default: forward_impl<0>(grid, px, pt, n, po, pg, pm);
  }
  if (!want_derivatives) return {out};
  return {out, dgrad, dmixed};
}

// ---------------------------------------------------------------------------------------
// grad_x: d loss / dx = sum over levels and features of go * d out / ds * ds / dx.

at::Tensor grad_x(const Grid& grid, const at::Tensor& go, const at::Tensor& x, const at::Tensor& dgrad) {
  check_points(x);
  const int64_t n = x.size(0), L = grid.n_levels(), F = grid.n_features;
  check_shape(go, n, L * F, "output gradient");
  check_shape(dgrad, L, n * F * 3, "derivatives");
  at::Tensor gx = fresh({n, 3}, x.options());
  const float *px = x.data_ptr<float>(), *pgo = go.data_ptr<float>(), *pd = dgrad.data_ptr<float>();
  float* pgx = gx.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(n))
  for (int64_t batch = 0; batch < n_batches(n); ++batch) {
    Batch b;
    const int64_t begin = batch * kBatch, count = std::min(kBatch, n - begin);
    float* acc = pgx + 3 * begin;
    std::fill(acc, acc + 3 * count, 0.0f);
    for (int64_t l = 0; l < L; ++l) {
      locate_derivatives(grid, grid.levels[l], px, begin, count, b);
      for (int64_t j = 0; j < count; ++j) {
        const float* d = pd + (l * n + begin + j) * F * 3;
        const float* g = pgo + (begin + j) * L * F + l * F;
        float sum[3] = {0.0f, 0.0f, 0.0f};
        for (int64_t f = 0; f < F; ++f)
          for (int k = 0; k < 3; ++k) sum[k] += d[3 * f + k] * g[f];
        for (int k = 0; k < 3; ++k) acc[3 * j + k] += sum[k] * b.ds[j][k];
      }
    }
  }
  return gx;
}

// ---------------------------------------------------------------------------------------
// grad_x_back: given ggx = d loss / d (grad_x's output), the gradients w.r.t. go and x:
//   g_go[l f] = sum_d ggx_d ds_d d out_lf / ds_d
//   g_x[e]    = ds_e sum_{d != e} H_de v_d + ggx_e d2s_e sum_f go_f d out_f / ds_e,  v = ggx ds,
//   with H = sum_f go_f d2 out_f / ds ds (mixed terms only: a trilinear function's pure
//   second derivatives are 0).

std::vector<at::Tensor> grad_x_back(const Grid& grid, const at::Tensor& ggx, const at::Tensor& go,
                                    const at::Tensor& x, const at::Tensor& dgrad, const at::Tensor& dmixed,
                                    bool need_go, bool need_x) {
  check_points(x);
  const int64_t n = x.size(0), L = grid.n_levels(), F = grid.n_features;
  check_shape(ggx, n, 3, "gradient of grad_x");
  check_shape(go, n, L * F, "output gradient");
  check_shape(dgrad, L, n * F * 3, "derivatives");
  check_shape(dmixed, L, n * F * 3, "mixed derivatives");
  at::Tensor g_go = need_go ? fresh({n, L * F}, x.options()) : at::Tensor();
  at::Tensor g_x = need_x ? fresh({n, 3}, x.options()) : at::Tensor();
  const float *px = x.data_ptr<float>(), *pggx = ggx.data_ptr<float>(), *pgo = go.data_ptr<float>();
  const float *pd = dgrad.data_ptr<float>(), *pm = dmixed.data_ptr<float>();
  float* pggo = need_go ? g_go.data_ptr<float>() : nullptr;
  float* pgx = need_x ? g_x.data_ptr<float>() : nullptr;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(n))
  for (int64_t batch = 0; batch < n_batches(n); ++batch) {
    Batch b;
    const int64_t begin = batch * kBatch, count = std::min(kBatch, n - begin);
    if (need_x) std::fill(pgx + 3 * begin, pgx + 3 * (begin + count), 0.0f);
    for (int64_t l = 0; l < L; ++l) {
      locate_derivatives(grid, grid.levels[l], px, begin, count, b);
      for (int64_t j = 0; j < count; ++j) {
        const int64_t i = begin + j;
        const float* gg = pggx + 3 * i;
        const float* ds = b.ds[j];
        const float v[3] = {gg[0] * ds[0], gg[1] * ds[1], gg[2] * ds[2]};
        const float* d = pd + (l * n + i) * F * 3;
        if (need_go) {
          float* o = pggo + i * L * F + l * F;
          for (int64_t f = 0; f < F; ++f) o[f] = d[3 * f] * v[0] + d[3 * f + 1] * v[1] + d[3 * f + 2] * v[2];
        }
        if (!need_x) continue;
        const float* m = pm + (l * n + i) * F * 3;
        const float* g = pgo + i * L * F + l * F;
        float h[3] = {0.0f, 0.0f, 0.0f}, first[3] = {0.0f, 0.0f, 0.0f};
        for (int64_t f = 0; f < F; ++f) {
          for (int k = 0; k < 3; ++k) {
            h[k] += m[3 * f + k] * g[f];
            first[k] += d[3 * f + k] * g[f];
          }
        }
        const float hv[3] = {h[0] * v[1] + h[1] * v[2], h[0] * v[0] + h[2] * v[2], h[1] * v[0] + h[2] * v[1]};
        for (int k = 0; k < 3; ++k) pgx[3 * i + k] += hv[k] * ds[k] + first[k] * gg[k] * b.d2s[j][k];
      }
    }
  }
  return {g_go, g_x};
}

// ---------------------------------------------------------------------------------------
// scatter: table[idx_c] += go_w w_c + sum_t go_t (dw_c/ds . ggx_t ds), over points and corners.

struct Terms {
  const float* go_w;                      // (L F, N): weighted by the trilinear weights, or null
  std::vector<const float*> ggx, go_dir;  // (N, 3) directions and their (L F, N) output gradients
};

// Per-corner, per-feature sums of point j of batch b at level l.
template <int kF>
inline void corner_sums(const Grid& grid, const Batch& b, int64_t j, int64_t l, int64_t n, const Terms& t,
                        float (*src)[8]) {
  const int64_t F = kF > 0 ? kF : grid.n_features, i = b.begin + j;
  float w[8];
  for (int64_t f = 0; f < F; ++f)
    for (int c = 0; c < 8; ++c) src[f][c] = 0.0f;
  if (t.go_w != nullptr) {
    weights(b.s[j], w);
    for (int64_t f = 0; f < F; ++f) {
      const float g = t.go_w[(l * F + f) * n + i];
      for (int c = 0; c < 8; ++c) src[f][c] += w[c] * g;
    }
  }
  for (size_t k = 0; k < t.ggx.size(); ++k) {
    const float* gg = t.ggx[k] + 3 * i;
    const float v[3] = {gg[0] * b.ds[j][0], gg[1] * b.ds[j][1], gg[2] * b.ds[j][2]};
    directional_weights(b.s[j], v, w);
    for (int64_t f = 0; f < F; ++f) {
      const float g = t.go_dir[k][(l * F + f) * n + i];
      for (int c = 0; c < 8; ++c) src[f][c] += w[c] * g;
    }
  }
}

// One work item: rows [lo, hi) of level l, zeroed then summed by one thread.
struct RowRange {
  int64_t level, lo, hi;
};

template <int kF>
void scatter_owned(const Grid& grid, const float* x, int64_t n, const Terms& t, const std::vector<RowRange>& items,
                   float* out) {
  const int64_t F = kF > 0 ? kF : grid.n_features;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::min<int64_t>(items.size(), threads_for(n)))
  for (size_t item = 0; item < items.size(); ++item) {
    const RowRange r = items[item];
    const Level& lv = grid.levels[r.level];
    const bool whole = r.lo == lv.offset && r.hi == lv.offset + lv.size;
    std::fill(out + r.lo * F, out + r.hi * F, 0.0f);
    Batch b;
    float src[kMaxFeatures][8];
    for (int64_t begin = 0; begin < n; begin += kBatch) {
      locate(grid, lv, x, begin, std::min(kBatch, n - begin), true, b);
      for (int64_t j = 0; j < std::min(kAhead, b.count); ++j) prefetch_rows<1>(out, b.idx[j], F);
      for (int64_t j = 0; j < b.count; ++j) {
        if (j + kAhead < b.count) prefetch_rows<1>(out, b.idx[j + kAhead], F);
        corner_sums<kF>(grid, b, j, r.level, n, t, src);
        for (int c = 0; c < 8; ++c) {
          const int64_t row = b.idx[j][c];
          if (!whole && (row < r.lo || row >= r.hi)) continue;
          float* dst = out + row * F;
          for (int64_t f = 0; f < F; ++f) dst[f] += src[f][c];
        }
      }
    }
  }
}

template <int kF>
void scatter_atomic(const Grid& grid, const float* x, int64_t n, const Terms& t, float* out) {
  const int64_t F = kF > 0 ? kF : grid.n_features, L = grid.n_levels();
  std::fill(out, out + grid.n_params, 0.0f);
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(n))
  for (int64_t batch = 0; batch < n_batches(n); ++batch) {
    Batch b;
    float src[kMaxFeatures][8];
    const int64_t begin = batch * kBatch;
    for (int64_t l = 0; l < L; ++l) {
      locate(grid, grid.levels[l], x, begin, std::min(kBatch, n - begin), true, b);
      for (int64_t j = 0; j < b.count; ++j) {
        if (j + kAhead < b.count) prefetch_rows<1>(out, b.idx[j + kAhead], F);
        corner_sums<kF>(grid, b, j, l, n, t, src);
        for (int c = 0; c < 8; ++c) {
          float* dst = out + b.idx[j][c] * F;
          for (int64_t f = 0; f < F; ++f) {
#pragma omp atomic
            dst[f] += src[f][c];
          }
        }
      }
    }
  }
}

// Work items: whole levels, finest first, when there are at least as many levels as threads;
// else every level cut into one row range per thread.
std::vector<RowRange> row_ranges(const Grid& grid, int threads) {
  std::vector<RowRange> items;
  const int64_t parts = grid.n_levels() >= threads ? 1 : threads;
  for (int64_t l = grid.n_levels() - 1; l >= 0; --l) {
    const Level& lv = grid.levels[l];
    for (int64_t p = 0; p < parts; ++p)
      items.push_back({l, lv.offset + lv.size * p / parts, lv.offset + lv.size * (p + 1) / parts});
  }
  return items;
}

// mode: "owned" (rows owned by one thread each; the default) or "atomic" (points split
// across threads, atomic adds).
at::Tensor scatter(const Grid& grid, const at::Tensor& x, const std::optional<at::Tensor>& go_w,
                   const std::vector<at::Tensor>& ggx, const std::vector<at::Tensor>& go_dir,
                   const std::string& mode) {
  check_points(x);
  const int64_t n = x.size(0), L = grid.n_levels(), F = grid.n_features;
  TORCH_CHECK(ggx.size() == go_dir.size(), "one output gradient per direction");
  TORCH_CHECK(mode == "owned" || mode == "atomic", "scatter mode must be owned or atomic");
  std::vector<at::Tensor> keep;  // (L F, N) copies: each level reads its features contiguously
  Terms terms{nullptr, {}, {}};
  if (go_w.has_value()) {
    check_shape(*go_w, n, L * F, "output gradient");
    keep.push_back(fresh({L * F, n}, x.options()).copy_(go_w->t()));
    terms.go_w = keep.back().data_ptr<float>();
  }
  for (size_t k = 0; k < ggx.size(); ++k) {
    check_shape(ggx[k], n, 3, "direction");
    check_shape(go_dir[k], n, L * F, "output gradient");
    keep.push_back(fresh({L * F, n}, x.options()).copy_(go_dir[k].t()));
    terms.ggx.push_back(ggx[k].data_ptr<float>());
    terms.go_dir.push_back(keep.back().data_ptr<float>());
  }
  at::Tensor out = fresh({grid.n_params}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const std::vector<RowRange> items = row_ranges(grid, threads_for(n));
  const bool atomic = mode == "atomic";
#define RECON_SCATTER(K) \
  atomic ? scatter_atomic<K>(grid, px, n, terms, po) : scatter_owned<K>(grid, px, n, terms, items, po)
  switch (F) {
    case 1: RECON_SCATTER(1); break;
    case 2: RECON_SCATTER(2); break;
    case 4: RECON_SCATTER(4); break;
    case 8: RECON_SCATTER(8); break;
    default: RECON_SCATTER(0);
  }
#undef RECON_SCATTER
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU multi-resolution grid encoding (recon)";
  pybind11::class_<Grid>(m, "Grid")
      .def(pybind11::init<const std::vector<double>&, const std::vector<int64_t>&, const std::vector<int64_t>&,
                          const std::vector<int64_t>&, const std::vector<bool>&, int64_t, bool>())
      .def_readonly("n_params", &Grid::n_params);
  m.def("forward", &forward, "features [, d/ds, mixed d2/ds2]");
  m.def("grad_x", &grad_x, "gradient w.r.t. the points");
  m.def("grad_x_back", &grad_x_back, "backward of grad_x: to the output gradient and the points");
  m.def("scatter", &scatter, "gradient w.r.t. the table");
}
