// Depthwise NHWC kernels on channel-block strips (included by conv_kernels.cpp; compiled once per
// ISA level).
//
// Work is split into blocks of VL channels. For a channel block, each input row is copied once
// into a zero-padded "strip" (one VL-vector per padded column, lanes past C zero) held in a small
// ring of (kh-1)*dh+1 rows, so every tap of every output pixel is one aligned-size vector load with
// no bounds checks and the rows a block reads stay in L1. Output pixels go in blocks of up to 8
// accumulators; a tap's weight vector is loaded once per block.
//   forward (and the stride-1 input gradient, as the adjoint forward):
//       y[n, oh, ow, c] = b[c] + sum_{i,j} w[c, i, j] * strip_i[ow*sw + j*dw][c]
//   input gradient at stride > 1, per dx row and column phase, over the taps that land there:
//       dx[n, ih, iw, c] = sum w[c, i, j] * dy[n, oh, ow, c],  ih = oh*sh + i*dh - pt, iw likewise
//   weight gradient: per fixed piece of output rows, dw[c, i, j] += dy[.., c] * strip_i[..][c]
#pragma once

#include <algorithm>
#include <cstring>

#include "dw_common.h"
#include "scratch.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

struct StripTap {
  const void* row;  // strip row
  int64_t col_off;  // padded column of output index 0
  int64_t tap;      // weight index i*kw + j
};

// Copies lanes [c0, c0+nc) of source row `src` (Wsrc pixels, pitch C) into strip columns
// [0, width) with column c <-> pixel c - left; zeros elsewhere.
template <typename T>
void fill_strip(const T* src, int64_t Wsrc, int64_t C, int64_t c0, int64_t nc, int64_t left, int64_t width,
                T* dst) {
  constexpr int VL = Vec<T>::n;
  const int64_t lo = std::min(width, std::max<int64_t>(0, left));
  const int64_t hi = std::max(lo, std::min(width, left + Wsrc));
  std::fill(dst, dst + lo * VL, T(0));
  if (nc == VL) {
    for (int64_t c = lo; c < hi; ++c) vstore(dst + c * VL, vload(src + (c - left) * C + c0));
  } else {
    for (int64_t c = lo; c < hi; ++c) {
      T* d = dst + c * VL;
      const T* s = src + (c - left) * C + c0;
      for (int64_t l = 0; l < VL; ++l) d[l] = l < nc ? s[l] : T(0);
    }
  }
  std::fill(dst + hi * VL, dst + width * VL, T(0));
}

// NCHW source: lanes l < nc of column c are img[(c0 + l)*HW + r*Wsrc + c - left], moved with
// VL x VL register transposes (rows are read VL pixels at a time; never past `end`).
template <typename T>
void fill_strip_nchw(const T* img, int64_t HW, int64_t r, int64_t Wsrc, int64_t c0, int64_t nc, int64_t left,
                     int64_t width, const T* end, T* dst) {
  constexpr int VL = Vec<T>::n;
  const int64_t lo = std::min(width, std::max<int64_t>(0, left));
  const int64_t hi = std::max(lo, std::min(width, left + Wsrc));
  std::fill(dst, dst + lo * VL, T(0));
  alignas(64) T blk[VL * VL];
  alignas(64) T tr[VL * VL];
  for (int64_t c = lo; c < hi; c += VL) {
    const int64_t iw = c - left, cnt = std::min<int64_t>(VL, hi - c);
    const T* base = img + c0 * HW + r * Wsrc + iw;
    if (nc == VL && base + (VL - 1) * HW + VL <= end) {
      transpose_block(base, HW, tr, VL);
    } else {
      for (int64_t l = 0; l < VL; ++l)
        for (int64_t q = 0; q < VL; ++q) blk[l * VL + q] = (l < nc && q < cnt) ? base[l * HW + q] : T(0);
      transpose_block(blk, VL, tr, VL);
    }
    std::memcpy(dst + c * VL, tr, cnt * VL * sizeof(T));
  }
  std::fill(dst + hi * VL, dst + width * VL, T(0));
}

