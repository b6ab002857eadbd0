// The greedy token of a few rows' bf16 logits from an int8 screen of the lm_head: at a 1-row decode
// step the head (vocab x hidden bf16, 57 MB for SmolLM2) is a fifth of the weights a step reads.
//
// The screen holds the head in int8, one scale per token (s_v = max_k |W_vk| / 127), in tiles of
// 16 tokens x k. For a row x it computes y^_v = s_v sum_k x_k q_vk in fp32 (half the bytes of the
// bf16 head) and a bound B_v on |y^_v - y_v|, where y_v is the logit small_gemm computes from the
// bf16 head before its bf16 rounding:
//   quantisation  sum_k |x_k| |W_vk - s_v q_vk| <= s_v / 2 |x|_1,
//   the two fp32 sums (small_gemm's, 2 roundings a pair, and the screen's)
//                 <= 3 K 2^-24 sum_k |x_k| |W_vk| <= 3 K 2^-24 127 s_v |x|_1,
// so B_v = 127 s_v |x|_1 (1/254 (1 + 2^-10) + 3 K 2^-24) + 1e-30 (products the BF16 dot product
// flushes to zero). Let lo be the largest y^_v - B_v: the argmax t of the bf16 logits has
// bf16(y_t) >= bf16(lo), so y_t >= lo - 1.5 ulp, and every tile holding a token with
// y^_v + B_v >= lo - 2 ulp (ulp at 2 |lo|) is computed again by small_gemm itself (the same bits
// as the whole head) and the first of the largest bf16 logits among them wins, as argmax picks.
// Tokens outside those tiles are below the winner in bf16, so the result is the full head's
// argmax whatever the weights; a screen that is not finite returns -1 (the caller runs the head).
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using bf16 = at::BFloat16;
constexpr int64_t kTile = 16;
constexpr int64_t kMaxRows = 4;  // from ~5 rows small_gemm is bound by its dot products, not the bytes

double bound_factor(int64_t K) { return (1.0 / 254.0) * (1.0 + std::ldexp(1.0, -10)) + 3.0 * K * std::ldexp(1.0, -24); }

#if defined(__AVX512F__)
// Rows [0, R) of x (fp32, K apart) against one screen tile: q [K, 16] int8. Four accumulators per
// row (k mod 4) so that the multiply-adds do not wait on each other.
template <int R>
void screen_tile(const float* x, int64_t K, const int8_t* q, __m512* out) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= K; k += 4)
    for (int j = 0; j < 4; ++j) {
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (k + j) * kTile))));
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k + j]), w, acc[r][j]);
    }
  for (; k < K; ++k) {
    const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k * kTile))));
    for (int r = 0; r < R; ++r) acc[r][0] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * K + k]), w, acc[r][0]);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
}

using ScreenFn = void (*)(const float*, int64_t, const int8_t*, __m512*);
constexpr ScreenFn kScreenFns[kMaxRows + 1] = {nullptr, screen_tile<1>, screen_tile<2>, screen_tile<3>, screen_tile<4>};
#endif

}  // namespace

bool greedy_screen_available() {
#if defined(__AVX512F__)
  return small_gemm_available();
#else
  return false;
#endif
}

// W [N, K] bf16 -> (q [tiles, K, 16] int8, scales [tiles * 16] fp32); padding tokens are zero.
std::vector<torch::Tensor> greedy_screen_pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "greedy_screen_pack: W must be [N, K] bf16");
  auto w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1), tiles = (N + kTile - 1) / kTile;
  auto q = torch::zeros({tiles, K, kTile}, w.options().dtype(at::kChar));
  auto scales = torch::zeros({tiles * kTile}, w.options().dtype(at::kFloat));
  const bf16* src = w.data_ptr<bf16>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    float top = 0.f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      const float v = static_cast<float>(src[n * K + k]);
      finite = finite && std::isfinite(v);
      top = std::max(top, std::fabs(v));
    }
    if (!finite) {  // an inf or NaN weight: a NaN scale makes every screen not finite (the head decides)
      sp[n] = NAN;
      continue;
    }
    if (!(top > 0.f)) continue;  // an all-zero token: scale 0, q 0, logit 0 in both
    const float s = top / 127.f;
    sp[n] = s;
    for (int64_t k = 0; k < K; ++k) {
      const float v = std::nearbyint(static_cast<float>(src[n * K + k]) / s);
      qp[((n / kTile) * K + k) * kTile + n % kTile] = static_cast<int8_t>(std::max(-127.f, std::min(127.f, v)));
    }
  }
  return {q, scales};
}

