// The layer loop of a Llama-family decoder in C++, for steps whose rows all attend their own
// slot (decodes, speculative verify chunks and prompt chunks; see row_attention.cpp).
//
// It calls the same kernels in the same order as the Python layers (skills/engine_core with
// native kernels and prepacked oneDNN weights), so its output is bit-identical to theirs; what
// it removes is Python: about 15 module calls, views and dispatches per layer, which at a
// decode step's sizes cost as much as a third of the forward.
#include "kernels.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

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
