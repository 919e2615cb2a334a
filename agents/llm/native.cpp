// Products of a few activation rows with a bf16, int8 or fp32 weight matrix: decode steps.
//
// y[m, n] = sum_k x[m, k] * w[n, k] (* scales[n] for int8), accumulated in fp32. Decode reads
// every weight once a token, so the products are bound by how fast the weights stream in:
// each weight vector is loaded and widened to fp32 once and multiplied into every activation
// row of a tile from registers. Built at run time by native.py (torch.utils.cpp_extension);
// written with the compiler's generic vector types, so it builds for any CPU (Arm phones too),
// with x86 AVX2 instructions where they exist for the widening loads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

constexpr int L = 8;  // fp32 lanes a vector
typedef float vf __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));
typedef uint32_t vu __attribute__((vector_size(4 * L)));
typedef uint16_t vh __attribute__((vector_size(2 * L)));
typedef int8_t vb __attribute__((vector_size(L)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

#ifdef __AVX2__
inline vf load(const uint16_t* p) {  // bf16 bits -> fp32: the same bits, 16 places up
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return (vf)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline vf load(const int8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
// Keep a vector in a register: GCC would fold its load into every FMA that uses it, and the
// loads, not the FMAs, would bound a tile (for fp32 weights it folded the weights' loads into
// the twelve FMAs of a three-by-four tile: sixteen loads where seven do).
inline void in_register(vf& v) { __asm__("" : "+x"(v)); }
inline float hsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else
inline vf load(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline vf load(const int8_t* p) {
  vb b;
  std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
}
inline void in_register(vf&) {}
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}
#endif

inline float widen(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline float widen(int8_t v) { return float(v); }
inline float widen(float v) { return v; }

// dot[r * MB + m] = sum_k w[r * K + k] * x[m * K + k] for R weight rows and MB activation rows.
// U accumulators a pair, so that one pair's additions do not wait on each other. With PF, the
// tile also asks for the cache lines of pf's R rows (a group of weight rows a few ahead): a
// tile of several activation rows computes long enough on each weight line that the
// hardware's own prefetching falls behind. The prefetches go once a cache line of weights, in
// a loop of their own (GCC dropped them from the twelve-accumulator loop when they sat in it).
template <int R, int MB, int U, bool PF, typename W>
inline void tile(const W* w, int64_t K, const float* x, float* dot, const W* pf) {
  constexpr int S = U * L;                                     // weights a step
  constexpr int T = S * int(sizeof(W)) >= 64 ? 1 : 64 / (S * int(sizeof(W)));  // steps a line
  vf acc[U][R][MB] = {};
  auto step = [&](int64_t k) {
    for (int u = 0; u < U; ++u) {
      vf wv[R];
      for (int r = 0; r < R; ++r) {
        wv[r] = load(w + r * K + k + u * L);
        if (MB > 1) in_register(wv[r]);
      }
      for (int m = 0; m < MB; ++m) {
        vf xv = load(x + m * K + k + u * L);
        in_register(xv);
        for (int r = 0; r < R; ++r) acc[u][r][m] += wv[r] * xv;
      }
    }
  };
  int64_t k = 0;
  if (PF)
    for (; k + S * T <= K; k += S * T) {
      for (int r = 0; r < R; ++r)
        for (int b = 0; b < S * T * int(sizeof(W)); b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(pf + r * K + k) + b);
      for (int t = 0; t < T; ++t) step(k + t * S);
    }
  for (; k + S <= K; k += S) step(k);
  for (; k + L <= K; k += L)
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MB; ++m) acc[0][r][m] += load(w + r * K + k) * load(x + m * K + k);
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      vf a = acc[0][r][m];
      for (int u = 1; u < U; ++u) a += acc[u][r][m];
      float s = hsum(a);
      for (int64_t j = k; j < K; ++j) s += widen(w[r * K + j]) * x[m * K + j];
      dot[r * MB + m] = s;
    }
}

// y[m0 .. m0 + MB, n .. n + R) from one tile, each column scaled (int8) and stored.
template <int R, int MB, int U, bool PF, typename W, typename Y>
inline void put(const W* w, const at::BFloat16* scales, int64_t K, int64_t N, const float* x, Y* y,
                int64_t m0, int64_t n, const W* pf) {
  float dot[R * MB];
  tile<R, MB, U, PF>(w + n * K, K, x + m0 * K, dot, pf);
  for (int r = 0; r < R; ++r) {
    const float s = scales ? float(scales[n + r]) : 1.f;
    for (int m = 0; m < MB; ++m) y[(m0 + m) * N + n + r] = Y(dot[r * MB + m] * s);
  }
}

// Every activation row (M >= MB) against weight rows n0 .. n1, R weight rows at a time: the
// tiles of activation rows (MB at a time, then the rest) run back to back on the same R weight
// rows, which stay in L1 after the first tile, so each weight is read from memory once; the
// first tile prefetches the group D ahead (D = 0: none).
template <int R, int MB, int U, int D, typename W, typename Y>
void groups(const W* w, const at::BFloat16* scales, int64_t K, int64_t N, const float* x, int64_t M,
            Y* y, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    // The group D ahead, or (near the range's end) this one again, which costs nothing.
    const W* pf = w + (n + R * (D + 1) <= n1 ? n + R * D : n) * K;
    put<R, MB, U, (D > 0)>(w, scales, K, N, x, y, 0, n, pf);
    int64_t m0 = MB;
    for (; m0 + MB <= M; m0 += MB) put<R, MB, U, false>(w, scales, K, N, x, y, m0, n, pf);
    switch (M - m0) {
      case 3: put<R, 3, 1, false>(w, scales, K, N, x, y, m0, n, pf); break;
      case 2: put<R, 2, 1, false>(w, scales, K, N, x, y, m0, n, pf); break;
      case 1: put<R, 1, 2, false>(w, scales, K, N, x, y, m0, n, pf); break;
      default: break;
    }
  }
  for (; n < n1; ++n)
    for (int64_t m0 = 0; m0 < M; ++m0) put<1, 1, 4, false>(w, scales, K, N, x, y, m0, n, w);
}

// Tiles: four activation rows against three weight rows (twelve accumulators: seven vector
// loads feed twelve FMAs) for four rows or more, the rest of the rows against the same three;
// three or two rows against two weight rows; one row against one weight row with four
// accumulators. A tile that reads a group of weight rows first prefetches the group two ahead
// (one row: eight rows ahead; not for fp32, whose one-row product, bound by the memory's
// bandwidth, ran 0.92x with it). SmolLM-135M's 210 matrices, one thread, interleaved against
// the previous kernels (eight rows against one weight row, a pass of the matrix for each four
// rows after eight, no prefetching): eight rows bf16 1.03-1.10x, int8 1.21-1.28x, fp32
// 1.02-1.08x (two threads: 1.14x, 1.26x, 1.02x); sixteen rows 1.23-1.26x; int8 24 rows 1.40x;
// one row bf16 1.12-1.21x, int8 1.09-1.20x, fp32 1.03x.
template <typename W, typename Y>
void rows(const W* w, const at::BFloat16* scales, int64_t K, int64_t N, const float* x, int64_t M, Y* y) {
  constexpr int D1 = sizeof(W) == 4 ? 0 : 8;
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    if (M >= 4)
      groups<3, 4, 1, 2>(w, scales, K, N, x, M, y, n0, n1);
    else if (M == 3)
      groups<2, 3, 1, 2>(w, scales, K, N, x, M, y, n0, n1);
    else if (M == 2)
      groups<2, 2, 2, 2>(w, scales, K, N, x, M, y, n0, n1);
    else if (M == 1)
      groups<1, 1, 4, D1>(w, scales, K, N, x, M, y, n0, n1);
  });
}

