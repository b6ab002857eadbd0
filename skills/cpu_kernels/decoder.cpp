// The layer loop of a Llama-family decoder in C++, for steps whose rows all attend their own
// slot (decodes, speculative verify chunks and prompt chunks; see row_attention.cpp).
//
// It calls the same kernels in the same order as the Python layers (skills/engine_core with
// native kernels and prepacked oneDNN weights), so its output is bit-identical to theirs; what
// it removes is Python: about 15 module calls, views and dispatches per layer, which at a
// decode step's sizes cost as much as a third of the forward.
#include "kernels.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <string>
#include <utility>

namespace {

// torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""): skills/engine_core/packing.py.
// Weights packed in fp32 for a bf16 model (CPUs without oneDNN bf16): x is upcast, the result cast back.
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  std::vector<c10::IValue> stack;
  stack.reserve(6);
  const bool upcast = packed.scalar_type() != x.scalar_type();
  stack.emplace_back(upcast ? x.to(packed.scalar_type()).contiguous() : x.contiguous());
  stack.emplace_back(packed);
  stack.emplace_back(c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return upcast ? stack[0].toTensor().to(x.scalar_type()) : stack[0].toTensor();
}

// A linear layer as packing.PackedLinear runs it: small_gemm up to kSmallRows rows where the
// weight has its tile copy, else oneDNN.
constexpr int64_t kSmallRows = 32;  // packing.SMALL_ROWS

at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& small, int64_t out_features,
                  bool use_small) {
  if (use_small && small.numel() > 0 && x.size(0) <= kSmallRows) return small_gemm(x.contiguous(), small, out_features);
  return packed_linear(x, packed);
}

// Per layer: qkv, o, gate_up, down (oneDNN-packed), post-attention norm, next layer's input norm,
// then qkv, o, gate_up, down in small_gemm's layout (empty tensors where there is none).
constexpr size_t kPerLayer = 10;


// Few-row steps (every matmul in small_gemm): the whole loop in one parallel region.
//
// Called one by one, each kernel is its own parallel region, ~5 per layer; between them the
// threads leave and re-enter OpenMP's pool, and a 1-row step's matmuls are short (0.6-3.5 MB of
// weights). Here the threads stay in one region and meet at barriers: each matmul's tiles and each
// attention's (row, kv head) tasks are split between them, and the row work (rope, norms, SwiGLU)
// by rows. A thread runs the same kernel on the same tiles, tasks and rows as the separate calls
// do, and no result depends on which thread runs it: the numbers are the same bits.
// SmolLM2-135M engine steps, EPYC, 2 threads: 1, 9 and 16 rows 9-11% faster (skills/cpu_kernels/NOTE.md).
using bf16 = at::BFloat16;

struct Tiles {  // one small_gemm weight
  const bf16* w;
  int64_t pairs, tiles, n;
};

Tiles tiles_of(const at::Tensor& small, int64_t n) { return {small.data_ptr<bf16>(), small.size(1), small.size(0), n}; }

// This thread's part [first, second) of `total` items, in contiguous equal shares as at::parallel_for splits them.
inline std::pair<int64_t, int64_t> share(int64_t total, int tid, int threads) {
  const int64_t chunk = (total + threads - 1) / threads, a = std::min<int64_t>(total, tid * chunk);
  return {a, std::min<int64_t>(total, a + chunk)};
}

