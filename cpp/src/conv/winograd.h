// Winograd F(2x2, 3x3) for float32 dense NHWC 3x3 convolutions at stride 1 (conv_gemm.cpp's
// forward_nhwc, and so the input gradient, the adjoint's forward pass; the weight gradient below;
// NCHW arrays reach them between transposes): each 2x2 block of output pixels is computed from
// the 4x4 block of input pixels over it as
//     Y = A^T [ sum_c (G g_kc G^T) (.) (B^T d_c B) ] A                    (Lavin & Gray, 2016)
// which takes 16 multiplications for 4 outputs against 36 for the direct sum: the 16 sums over c
// are 16 GEMMs (tiles x C) . (C x K), 2.25x fewer FLOPs than the im2col GEMM.
//
// The batch is cut into units of one image's band of output rows (an even number of rows: whole
// 2x2 tiles, the last band of an odd height cropped), from the shape alone. A unit transforms its
// input tiles into 16 matrices V (tiles x C; the fused prologue applied to the pixels inside the
// image as they are read, the padding 0), runs the 16 GEMMs against the transformed weights U
// (packed once a call) on the own sgemm, transforms the products back into its output rows, then
// applies forward_nhwc's epilogues to those rows (contiguous in NHWC): bias, statistics, residual,
// ReLU, or the gradient epilogue, with the same functions. Every value is computed by the same
// operations whichever thread runs its unit, so the results do not depend on the thread count.
//
// Rounding: the transforms add and subtract (V, the output) or take halves and quarters (U, in
// double, rounded once), so an output carries the rounding of the GEMM's sum over c of 16 terms
// and of a few additions around it; against the float64 reference it stays within the tolerance
// the direct path is held to (tests/test_conv.py, sum of the terms' magnitudes). The bits differ
// from those of the im2col/patches path.
//
// Included by conv_gemm.cpp inside its anonymous namespace after the epilogues it calls; the
// problems it takes: winograd_shape() (conv_internal.h).

// U = G g G^T for every c and output channel k of [k0, k1): 16 matrices C x K (row-major,
// u[(xi*C + c)*K + k]) from w (K, C, 3, 3). G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], in
// double, each value rounded once.
inline void winograd_weights(const float* w, int64_t C, int64_t K, int64_t k0, int64_t k1, float* u) {
  for (int64_t k = k0; k < k1; ++k)
    for (int64_t c = 0; c < C; ++c) {
      const float* q = w + (k * C + c) * 9;
      double t[4][3];  // G g
      for (int j = 0; j < 3; ++j) {
        const double g0 = q[j], g1 = q[3 + j], g2 = q[6 + j];
        t[0][j] = g0;
        t[1][j] = 0.5 * (g0 + g1 + g2);
        t[2][j] = 0.5 * (g0 - g1 + g2);
        t[3][j] = g2;
      }
      for (int i = 0; i < 4; ++i) {
        const double h0 = t[i][0], h1 = t[i][1], h2 = t[i][2];
        const double r[4] = {h0, 0.5 * (h0 + h1 + h2), 0.5 * (h0 - h1 + h2), h2};
        for (int j = 0; j < 4; ++j) u[((i * 4 + j) * C + c) * K + k] = float(r[j]);
      }
    }
}

// One lane type of the transforms: 16 channels as one vector (F16v), or one channel (float, the
// run's remainder); the same operations either way.
inline F16v wg_load(const float* p, F16v) { return load16(p); }
inline float wg_load(const float* p, float) { return *p; }
inline void wg_store(float* p, F16v v) { store16(p, v); }
inline void wg_store(float* p, float v) { *p = v; }
inline F16v wg_fma(F16v a, F16v x, F16v b) { return fma16(a, x, b); }
inline float wg_fma(float a, float x, float b) { return std::fma(a, x, b); }

// f(L{}, c) over a run of n channels: 16 at a time as vectors (L = F16v), the rest one by one
// (L = float).
template <typename F>
inline void wg_runs(int64_t n, F&& f) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) f(F16v{}, c);
  for (; c < n; ++c) f(float{}, c);
}