template <typename W>
at::Tensor product(const at::Tensor& x, const W* w, const at::BFloat16* scales, int64_t N) {
  const int64_t M = x.size(0), K = x.size(1);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  if (x.scalar_type() == at::kBFloat16)
    rows(w, scales, K, N, xf.data_ptr<float>(), M, y.data_ptr<at::BFloat16>());
  else
    rows(w, scales, K, N, xf.data_ptr<float>(), M, y.data_ptr<float>());
  return y;
}

void check(const at::Tensor& x, const at::Tensor& w, at::ScalarType wtype) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "x (M, K) and w (N, K) must be matrices");
  TORCH_CHECK(x.size(1) == w.size(1), "x has ", x.size(1), " columns, w ", w.size(1));
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat,
              "x must be bf16 or fp32");
  TORCH_CHECK(w.scalar_type() == wtype && w.is_contiguous(), "w must be contiguous ", wtype);
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "CPU tensors only");
}

at::Tensor bf16_rows(const at::Tensor& x, const at::Tensor& w) {
  check(x, w, at::kBFloat16);
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  return product(x, wp, nullptr, w.size(0));
}

at::Tensor fp32_rows(const at::Tensor& x, const at::Tensor& w) {
  check(x, w, at::kFloat);
  return product(x, w.data_ptr<float>(), nullptr, w.size(0));
}

