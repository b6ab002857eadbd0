// Row attention: every query row attends its own slot's keys 0..position, alone.
//
// One call covers decode rows, speculative verify chunks and prefill chunks: a row at
// (slot, position) reads K/V [slot, :, 0..position] of the cache, after this step's K/V were
// written. Each (row, kv head) is computed by the same code in the same order whatever the other
// rows are, so a token's attention output does not depend on how many rows were batched with it
// or where in a chunk it sits. That is what makes a verify chunk of any length give the same
// numbers as any other (speculation stays lossless in bf16) without padding queries or keys.
//
// Inner products and sums are vectorised in a fixed order (AVX-512 where built for it): the
// order depends only on the head dim and the row's key count.
#include "kernels.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <cmath>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define ROW_ATTENTION_AVX512 1
#endif

namespace {

using bf16 = at::BFloat16;

#ifdef ROW_ATTENTION_AVX512
inline __m512 load_bf16(const bf16* p) {  // 16 bf16 -> 16 fp32 (exact: bf16 is fp32's top half)
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline void store_bf16(bf16* p, __m512 x) {  // round to nearest even, as bf16(float)
#ifdef __AVX512BF16__
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(x));
#else
  alignas(64) float tmp[16];
  _mm512_store_ps(tmp, x);
  for (int i = 0; i < 16; ++i) p[i] = bf16(tmp[i]);
#endif
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
  __m512 acc[G][B];
  for (int g = 0; g < G; ++g)
    for (int b = 0; b < B; ++b) acc[g][b] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    __m512 vj[B];
    for (int b = 0; b < B; ++b) vj[b] = load_bf16(v + j * stride + b * 16);
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(scores[g * n + j]);
      for (int b = 0; b < B; ++b) acc[g][b] = _mm512_fmadd_ps(p, vj[b], acc[g][b]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int b = 0; b < B; ++b) store_bf16(out + g * D + b * 16, acc[g][b]);
}

using AttendFn = void (*)(const float*, const bf16*, const bf16*, int64_t, int64_t, float*, bf16*);

template <int B>
AttendFn pick_group(int64_t G) {
  switch (G) {
    case 1: return attend_fixed<1, B>;
    case 2: return attend_fixed<2, B>;
    case 3: return attend_fixed<3, B>;
    case 4: return attend_fixed<4, B>;
    case 5: return attend_fixed<5, B>;
    case 6: return attend_fixed<6, B>;
    case 7: return attend_fixed<7, B>;
    case 8: return attend_fixed<8, B>;
    default: return nullptr;
  }
}

AttendFn pick(int64_t G, int64_t D) {
  if (D == 64) return pick_group<4>(G);
  if (D == 128) return pick_group<8>(G);
  return nullptr;
}
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
  std::vector<float> qf(G * D), scores;
  for (int64_t t = a; t < b; ++t) {
    const int64_t r = t / H, h = t % H, n = pp[r] + 1;
    const bf16* qs = qp + r * q_row + h * G * D;
    for (int64_t i = 0; i < G * D; ++i) qf[i] = static_cast<float>(qs[i]) * scale;
    scores.resize(G * n);
    const int64_t base = (sp[r] * H + h) * L * D;
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
