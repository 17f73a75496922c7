// Per-ISA image-op kernels for the augmentation policies (see cnnkit/augment.h):
//   apply_ops_u8: a short program of ops per image (the policies' colour, point and geometric
//   ops), run image by image in per-thread buffers so each image stays in cache from its first
//   op to its last; resize_u8 (resized crops, PIL/torch antialiased bilinear); remap_u8 (integer
//   index maps: pad-and-crop, flips); clahe_u8 (OpenCV's CLAHE, bit for bit).
// Colour ops use float32 arithmetic in torchvision's order; geometry uses double coordinates.
// Every output image is written by one thread, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cnnkit/augment.h"
#include "common/isa_vector.h"

#ifndef CNNKIT_ISA_NS
#error "CNNKIT_ISA_NS must name the ISA level this file is compiled for"
#endif

namespace cnnkit {
namespace CNNKIT_ISA_NS {
namespace {

using augment::ImageOp;
constexpr int64_t kSerialBelow = 1 << 15;  // bytes of output below which one thread does it all

inline uint8_t trunc_u8(float v) {  // clamp(v, 0, 255) then truncation, as torch's .to(uint8)
  // (min/max rather than branches so the colour loops vectorise; NaN cannot occur here)
  return uint8_t(int32_t(std::min(std::max(v, 0.0f), 255.0f)));
}

inline uint8_t round_u8(double v) {  // round half to even, then clamp
  v = std::nearbyint(v);
  v = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
  return uint8_t(int(v));
}

struct Geo {
  int64_t H, W, C;
  int64_t size() const { return H * W * C; }
};

// torchvision's rgb_to_grayscale for uint8: float32 (0.2989 r + 0.587 g) + 0.114 b, truncated.
inline uint8_t gray_of(const uint8_t* p) {
  const float v = (0.2989f * float(p[0]) + 0.587f * float(p[1])) + 0.114f * float(p[2]);
  return uint8_t(int(v));
}

// torchvision _blend: (r*a + (1 - r)*b).clamp(0, 255) in float32, truncated; r and 1 - r are
// formed in double and rounded to float32 as torch rounds a Python scalar.
void brightness(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, double f) {
  const float r = float(f), q = float(1.0 - f);
  const int64_t n = g.size();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = trunc_u8(r * float(s[i]) + q * 0.0f);
}

void contrast(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, double f) {
  const int64_t P = g.H * g.W, n = g.size();
  int64_t sum = 0;
  if (g.C == 3) {
    for (int64_t p = 0; p < P; ++p) sum += gray_of(s + 3 * p);
  } else {
    for (int64_t i = 0; i < n; ++i) sum += s[i];
  }
  // torch.mean over the grey plane in float32: an exact sum (below 2^24) over the pixel count
  const float mean = float(sum) / float(P);
  const float r = float(f), qb = float(1.0 - f) * mean;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = trunc_u8(r * float(s[i]) + qb);
}

void saturation(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, double f) {
  const int64_t P = g.H * g.W;
  if (g.C != 3) {
    std::memcpy(d, s, size_t(g.size()));
    return;
  }
  const float r = float(f), q = float(1.0 - f);
#pragma omp simd
  for (int64_t p = 0; p < P; ++p) {
    const float gq = q * float(gray_of(s + 3 * p));
    for (int c = 0; c < 3; ++c) d[3 * p + c] = trunc_u8(r * float(s[3 * p + c]) + gq);
  }
}

// Blend with the 3x3 [[1,1,1],[1,5,1],[1,1,1]]/13 blur (rounded; its exact value is never a tie),
// the one-pixel border kept as it is.
void sharpness(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, double f) {
  const int64_t H = g.H, W = g.W, C = g.C, row = W * C;
  if (H <= 2 || W <= 2) {
    std::memcpy(d, s, size_t(g.size()));
    return;
  }
  const float r = float(f), q = float(1.0 - f);
  auto edge = [&](int64_t i) { d[i] = trunc_u8(r * float(s[i]) + q * float(s[i])); };
  for (int64_t i = 0; i < row; ++i) edge(i), edge((H - 1) * row + i);
  for (int64_t y = 1; y < H - 1; ++y) {
    const uint8_t* a = s + (y - 1) * row;
    const uint8_t* b = a + row;
    const uint8_t* e = b + row;
    uint8_t* o = d + y * row;
    for (int64_t c = 0; c < C; ++c) edge(y * row + c), edge(y * row + row - C + c);
#pragma omp simd
    for (int64_t i = C; i < row - C; ++i) {
      const int32_t S = a[i - C] + a[i] + a[i + C] + b[i - C] + 5 * b[i] + b[i + C] + e[i - C] + e[i] + e[i + C];
      const int32_t deg = (2 * S + 13) / 26;  // round(S / 13)
      o[i] = trunc_u8(r * float(b[i]) + q * float(deg));
    }
  }
}

void point_lut(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, const uint8_t* lut, int64_t lut_stride) {
  const int64_t P = g.H * g.W, C = g.C;
  if (lut_stride == 0 || C == 1) {
    const int64_t n = g.size();
    for (int64_t i = 0; i < n; ++i) d[i] = lut[s[i]];
    return;
  }
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) d[p * C + c] = lut[c * lut_stride + s[p * C + c]];
}

void histograms(const uint8_t* s, const Geo& g, int64_t* h) {
  std::fill(h, h + g.C * 256, int64_t(0));
  const int64_t P = g.H * g.W, C = g.C;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) ++h[c * 256 + s[p * C + c]];
}

// Pillow's ImageOps.autocontrast (cutoff 0) and equalize, per channel.
// Per-channel histograms into h and room for the per-channel tables in lut.
void prepare_tables(const uint8_t* s, const Geo& g, isa_vector<uint8_t>& lut, isa_vector<int64_t>& h) {
  h.resize(size_t(g.C * 256));
  lut.resize(size_t(g.C * 256));
  histograms(s, g, h.data());
}

void autocontrast(const uint8_t* s, uint8_t* d, const Geo& g, isa_vector<uint8_t>& lut, isa_vector<int64_t>& h) {
  prepare_tables(s, g, lut, h);
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t* hc = h.data() + c * 256;
    int lo = 0, hi = 255;
    while (lo < 256 && hc[lo] == 0) ++lo;
    while (hi >= 0 && hc[hi] == 0) --hi;
    uint8_t* L = lut.data() + c * 256;
    if (hi <= lo) {
      for (int i = 0; i < 256; ++i) L[i] = uint8_t(i);
      continue;
    }
    const double scale = 255.0 / double(hi - lo), offset = -double(lo) * scale;
    for (int i = 0; i < 256; ++i) {
      const double v = std::trunc(double(i) * scale + offset);
      L[i] = uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
  }
  point_lut(s, d, g, lut.data(), 256);
}

void equalize(const uint8_t* s, uint8_t* d, const Geo& g, isa_vector<uint8_t>& lut, isa_vector<int64_t>& h) {
  prepare_tables(s, g, lut, h);
  for (int64_t c = 0; c < g.C; ++c) {
    const int64_t* hc = h.data() + c * 256;
    uint8_t* L = lut.data() + c * 256;
    int last = 255, nonzero = 0;
    int64_t total = 0;
    for (int i = 0; i < 256; ++i) total += hc[i], nonzero += hc[i] > 0;
    while (last > 0 && hc[last] == 0) --last;
    const int64_t step = (total - hc[last]) / 255;
    if (nonzero <= 1 || step == 0) {
      for (int i = 0; i < 256; ++i) L[i] = uint8_t(i);
      continue;
    }
    int64_t before = 0;
    for (int i = 0; i < 256; ++i) {
      L[i] = uint8_t(std::min<int64_t>((step / 2 + before) / step, 255));
      before += hc[i];
    }
  }
  point_lut(s, d, g, lut.data(), 256);
}

void flip(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, bool horizontal) {
  const int64_t H = g.H, W = g.W, C = g.C, row = W * C;
  for (int64_t y = 0; y < H; ++y) {
    if (!horizontal) {
      std::memcpy(d + y * row, s + (H - 1 - y) * row, size_t(row));
      continue;
    }
    const uint8_t* __restrict a = s + y * row;
    uint8_t* __restrict o = d + y * row;
    if (C == 1) {
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) o[x] = a[W - 1 - x];
    } else if (C == 3) {
      for (int64_t x = 0; x < W; ++x) {
        const uint8_t* p = a + (W - 1 - x) * 3;
        o[3 * x] = p[0], o[3 * x + 1] = p[1], o[3 * x + 2] = p[2];
      }
    } else {
      for (int64_t x = 0; x < W; ++x) std::memcpy(o + x * C, a + (W - 1 - x) * C, size_t(C));
    }
  }
}

