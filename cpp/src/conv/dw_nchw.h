// Depthwise conv kernels, NCHW (included by conv_kernels.cpp; compiled once per ISA level).
//
// One (image, input channel) plane at a time, copied into a zero-padded plane whose columns are
// split into `sw` phases (column c of the padded plane is phase c % sw, position c / sw), so every
// tap of every output row reads a contiguous run: x_pad[oh*sh + i*dh][ow*sw + j*dw] is
// phase (j*dw) % sw at position ow + (j*dw) / sw. Vectors run along output columns; at stride 1 they
// run along the flattened padded plane (row pitch Wp) so that narrow planes (14x14, 7x7) still fill
// whole vectors.
//   forward        y[k]  = b[k] + sum_ij w[k,i,j] * x_pad[c][...]             k = c*m + q
//   weight grad    dw[k,i,j] = sum_n sum_{oh,ow} dy[n,k,oh,ow] * x_pad[n,c][...]  (per-plane partials,
//                  summed over n in order)
//   input grad     (stride > 1; stride 1 is the adjoint forward) gathered per column phase:
//                  dx[ih][iw] = sum over taps (i, j) with ih+pt-i*dh = oh*sh and iw+pl-j*dw = ow*sw.
#pragma once

#include <algorithm>
#include <cstring>

#include "dw_common.h"
#include "scratch.h"

namespace cnnkit::conv {
inline namespace CNNKIT_KERNEL_NS {

struct PlaneGeo {
  int64_t Hp, Wp, L, sw;  // padded rows, padded columns, phase pitch, phases
  int64_t size() const { return Hp * sw * L + 2 * 64; }  // the plane and its zeroed slack
  int64_t alloc() const { return size() + sw * L; }      // plus build_plane's row buffer
};

inline PlaneGeo plane_geo(const Geom& g, int vl) {
  PlaneGeo p;
  p.Hp = (g.Ho - 1) * g.sh + (g.kh - 1) * g.dh + 1;
  p.Wp = (g.Wo - 1) * g.sw + (g.kw - 1) * g.dw + 1;
  p.sw = g.sw;
  p.L = g.sw == 1 ? p.Wp : ceil_div(p.Wp, g.sw) + vl;
  return p;
}

// Zero-padded, phase-split copy of one input plane (rows of the padded plane r <-> ih = r - pt).
// Short rows make library calls cost more than the copying, so the loops are inline.
template <typename T>
void build_plane(const T* src, const Geom& g, const PlaneGeo& p, T* buf) {
  const int64_t lo = std::min(p.Wp, std::max<int64_t>(0, g.pl));
  const int64_t hi = std::max(lo, std::min(p.Wp, g.pl + g.W));
  T* tmp = buf + p.size();  // one padded row, for the phase split (see PlaneGeo::alloc)
  for (int64_t r = 0; r < p.Hp; ++r) {
    const int64_t ih = r - g.pt;
    T* row = buf + r * p.sw * p.L;
    if (ih < 0 || ih >= g.H) {
      for (int64_t t = 0; t < p.sw * p.L; ++t) row[t] = T(0);
      continue;
    }
    const T* s = src + ih * g.W - g.pl;  // s[c] is padded column c
    T* d = p.sw == 1 ? row : tmp;
    for (int64_t c = 0; c < lo; ++c) d[c] = T(0);
    for (int64_t c = lo; c < hi; ++c) d[c] = s[c];
    const int64_t end = p.sw == 1 ? p.L : p.sw * p.L;
    for (int64_t c = hi; c < end; ++c) d[c] = T(0);
    if (p.sw == 2) {
      T* e = row;
      T* o = row + p.L;
      for (int64_t t = 0; t < p.L; ++t) {
        e[t] = tmp[2 * t];
        o[t] = tmp[2 * t + 1];
      }
    } else if (p.sw > 2) {
      for (int64_t ph = 0; ph < p.sw; ++ph)
        for (int64_t t = 0; t < p.L; ++t) row[ph * p.L + t] = tmp[t * p.sw + ph];
    }
  }
  for (int64_t t = p.Hp * p.sw * p.L; t < p.size(); ++t) buf[t] = T(0);
}

template <typename T, int KH, int KW>
void dw_forward_nchw(const T* x, const T* w, const T* b, T* y, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, m = g.K / g.C;
  const int64_t P = g.Ho * g.Wo, HW = g.H * g.W;
  const PlaneGeo pg = plane_geo(g, VL);
  const bool flat = g.sh == 1 && g.sw == 1;
  const int64_t total = (g.Ho - 1) * pg.L + g.Wo, nv = ceil_div(total, VL);
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * g.C; ++u) {
    const int64_t n = u / g.C, c = u % g.C;
    T* buf = scratch<T>(kPlaneSlot, pg.alloc());
    build_plane(x + u * HW, g, pg, buf);
    for (int64_t q = 0; q < m; ++q) {
      const int64_t k = c * m + q;
      const T* wk = w + k * k2;
      T* yp = y + (n * g.K + k) * P;
      const V bias = vsplat<T>(b ? b[k] : T(0));
      V wv[(KH ? KH : 1) * (KW ? KW : 1) > 1 ? KH * KW : 64];
      const int64_t nw = std::min<int64_t>(k2, sizeof(wv) / sizeof(V));
      for (int64_t t = 0; t < nw; ++t) wv[t] = vsplat<T>(wk[t]);
      auto wtap = [&](int64_t t) { return t < nw ? wv[t] : vsplat<T>(wk[t]); };
      if (flat) {
        T* yb = scratch<T>(kColSlot, nv * VL);
        const int64_t rs = g.dh * pg.L;
        int64_t t = 0;
        for (; t + 2 <= nv; t += 2) {
          V a0 = bias, a1 = bias;
          const T* base = buf + t * VL;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) {
              const T* p = base + i * rs + j * g.dw;
              const V wt = wtap(i * kw + j);
              a0 += wt * vload(p);
              a1 += wt * vload(p + VL);
            }
          vstore(yb + t * VL, a0);
          vstore(yb + t * VL + VL, a1);
        }
        for (; t < nv; ++t) {
          V a0 = bias;
          const T* base = buf + t * VL;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) a0 += wtap(i * kw + j) * vload(base + i * rs + j * g.dw);
          vstore(yb + t * VL, a0);
        }
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          T* d = yp + oh * g.Wo;
          const T* src = yb + oh * pg.L;
          for (int64_t t = 0; t < g.Wo; ++t) d[t] = src[t];
        }
      } else {
        const int64_t nvec = ceil_div(g.Wo, VL);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          T* yr = yp + oh * g.Wo;
          for (int64_t t = 0; t < nvec; ++t) {
            V a = bias;
            for (int64_t i = 0; i < kh; ++i) {
              const T* rb = buf + (oh * g.sh + i * g.dh) * pg.sw * pg.L + t * VL;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t cj = j * g.dw;
                a += wtap(i * kw + j) * vload(rb + (cj % pg.sw) * pg.L + cj / pg.sw);
              }
            }
            if ((t + 1) * VL <= g.Wo) {
              vstore(yr + t * VL, a);
            } else {
              T tmp[VL];
              vstore(tmp, a);
              std::memcpy(yr + t * VL, tmp, (g.Wo - t * VL) * sizeof(T));
            }
          }
        }
      }
    }
  }
}