// Writes a row of Wo pixel-vectors (rowbuf, pitch VL) to NCHW rows y_l = out + l*P, l < nc.
template <typename T>
void store_row_nchw(const T* rowbuf, int64_t Wo, T* out, int64_t P, int64_t nc) {
  constexpr int VL = Vec<T>::n;
  alignas(64) T tr[VL * VL];
  for (int64_t ow = 0; ow < Wo; ow += VL) {
    const int64_t cnt = std::min<int64_t>(VL, Wo - ow);
    transpose_block(rowbuf + ow * VL, VL, tr, VL);  // (reads past Wo stay inside rowbuf's slack)
    for (int64_t l = 0; l < nc; ++l) vstore_n(out + l * P + ow, vload(tr + l * VL), cnt);
  }
}

struct StripRing {
  void* buf;
  int64_t slots, pitch;  // pitch in elements
  int64_t tag[64], tag_n[64];
  void reset() {
    for (int64_t s = 0; s < slots; ++s) tag[s] = tag_n[s] = -1;
  }
  template <typename T>
  const T* row(const T* img, int64_t n, int64_t r, int64_t nrows, int64_t Wsrc, int64_t C, int64_t c0, int64_t nc,
               int64_t left, int64_t width) {
    if (r < 0 || r >= nrows) return nullptr;
    const int64_t s = r % slots;
    T* dst = static_cast<T*>(buf) + s * pitch;
    if (tag[s] != r || tag_n[s] != n) {
      if (nchw_end)
        fill_strip_nchw(img, nchw_hw, r, Wsrc, c0, nc, left, width, static_cast<const T*>(nchw_end), dst);
      else
        fill_strip(img + r * Wsrc * C, Wsrc, C, c0, nc, left, width, dst);
      tag[s] = r;
      tag_n[s] = n;
    }
    return dst;
  }
  const void* nchw_end = nullptr;  // set for an NCHW source: the end of its array
  int64_t nchw_hw = 0;             // and its plane size
};

template <typename T, int NP>
CNNKIT_HD void strip_block(T* out, int64_t ostride, int64_t v, int64_t step, const StripTap* taps, int nt,
                           const T* wb, vec_t<T> bias, int64_t nc) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  V acc[NP];
  for (int p = 0; p < NP; ++p) acc[p] = bias;
  for (int t = 0; t < nt; ++t) {
    const T* row = static_cast<const T*>(taps[t].row) + (v * step + taps[t].col_off) * VL;
    const V wv = vload(wb + taps[t].tap * VL);
    for (int p = 0; p < NP; ++p) acc[p] += vload(row + p * step * VL) * wv;
  }
  if (nc == VL) {
    for (int p = 0; p < NP; ++p) vstore(out + (v + p) * ostride, acc[p]);
  } else {
    for (int p = 0; p < NP; ++p) {
      T tmp[VL];
      vstore(tmp, acc[p]);
      std::memcpy(out + (v + p) * ostride, tmp, nc * sizeof(T));
    }
  }
}

// out[v*ostride + lanes] for v in [0, nv).
template <typename T>
void strip_row(T* out, int64_t ostride, int64_t nv, int64_t step, const StripTap* taps, int nt, const T* wb,
               vec_t<T> bias, int64_t nc) {
  constexpr int PB = 8;
  int64_t v = 0;
  for (; v + PB <= nv; v += PB) strip_block<T, PB>(out, ostride, v, step, taps, nt, wb, bias, nc);
  switch (nv - v) {
    case 7: strip_block<T, 7>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 6: strip_block<T, 6>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 5: strip_block<T, 5>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 4: strip_block<T, 4>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 3: strip_block<T, 3>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 2: strip_block<T, 2>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    case 1: strip_block<T, 1>(out, ostride, v, step, taps, nt, wb, bias, nc); break;
    default: break;
  }
}