// Inverse affine map m (torchvision's, in centred coordinates): the source of destination pixel
// (x, y) is sx = ((m0*xc + m1*yc) + m2) + (W-1)/2, sy likewise, xc = x - (W-1)/2. Per row, the
// coordinates are computed in vector loops into `co`, then the pixels are gathered.
struct AffineRow {
  isa_vector<double> sx, sy;
  isa_vector<int64_t> idx;
  isa_vector<uint8_t> fill;
  void resize(int64_t W) {
    sx.resize(size_t(W));
    sy.resize(size_t(W));
    idx.resize(size_t(W));
  }
};

void affine(const uint8_t* __restrict s, uint8_t* __restrict d, const Geo& g, const double* m, bool bilinear,
            const double* fill, AffineRow& co) {
  const int64_t H = g.H, W = g.W, C = g.C;
  const double cx = double(W - 1) * 0.5, cy = double(H - 1) * 0.5;
  const double m0 = m[0], m1 = m[1], m2 = m[2], m3 = m[3], m4 = m[4], m5 = m[5];
  co.resize(W);
  double* __restrict sxr = co.sx.data();
  double* __restrict syr = co.sy.data();
  int64_t* __restrict idx = co.idx.data();
  co.fill.resize(size_t(C));
  uint8_t* fill_u8 = co.fill.data();
  for (int64_t c = 0; c < C; ++c) fill_u8[c] = fill ? round_u8(fill[c]) : 0;
  const double Wm = double(W - 1), Hm = double(H - 1);
  for (int64_t y = 0; y < H; ++y) {
    const double yc = double(y) - cy;
    const double by = m1 * yc, ey = m4 * yc;
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) {
      const double xc = double(x) - cx;
      sxr[x] = ((m0 * xc + by) + m2) + cx;
      syr[x] = ((m3 * xc + ey) + m5) + cy;
    }
    uint8_t* o = d + y * W * C;
    if (!bilinear) {
#pragma omp simd
      for (int64_t x = 0; x < W; ++x) {
        const double rx = std::nearbyint(sxr[x]), ry = std::nearbyint(syr[x]);
        const bool in = rx >= 0.0 && rx <= Wm && ry >= 0.0 && ry <= Hm;
        idx[x] = in ? (int64_t(ry) * W + int64_t(rx)) * C : -1;
      }
      if (C == 3) {
        for (int64_t x = 0; x < W; ++x) {
          const uint8_t* ip = idx[x] >= 0 ? s + idx[x] : fill_u8;
          o[3 * x] = ip[0], o[3 * x + 1] = ip[1], o[3 * x + 2] = ip[2];
        }
      } else {
        for (int64_t x = 0; x < W; ++x) {
          const uint8_t* ip = idx[x] >= 0 ? s + idx[x] : fill_u8;
          for (int64_t c = 0; c < C; ++c) o[x * C + c] = ip[c];
        }
      }
      continue;
    }
    // bilinear: a vector loop marks the pixels whose four corners are all inside (idx: the
    // top-left corner's offset, else -1); they take the unchecked path below
#pragma omp simd
    for (int64_t x = 0; x < W; ++x) {
      const double fx = std::floor(sxr[x]), fy = std::floor(syr[x]);
      const bool in = fx >= 0.0 && fy >= 0.0 && fx + 1.0 <= Wm && fy + 1.0 <= Hm;
      idx[x] = in ? (int64_t(fy) * W + int64_t(fx)) * C : -1;
    }
    for (int64_t x = 0; x < W; ++x) {
      const double sx = sxr[x], sy = syr[x];
      uint8_t* op = o + x * C;
      if (idx[x] < 0 && !(sx > -1.0 && sx < double(W) && sy > -1.0 && sy < double(H))) {  // no corner inside
        for (int64_t c = 0; c < C; ++c) op[c] = fill_u8[c];
        continue;
      }
      const double fx = std::floor(sx), fy = std::floor(sy);
      const double wx = sx - fx, wy = sy - fy;
      const double w00 = (1.0 - wx) * (1.0 - wy), w01 = wx * (1.0 - wy), w10 = (1.0 - wx) * wy, w11 = wx * wy;
      if (idx[x] >= 0) {  // all four corners inside
        const uint8_t* p00 = s + idx[x];
        const uint8_t* p10 = p00 + W * C;
        if (!fill && C == 3) {
          for (int c = 0; c < 3; ++c)
            op[c] = round_u8(((w00 * double(p00[c]) + w01 * double(p00[3 + c])) + w10 * double(p10[c])) +
                             w11 * double(p10[3 + c]));
          continue;
        }
        const double mask = ((w00 + w01) + w10) + w11;
        for (int64_t c = 0; c < C; ++c) {
          double v = ((w00 * double(p00[c]) + w01 * double(p00[C + c])) + w10 * double(p10[c])) + w11 * double(p10[C + c]);
          if (fill) v = v * mask + (1.0 - mask) * fill[c];
          op[c] = round_u8(v);
        }
        continue;
      }
      const int64_t x0 = int64_t(fx), y0 = int64_t(fy);
      const double w[4] = {w00, w01, w10, w11};
      const bool in[4] = {x0 >= 0 && y0 >= 0, x0 + 1 < W && y0 >= 0, x0 >= 0 && y0 + 1 < H, x0 + 1 < W && y0 + 1 < H};
      const int64_t off[4] = {(y0 * W + x0) * C, (y0 * W + x0 + 1) * C, ((y0 + 1) * W + x0) * C,
                              ((y0 + 1) * W + x0 + 1) * C};
      double mask = 0.0;
      for (int k = 0; k < 4; ++k) mask += in[k] ? w[k] : 0.0;
      for (int64_t c = 0; c < C; ++c) {
        double v = 0.0;
        for (int k = 0; k < 4; ++k) v += in[k] ? w[k] * double(s[off[k] + c]) : 0.0;
        if (fill) v = v * mask + (1.0 - mask) * fill[c];
        op[c] = round_u8(v);
      }
    }
  }
}