// slots and positions were checked against the caches by the caller.
std::vector<torch::Tensor> few_row_layers(const torch::Tensor& x_in, const torch::Tensor& h_in,
                                          const std::vector<torch::Tensor>& weights,
                                          const std::vector<torch::Tensor>& k_caches,
                                          const std::vector<torch::Tensor>& v_caches, const int64_t* slots,
                                          const int64_t* positions, const torch::Tensor& cos,
                                          const torch::Tensor& sin_signed, int64_t heads, int64_t kv_heads,
                                          int64_t intermediate, double eps) {
  const int64_t layers = k_caches.size(), rows = x_in.size(0), hidden = x_in.size(1);
  const int64_t dim = k_caches[0].size(3), group = heads / kv_heads, max_len = k_caches[0].size(2);
  const int64_t qk_heads = heads + kv_heads, qkv_out = (qk_heads + kv_heads) * dim;
  const auto opts = x_in.options();
  auto x = x_in.clone();  // the residual stream, updated in place
  auto h = h_in.contiguous(), c = cos.contiguous(), s = sin_signed.contiguous();
  auto qkv = torch::empty({rows, qkv_out}, opts), qk = torch::empty({rows, qk_heads, dim}, opts);
  auto attn = torch::empty({rows, heads * dim}, opts), o = torch::empty({rows, hidden}, opts);
  auto normed = torch::empty({rows, hidden}, opts), gate_up = torch::empty({rows, 2 * intermediate}, opts);
  auto act = torch::empty({rows, intermediate}, opts), out = torch::empty({rows, hidden}, opts);
  std::vector<Tiles> mats;  // per layer: qkv, o, gate_up, down
  for (int64_t i = 0; i < layers; ++i) {
    const torch::Tensor* w = weights.data() + kPerLayer * i;
    mats.insert(mats.end(), {tiles_of(w[6], qkv_out), tiles_of(w[7], hidden), tiles_of(w[8], 2 * intermediate),
                             tiles_of(w[9], hidden)});
  }
  bf16 *xp = x.data_ptr<bf16>(), *qkvp = qkv.data_ptr<bf16>(), *qkp = qk.data_ptr<bf16>();
  bf16 *attnp = attn.data_ptr<bf16>(), *op = o.data_ptr<bf16>(), *np = normed.data_ptr<bf16>();
  bf16 *gup = gate_up.data_ptr<bf16>(), *actp = act.data_ptr<bf16>(), *outp = out.data_ptr<bf16>();
  const bf16 *cp = c.data_ptr<bf16>(), *sp = s.data_ptr<bf16>();
  const float e = static_cast<float>(eps);
  const int64_t head_bytes = dim * sizeof(bf16);

#pragma omp parallel num_threads(at::get_num_threads())
  {
    const int tid = omp_get_thread_num(), threads = omp_get_num_threads();
    const std::pair<int64_t, int64_t> mine = share(rows, tid, threads),
                                              tasks = attention_share(positions, rows, kv_heads, tid, threads);
    const int64_t r0 = mine.first, r1 = mine.second;
    auto matmul = [&](const bf16* in, const Tiles& m, bf16* dst) {
      const std::pair<int64_t, int64_t> t = share(m.tiles, tid, threads);
      small_gemm_tiles(in, rows, m.pairs * 2, m.w, m.pairs, m.n, dst, t.first, t.second);
#pragma omp barrier
    };
    const bf16* in = h.data_ptr<bf16>();
    for (int64_t i = 0; i < layers; ++i) {
      const torch::Tensor* w = weights.data() + kPerLayer * i;
      const Tiles* m = mats.data() + 4 * i;
      matmul(in, m[0], qkvp);
      // Every row's K/V is written before any row attends: a verify chunk's rows read each other's.
      rope_rows(qkvp, qkv_out, dim, cp, sp, qkp, qk_heads, dim, r0, r1);
      write_kv_rows(static_cast<char*>(k_caches[i].data_ptr()), kv_heads, max_len, head_bytes, slots, positions,
                    reinterpret_cast<const char*>(qkp + heads * dim), qk_heads * head_bytes, r0, r1);
      write_kv_rows(static_cast<char*>(v_caches[i].data_ptr()), kv_heads, max_len, head_bytes, slots, positions,
                    reinterpret_cast<const char*>(qkvp + qk_heads * dim), qkv_out * sizeof(bf16), r0, r1);
#pragma omp barrier
      row_attention_tasks(qkp, qk_heads * dim, k_caches[i].data_ptr<bf16>(), v_caches[i].data_ptr<bf16>(), slots,
                          positions, kv_heads, group, dim, max_len, attnp, tasks.first, tasks.second);
#pragma omp barrier
      matmul(attnp, m[1], op);
      add_rms_norm_rows(xp, op, w[4].data_ptr<bf16>(), xp, np, hidden, e, r0, r1);
#pragma omp barrier
      matmul(np, m[2], gup);
      silu_mul_rows(gup, actp, intermediate, r0, r1);
#pragma omp barrier
      matmul(actp, m[3], outp);
      if (i + 1 < layers) {
        add_rms_norm_rows(xp, outp, w[5].data_ptr<bf16>(), xp, np, hidden, e, r0, r1);
#pragma omp barrier
        in = np;
      }
    }
  }
  return {x, out};
}
}  // namespace

