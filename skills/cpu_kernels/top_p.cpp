// Temperature and top-p sampling of a step's rows in one pass per row, for engine_core's sampler.
//
// Per row: the largest logit m, the weights w_j = exp((l_j - m) / T) (the heaviest is 1) and their
// total, then, for top-p < 1, the nucleus: the heaviest tokens (ties by id) whose weight before
// them is under top_p x total. It is looked for among the tokens of weight >= 1e-3, then >= 1e-5,
// and only then in the whole sorted vocabulary (SmolLM2 at temperature 1: 88% of its 0.9-nuclei
// lie within 1e-3 of the heaviest, all within 1e-4). The row's uniform number u picks the token
// where the kept weights' running sum first exceeds u x their total (for top-p = 1, in id order
// over the whole vocabulary). Every row is computed alone: a seeded row draws the same token
// whatever shares its step.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace {

// The token where the running sum of the weights (in the order given) first exceeds u x their total.
int64_t invert(const std::vector<std::pair<float, int64_t>>& order, double u, double total) {
  const double target = u * total;
  double running = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    running += order[i].first;
    if (running > target) return order[i].second;
  }
  return order.back().second;  // u close to 1 and rounding: the last kept token
}

// The largest logit, NaN where any is NaN.
float row_max(const float* logits, int64_t V) {
  float m = -INFINITY;
  int64_t j = 0;
#if defined(__AVX512F__)
  __m512 vm = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  for (; j + 16 <= V; j += 16) {
    const __m512 x = _mm512_loadu_ps(logits + j);
    nan |= _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    vm = _mm512_max_ps(vm, x);
  }
  m = nan ? NAN : _mm512_reduce_max_ps(vm);
#endif
  for (; j < V; ++j) m = std::isnan(logits[j]) || std::isnan(m) ? NAN : std::max(m, logits[j]);
  return m;
}

// Where the largest logit is not finite (NaN, +inf, all -inf): the token argmax picks, the first NaN
// else the first of the largest.
int64_t first_of(const float* logits, int64_t V, float m) {
  for (int64_t j = 0; j < V; ++j)
    if (std::isnan(m) ? std::isnan(logits[j]) : logits[j] == m) return j;
  return 0;
}

// w_j = exp((l_j - m) * scale) for every j; returns their sum (in double).
double weights(const float* logits, int64_t V, float m, float scale, float* w) {
  double total = 0;
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(scale);
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (; j + 16 <= V; j += 16) {
    const __m512 e = exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(logits + j), vm), vs));
    _mm512_storeu_ps(w + j, e);
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  total = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
#endif
  for (; j < V; ++j) total += (w[j] = std::exp((logits[j] - m) * scale));
  return total;
}

// (w_j, j) for every w_j >= cut, in id order.
void heads(const float* w, int64_t V, float cut, std::vector<std::pair<float, int64_t>>& out) {
  out.clear();
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 vc = _mm512_set1_ps(cut);
  for (; j + 16 <= V; j += 16)
    for (__mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + j), vc, _CMP_GE_OQ); k; k &= k - 1) {
      const int64_t i = j + __builtin_ctz(k);
      out.emplace_back(w[i], i);
    }
#endif
  for (; j < V; ++j)
    if (w[j] >= cut) out.emplace_back(w[j], j);
}

int64_t sample_row(const float* logits, int64_t V, float temperature, float top_p, double u, std::vector<float>& w) {
  const float m = row_max(logits, V);
  if (!std::isfinite(m)) return first_of(logits, V, m);
  const double total = weights(logits, V, m, 1.f / temperature, w.data());
  int64_t j = 0;
  if (top_p >= 1.f) {  // the whole vocabulary in id order
    const double target = u * total;
    double running = 0;
    for (j = 0; j < V; ++j)
      if ((running += w[j]) > target) return j;
    return V - 1;
  }
  std::vector<std::pair<float, int64_t>> order;
  const double mass = top_p * total;
  const auto heavier = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  for (const float cut : {1e-3f, 1e-5f, 0.f}) {
    heads(w.data(), V, cut, order);
    // The k heaviest for k = 256, 2048, ... until they hold the mass (a flat row keeps most of the
    // vocabulary above the cuts: selecting, then sorting only those, is what a full sort costs at most).
    bool found = false;
    for (size_t k = std::min<size_t>(256, order.size());; k = std::min(order.size(), 8 * k)) {
      if (k < order.size()) std::nth_element(order.begin(), order.begin() + k - 1, order.end(), heavier);
      double sum = 0;
      for (size_t i = 0; i < k; ++i) sum += order[i].first;
      found = sum >= mass || (cut == 0.f && k == order.size());  // all of it: rounding may leave it a hair short
      if (found || k == order.size()) {
        std::sort(order.begin(), order.begin() + k, heavier);
        order.resize(k);
        break;
      }
    }
    if (found) break;
  }
  double before = 0;
  size_t kept = 0;
  while (kept < order.size() && (kept == 0 || before < mass)) before += order[kept++].first;
  order.resize(kept);
  return invert(order, u, before);
}

}  // namespace

// logits [rows, V] fp32, temperature / top_p / uniform [rows] fp32 -> token ids [rows] int64.
torch::Tensor sample_top_p(const torch::Tensor& logits, const torch::Tensor& temperature, const torch::Tensor& top_p,
                           const torch::Tensor& uniform) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "sample_top_p: logits must be [rows, V] fp32");
  const int64_t rows = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V > 0, "sample_top_p: an empty vocabulary");
  for (const auto* t : {&temperature, &top_p, &uniform})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == rows, "sample_top_p: one fp32 value per row");
  auto l = logits.contiguous();
  auto tc = temperature.contiguous(), pc = top_p.contiguous(), uc = uniform.contiguous();
  const float *lp = l.data_ptr<float>(), *tp = tc.data_ptr<float>(), *pp = pc.data_ptr<float>();
  const float* up = uc.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(tp[r] > 0 && pp[r] > 0, "sample_top_p: temperature and top_p must be positive");
  auto ids = torch::empty({rows}, l.options().dtype(at::kLong));
  int64_t* ip = ids.data_ptr<int64_t>();
  at::parallel_for(0, rows, 1, [&](int64_t a, int64_t b) {
    std::vector<float> w(V);
    for (int64_t r = a; r < b; ++r) ip[r] = sample_row(lp + r * V, V, tp[r], pp[r], up[r], w);
  });
  return ids;
}