struct Scratch {
  isa_vector<uint8_t> buf[2], lut;
  isa_vector<int64_t> hist;
  AffineRow row;
};

void run_op(ImageOp op, const double* p, const uint8_t* s, uint8_t* d, const Geo& g, bool bilinear,
            const double* fill, Scratch& sc) {
  switch (op) {
    case ImageOp::kIdentity: std::memcpy(d, s, size_t(g.size())); break;
    case ImageOp::kAffine: affine(s, d, g, p, bilinear, fill, sc.row); break;
    case ImageOp::kBrightness: brightness(s, d, g, p[0]); break;
    case ImageOp::kColor: saturation(s, d, g, p[0]); break;
    case ImageOp::kContrast: contrast(s, d, g, p[0]); break;
    case ImageOp::kSharpness: sharpness(s, d, g, p[0]); break;
    case ImageOp::kPosterize: {
      const int bits = int(p[0]);
      const uint8_t mask = uint8_t(~((1 << (8 - bits)) - 1) & 0xFF);
      uint8_t lut[256];
      for (int i = 0; i < 256; ++i) lut[i] = uint8_t(i & mask);
      point_lut(s, d, g, lut, 0);
      break;
    }
    case ImageOp::kSolarize: {
      uint8_t lut[256];
      for (int i = 0; i < 256; ++i) lut[i] = double(i) >= p[0] ? uint8_t(255 - i) : uint8_t(i);
      point_lut(s, d, g, lut, 0);
      break;
    }
    case ImageOp::kInvert: {
      uint8_t lut[256];
      for (int i = 0; i < 256; ++i) lut[i] = uint8_t(255 - i);
      point_lut(s, d, g, lut, 0);
      break;
    }
    case ImageOp::kAutoContrast: autocontrast(s, d, g, sc.lut, sc.hist); break;
    case ImageOp::kEqualize: equalize(s, d, g, sc.lut, sc.hist); break;
    case ImageOp::kHFlip: flip(s, d, g, true); break;
    case ImageOp::kVFlip: flip(s, d, g, false); break;
  }
}

