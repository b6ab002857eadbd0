// Fused CPU kernels for a Llama-family decode step (bf16 activations), one call per layer piece.
//
// In eager torch each of these is 3-9 ops, and at decode sizes each op costs more in dispatch
// and in single-threaded loops (below ATen's parallel grain) than in arithmetic. Here each is
// one loop nest over rows, split across torch's intra-op threads.
//
// Rounding follows the eager code it replaces (skills/engine_core/kernels.py): every place
// where eager torch stores a bf16 intermediate, this code rounds to bf16 too, so the two agree
// to the last bit except for the order of fp32 sums.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

using bf16 = at::BFloat16;

inline float f(bf16 x) { return static_cast<float>(x); }
inline float r(float x) { return static_cast<float>(bf16(x)); }  // round to bf16 and back

#if defined(__AVX512F__)
inline __m512 load16(const bf16* p) {  // 16 bf16 -> fp32 (exact)
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

inline __m512i to_bf16_bits(__m512 x) {  // round to nearest even (finite x), as bf16(float), in the high half
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
}

inline __m512 round_bf16(__m512 x) { return _mm512_castsi512_ps(to_bf16_bits(x)); }

inline void store16(bf16* p, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(to_bf16_bits(x), 16)));
}
#endif

void check_bf16(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16, name, " must be bfloat16");
  TORCH_CHECK(t.stride(-1) == 1, name, " must be contiguous in its last dimension");
}

// out = weight * bf16(x * rsqrt(mean(x^2) + eps)), the statistics in fp32 (as LlamaRMSNorm).
// The sum of squares in 16 lanes (a scalar sum is one chain of dependent adds: 8% of a 256-token
// prefill's time on an AMX Xeon), then the tail in order.
void norm_row(const bf16* x, const bf16* w, bf16* out, int64_t n, float eps) {
  float ss = 0.f;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 v = load16(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  ss = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) ss += f(x[i]) * f(x[i]);
  const float inv = 1.f / std::sqrt(ss / n + eps);
  i = 0;
#if defined(__AVX512F__)
  const __m512 vinv = _mm512_set1_ps(inv);
  for (; i + 16 <= n; i += 16)
    store16(out + i, _mm512_mul_ps(load16(w + i), round_bf16(_mm512_mul_ps(load16(x + i), vinv))));
#endif
  for (; i < n; ++i) out[i] = bf16(f(w[i]) * r(f(x[i]) * inv));
}

}  // namespace

// The row loops of the kernels below on raw pointers, rows [a, b): the C++ layer loop
// (decoder.cpp) splits them between the threads of its own parallel region.

void add_rms_norm_rows(const bf16* x, const bf16* residual, const bf16* weight, bf16* sum, bf16* out, int64_t n,
                       float eps, int64_t a, int64_t b) {
  for (int64_t i = a; i < b; ++i) {  // sum may be x itself: each element is read before it is written
    int64_t j = 0;
#if defined(__AVX512F__)
    for (; j + 16 <= n; j += 16)
      store16(sum + i * n + j, _mm512_add_ps(load16(x + i * n + j), load16(residual + i * n + j)));
#endif
    for (; j < n; ++j) sum[i * n + j] = bf16(f(x[i * n + j]) + f(residual[i * n + j]));
    norm_row(sum + i * n, weight, out + i * n, n, eps);
  }
}

void silu_mul_rows(const bf16* gp, bf16* op, int64_t inter, int64_t a, int64_t b) {
  for (int64_t i = a; i < b; ++i) {
    const bf16* gate = gp + i * 2 * inter;
    const bf16* up = gate + inter;
    int64_t j = 0;
#if defined(__AVX512F__)
    // 16 at a time, the same roundings as the scalar loop; only exp differs (a polynomial, < 1e-7 relative).
    for (; j + 16 <= inter; j += 16) {
      const __m512 x = load16(gate + j);
      const __m512 silu = round_bf16(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)))));
      store16(op + i * inter + j, _mm512_mul_ps(silu, load16(up + j)));
    }
#endif
    for (; j < inter; ++j) {
      const float x = f(gate[j]);
      op[i * inter + j] = bf16(r(x / (1.f + std::exp(-x))) * f(up[j]));
    }
  }
}

void rope_rows(const bf16* xp, int64_t xs0, int64_t xs1, const bf16* cp, const bf16* sp, bf16* op, int64_t heads,
               int64_t d, int64_t a, int64_t b) {
  const int64_t half = d / 2;
  for (int64_t i = a; i < b; ++i) {
    const bf16 *ci = cp + i * d, *si = sp + i * d;
    for (int64_t h = 0; h < heads; ++h) {
      const bf16* xi = xp + i * xs0 + h * xs1;
      bf16* oi = op + (i * heads + h) * d;
      for (int64_t j = 0; j < half; ++j)  // roll by half: the second half comes first
        oi[j] = bf16(r(f(xi[j]) * f(ci[j])) + r(f(xi[j + half]) * f(si[j])));
      for (int64_t j = half; j < d; ++j)
        oi[j] = bf16(r(f(xi[j]) * f(ci[j])) + r(f(xi[j - half]) * f(si[j])));
    }
  }
}