// B^T d B over one run of n channels: d[a][b] the input pixel (row a, column b of the tile),
// v[xi] its 16 outputs (B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]). With Pro, each value
// first through fma(sc, d, sh) (sc, sh per tap: zeros where the tap is padding), with Relu then
// v < 0 ? 0 : v: the prologue of apply() in conv_gemm.cpp.
template <bool Pro, bool Relu, typename L>
inline void winograd_in_at(const float* const (&d)[4][4], const float* const (&sc)[4][4],
                           const float* const (&sh)[4][4], float* const (&v)[16], int64_t c) {
  L e[4][4];
#pragma GCC unroll 4
  for (int a = 0; a < 4; ++a)
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
      L x = wg_load(d[a][b] + c, L{});
      if constexpr (Pro) x = wg_fma(wg_load(sc[a][b] + c, L{}), x, wg_load(sh[a][b] + c, L{}));
      if constexpr (Relu) x = x < L{} ? L{} : x;
      e[a][b] = x;
    }
  L t[4][4];  // B^T d
#pragma GCC unroll 4
  for (int b = 0; b < 4; ++b) {
    t[0][b] = e[0][b] - e[2][b];
    t[1][b] = e[1][b] + e[2][b];
    t[2][b] = e[2][b] - e[1][b];
    t[3][b] = e[1][b] - e[3][b];
  }
#pragma GCC unroll 4
  for (int a = 0; a < 4; ++a) {
    wg_store(v[a * 4 + 0] + c, t[a][0] - t[a][2]);
    wg_store(v[a * 4 + 1] + c, t[a][1] + t[a][2]);
    wg_store(v[a * 4 + 2] + c, t[a][2] - t[a][1]);
    wg_store(v[a * 4 + 3] + c, t[a][1] - t[a][3]);
  }
}

template <bool Pro, bool Relu>
inline void winograd_in(const float* const (&d)[4][4], const float* const (&sc)[4][4], const float* const (&sh)[4][4],
                        float* const (&v)[16], int64_t n) {
  wg_runs(n, [&](auto l, int64_t c) { winograd_in_at<Pro, Relu, decltype(l)>(d, sc, sh, v, c); });
}

// A^T m A over one run of n channels: m[xi] the 16 products, y[i][j] the 2x2 output pixels
// (A^T = [1 1 1 0; 0 1 -1 -1]); a scratch row where the pixel lies outside the output.
template <typename L>
inline void winograd_out_at(const float* const (&m)[16], float* const (&y)[2][2], int64_t c) {
  L t[2][4];  // A^T m
#pragma GCC unroll 4
  for (int b = 0; b < 4; ++b) {
    const L m0 = wg_load(m[b] + c, L{}), m1 = wg_load(m[4 + b] + c, L{}), m2 = wg_load(m[8 + b] + c, L{}),
            m3 = wg_load(m[12 + b] + c, L{});
    t[0][b] = (m0 + m1) + m2;
    t[1][b] = (m1 - m2) - m3;
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    wg_store(y[i][0] + c, (t[i][0] + t[i][1]) + t[i][2]);
    wg_store(y[i][1] + c, (t[i][1] - t[i][2]) - t[i][3]);
  }
}

inline void winograd_out(const float* const (&m)[16], float* const (&y)[2][2], int64_t n) {
  wg_runs(n, [&](auto l, int64_t c) { winograd_out_at<decltype(l)>(m, y, c); });
}

// Tile rows a unit takes: about 12288 / (C + K) tiles (V and the products, 16 (C + K) floats a
// tile, within about 768 KiB of L2), whole rows of tiles, at least one.
inline int64_t winograd_band_tiles(const Geom& g) {
  const int64_t tw = (g.Wo + 1) / 2, th = (g.Ho + 1) / 2;
  const int64_t want = std::max<int64_t>(1, 12288 / (g.C + g.K) / tw);
  // the image's tile rows cut into equal bands of at most `want`
  const int64_t bands = (th + want - 1) / want;
  return (th + bands - 1) / bands;
}