void apply_ops_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t K,
                  const int32_t* codes, const double* params, bool bilinear, const double* fill) {
  const Geo g{H, W, C};
  const int64_t S = g.size();
  const int nt = N * S < kSerialBelow || N < 2 ? 1 : num_threads();
#pragma omp parallel num_threads(nt)
  {
    Scratch sc;
    if (K > 1) {  // ping-pong buffers only for programs of more than one op
      sc.buf[0].resize(size_t(S));
      sc.buf[1].resize(size_t(S));
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* src = x + n * S;
      uint8_t* out = y + n * S;
      int last = -1;  // the last op that is not the identity
      for (int64_t k = 0; k < K; ++k)
        if (ImageOp(codes[n * K + k]) != ImageOp::kIdentity) last = int(k);
      if (last < 0) {
        std::memcpy(out, src, size_t(S));
        continue;
      }
      int which = 0;
      for (int64_t k = 0; k <= last; ++k) {
        const ImageOp op = ImageOp(codes[n * K + k]);
        if (op == ImageOp::kIdentity) continue;
        uint8_t* dst = k == last ? out : sc.buf[which].data();
        run_op(op, params + (n * K + k) * augment::kOpParams, src, dst, g, bilinear, fill, sc);
        src = dst;
        which ^= 1;
      }
    }
  }
}