void write_kv_rows(char* cache, int64_t H, int64_t L, int64_t bytes, const int64_t* slots, const int64_t* positions,
                   const char* values, int64_t row_bytes, int64_t a, int64_t b) {
  for (int64_t i = a; i < b; ++i)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(cache + ((slots[i] * H + h) * L + positions[i]) * bytes, values + i * row_bytes + h * bytes, bytes);
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_bf16(x, "x");
  check_bf16(weight, "weight");
  auto xc = x.contiguous();
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  auto out = torch::empty_like(xc);
  const bf16* xp = xc.data_ptr<bf16>();
  const bf16* wp = weight.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, grain_for(2 * n), [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) norm_row(xp + i * n, wp, op + i * n, n, static_cast<float>(eps));
  });
  return out;
}

std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                        const torch::Tensor& weight, double eps) {
  check_bf16(x, "x");
  check_bf16(residual, "residual");
  check_bf16(weight, "weight");
  auto xc = x.contiguous(), rc = residual.contiguous();
  TORCH_CHECK(xc.sizes() == rc.sizes(), "x and residual differ in shape");
  const int64_t n = xc.size(-1), rows = xc.numel() / n;
  auto sum = torch::empty_like(xc), out = torch::empty_like(xc);
  const bf16 *xp = xc.data_ptr<bf16>(), *rp = rc.data_ptr<bf16>(), *wp = weight.data_ptr<bf16>();
  bf16 *sp = sum.data_ptr<bf16>(), *op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, grain_for(3 * n), [&](int64_t a, int64_t b) {
    add_rms_norm_rows(xp, rp, wp, sp, op, n, static_cast<float>(eps), a, b);
  });
  return {sum, out};
}

// gate_up [rows, 2I] -> bf16(silu(gate)) * up, each product rounded to bf16.
torch::Tensor silu_mul(const torch::Tensor& gate_up, int64_t inter) {
  check_bf16(gate_up, "gate_up");
  auto g = gate_up.contiguous();
  TORCH_CHECK(g.size(-1) == 2 * inter, "gate_up must hold gate and up");
  const int64_t rows = g.numel() / (2 * inter);
  auto out = torch::empty({rows, inter}, g.options());
  const bf16* gp = g.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  at::parallel_for(0, rows, grain_for(8 * inter), [&](int64_t a, int64_t b) { silu_mul_rows(gp, op, inter, a, b); });
  return out;
}

// x [rows, heads, d] (rows may be strided), cos / sin_signed [rows, 1, d] in bf16:
// x * cos + roll(x, d/2) * sin_signed, as kernels.rope, each product rounded to bf16.
torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin_signed) {
  check_bf16(x, "x");
  check_bf16(cos, "cos");
  check_bf16(sin_signed, "sin");
  TORCH_CHECK(x.dim() == 3, "x must be [rows, heads, head_dim]");
  const int64_t rows = x.size(0), heads = x.size(1), d = x.size(2);
  auto c = cos.contiguous(), s = sin_signed.contiguous();
  auto out = torch::empty({rows, heads, d}, x.options());
  const bf16 *xp = x.data_ptr<bf16>(), *cp = c.data_ptr<bf16>(), *sp = s.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1);
  at::parallel_for(0, rows, grain_for(2 * heads * d), [&](int64_t a, int64_t b) {
    rope_rows(xp, xs0, xs1, cp, sp, op, heads, d, a, b);
  });
  return out;
}

