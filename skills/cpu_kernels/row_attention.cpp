// Row attention: every query row attends its own slot's keys 0..position, alone.
//
// One call covers decode rows, speculative verify chunks and prefill chunks: a row at
// (slot, position) reads K/V [slot, :, 0..position] of the cache, after this step's K/V were
// written. Each (row, kv head) is computed by the same code in the same order whatever the other
// rows are, so a token's attention output does not depend on how many rows were batched with it
// or where in a chunk it sits. That is what makes a verify chunk of any length give the same
// numbers as any other (speculation stays lossless in bf16) without padding queries or keys.
//
// Inner products and sums are vectorised in a fixed order (AVX-512 where built for it, the scores
// by bf16 dot products where the CPU has AVX-512 BF16): the order depends only on the head dim and
// the row's key count.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ROW_ATTENTION_AVX512 1
#if defined(__AVX512BF16__)
#define ROW_ATTENTION_DOT 1  // the scores from bf16 dot products (attend_dot)
#endif
#endif

namespace {

using bf16 = at::BFloat16;

#ifdef ROW_ATTENTION_AVX512
inline __m512 load_bf16(const bf16* p) {  // 16 bf16 -> 16 fp32 (exact: bf16 is fp32's top half)
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

#endif

#ifdef ROW_ATTENTION_AVX512
// max(s[0..n)) in vectors: a max is exact, so any order gives the scalar loop's value, ~10x faster
// (a scalar max is a chain of dependent instructions).
inline float max_of(const float* s, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1);
    mx = _mm512_mask_max_ps(mx, m, mx, _mm512_maskz_loadu_ps(m, s + j));
  }
  return _mm512_reduce_max_ps(mx);
}

// s[0..n) <- softmax(s), in place: max, exp in blocks of 16, one vector sum reduced at the end.
void softmax_inplace(float* s, int64_t n) {
  const __m512 vmx = _mm512_set1_ps(max_of(s, n));
  __m512 total = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vmx));
    _mm512_storeu_ps(s + j, e);
    total = _mm512_add_ps(total, e);
  }
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), vmx)));
    _mm512_mask_storeu_ps(s + j, m, e);
    total = _mm512_add_ps(total, e);
  }
  const float inv = 1.f / _mm512_reduce_add_ps(total);
  const __m512 vinv = _mm512_set1_ps(inv);
  for (j = 0; j + 16 <= n; j += 16) _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), vinv));
  for (; j < n; ++j) s[j] *= inv;
}

// 16 fp32 values of even head dims and 16 of odd ones -> 32 bf16 in dim order, each rounded to
// nearest even, as bf16(float).
inline void store_even_odd(bf16* p, __m512 even, __m512 odd) {
#ifdef __AVX512BF16__
  const __m512i e = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(even));
  const __m512i o = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(odd)), 16);
  _mm512_storeu_si512(reinterpret_cast<void*>(p), _mm512_or_si512(e, o));
#else
  alignas(64) float e[16], o[16];
  _mm512_store_ps(e, even);
  _mm512_store_ps(o, odd);
  for (int i = 0; i < 16; ++i) p[2 * i] = bf16(e[i]), p[2 * i + 1] = bf16(o[i]);
#endif
}

// out[g] = sum_j p[g][j] V[j] for the G heads of one (row, kv head), p the softmaxed scores [G, n]:
// the accumulators (head dim 16 * B) in registers. Each 32 bf16 of a V row become fp32 in two
// instructions, the even dims (shifted up) and the odd ones (masked), instead of four for 16 in
// order; every dim is summed over the keys in the same order as before, so the bits are the same.
template <int G, int B>
void values_fixed(const bf16* v, int64_t stride, int64_t n, const float* scores, bf16* out) {
  static_assert(B % 2 == 0, "head dims in pairs of 16");
  constexpr int64_t D = 16 * B;
  constexpr int P = B / 2;
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 even[G][P], odd[G][P];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < P; ++c) even[g][c] = odd[g][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    __m512 ve[P], vo[P];
    for (int c = 0; c < P; ++c) {
      const __m512i raw = _mm512_loadu_si512(reinterpret_cast<const void*>(v + j * stride + c * 32));
      ve[c] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      vo[c] = _mm512_castsi512_ps(_mm512_and_si512(raw, high));
    }
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g * n + j]);
      for (int c = 0; c < P; ++c) {
        even[g][c] = _mm512_fmadd_ps(p, ve[c], even[g][c]);
        odd[g][c] = _mm512_fmadd_ps(p, vo[c], odd[g][c]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < P; ++c) store_even_odd(out + g * D + c * 32, even[g][c], odd[g][c]);
}