// ---- resized crop -----------------------------------------------------------------------------
struct Taps {
  isa_vector<int64_t> start, count;
  isa_vector<float> w;  // count per output, padded to `width`
  int64_t width = 0;
};

// Bilinear weights for one axis: `in` source pixels from `origin`, `out` outputs (PIL / torch
// antialias rule: the triangle filter widened by the downscale factor).
void make_taps(Taps& t, int64_t origin, int64_t in, int64_t out, bool antialias) {
  const double scale = double(in) / double(out);
  t.start.assign(size_t(out), 0);
  t.count.assign(size_t(out), 0);
  if (antialias) {
    const double support = scale >= 1.0 ? scale : 1.0, inv = scale >= 1.0 ? 1.0 / scale : 1.0;
    t.width = int64_t(std::ceil(support)) * 2 + 1;
    t.w.assign(size_t(out * t.width), 0.0f);
    isa_vector<double> tmp(size_t(t.width));
    for (int64_t i = 0; i < out; ++i) {
      const double center = scale * (double(i) + 0.5);
      const int64_t lo = std::max<int64_t>(int64_t(center - support + 0.5), 0);
      const int64_t hi = std::min<int64_t>(int64_t(center + support + 0.5), in);
      double total = 0.0;
      const int64_t cnt = std::min(hi - lo, t.width);
      for (int64_t j = 0; j < cnt; ++j) {
        const double a = std::fabs((double(j + lo) - center + 0.5) * inv);
        tmp[size_t(j)] = a < 1.0 ? 1.0 - a : 0.0;
        total += tmp[size_t(j)];
      }
      // taps whose weight is zero at either end are dropped (adding 0 * x changes no sum)
      int64_t first = 0, last = cnt;
      while (first < last && tmp[size_t(first)] == 0.0) ++first;
      while (last > first && tmp[size_t(last - 1)] == 0.0) --last;
      for (int64_t j = first; j < last; ++j)
        t.w[size_t(i * t.width + j - first)] = float(total > 0 ? tmp[size_t(j)] / total : 0.0);
      t.start[size_t(i)] = origin + lo + first;
      t.count[size_t(i)] = last - first;
    }
    return;
  }
  t.width = 2;
  t.w.assign(size_t(out * 2), 0.0f);
  for (int64_t i = 0; i < out; ++i) {
    double src = (double(i) + 0.5) * scale - 0.5;
    if (src < 0) src = 0;
    int64_t x0 = int64_t(std::floor(src));
    if (x0 > in - 1) x0 = in - 1;
    const double l = src - double(x0);
    t.start[size_t(i)] = origin + x0;
    if (x0 + 1 <= in - 1 && l > 0) {
      t.count[size_t(i)] = 2;
      t.w[size_t(2 * i)] = float(1.0 - l);
      t.w[size_t(2 * i + 1)] = float(l);
    } else {
      t.count[size_t(i)] = 1;
      t.w[size_t(2 * i)] = 1.0f;
    }
  }
}