// x: the residual stream [rows, hidden], h: the first layer's normed input. weights: kPerLayer per
// layer (the last layer's next-norm is an empty tensor). k_caches / v_caches: per layer
// [slots, kv_heads, max_len, head_dim]. cos / sin_signed: [rows, 1, head_dim] (layers.Rotary).
// Returns (x, mlp output) of the last layer, as CausalLM.forward's loop leaves them.
std::vector<torch::Tensor> decoder_layers(torch::Tensor x, torch::Tensor h, const std::vector<torch::Tensor>& weights,
                                          const std::vector<torch::Tensor>& k_caches,
                                          const std::vector<torch::Tensor>& v_caches, const torch::Tensor& slots,
                                          const torch::Tensor& positions, const torch::Tensor& cos,
                                          const torch::Tensor& sin_signed, int64_t heads, int64_t kv_heads,
                                          int64_t intermediate, double eps, bool use_small) {
  const size_t layers = k_caches.size();
  TORCH_CHECK(layers > 0 && v_caches.size() == layers && weights.size() == kPerLayer * layers,
              "decoder_layers: ", kPerLayer, " weights and one K/V cache per layer");
  const int64_t rows = x.size(0), hidden = x.size(1), dim = k_caches[0].size(3), group = heads / kv_heads;
  const int64_t qkv_out = (heads + 2 * kv_heads) * dim;
  bool few_rows = use_small && small_gemm_available() && rows >= 1 && rows <= kSmallRows && x.is_contiguous() &&
                  x.scalar_type() == at::kBFloat16 && h.scalar_type() == at::kBFloat16 && hidden % 2 == 0 &&
                  intermediate % 2 == 0 && (heads * dim) % 2 == 0;  // small_gemm pads an odd width with a copy
  for (size_t i = 0; few_rows && i < layers; ++i)
    for (size_t j = 6; few_rows && j < kPerLayer; ++j) few_rows = weights[kPerLayer * i + j].numel() > 0;
  if (few_rows) {
    TORCH_CHECK(slots.scalar_type() == at::kLong && positions.scalar_type() == at::kLong && slots.is_contiguous() &&
                positions.is_contiguous() && slots.numel() == rows && positions.numel() == rows,
                "decoder_layers: one int64 slot and position per row");
    const int64_t *sp = slots.data_ptr<int64_t>(), *pp = positions.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r)
      TORCH_CHECK(sp[r] >= 0 && sp[r] < k_caches[0].size(0) && pp[r] >= 0 && pp[r] < k_caches[0].size(2),
                  "decoder_layers: slot or position out of range");
    return few_row_layers(x, h, weights, k_caches, v_caches, sp, pp, cos, sin_signed, heads, kv_heads, intermediate,
                          eps);
  }
  torch::Tensor out;
  for (size_t i = 0; i < layers; ++i) {
    const torch::Tensor* w = weights.data() + kPerLayer * i;
    auto qkv = linear(h, w[0], w[6], qkv_out, use_small);
    auto qk = rope(qkv.narrow(1, 0, (heads + kv_heads) * dim).view({rows, heads + kv_heads, dim}), cos, sin_signed);
    auto v = qkv.narrow(1, (heads + kv_heads) * dim, kv_heads * dim).view({rows, kv_heads, dim});
    torch::Tensor kc = k_caches[i], vc = v_caches[i];
    write_kv(kc, slots, positions, qk.narrow(1, heads, kv_heads));
    write_kv(vc, slots, positions, v);
    auto attn = row_attention(qk.narrow(1, 0, heads).view({rows, kv_heads, group, dim}), kc, vc, slots, positions);
    auto o = linear(attn.view({rows, heads * dim}), w[1], w[7], hidden, use_small);
    auto xh = add_rms_norm(x, o, w[4], eps);
    x = xh[0];
    out = linear(silu_mul(linear(xh[1], w[2], w[8], 2 * intermediate, use_small), intermediate), w[3], w[9], hidden,
                 use_small);
    if (i + 1 < layers) {
      auto next = add_rms_norm(x, out, w[5], eps);
      x = next[0];
      h = next[1];
    }
  }
  return {x, out};
}