// One (row, kv head) with the group size G and head dim 16 * B known at compile time, so the
// G x B accumulators live in registers and each key's K / V row is converted to fp32 once.
template <int G, int B>
void attend_fixed(const float* q, const bf16* k, const bf16* v, int64_t stride, int64_t n, float* scores, bf16* out) {
  constexpr int64_t D = 16 * B;
  __m512 qv[G][B];
  for (int g = 0; g < G; ++g)
    for (int b = 0; b < B; ++b) qv[g][b] = _mm512_loadu_ps(q + g * D + b * 16);
  for (int64_t j = 0; j < n; ++j) {
    __m512 kj[B];
    for (int b = 0; b < B; ++b) kj[b] = load_bf16(k + j * stride + b * 16);
    for (int g = 0; g < G; ++g) {
      __m512 acc = _mm512_mul_ps(qv[g][0], kj[0]);
      for (int b = 1; b < B; ++b) acc = _mm512_fmadd_ps(qv[g][b], kj[b], acc);
      scores[g * n + j] = _mm512_reduce_add_ps(acc);
    }
  }
  for (int g = 0; g < G; ++g) softmax_inplace(scores + g * n, n);
  values_fixed<G, B>(v, stride, n, scores, out);
}

#ifdef ROW_ATTENTION_DOT
// Lane i of the result: the sum of v[i]'s 16 lanes (a transposed add tree, 46 instructions for
// what 16 _mm512_reduce_add_ps take ~130).
inline __m512 sum16(const __m512* v) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; ++i)  // 128-bit lanes [v2i 0+2, v2i 1+3, v2i+1 0+2, v2i+1 1+3]
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit lane L: four partial sums of v[4i + L]
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
  const __m512 c0 = _mm512_add_ps(_mm512_unpacklo_ps(b[0], b[1]), _mm512_unpackhi_ps(b[0], b[1]));
  const __m512 c1 = _mm512_add_ps(_mm512_unpacklo_ps(b[2], b[3]), _mm512_unpackhi_ps(b[2], b[3]));
  const __m512 d = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(c0), _mm512_castps_pd(c1))),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(c0), _mm512_castps_pd(c1))));
  // lane 4L + m of d holds the sum of v[4m + L]
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  return _mm512_permutexvar_ps(order, d);
}

// One (row, kv head) with the scores from AVX-512 BF16 dot products: q and K stay in bf16 (their
// products are exact in fp32), 32 of them a dot instruction, and the sums of 16 keys leave their
// vectors together (sum16) instead of one horizontal reduction each. The softmax and the values
// are attend_fixed's. q: the row's G heads, bf16 [G, D], unscaled; C = D / 32.
template <int G, int C>
void attend_dot(const bf16* q, float scale, const bf16* k, const bf16* v, int64_t stride, int64_t n, float* scores,
                bf16* out) {
  __m512bh qv[G][C];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c)
      qv[g][c] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(q + g * 32 * C + c * 32));
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t keys = std::min<int64_t>(16, n - j0);
    for (int g = 0; g < G; ++g) {
      __m512 part[16];
      for (int64_t i = 0; i < 16; ++i) {
        __m512 acc = _mm512_setzero_ps();
        if (i < keys)
          for (int c = 0; c < C; ++c)
            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(
                                            k + (j0 + i) * stride + c * 32)), qv[g][c]);
        part[i] = acc;
      }
      _mm512_mask_storeu_ps(scores + g * n + j0, static_cast<__mmask16>((1u << keys) - 1),
                            _mm512_mul_ps(sum16(part), vscale));
    }
  }
  for (int g = 0; g < G; ++g) softmax_inplace(scores + g * n, n);
  values_fixed<G, 2 * C>(v, stride, n, scores, out);
}
#endif