void resize_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, const int64_t* boxes,
               int64_t OH, int64_t OW, bool antialias) {
  const int nt = N * OH * OW * C < kSerialBelow || N < 2 ? 1 : num_threads();
#pragma omp parallel num_threads(nt)
  {
    Taps tx, ty;
    isa_vector<float> tmp, tmp_row(static_cast<size_t>(OW * C));
#pragma omp for schedule(dynamic, 1)
    for (int64_t n = 0; n < N; ++n) {
      const int64_t* b = boxes + 4 * n;  // top, left, height, width
      make_taps(tx, b[1], b[3], OW, antialias);
      make_taps(ty, b[0], b[2], OH, antialias);
      const int64_t r0 = b[0], rows = b[2];
      tmp.resize(size_t(rows * OW * C));
      const uint8_t* xs = x + n * H * W * C;
      for (int64_t r = 0; r < rows; ++r) {  // horizontal pass over the crop's rows
        const uint8_t* a = xs + (r0 + r) * W * C;
        float* o = tmp.data() + r * OW * C;
        if (C == 3) {
          for (int64_t i = 0; i < OW; ++i) {
            const float* w = tx.w.data() + i * tx.width;
            const uint8_t* p = a + tx.start[size_t(i)] * 3;
            const int64_t cnt = tx.count[size_t(i)];
            float v0 = 0.0f, v1 = 0.0f, v2 = 0.0f;
            for (int64_t j = 0; j < cnt; ++j) {
              v0 += w[j] * float(p[3 * j]);
              v1 += w[j] * float(p[3 * j + 1]);
              v2 += w[j] * float(p[3 * j + 2]);
            }
            o[3 * i] = v0, o[3 * i + 1] = v1, o[3 * i + 2] = v2;
          }
        } else {
          for (int64_t i = 0; i < OW; ++i) {
            const float* w = tx.w.data() + i * tx.width;
            const uint8_t* p = a + tx.start[size_t(i)] * C;
            const int64_t cnt = tx.count[size_t(i)];
            for (int64_t c = 0; c < C; ++c) {
              float v = 0.0f;
              for (int64_t j = 0; j < cnt; ++j) v += w[j] * float(p[j * C + c]);
              o[i * C + c] = v;
            }
          }
        }
      }
      uint8_t* ys = y + n * OH * OW * C;
      for (int64_t i = 0; i < OH; ++i) {  // vertical pass
        const float* w = ty.w.data() + i * ty.width;
        const float* p = tmp.data() + (ty.start[size_t(i)] - r0) * OW * C;
        const int64_t cnt = ty.count[size_t(i)], m = OW * C;
        uint8_t* o = ys + i * m;
        float* __restrict acc = tmp_row.data();
#pragma omp simd
        for (int64_t k = 0; k < m; ++k) acc[k] = w[0] * p[k];
        for (int64_t j = 1; j < cnt; ++j) {
          const float wj = w[j];
          const float* __restrict pj = p + j * m;
#pragma omp simd
          for (int64_t k = 0; k < m; ++k) acc[k] += wj * pj[k];
        }
#pragma omp simd
        for (int64_t k = 0; k < m; ++k)  // round half to even, clamp
          o[k] = uint8_t(int32_t(std::min(std::max(std::nearbyint(acc[k]), 0.0f), 255.0f)));
      }
    }
  }
}

// out[n, y, x, :] = x[n, iy[n, y], ix[n, x], :], or fill where either index is negative. The
// column map is cut into runs once per image: consecutive source columns copy as one block.
void remap_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
              const int64_t* iy, const int64_t* ix, const uint8_t* fill) {
  const int nt = N * OH * OW * C < kSerialBelow || N < 2 ? 1 : num_threads();
#pragma omp parallel num_threads(nt)
  {
    struct Run {
      int64_t out, src, len;  // src < 0: fill
    };
    isa_vector<Run> runs;
    isa_vector<uint8_t> fill_row(static_cast<size_t>(OW * C));
    for (int64_t i = 0; i < OW; ++i) std::memcpy(fill_row.data() + i * C, fill, size_t(C));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* xs = x + n * H * W * C;
      uint8_t* ys = y + n * OH * OW * C;
      const int64_t* cx = ix + n * OW;
      runs.clear();
      for (int64_t i = 0; i < OW;) {
        int64_t e = i + 1;
        if (cx[i] < 0) {
          while (e < OW && cx[e] < 0) ++e;
        } else {
          while (e < OW && cx[e] == cx[e - 1] + 1) ++e;
        }
        runs.push_back({i, cx[i], e - i});
        i = e;
      }
      for (int64_t r = 0; r < OH; ++r) {
        const int64_t sr = iy[n * OH + r];
        uint8_t* o = ys + r * OW * C;
        if (sr < 0) {
          std::memcpy(o, fill_row.data(), size_t(OW * C));
          continue;
        }
        const uint8_t* a = xs + sr * W * C;
        for (const Run& run : runs)
          std::memcpy(o + run.out * C, run.src < 0 ? fill_row.data() : a + run.src * C, size_t(run.len * C));
      }
    }
  }
}