// Z = A dy A^T over one run of n channels (the weight gradient's transform of dy, below): y[a][b]
// the 2x2 gradient pixels (zeros outside the output), z[xi] its 16 values
// (A = [1 0; 1 1; 1 -1; 0 -1]).
template <typename L>
inline void winograd_dy_at(const float* const (&y)[2][2], float* const (&z)[16], int64_t c) {
  L t[4][2];  // A dy
#pragma GCC unroll 2
  for (int b = 0; b < 2; ++b) {
    const L d0 = wg_load(y[0][b] + c, L{}), d1 = wg_load(y[1][b] + c, L{});
    t[0][b] = d0;
    t[1][b] = d0 + d1;
    t[2][b] = d0 - d1;
    t[3][b] = -d1;
  }
#pragma GCC unroll 4
  for (int a = 0; a < 4; ++a) {
    wg_store(z[a * 4 + 0] + c, t[a][0]);
    wg_store(z[a * 4 + 1] + c, t[a][0] + t[a][1]);
    wg_store(z[a * 4 + 2] + c, t[a][0] - t[a][1]);
    wg_store(z[a * 4 + 3] + c, -t[a][1]);
  }
}

inline void winograd_dy(const float* const (&y)[2][2], float* const (&z)[16], int64_t n) {
  wg_runs(n, [&](auto l, int64_t c) { winograd_dy_at<decltype(l)>(y, z, c); });
}

// The input tiles of a unit (image n, tile rows [ty0, ty0 + nty)) transformed: V (16 matrices
// T x C) from x through the prologue pf (null: none); zeros: C zeros (the padding, and the
// prologue's scale and shift there).
inline void winograd_unit_in(const float* x, const Geom& g, int64_t n, int64_t ty0, int64_t nty, const Prologue* pf,
                             const float* zeros, float* V) {
  const int64_t C = g.C, tw = (g.Wo + 1) / 2, T = nty * tw;
  const bool pro = pf && pf->scale, prelu = pf && pf->relu;
  const float* xn = x + n * g.H * g.W * C;
  for (int64_t ty = 0; ty < nty; ++ty)
    for (int64_t tx = 0; tx < tw; ++tx) {
      const int64_t t = ty * tw + tx;
      const float* d[4][4];
      const float* sc[4][4];
      const float* sh[4][4];
      for (int a = 0; a < 4; ++a) {
        const int64_t iy = 2 * (ty0 + ty) - g.pt + a;
        for (int bb = 0; bb < 4; ++bb) {
          const int64_t ix = 2 * tx - g.pl + bb;
          const bool in = iy >= 0 && iy < g.H && ix >= 0 && ix < g.W;
          d[a][bb] = in ? xn + (iy * g.W + ix) * C : zeros;
          sc[a][bb] = in && pro ? pf->scale : zeros;
          sh[a][bb] = in && pro ? pf->shift : zeros;
        }
      }
      float* v[16];
      for (int xi = 0; xi < 16; ++xi) v[xi] = V + (xi * T + t) * C;
      if (pro)
        prelu ? winograd_in<true, true>(d, sc, sh, v, C) : winograd_in<true, false>(d, sc, sh, v, C);
      else
        prelu ? winograd_in<false, true>(d, sc, sh, v, C) : winograd_in<false, false>(d, sc, sh, v, C);
    }
}