at::Tensor int8_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
  check(x, w, at::kChar);
  TORCH_CHECK(scales.dim() == 1 && scales.size(0) == w.size(0) && scales.is_contiguous() &&
                  scales.scalar_type() == at::kBFloat16,
              "scales must be one contiguous bf16 value a row of w");
  return product(x, w.data_ptr<int8_t>(), scales.data_ptr<at::BFloat16>(), w.size(0));
}


// -- decode attention ---------------------------------------------------------------------

template <typename C>  // C: fp32, or bf16 bits (uint16_t)
inline float dot(const float* a, const C* b, int64_t n) {
  vf acc = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) acc += load(a + i) * load(b + i);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * widen(b[i]);
  return s;
}
template <typename C>
inline void axpy(float a, const C* x, float* y, int64_t n) {  // y += a * x
  const vf av = {a, a, a, a, a, a, a, a};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const vf r = load(y + i) + av * load(x + i);
    std::memcpy(y + i, &r, sizeof r);
  }
  for (; i < n; ++i) y[i] += a * widen(x[i]);
}
inline void store(const float* from, float* to, int64_t n) { std::memcpy(to, from, n * 4); }
inline void store(const float* from, uint16_t* to, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const at::BFloat16 b(from[i]);  // round to nearest even, as a tensor copy does
    std::memcpy(to + i, &b, 2);
  }
}

// One sequence's kv head: store the new key and value at position `pos`, then the G queries of
// its group attend over positions 0 .. pos (softmax in fp32).
template <typename C>
void attend(const float* q, const float* k, const float* v, C* keys, C* values, int64_t pos,
            int64_t G, int64_t D, float* out, float* scores) {
  store(k, keys + pos * D, D);
  store(v, values + pos * D, D);
  const int64_t T = pos + 1;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g) scores[g * T + t] = dot(q + g * D, keys + t * D, D);
  for (int64_t g = 0; g < G; ++g) {
    float* p = scores + g * T;
    float top = p[0];
    for (int64_t t = 1; t < T; ++t) top = std::max(top, p[t]);
    float sum = 0.f;
    for (int64_t t = 0; t < T; ++t) sum += (p[t] = std::exp(p[t] - top));
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < T; ++t) p[t] *= inv;
    std::fill(out + g * D, out + (g + 1) * D, 0.f);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t g = 0; g < G; ++g) axpy(scores[g * T + t], values + t * D, out + g * D, D);
}