// ---- CLAHE (OpenCV's algorithm, bit for bit) ----------------------------------------------------
inline int64_t reflect101(int64_t p, int64_t n) {
  if (n == 1) return 0;
  while (p < 0 || p >= n) p = p < 0 ? -p : 2 * (n - 1) - p;
  return p;
}

// One tile's table: clip the histogram at `clip` and spread the excess as OpenCV does (an equal
// share to every bin, then the remainder one by one at a fixed stride from bin 0), then
// lut[i] = saturate_cast<uchar>(float(cumulative count) * scale), rounded half to even.
void clahe_tile_lut(int32_t* __restrict hist, uint8_t* __restrict lut, int32_t clip, float scale) {
  if (clip > 0) {
    int32_t clipped = 0;
#pragma omp simd reduction(+ : clipped)
    for (int i = 0; i < 256; ++i) {
      const int32_t over = hist[i] > clip ? hist[i] - clip : 0;
      clipped += over;
      hist[i] -= over;
    }
    const int32_t batch = clipped / 256;
    int32_t residual = clipped - batch * 256;
#pragma omp simd
    for (int i = 0; i < 256; ++i) hist[i] += batch;
    if (residual != 0) {
      const int32_t step = std::max<int32_t>(256 / residual, 1);
      for (int32_t i = 0; i < 256 && residual > 0; i += step, --residual) ++hist[i];
    }
  }
  int32_t sum = 0;
  for (int i = 0; i < 256; ++i) sum += hist[i], hist[i] = sum;  // prefix sums in place
#pragma omp simd
  for (int i = 0; i < 256; ++i) {
    float v = std::nearbyint(float(hist[i]) * scale);
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    lut[i] = uint8_t(int32_t(v));
  }
}