// Partial sums per (image, output channel): pw[(n*K + k)*k2 + tap] and pb[n*K + k].
template <typename T, int KH, int KW>
void dw_weight_partials_nchw(const T* dy, const T* x, T* pw, T* pb, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = KH ? KH : g.kh, kw = KW ? KW : g.kw, k2 = kh * kw, m = g.K / g.C;
  const int64_t P = g.Ho * g.Wo, HW = g.H * g.W;
  const PlaneGeo pg = plane_geo(g, VL);
  const bool flat = g.sh == 1 && g.sw == 1;
  const int64_t total = (g.Ho - 1) * pg.L + g.Wo, nv = ceil_div(total, VL);
  constexpr int NA = KH && KW ? KH * KW : 1;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * g.C; ++u) {
    const int64_t n = u / g.C, c = u % g.C;
    T* buf = scratch<T>(kPlaneSlot, pg.alloc());
    build_plane(x + u * HW, g, pg, buf);
    for (int64_t q = 0; q < m; ++q) {
      const int64_t k = c * m + q;
      const T* dyp = dy + (n * g.K + k) * P;
      V accs[NA];
      V* acc = accs;
      if (!(KH && KW)) acc = reinterpret_cast<V*>(scratch<T>(kAccSlot, k2 * VL));
      for (int64_t t = 0; t < k2; ++t) acc[t] = V{};
      V sb{};
      if (flat) {
        T* df = scratch<T>(kColSlot, nv * VL);
        for (int64_t t = 0; t < nv * VL; ++t) df[t] = T(0);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          T* d = df + oh * pg.L;
          const T* src = dyp + oh * g.Wo;
          for (int64_t t = 0; t < g.Wo; ++t) d[t] = src[t];
        }
        const int64_t rs = g.dh * pg.L;
        for (int64_t t = 0; t < nv; ++t) {
          const V gv = vload(df + t * VL);
          sb += gv;
          const T* base = buf + t * VL;
          for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) acc[i * kw + j] += gv * vload(base + i * rs + j * g.dw);
        }
      } else {
        const int64_t nvec = ceil_div(g.Wo, VL);
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const T* dr = dyp + oh * g.Wo;
          for (int64_t t = 0; t < nvec; ++t) {
            V gv;
            if ((t + 1) * VL <= g.Wo) {
              gv = vload(dr + t * VL);
            } else {
              T tmp[VL] = {};
              std::memcpy(tmp, dr + t * VL, (g.Wo - t * VL) * sizeof(T));
              gv = vload(tmp);
            }
            sb += gv;
            for (int64_t i = 0; i < kh; ++i) {
              const T* rb = buf + (oh * g.sh + i * g.dh) * pg.sw * pg.L + t * VL;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t cj = j * g.dw;
                acc[i * kw + j] += gv * vload(rb + (cj % pg.sw) * pg.L + cj / pg.sw);
              }
            }
          }
        }
      }
      for (int64_t t = 0; t < k2; ++t) pw[(n * g.K + k) * k2 + t] = hsum<T>(acc[t]);
      pb[n * g.K + k] = hsum<T>(sb);
    }
  }
}