// make(std::integral_constant<int, G>{}) for the group sizes the kernels are built for (1-8), else null.
template <typename Make>
auto for_group(int64_t G, Make make) -> decltype(make(std::integral_constant<int, 1>{})) {
  switch (G) {
    case 1: return make(std::integral_constant<int, 1>{});
    case 2: return make(std::integral_constant<int, 2>{});
    case 3: return make(std::integral_constant<int, 3>{});
    case 4: return make(std::integral_constant<int, 4>{});
    case 5: return make(std::integral_constant<int, 5>{});
    case 6: return make(std::integral_constant<int, 6>{});
    case 7: return make(std::integral_constant<int, 7>{});
    case 8: return make(std::integral_constant<int, 8>{});
    default: return nullptr;
  }
}

using AttendFn = void (*)(const float*, const bf16*, const bf16*, int64_t, int64_t, float*, bf16*);

AttendFn pick(int64_t G, int64_t D) {
  if (D == 64) return for_group(G, [](auto g) -> AttendFn { return attend_fixed<decltype(g)::value, 4>; });
  if (D == 128) return for_group(G, [](auto g) -> AttendFn { return attend_fixed<decltype(g)::value, 8>; });
  return nullptr;
}

#ifdef ROW_ATTENTION_DOT
using DotFn = void (*)(const bf16*, float, const bf16*, const bf16*, int64_t, int64_t, float*, bf16*);

DotFn pick_dot(int64_t G, int64_t D) {
  if (D == 64) return for_group(G, [](auto g) -> DotFn { return attend_dot<decltype(g)::value, 2>; });
  if (D == 128) return for_group(G, [](auto g) -> DotFn { return attend_dot<decltype(g)::value, 4>; });
  return nullptr;
}
#endif
#endif

// One (row, kv head): G query heads of dim D against n keys. q is pre-scaled fp32 [G, D];
// scores is scratch of G * n floats; out [G, D] bf16. The portable path: the same math, scalar.
void attend(const float* q, const bf16* k, const bf16* v, int64_t stride, int64_t n, int64_t G, int64_t D,
            float* scores, bf16* out) {
  for (int64_t g = 0; g < G; ++g) {  // portable path: the same math, scalar, in key order
    float* s = scores + g * n;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) {
      float dot = 0.f;
      for (int64_t e = 0; e < D; ++e) dot += q[g * D + e] * static_cast<float>(k[j * stride + e]);
      s[j] = dot;
      mx = std::max(mx, dot);
    }
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) total += (s[j] = std::exp(s[j] - mx));
    std::vector<float> acc(D, 0.f);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t e = 0; e < D; ++e) acc[e] += s[j] / total * static_cast<float>(v[j * stride + e]);
    for (int64_t e = 0; e < D; ++e) out[g * D + e] = bf16(acc[e]);
  }
}

}  // namespace

// Tasks [a, b) of row_attention, task t = (row t / H, kv head t % H): q [rows, H, G, D] with rows
// q_row apart, the caches [slots, H, L, D], out [rows, H, G, D] contiguous. No bounds checks: the
// caller checked every slot and position.
void row_attention_tasks(const bf16* qp, int64_t q_row, const bf16* kp, const bf16* vp, const int64_t* sp,
                         const int64_t* pp, int64_t H, int64_t G, int64_t D, int64_t L, bf16* op, int64_t a, int64_t b) {
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
#ifdef ROW_ATTENTION_AVX512
  const AttendFn fixed = pick(G, D);
#endif
#ifdef ROW_ATTENTION_DOT
  const DotFn dot = pick_dot(G, D);
#endif
  std::vector<float> qf(G * D), scores;
  for (int64_t t = a; t < b; ++t) {
    const int64_t r = t / H, h = t % H, n = pp[r] + 1;
    const bf16* qs = qp + r * q_row + h * G * D;
    scores.resize(G * n);
    const int64_t base = (sp[r] * H + h) * L * D;
#ifdef ROW_ATTENTION_DOT
    if (dot) {
      dot(qs, scale, kp + base, vp + base, D, n, scores.data(), op + t * G * D);
      continue;
    }
#endif
    for (int64_t i = 0; i < G * D; ++i) qf[i] = static_cast<float>(qs[i]) * scale;
#ifdef ROW_ATTENTION_AVX512
    if (fixed) {
      fixed(qf.data(), kp + base, vp + base, D, n, scores.data(), op + t * G * D);
      continue;
    }
#endif
    attend(qf.data(), kp + base, vp + base, D, n, G, D, scores.data(), op + t * G * D);
  }
}