// Weights per channel block: wb[cb][tap][VL] (zero lanes past C), then bias bb[cb][VL].
template <typename T>
T* strip_weights(const T* w, const T* b, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t k2 = g.kh * g.kw, ncb = ceil_div(g.C, VL);
  T* wb = scratch<T>(kWeightSlot, ncb * (k2 + 1) * VL);
  std::fill(wb, wb + ncb * (k2 + 1) * VL, T(0));
  T* bb = wb + ncb * k2 * VL;
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t t = 0; t < k2; ++t) wb[((c / VL) * k2 + t) * VL + c % VL] = w[c * k2 + t];
    if (b) bb[c] = b[c];
  }
  return wb;
}

template <typename T>
void dw_strip_forward(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t C = g.C, kh = g.kh, kw = g.kw, k2 = kh * kw, ncb = ceil_div(C, VL);
  const bool nchw = !g.nhwc;
  const T* wb = strip_weights(w, b, g);
  const T* bb = wb + ncb * k2 * VL;
  const int64_t width = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t slots = (kh - 1) * g.dh + 1;
  const int64_t per_img = g.N * ncb >= 16 ? 1 : std::min<int64_t>(g.Ho, ceil_div(16, g.N * ncb));
  const int64_t band = ceil_div(g.Ho, per_img), nb = ceil_div(g.Ho, band);
  const int64_t units = g.N * nb * ncb, HW = g.H * g.W, P = g.Ho * g.Wo;
#pragma omp parallel num_threads(num_threads())
  {
    StripRing ring;
    ring.slots = slots;
    ring.pitch = width * VL;
    ring.buf = scratch<T>(kPlaneSlot, slots * width * VL);
    if (nchw) {
      ring.nchw_end = x + g.N * C * HW;
      ring.nchw_hw = HW;
    }
    StripTap* taps = reinterpret_cast<StripTap*>(scratch<char>(kColSlot, sizeof(StripTap) * k2));
    T* rowbuf = nchw ? scratch<T>(kRowSlot, (g.Wo + VL) * VL) : nullptr;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t cb = u % ncb, bi = (u / ncb) % nb, n = u / ncb / nb;
      const int64_t c0 = cb * VL, nc = std::min<int64_t>(VL, C - c0);
      const T* xn = x + n * HW * C;
      const vec_t<T> bias = vload(bb + cb * VL);
      ring.reset();
      for (int64_t oh = bi * band; oh < std::min(g.Ho, (bi + 1) * band); ++oh) {
        int nt = 0;
        for (int64_t i = 0; i < kh; ++i) {
          const T* row = ring.row(xn, n, oh * g.sh + i * g.dh - g.pt, g.H, g.W, C, c0, nc, g.pl, width);
          if (!row) continue;
          for (int64_t j = 0; j < kw; ++j) taps[nt++] = StripTap{row, j * g.dw, i * kw + j};
        }
        if (nchw) {
          strip_row(rowbuf, VL, g.Wo, g.sw, taps, nt, wb + cb * k2 * VL, bias, VL);
          store_row_nchw(rowbuf, g.Wo, y + (n * C + c0) * P + oh * g.Wo, P, nc);
        } else {
          strip_row(y + ((n * g.Ho + oh) * g.Wo) * C + c0, C, g.Wo, g.sw, taps, nt, wb + cb * k2 * VL, bias, nc);
        }
      }
    }
  }
}

