// The fused CPU kernels' entry points, shared by the translation units of the extension.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>

// exp(x), x clamped to [-87, 88]: 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its
// degree-7 Taylor polynomial (relative error below 1e-7, far under bf16's 4e-3).
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.f / 5040.f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 720.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}
#endif

// Items per parallel task so that a task holds at least ~64K multiply-adds of work: a parallel
// region costs an OpenMP wake-up (tens of microseconds once idle threads sleep, as the stacks set
// GOMP_SPINCOUNT), more than a decode step's small kernels take on one thread.
inline int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinTaskWork = 1 << 16;
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, work_per_item));
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                        const torch::Tensor& weight, double eps);
torch::Tensor silu_mul(const torch::Tensor& gate_up, int64_t inter);
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin_signed);
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask);
void write_kv(torch::Tensor& cache, const torch::Tensor& slots, const torch::Tensor& positions,
              const torch::Tensor& values);
torch::Tensor row_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                            const torch::Tensor& slots, const torch::Tensor& positions);
std::vector<torch::Tensor> decoder_layers(torch::Tensor x, torch::Tensor h, const std::vector<torch::Tensor>& weights,
                                          const std::vector<torch::Tensor>& k_caches,
                                          const std::vector<torch::Tensor>& v_caches, const torch::Tensor& slots,
                                          const torch::Tensor& positions, const torch::Tensor& cos,
                                          const torch::Tensor& sin_signed, int64_t heads, int64_t kv_heads,
                                          int64_t intermediate, double eps, bool use_small);
bool small_gemm_available();
// Whether small_gemm runs on AMX tiles (a CPU and kernel with AMX; off until asked for), and the switch.
bool small_gemm_amx();
bool small_gemm_use_amx(bool wanted);
torch::Tensor small_gemm_pack(const torch::Tensor& weight);
torch::Tensor small_gemm(const torch::Tensor& x, const torch::Tensor& packed, int64_t N);
torch::Tensor sample_top_p(const torch::Tensor& logits, const torch::Tensor& temperature, const torch::Tensor& top_p,
                           const torch::Tensor& uniform);
torch::Tensor argmax_rows(const torch::Tensor& logits);
bool greedy_screen_available();
std::vector<torch::Tensor> greedy_screen_pack(const torch::Tensor& weight);
torch::Tensor greedy_screen_ids(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scales,
                                const torch::Tensor& head, int64_t N, double margin);

// Raw row / task / tile ranges of the kernels above, for a caller that splits work between the
// threads of its own parallel region (decoder.cpp). No checks: the caller validated the shapes.
using bf16_t = at::BFloat16;
void add_rms_norm_rows(const bf16_t* x, const bf16_t* residual, const bf16_t* weight, bf16_t* sum, bf16_t* out,
                       int64_t n, float eps, int64_t a, int64_t b);
void silu_mul_rows(const bf16_t* gate_up, bf16_t* out, int64_t inter, int64_t a, int64_t b);
void rope_rows(const bf16_t* x, int64_t x_row, int64_t x_head, const bf16_t* cos, const bf16_t* sin_signed, bf16_t* out,
               int64_t heads, int64_t d, int64_t a, int64_t b);
void write_kv_rows(char* cache, int64_t H, int64_t L, int64_t bytes, const int64_t* slots, const int64_t* positions,
                   const char* values, int64_t row_bytes, int64_t a, int64_t b);
// This thread's part [first, second) of row attention's (row, kv head) tasks, contiguous and split
// by the keys the tasks read (row r reads positions[r] + 1), not by their count.
std::pair<int64_t, int64_t> attention_share(const int64_t* positions, int64_t rows, int64_t heads, int tid,
                                            int threads);
void row_attention_tasks(const bf16_t* q, int64_t q_row, const bf16_t* k, const bf16_t* v, const int64_t* slots,
                         const int64_t* positions, int64_t H, int64_t G, int64_t D, int64_t L, bf16_t* out, int64_t a,
                         int64_t b);
void small_gemm_tiles(const bf16_t* x, int64_t M, int64_t x_row, const bf16_t* packed, int64_t pairs, int64_t N,
                      bf16_t* out, int64_t first, int64_t last);