std::pair<int64_t, int64_t> attention_share(const int64_t* positions, int64_t rows, int64_t heads, int tid,
                                            int threads) {
  // A task also costs its setup (the query's conversion, the softmax's passes): ~16 keys' worth.
  constexpr int64_t kTaskKeys = 16;
  int64_t total = 0;
  for (int64_t r = 0; r < rows; ++r) total += (positions[r] + 1 + kTaskKeys) * heads;
  // Thread i starts at the first task where the keys before it reach i / threads of the total.
  auto start = [&](int i) -> int64_t {
    if (i <= 0) return 0;
    if (i >= threads) return rows * heads;
    const int64_t target = (total * i + threads - 1) / threads;
    int64_t seen = 0;
    for (int64_t t = 0; t < rows * heads; ++t) {
      if (seen >= target) return t;
      seen += positions[t / heads] + 1 + kTaskKeys;
    }
    return rows * heads;
  };
  return {start(tid), start(tid + 1)};
}

torch::Tensor row_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                            const torch::Tensor& slots, const torch::Tensor& positions) {
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_cache.scalar_type() == at::kBFloat16 &&
              v_cache.scalar_type() == at::kBFloat16, "row_attention: q and the cache must be bfloat16");
  TORCH_CHECK(q.dim() == 4 && k_cache.dim() == 4 && v_cache.dim() == 4, "row_attention: q [rows, kv_heads, group, "
              "dim] and the cache [slots, kv_heads, max_len, dim]");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "row_attention: the cache must be contiguous");
  TORCH_CHECK(slots.scalar_type() == at::kLong && positions.scalar_type() == at::kLong, "slots, positions: int64");
  auto qc = q.contiguous();
  const int64_t R = qc.size(0), H = qc.size(1), G = qc.size(2), D = qc.size(3);
  const int64_t S = k_cache.size(0), L = k_cache.size(2);
  TORCH_CHECK(k_cache.size(1) == H && k_cache.size(3) == D && v_cache.sizes() == k_cache.sizes(),
              "row_attention: cache shape does not match q");
  TORCH_CHECK(slots.numel() == R && positions.numel() == R, "row_attention: one slot and position per row");
  auto sc = slots.contiguous(), pc = positions.contiguous();
  const int64_t *sp = sc.data_ptr<int64_t>(), *pp = pc.data_ptr<int64_t>();
  int64_t keys = 0;  // summed over rows: the work is proportional to it
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK(sp[r] >= 0 && sp[r] < S && pp[r] >= 0 && pp[r] < L, "row_attention: slot or position out of range");
    keys += pp[r] + 1;
  }
  auto out = torch::empty_like(qc);
  const bf16 *qp = qc.data_ptr<bf16>(), *kp = k_cache.data_ptr<bf16>(), *vp = v_cache.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  // A prompt chunk's last rows read many more keys than its first: the threads split the keys.
  if (R * H <= grain_for(2 * G * D * keys / std::max<int64_t>(1, R))) {
    row_attention_tasks(qp, H * G * D, kp, vp, sp, pp, H, G, D, L, op, 0, R * H);
  } else {
#pragma omp parallel num_threads(at::get_num_threads())
    {
      const std::pair<int64_t, int64_t> mine = attention_share(pp, R, H, omp_get_thread_num(), omp_get_num_threads());
      row_attention_tasks(qp, H * G * D, kp, vp, sp, pp, H, G, D, L, op, mine.first, mine.second);
    }
  }
  return out;
}