void clahe_u8(const uint8_t* x, uint8_t* y, int64_t N, int64_t H, int64_t W, int64_t C, int64_t tilesX,
              int64_t tilesY, double clip_limit) {
  // OpenCV pads (bottom and right, reflect-101) only when a side is not a multiple of its tile
  // count, and then pads both sides by tiles - size % tiles: a side that was a multiple gains a
  // whole extra tile count of pixels.
  const bool exact = H % tilesY == 0 && W % tilesX == 0;
  const int64_t Hp = exact ? H : H + tilesY - H % tilesY;
  const int64_t Wp = exact ? W : W + tilesX - W % tilesX;
  const int64_t th = Hp / tilesY, tw = Wp / tilesX, area = th * tw;
  int32_t clip = 0;
  if (clip_limit > 0.0) clip = int32_t(std::max<int64_t>(int64_t(clip_limit * double(area) / 256.0), 1));
  const float lut_scale = 255.0f / float(area);
  const float inv_tw = 1.0f / float(tw), inv_th = 1.0f / float(th);
  // interpolation geometry shared by every plane: per column the two tile LUT offsets and weights
  isa_vector<int32_t> o1(static_cast<size_t>(W)), o2(static_cast<size_t>(W)), cmap(static_cast<size_t>(Wp));
  isa_vector<float> xa(static_cast<size_t>(W)), xa1(static_cast<size_t>(W));
  for (int64_t i = 0; i < W; ++i) {
    const float txf = float(i) * inv_tw - 0.5f;
    const int64_t t1 = int64_t(std::floor(txf));
    xa[size_t(i)] = txf - float(t1);
    xa1[size_t(i)] = 1.0f - xa[size_t(i)];
    o1[size_t(i)] = int32_t(std::max<int64_t>(t1, 0) * 256);
    o2[size_t(i)] = int32_t(std::min<int64_t>(t1 + 1, tilesX - 1) * 256);
  }
  for (int64_t c = 0; c < Wp; ++c) cmap[size_t(c)] = int32_t(reflect101(c, W));
  const int64_t planes = N * C;
  const int nt = N * H * W * C < kSerialBelow || planes < 2 ? 1 : num_threads();
#pragma omp parallel num_threads(nt)
  {
    isa_vector<uint8_t> lut(static_cast<size_t>(tilesX * tilesY * 256)), plane(static_cast<size_t>(Hp * Wp)),
        out_row(static_cast<size_t>(W));
    isa_vector<float> lutf(static_cast<size_t>(tilesX * tilesY * 256));  // the tables as floats, for gathers
    alignas(64) int32_t hist[256];
#pragma omp for schedule(dynamic, 1)
    for (int64_t pl = 0; pl < planes; ++pl) {
      const int64_t n = pl / C, ch = pl % C;
      const uint8_t* xs = x + n * H * W * C + ch;
      uint8_t* ys = y + n * H * W * C + ch;
      // the channel as a contiguous plane, padded as OpenCV pads it
      for (int64_t r = 0; r < Hp; ++r) {
        const uint8_t* row = xs + reflect101(r, H) * W * C;
        uint8_t* pr = plane.data() + r * Wp;
        if (C == 1) {
          std::memcpy(pr, row, size_t(W));
        } else {
          for (int64_t c = 0; c < W; ++c) pr[c] = row[c * C];
        }
        for (int64_t c = W; c < Wp; ++c) pr[c] = pr[cmap[size_t(c)]];
      }
      for (int64_t ty = 0; ty < tilesY; ++ty)
        for (int64_t tx = 0; tx < tilesX; ++tx) {
          std::fill(hist, hist + 256, 0);
          for (int64_t r = ty * th; r < (ty + 1) * th; ++r) {
            const uint8_t* pr = plane.data() + r * Wp + tx * tw;
            for (int64_t c = 0; c < tw; ++c) ++hist[pr[c]];
          }
          clahe_tile_lut(hist, lut.data() + (ty * tilesX + tx) * 256, clip, lut_scale);
        }
      const int64_t nl = tilesX * tilesY * 256;
#pragma omp simd
      for (int64_t i = 0; i < nl; ++i) lutf[size_t(i)] = float(lut[size_t(i)]);
      for (int64_t r = 0; r < H; ++r) {
        const float tyf = float(r) * inv_th - 0.5f;
        int64_t ty1 = int64_t(std::floor(tyf));
        const float ya = tyf - float(ty1), ya1 = 1.0f - ya;
        const int64_t ty2 = std::min<int64_t>(ty1 + 1, tilesY - 1);
        ty1 = std::max<int64_t>(ty1, 0);
        const float* __restrict L1 = lutf.data() + ty1 * tilesX * 256;
        const float* __restrict L2 = lutf.data() + ty2 * tilesX * 256;
        const uint8_t* __restrict pr = plane.data() + r * Wp;
        const int32_t* __restrict p1 = o1.data();
        const int32_t* __restrict p2 = o2.data();
        const float* __restrict pa = xa.data();
        const float* __restrict pa1 = xa1.data();
        uint8_t* __restrict o = C == 1 ? ys + r * W : out_row.data();
#pragma omp simd
        for (int64_t i = 0; i < W; ++i) {
          const int32_t v = pr[i], i1 = p1[i] + v, i2 = p2[i] + v;
          const float res = (L1[i1] * pa1[i] + L1[i2] * pa[i]) * ya1 + (L2[i1] * pa1[i] + L2[i2] * pa[i]) * ya;
          float rr = std::nearbyint(res);
          rr = rr < 0.0f ? 0.0f : (rr > 255.0f ? 255.0f : rr);
          o[i] = uint8_t(int32_t(rr));
        }
        if (C != 1) {
          uint8_t* od = ys + r * W * C;
          for (int64_t i = 0; i < W; ++i) od[i * C] = o[i];
        }
      }
    }
  }
}

}  // namespace

extern const augment::OpKernels augment_op_kernels;
const augment::OpKernels augment_op_kernels = {apply_ops_u8, resize_u8, remap_u8, clahe_u8};

}  // namespace CNNKIT_ISA_NS
}  // namespace cnnkit