// A decode step's attention at one layer, every sequence at once. q (S, Hkv, G, D): the queries,
// rotated and scaled; k, v (S, Hkv, D): the new keys and values, written into each sequence's
// caches (L, Hkv, capacity, D) at its position; returns (S, Hkv, G, D).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            at::TensorList k_caches, at::TensorList v_caches, int64_t layer,
                            at::IntArrayRef positions) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == at::kFloat && q.is_contiguous() && q.size(0) > 0,
              "q must be contiguous fp32 (S, Hkv, G, D), S > 0");
  const int64_t S = q.size(0), H = q.size(1), G = q.size(2), D = q.size(3);
  for (const at::Tensor* t : {&k, &v})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->sizes() == at::IntArrayRef({S, H, D}),
                "k and v must be contiguous fp32 (S, Hkv, D)");
  TORCH_CHECK(int64_t(k_caches.size()) == S && int64_t(v_caches.size()) == S &&
                  int64_t(positions.size()) == S,
              "one key cache, value cache and position a sequence");
  const auto dtype = k_caches[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "caches must be fp32 or bf16");
  for (int64_t s = 0; s < S; ++s)
    for (const at::Tensor* c : {&k_caches[s], &v_caches[s]})
      TORCH_CHECK(c->scalar_type() == dtype && c->is_contiguous() && c->dim() == 4 &&
                      c->size(1) == H && c->size(3) == D && layer >= 0 &&
                      layer < c->size(0) && positions[s] >= 0 && positions[s] < c->size(2),
                  "cache ", s, " must be contiguous (L, Hkv, capacity, D) holding position ",
                  positions[s], " of layer ", layer);
  at::Tensor out = at::empty_like(q);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  int64_t longest = 0;
  for (int64_t s = 0; s < S; ++s) longest = std::max(longest, positions[s] + 1);
  at::parallel_for(0, S * H, 1, [&](int64_t b, int64_t e) {
    std::vector<float> scores(G * longest);
    for (int64_t i = b; i < e; ++i) {
      const int64_t s = i / H, h = i % H, pos = positions[s];
      const at::Tensor &kc = k_caches[s], &vc = v_caches[s];
      const int64_t base = (layer * H + h) * kc.size(2) * D;  // this head's rows in the cache
      const float *qi = qp + i * G * D, *ki = kp + i * D, *vi = vp + i * D;
      float* oi = op + i * G * D;
      if (dtype == at::kFloat)
        attend(qi, ki, vi, kc.data_ptr<float>() + base, vc.data_ptr<float>() + base, pos, G, D, oi,
               scores.data());
      else
        attend(qi, ki, vi, reinterpret_cast<uint16_t*>(kc.data_ptr<at::BFloat16>()) + base,
               reinterpret_cast<uint16_t*>(vc.data_ptr<at::BFloat16>()) + base, pos, G, D, oi,
               scores.data());
    }
  });
  return out;
}

// -- RMSNorm of a few fp32 rows ------------------------------------------------------------
// One call instead of PyTorch's six small operators (about 30 us for a 576-wide row here).

template <typename W>
void normalize(const float* x, const W* w, int64_t C, float eps, float* y) {
  vf acc = {};
  int64_t i = 0;
  for (; i + L <= C; i += L) {
    const vf v = load(x + i);
    acc += v * v;
  }
  float ss = hsum(acc);
  for (; i < C; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / float(C) + eps);
  for (int64_t j = 0; j < C; ++j) y[j] = x[j] * r * widen(w[j]);
}
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be contiguous fp32 rows");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1) && w.is_contiguous() &&
                  (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16),
              "the weight must be one contiguous fp32 or bf16 value a column");
  at::Tensor y = at::empty_like(x);
  const int64_t C = x.size(1);
  for (int64_t s = 0; s < x.size(0); ++s) {
    const float* xs = x.data_ptr<float>() + s * C;
    float* ys = y.data_ptr<float>() + s * C;
    if (w.scalar_type() == at::kFloat)
      normalize(xs, w.data_ptr<float>(), C, float(eps), ys);
    else
      normalize(xs, reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), C, float(eps),
                ys);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY(slm_fleet_native, m) {
  m.def("bf16_rows(Tensor x, Tensor w) -> Tensor", bf16_rows);
  m.def("fp32_rows(Tensor x, Tensor w) -> Tensor", fp32_rows);
  m.def("int8_rows(Tensor x, Tensor w, Tensor scales) -> Tensor", int8_rows);
  m.def(
      "decode_attention(Tensor q, Tensor k, Tensor v, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, "
      "int layer, int[] positions) -> Tensor",
      decode_attention);
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", rms_norm);
}