void winograd_forward_nhwc(const float* x, const float* w, const float* b, float* y, const Geom& g, const Fused* fu) {
  const int64_t C = g.C, K = g.K, tw = (g.Wo + 1) / 2, th = (g.Ho + 1) / 2;
  const int64_t bt = winograd_band_tiles(g), bands = (th + bt - 1) / bt, units = g.N * bands;
  const int64_t bsize = sgemm_rows_b_size(C, K);
  // The packed U of each xi, then C zeros (the padding's pixels, and the prologue's scale and
  // shift there).
  float* bp = scratch<float>(kBatchSlot, 16 * bsize + C);
  float* zeros = bp + 16 * bsize;
  std::fill(zeros, zeros + C, 0.0f);
  {
    // (on the threads from 2^14 weights a matrix: 3x3 512->512 at 16x16 for one image is 1.2
    // GFLOP against about 4M values transformed and 4M packed)
    float* u = scratch<float>(kWeightSlot, 16 * C * K);
    const bool par = C * K >= (int64_t(1) << 14);
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (par)
    for (int64_t k = 0; k < K; k += 16) winograd_weights(w, C, K, k, std::min(K, k + 16), u);
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (par)
    for (int xi = 0; xi < 16; ++xi) sgemm_rows_pack_b(C, K, Operand{u + xi * C * K, K, 1}, bp + xi * bsize);
  }
  Prologue pstore;
  const Prologue* pf = group_prologue(fu, 0, C, &pstore);
  const bool stats = fu && fu->stats_sum, grad = fu && fu->grad_sum;
  const StatParts st = stats || grad ? stat_parts(units, K) : StatParts{};
  const float* residual = residual_of<float>(fu);
  const bool relu = fu && fu->post_relu;
  const int64_t P = g.Ho * g.Wo;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t u = 0; u < units; ++u) {
    const int64_t n = u / bands, ty0 = (u % bands) * bt, nty = std::min(bt, th - ty0), T = nty * tw;
    const int64_t oy0 = 2 * ty0, oy1 = std::min(g.Ho, 2 * (ty0 + nty));
    float* V = scratch<float>(kColSlot, 16 * T * (C + K) + K);
    float* M = V + 16 * T * C;
    float* trash = M + 16 * T * K;  // (the outputs of a cropped tile outside the image)
    winograd_unit_in(x, g, n, ty0, nty, pf, zeros, V);
    for (int xi = 0; xi < 16; ++xi) sgemm_rows(T, K, C, V + xi * T * C, C, bp + xi * bsize, M + xi * T * K, K);
    const int64_t r0 = n * P + oy0 * g.Wo, nr = (oy1 - oy0) * g.Wo;
    float* yr = y + r0 * K;
    for (int64_t ty = 0; ty < nty; ++ty)
      for (int64_t tx = 0; tx < tw; ++tx) {
        const int64_t t = ty * tw + tx;
        const float* m[16];
        for (int xi = 0; xi < 16; ++xi) m[xi] = M + (xi * T + t) * K;
        float* o[2][2];
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) {
            const int64_t oy = 2 * ty + i, ox = 2 * tx + j;
            o[i][j] = oy0 + oy < oy1 && ox < g.Wo ? yr + (oy * g.Wo + ox) * K : trash;
          }
        winograd_out(m, o, K);
      }
    if (stats) st.cnt[u] = nr;
    epilogue_pm(yr, K, nr, K, b, residual ? residual + r0 * K : nullptr, relu, stats ? st.s1(u) : nullptr,
                stats ? st.s2(u) : nullptr, stats ? st.sh(u) : nullptr);
    if (grad)
      grad_epilogue_pm(yr, fu->gx + r0 * K, grad_mask(fu, r0 * K), K, nr, K, fu->gscale, fu->gshift, fu->grelu,
                       fu->center, st.s1(u), st.s2(u));
  }
  if (!stats && !grad) return;
  isa_vector<int64_t> order(units);
  for (int64_t q = 0; q < units; ++q) order[q] = q;
  combine_unit_sums(st, order.data(), units, 0, K, fu, stats, grad);
}

// ---- the weight gradient -----------------------------------------------------------------------
// The transpose of the forward map in g: dW = G^T [ sum over tiles (A dy_t A^T) (.) (B^T d_t B) ] G
// (d_t through the fused prologue pf where given, as in the forward pass),
// a sum over the 2x2 tiles of dy of 16 products per (k, c): 16 GEMMs (K x tiles) . (tiles x C)
// whose reduction runs over the tiles, against 36 multiplications per (k, c) and output pixel of
// the patches GEMM. Units are forward's bands; pieces of consecutive units, cut from the shape
// alone, each accumulate their own partial (16 x K x C floats, in L2 while a unit's GEMMs run:
// winograd_weight_shape() bounds K*C); the partials are added in piece order in double and
// transformed back in double, each weight rounded once. The bits do not depend on the thread count.