// Decode attention with grouped queries: q [S, kvh, g, d]; k, v [S, kvh, L, d] (strided views of
// the slot cache); mask [S, 1, 1, L] additive bf16 (0 or -inf), as SDPA takes it. fp32 scores
// and softmax, output rounded once to bf16. One task per (slot, kv head).
torch::Tensor decode_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               const torch::Tensor& mask) {
  check_bf16(q, "q");
  check_bf16(k, "k");
  check_bf16(v, "v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-d");
  check_bf16(mask, "mask");
  auto qc = q.contiguous();
  const int64_t S = qc.size(0), H = qc.size(1), G = qc.size(2), D = qc.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == S && v.size(0) == S && k.size(1) == H && k.size(3) == D && v.size(1) == H &&
              v.size(3) == D && v.size(2) == L, "k, v must be [S, kv_heads, L, head_dim] like q");
  TORCH_CHECK(mask.numel() == S * L, "mask must be [S, 1, 1, L]");
  auto mc = mask.contiguous();
  const bf16* mp = mc.data_ptr<bf16>();
  auto out = torch::empty_like(qc);
  const bf16 *qp = qc.data_ptr<bf16>(), *kp = k.data_ptr<bf16>(), *vp = v.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  at::parallel_for(0, S * H, grain_for(2 * G * L * D), [&](int64_t a, int64_t b) {
    std::vector<float> qf(G * D), acc(G * D), kv(D), scores;
    for (int64_t t = a; t < b; ++t) {
      const int64_t s = t / H, h = t % H;
      const bf16* ms = mp + s * L;
      const bf16* qs = qp + (s * H + h) * G * D;
      for (int64_t i = 0; i < G * D; ++i) qf[i] = f(qs[i]) * scale;
      scores.assign(G * L, 0.f);
      const bf16* ks = kp + s * ks0 + h * ks1;
      for (int64_t j = 0; j < L; ++j) {
        if (std::isinf(f(ms[j]))) {  // masked (past this slot's length): no need to read the key
          for (int64_t g = 0; g < G; ++g) scores[g * L + j] = -INFINITY;
          continue;
        }
        for (int64_t e = 0; e < D; ++e) kv[e] = f(ks[j * ks2 + e]);
        for (int64_t g = 0; g < G; ++g) {
          float dot = 0.f;
          for (int64_t e = 0; e < D; ++e) dot += qf[g * D + e] * kv[e];
          scores[g * L + j] = dot + f(ms[j]);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        float* sg = scores.data() + g * L;
        float mx = sg[0];
        for (int64_t j = 1; j < L; ++j) mx = std::max(mx, sg[j]);
        float total = 0.f;
        for (int64_t j = 0; j < L; ++j) total += (sg[j] = std::exp(sg[j] - mx));
        for (int64_t j = 0; j < L; ++j) sg[j] /= total;  // a fully masked row is never built (length >= 1)
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const bf16* vs = vp + s * vs0 + h * vs1;
      for (int64_t j = 0; j < L; ++j) {
        if (std::isinf(f(ms[j]))) continue;  // masked: its probability is 0
        for (int64_t e = 0; e < D; ++e) kv[e] = f(vs[j * vs2 + e]);
        for (int64_t g = 0; g < G; ++g) {
          const float p = scores[g * L + j];
          for (int64_t e = 0; e < D; ++e) acc[g * D + e] += p * kv[e];
        }
      }
      bf16* os = op + (s * H + h) * G * D;
      for (int64_t i = 0; i < G * D; ++i) os[i] = bf16(acc[i]);
    }
  });
  return out;
}

// cache[slot, :, position] = new[row] for every row: k/v [slots, kvh, max_len, d], new [rows, kvh, d].
void write_kv(torch::Tensor& cache, const torch::Tensor& slots, const torch::Tensor& positions,
              const torch::Tensor& values) {
  TORCH_CHECK(cache.scalar_type() == values.scalar_type(), "cache and values differ in dtype");
  TORCH_CHECK(cache.is_contiguous(), "cache must be contiguous");
  auto vals = values.contiguous();
  const int64_t rows = vals.size(0), H = cache.size(1), L = cache.size(2), D = cache.size(3);
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* pp = positions.data_ptr<int64_t>();
  const int64_t bytes = D * cache.element_size();
  char* cp = static_cast<char*>(cache.data_ptr());
  const char* vp = static_cast<const char*>(vals.data_ptr());
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK(sp[i] >= 0 && sp[i] < cache.size(0) && pp[i] >= 0 && pp[i] < L, "slot or position out of range");
  write_kv_rows(cp, H, L, bytes, sp, pp, vp, H * bytes, 0, rows);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm);
  m.def("add_rms_norm", &add_rms_norm);
  m.def("silu_mul", &silu_mul);
  m.def("rope", &rope);
  m.def("decode_attention", &decode_attention);
  m.def("write_kv", &write_kv);
  m.def("row_attention", &row_attention);
  m.def("decoder_layers", &decoder_layers);
  m.def("small_gemm_available", &small_gemm_available);
  m.def("small_gemm_pack", &small_gemm_pack);
  m.def("small_gemm_amx", &small_gemm_amx);
  m.def("small_gemm_use_amx", &small_gemm_use_amx);
  m.def("small_gemm", &small_gemm);
  m.def("sample_top_p", &sample_top_p);
  m.def("argmax_rows", &argmax_rows);
  m.def("greedy_screen_available", &greedy_screen_available);
  m.def("greedy_screen_pack", &greedy_screen_pack);
  m.def("greedy_screen_ids", &greedy_screen_ids, py::arg("x"), py::arg("q"), py::arg("scales"), py::arg("head"),
        py::arg("n"), py::arg("margin") = 1.0);
}