// Input gradient (m = 1) at any stride; used at stride > 1.
template <typename T>
void dw_strip_backward_input(const T* dy, const T* w, T* dx, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  const int64_t C = g.C, kh = g.kh, kw = g.kw, k2 = kh * kw, ncb = ceil_div(C, VL), sw = g.sw;
  const bool nchw = !g.nhwc;
  const T* wb = strip_weights<T>(w, nullptr, g);
  const int64_t PADL = ceil_div((kw - 1) * g.dw, sw) + 1;
  const int64_t width = PADL + std::max(g.Wo, ceil_div(g.W + g.pl, sw) + 1) + 1;
  const int64_t slots = (kh - 1) * g.dh + 1;
  const int64_t per_img = g.N * ncb >= 16 ? 1 : std::min<int64_t>(g.H, ceil_div(16, g.N * ncb));
  const int64_t band = ceil_div(g.H, per_img), nb = ceil_div(g.H, band);
  const int64_t units = g.N * nb * ncb, HW = g.H * g.W, P = g.Ho * g.Wo;
#pragma omp parallel num_threads(num_threads())
  {
    StripRing ring;
    ring.slots = slots;
    ring.pitch = width * VL;
    ring.buf = scratch<T>(kPlaneSlot, slots * width * VL);
    if (nchw) {
      ring.nchw_end = dy + g.N * C * P;
      ring.nchw_hw = P;
    }
    StripTap* taps = reinterpret_cast<StripTap*>(scratch<char>(kColSlot, sizeof(StripTap) * k2));
    T* rowbuf = nchw ? scratch<T>(kRowSlot, (g.W + VL) * VL) : nullptr;
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t cb = u % ncb, bi = (u / ncb) % nb, n = u / ncb / nb;
      const int64_t c0 = cb * VL, nc = std::min<int64_t>(VL, C - c0);
      const T* dyn = dy + n * P * C;
      ring.reset();
      for (int64_t ih = bi * band; ih < std::min(g.H, (bi + 1) * band); ++ih) {
        T* dxr = nchw ? rowbuf : dx + ((n * g.H + ih) * g.W) * C + c0;
        const int64_t px = nchw ? VL : C;  // elements between dx pixels
        for (int64_t ph = 0; ph < sw; ++ph) {
          const int64_t iw0 = ((ph - g.pl) % sw + sw) % sw;
          if (iw0 >= g.W) continue;
          const int64_t nu = ceil_div(g.W - iw0, sw);
          int nt = 0;
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t rr = ih + g.pt - i * g.dh;
            if (rr < 0 || rr % g.sh) continue;
            const T* row = ring.row(dyn, n, rr / g.sh, g.Ho, g.Wo, C, c0, nc, PADL, width);
            if (!row) continue;
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t cc = iw0 + g.pl - j * g.dw;
              const int64_t r = ((cc % sw) + sw) % sw;
              if (r) continue;
              taps[nt++] = StripTap{row, (cc - r) / sw + PADL, i * kw + j};
            }
          }
          strip_row(dxr + iw0 * px, sw * px, nu, 1, taps, nt, wb + cb * k2 * VL, vec_t<T>{}, nchw ? VL : nc);
        }
        if (nchw) store_row_nchw(rowbuf, g.W, dx + (n * C + c0) * HW + ih * g.W, HW, nc);
      }
    }
  }
}