void winograd_backward_weight_nhwc(const float* dy, const float* x, float* dw, const Geom& g, const Prologue* pf) {
  const int64_t C = g.C, K = g.K, tw = (g.Wo + 1) / 2, th = (g.Ho + 1) / 2;
  const int64_t bt = winograd_band_tiles(g), bands = (th + bt - 1) / bt, units = g.N * bands;
  const int64_t pieces = std::min<int64_t>(16, units), KC = K * C;
  // W_xi as K x C (the GEMM's M = K) or C x K, whichever the tn kernel pads less.
  const bool kc = sgemm_tn_padded(K, C) <= sgemm_tn_padded(C, K);
  float* part = scratch<float>(kAccSlot, pieces * 16 * KC);
  float* zeros = scratch<float>(kBatchSlot, std::max(C, K));
  std::fill(zeros, zeros + std::max(C, K), 0.0f);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads())
  for (int64_t p = 0; p < pieces; ++p) {
    float* W = part + p * 16 * KC;
    const int64_t u0 = p * units / pieces, u1 = (p + 1) * units / pieces;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / bands, ty0 = (u % bands) * bt, nty = std::min(bt, th - ty0), T = nty * tw;
      float* V = scratch<float>(kColSlot, 16 * T * (C + K));
      float* Z = V + 16 * T * C;
      winograd_unit_in(x, g, n, ty0, nty, pf, zeros, V);
      const float* dyn = dy + n * g.Ho * g.Wo * K;
      for (int64_t ty = 0; ty < nty; ++ty)
        for (int64_t tx = 0; tx < tw; ++tx) {
          const int64_t t = ty * tw + tx;
          const float* yy[2][2];
          for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 2; ++j) {
              const int64_t oy = 2 * (ty0 + ty) + i, ox = 2 * tx + j;
              yy[i][j] = oy < g.Ho && ox < g.Wo ? dyn + (oy * g.Wo + ox) * K : zeros;
            }
          float* z[16];
          for (int xi = 0; xi < 16; ++xi) z[xi] = Z + (xi * T + t) * K;
          winograd_dy(yy, z, K);
        }
      for (int xi = 0; xi < 16; ++xi) {
        const float* zx = Z + xi * T * K;
        const float* vx = V + xi * T * C;
        if (kc)
          sgemm_tn(K, C, T, zx, K, vx, C, W + xi * KC, C, u > u0);
        else
          sgemm_tn(C, K, T, vx, C, zx, K, W + xi * KC, K, u > u0);
      }
    }
  }
  // dw[k][c] = G^T (sum over pieces of W[.][k][c]) G, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1].
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t at = kc ? k * C + c : c * K + k;
      double m[4][4];
      for (int xi = 0; xi < 16; ++xi) {
        double s = 0;
        for (int64_t p = 0; p < pieces; ++p) s += double(part[(p * 16 + xi) * KC + at]);
        m[xi / 4][xi % 4] = s;
      }
      double t[3][4];  // G^T m
      for (int b = 0; b < 4; ++b) {
        t[0][b] = m[0][b] + 0.5 * (m[1][b] + m[2][b]);
        t[1][b] = 0.5 * (m[1][b] - m[2][b]);
        t[2][b] = 0.5 * (m[1][b] + m[2][b]) + m[3][b];
      }
      float* o = dw + (k * C + c) * 9;
      for (int i = 0; i < 3; ++i) {
        o[i * 3 + 0] = float(t[i][0] + 0.5 * (t[i][1] + t[i][2]));
        o[i * 3 + 1] = float(0.5 * (t[i][1] - t[i][2]));
        o[i * 3 + 2] = float(0.5 * (t[i][1] + t[i][2]) + t[i][3]);
      }
    }
}