// x [rows <= 4, K] bf16 (the final norm's output), head: small_gemm_pack of W [N, K] -> the argmax
// of each row of small_gemm(x, head, N), or -1 where the screen is not finite. `margin` scales the
// bound and the ulp allowance: 1 is exact; tests pass 0 to show that without them the screen errs.
torch::Tensor greedy_screen_ids(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scales,
                                const torch::Tensor& head, int64_t N, double margin) {
  TORCH_CHECK(margin >= 0, "greedy_screen_ids: margin must be >= 0");
  TORCH_CHECK(greedy_screen_available(), "greedy_screen_ids: this build has no AVX-512 BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.size(0) >= 1 && x.size(0) <= kMaxRows,
              "greedy_screen_ids: x must be [1..4, K] bf16");
  const int64_t rows = x.size(0), K = x.size(1), tiles = (N + kTile - 1) / kTile;
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kChar && q.size(0) == tiles && q.size(1) == K &&
              q.size(2) == kTile && scales.numel() == tiles * kTile && scales.scalar_type() == at::kFloat,
              "greedy_screen_ids: the screen does not come from greedy_screen_pack of an [N, K] weight");
  TORCH_CHECK(head.dim() == 4 && head.size(0) == tiles && head.size(1) == (K + 1) / 2 && K % 2 == 0,
              "greedy_screen_ids: head does not come from small_gemm_pack of the same weight");
  auto ids = torch::full({rows}, -1, x.options().dtype(at::kLong));
#if defined(__AVX512F__)
  auto xc = x.contiguous();
  std::vector<float> xf(rows * K), bound(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double l1 = 0;
    for (int64_t k = 0; k < K; ++k) l1 += std::fabs(xf[r * K + k] = static_cast<float>(xc.data_ptr<bf16>()[r * K + k]));
    bound[r] = static_cast<float>(margin * 127.0 * l1 * bound_factor(K) * (1 + 1e-6));
  }
  // Per tile and row: the largest y^ - B and y^ + B over its real tokens, and whether all were finite.
  std::vector<float> lo(rows * tiles), hi(rows * tiles);
  std::vector<char> finite(rows * tiles);
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  at::parallel_for(0, tiles, grain_for(rows * K * kTile), [&](int64_t a, int64_t b) {
    __m512 y[kMaxRows];
    for (int64_t t = a; t < b; ++t) {
      kScreenFns[rows](xf.data(), K, qp + t * K * kTile, y);
      const __m512 s = _mm512_loadu_ps(sp + t * kTile);
      const int64_t cols = std::min<int64_t>(kTile, N - t * kTile);
      const __mmask16 real = static_cast<__mmask16>((1u << cols) - 1);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 yh = _mm512_mul_ps(y[r], s);
        const __m512 bv = _mm512_add_ps(_mm512_mul_ps(s, _mm512_set1_ps(bound[r])), _mm512_set1_ps(margin > 0 ? 1e-30f : 0.f));
        const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        lo[r * tiles + t] = _mm512_reduce_max_ps(_mm512_mask_mov_ps(ninf, real, _mm512_sub_ps(yh, bv)));
        hi[r * tiles + t] = _mm512_reduce_max_ps(_mm512_mask_mov_ps(ninf, real, _mm512_add_ps(yh, bv)));
        // finite: y^ - y^ is 0 exactly where y^ is finite
        finite[r * tiles + t] = _mm512_mask_cmp_ps_mask(real, _mm512_sub_ps(yh, yh), _mm512_setzero_ps(), _CMP_EQ_OQ) == real;
      }
    }
  });
  const bf16* hp = head.data_ptr<bf16>();
  const int64_t pairs = head.size(1);
  std::vector<bf16> exact(tiles * kTile);
  auto* idp = ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    float top = -std::numeric_limits<float>::infinity();
    bool ok = true;
    for (int64_t t = 0; t < tiles; ++t) {
      ok = ok && finite[r * tiles + t];
      top = std::max(top, lo[r * tiles + t]);
    }
    if (!ok || !std::isfinite(top)) continue;
    int exp2;
    std::frexp(2.f * std::fabs(top), &exp2);  // 2|top| < 2^exp2: a bf16 ulp there is at most 2^(exp2 - 8)
    const float floor = top - static_cast<float>(margin) * 2.f * std::ldexp(1.f, exp2 - 8);
    float best = -std::numeric_limits<float>::infinity();
    int64_t best_id = -1;
    for (int64_t t = 0; t < tiles && ok; ++t) {
      if (!(hi[r * tiles + t] >= floor)) continue;
      small_gemm_tiles(xc.data_ptr<bf16>() + r * K, 1, K, hp, pairs, N, exact.data(), t, t + 1);
      for (int64_t c = t * kTile; c < std::min(N, (t + 1) * kTile); ++c) {
        const float v = static_cast<float>(exact[c]);
        ok = ok && !std::isnan(v);
        if (v > best || best_id < 0) best = v, best_id = c;  // in id order: the first of equals stays
      }
    }
    if (ok) idp[r] = best_id;
  }
#endif
  return ids;
}