// Weight-gradient partials (m = 1): piece p (a fixed range of the N*Ho output rows) writes
// pw[p][tap][C] and pb[p][C].
template <typename T>
void dw_strip_weight_partials(const T* dy, const T* x, T* pw, T* pb, int64_t pieces, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t C = g.C, kh = g.kh, kw = g.kw, k2 = kh * kw, ncb = ceil_div(C, VL);
  const int64_t width = (g.Wo - 1) * g.sw + (kw - 1) * g.dw + 1;
  const int64_t slots = (kh - 1) * g.dh + 1;
  const int64_t rows = g.N * g.Ho, per = ceil_div(rows, pieces);
  const int64_t units = pieces * ncb;
#pragma omp parallel num_threads(num_threads())
  {
    StripRing ring;
    ring.slots = slots;
    ring.pitch = width * VL;
    ring.buf = scratch<T>(kPlaneSlot, (slots * width + 4 * g.dw + 1) * VL);
    const bool nchw = !g.nhwc;
    const int64_t HW = g.H * g.W, P = g.Ho * g.Wo;
    if (nchw) {
      ring.nchw_end = x + g.N * C * HW;
      ring.nchw_hw = HW;
    }
    T* dyrow = nchw ? scratch<T>(kRowSlot, (g.Wo + VL) * VL) : nullptr;
    V* acc = reinterpret_cast<V*>(scratch<T>(kAccSlot, (k2 + 1) * VL));
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t cb = u % ncb, p = u / ncb;  // (the ring has 4*dw columns of slack: see below)
      const int64_t c0 = cb * VL, nc = std::min<int64_t>(VL, C - c0);
      for (int64_t t = 0; t <= k2; ++t) acc[t] = V{};
      ring.reset();
      for (int64_t r = p * per; r < std::min(rows, (p + 1) * per); ++r) {
        const int64_t n = r / g.Ho, oh = r % g.Ho;
        const T* xn = x + n * HW * C;
        // This block's dy row: NHWC in place (pitch C), NCHW transposed into dyrow (pitch VL).
        const T* dyr = dy + r * g.Wo * C + c0;
        int64_t dpx = C, dnc = nc;
        if (nchw) {
          fill_strip_nchw(dy + n * C * P, P, oh, g.Wo, c0, nc, 0, g.Wo, dy + g.N * C * P, dyrow);
          dyr = dyrow;
          dpx = VL;
          dnc = VL;
        }
        V sb = acc[k2];
        for (int64_t ow = 0; ow < g.Wo; ++ow) {
          if (dnc == VL) {
            sb += vload(dyr + ow * dpx);
          } else {
            for (int64_t l = 0; l < dnc; ++l) sb[l] += dyr[ow * dpx + l];
          }
        }
        acc[k2] = sb;
        for (int64_t i = 0; i < kh; ++i) {
          const T* row = ring.row(xn, n, oh * g.sh + i * g.dh - g.pt, g.H, g.W, C, c0, nc, g.pl, width);
          if (!row) continue;
          for (int64_t j0 = 0; j0 < kw; j0 += 4) {
            const int64_t nj = std::min<int64_t>(4, kw - j0);
            V a0 = acc[i * kw + j0], a1 = nj > 1 ? acc[i * kw + j0 + 1] : V{};
            V a2 = nj > 2 ? acc[i * kw + j0 + 2] : V{}, a3 = nj > 3 ? acc[i * kw + j0 + 3] : V{};
            const T* rb = row + j0 * g.dw * VL;
            const int64_t st = g.sw * VL, dj = g.dw * VL;
            for (int64_t ow = 0; ow < g.Wo; ++ow) {
              V gv;
              if (dnc == VL) {
                gv = vload(dyr + ow * dpx);
              } else {
                gv = V{};
                for (int64_t l = 0; l < dnc; ++l) gv[l] = dyr[ow * dpx + l];
              }
              const T* q = rb + ow * st;
              a0 += gv * vload(q);
              a1 += gv * vload(q + dj);  // past the last tap (nj < 4): read, never stored
              a2 += gv * vload(q + 2 * dj);
              a3 += gv * vload(q + 3 * dj);
            }
            acc[i * kw + j0] = a0;
            if (nj > 1) acc[i * kw + j0 + 1] = a1;
            if (nj > 2) acc[i * kw + j0 + 2] = a2;
            if (nj > 3) acc[i * kw + j0 + 3] = a3;
          }
        }
      }
      for (int64_t t = 0; t < k2; ++t) {
        T tmp[VL];
        vstore(tmp, acc[t]);
        std::memcpy(pw + (p * k2 + t) * C + c0, tmp, nc * sizeof(T));
      }
      T tmp[VL];
      vstore(tmp, acc[k2]);
      std::memcpy(pb + p * C + c0, tmp, nc * sizeof(T));
    }
  }
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