// Input gradient, any stride (used at stride > 1): per (image, channel), per dx row and column
// phase, a gather over the taps that land there.
template <typename T>
void dw_backward_input_nchw(const T* dy, const T* w, T* dx, const Geom& g) {
  constexpr int VL = Vec<T>::n;
  using V = vec_t<T>;
  const int64_t kh = g.kh, kw = g.kw, k2 = kh * kw, m = g.K / g.C, sw = g.sw;
  const int64_t P = g.Ho * g.Wo, HW = g.H * g.W;
  // Padded dy rows: position PADL + ow holds dy[oh][ow]; zeros around.
  const int64_t PADL = ceil_div((kw - 1) * g.dw, sw) + 1;
  const int64_t U = ceil_div(g.W, sw) + 1;  // dx columns per phase (upper bound)
  const int64_t LD = PADL + std::max(g.Wo, U + ceil_div(g.pl, sw) + 1) + 2 * VL;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t u = 0; u < g.N * g.C; ++u) {
    const int64_t n = u / g.C, c = u % g.C;
    T* dyp = scratch<T>(kPlaneSlot, m * g.Ho * LD);
    for (int64_t q = 0; q < m; ++q) {
      const T* src = dy + (n * g.K + c * m + q) * P;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        T* r = dyp + (q * g.Ho + oh) * LD;
        std::fill(r, r + PADL, T(0));
        std::memcpy(r + PADL, src + oh * g.Wo, g.Wo * sizeof(T));
        std::fill(r + PADL + g.Wo, r + LD, T(0));
      }
    }
    T* tmp = scratch<T>(kColSlot, (U + VL) * 2);
    T* dxp = dx + u * HW;
    for (int64_t ih = 0; ih < g.H; ++ih) {
      T* dr = dxp + ih * g.W;
      for (int64_t ph = 0; ph < sw; ++ph) {
        // dx columns iw = iw0 + v*sw, v in [0, nu), have (iw + pl) % sw == ph.
        const int64_t iw0 = ((ph - g.pl) % sw + sw) % sw;
        if (iw0 >= g.W) continue;
        const int64_t nu = ceil_div(g.W - iw0, sw);
        const int64_t nvec = ceil_div(nu, VL);
        for (int64_t t = 0; t < nvec; ++t) {
          V a{};
          for (int64_t q = 0; q < m; ++q) {
            const T* wk = w + (c * m + q) * k2;
            for (int64_t i = 0; i < kh; ++i) {
              const int64_t rr = ih + g.pt - i * g.dh;
              if (rr < 0 || rr % g.sh) continue;
              const int64_t oh = rr / g.sh;
              if (oh >= g.Ho) continue;
              const T* row = dyp + (q * g.Ho + oh) * LD + PADL;
              for (int64_t j = 0; j < kw; ++j) {
                const int64_t cc = iw0 + g.pl - j * g.dw;  // column of v = 0, before dividing by sw
                if (((cc % sw) + sw) % sw) continue;
                const int64_t e = (cc - ((cc % sw) + sw) % sw) / sw;  // floor division, exact here
                a += vsplat<T>(wk[i * kw + j]) * vload(row + e + t * VL);
              }
            }
          }
          vstore(tmp + t * VL, a);
        }
        for (int64_t v = 0; v < nu; ++v) dr[iw0 + v * sw] = tmp[v];
      }
    }
  }
}

}  // namespace CNNKIT_KERNEL_NS
}  // namespace cnnkit::conv
