// Row kernels of the olmo_hybrid forward in fp32: every output row is computed from its own
// inputs (and its own sequence's state) by the same sequence of operations, whatever else is in
// the step. Sums run in a fixed order (VW partial sums by index, then a fixed tree; or one
// dimension after another), so a row's bits never depend on the row count, the chunk it came in,
// or the thread that ran it. That is what makes a prefix-cache restore at any token exact: the
// recurrence is stepped token by token, so the state after token t is the same whether t ended a
// chunk or not.
//
// Hot loops are written on GCC vector types of the machine's width (vf: 16 floats with AVX-512,
// else 8), not left to the auto-vectorizer: with compile-time trip counts gcc unrolled the delta
// rule into permutes and stack spills, 18x slower.
//
// Layouts (all float32, contiguous):
//   rms_norm:      x [rows, n] -> [rows, n]
//   silu_mul:      gu [rows, 2i] (gate | up) -> [rows, i]
//   attn_prep:     qkv [rows, (hq + 2 hkv) d] -> q [rows, hq d]; writes k, v into the pools
//   row_attention: q [rows, hq d], k_pool [slots, hkv, d, max_len] (keys transposed: each
//                  dimension's positions contiguous), v_pool [slots, hkv, max_len, d] -> [rows, hq d]
//   gdn:           proj [rows, 2 dk hk + dv hv (q|k|v) + hv (a) + hv (b) + dv hv (gate)],
//                  conv_weight [kernel, conv_dim] (taps first), conv_state [slots, kernel - 1,
//                  conv_dim], rec_state [slots, hv, dk, dv] -> [rows, hv dv]
// A row whose slot is negative is padding: its output stays zero and it touches no state.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__AVX512BF16__) || defined(__AVX512VNNI__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int VW = 16;
#else
constexpr int VW = 8;
#endif
typedef float vf __attribute__((vector_size(VW * sizeof(float))));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

inline float tree_sum(vf v) {
  float lane[VW];
  store(lane, v);
  for (int width = VW / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  return lane[0];
}

// sum_i a[i] b[i]: lane l sums the indices i = l (mod VW) in order, then a fixed tree.
inline float dot(const float* a, const float* b, int64_t n) {
  vf acc = {};
  int64_t i = 0;
  for (; i + VW <= n; i += VW) acc += load(a + i) * load(b + i);
  float lane[VW];
  store(lane, acc);
  for (int l = 0; i < n; ++i, ++l) lane[l] += a[i] * b[i];
  return tree_sum(load(lane));
}

inline float lane_sum(const float* a, int64_t n) {
  vf acc = {};
  int64_t i = 0;
  for (; i + VW <= n; i += VW) acc += load(a + i);
  float lane[VW];
  store(lane, acc);
  for (int l = 0; i < n; ++i, ++l) lane[l] += a[i];
  return tree_sum(load(lane));
}

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), exp(r) by its Taylor
// polynomial of degree 7 on |r| <= ln2 / 2 (~1 ulp). Plain float and int arithmetic, so loops over
// it vectorize, and every call computes the same bits for the same x. x is clamped to
// [-87, 88]: below, the result is ~1e-38 instead of a denormal or 0.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer
  const float n = shifted - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float silu(float x) { return x / (1.0f + fast_exp(-x)); }
inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(fast_exp(x)); }

// 1 / sqrt(mean(x^2) + eps), as transformers' RMSNorm computes it (rsqrt of the mean square).
inline float inv_rms(const float* x, int64_t n, float eps) {
  return 1.0f / std::sqrt(dot(x, x, n) / static_cast<float>(n) + eps);
}

void check_f32(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_i64(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong && t.is_contiguous(), name, " must be contiguous int64");
}

// ---------------------------------------------------------------- matmul

constexpr int PANEL_VECS = 2;
constexpr int64_t PANEL = PANEL_VECS * VW;  // output columns per weight panel

// A panel's weights in fp32, or in bf16 where every weight of the matrix is a bf16 value (a bf16
// checkpoint served in fp32): widened exactly (the bf16 bits are an fp32's upper half), the same
// fp32 numbers at half the bytes, so the same bits out. Decode steps are a stream of the weights.
typedef uint16_t vh __attribute__((vector_size(VW * sizeof(uint16_t))));
typedef uint32_t vu __attribute__((vector_size(VW * sizeof(uint32_t))));

inline vf load_w(const float* p) { return load(p); }

inline vf load_w(const at::BFloat16* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  const vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float widen(float w) { return w; }
inline float widen(at::BFloat16 w) { return static_cast<float>(w); }

// y[r][n] = sum_k x[r][k] w[n][k] for R rows and one panel of PANEL columns: a fused multiply-add
// chain over k in order, from 0, per output (so a row's result never depends on the other rows);
// the panel ([K][PANEL], contiguous) is read once for all R rows.
template <int R, typename W>
inline void panel_rows(const float* __restrict__ x, int64_t k_dim, const W* __restrict__ panel,
                       float* __restrict__ out) {
  vf acc[R][PANEL_VECS] = {};
  for (int64_t k = 0; k < k_dim; ++k) {
    vf w[PANEL_VECS];
    for (int v = 0; v < PANEL_VECS; ++v) w[v] = load_w(panel + k * PANEL + v * VW);
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * k_dim + k];
      for (int v = 0; v < PANEL_VECS; ++v) acc[r][v] += w[v] * xr;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < PANEL_VECS; ++v) store(out + r * PANEL + v * VW, acc[r][v]);
}

// ---------------------------------------------------------------- attention

constexpr int64_t KEY_VEC = 16;  // the pools' max_len is a multiple of this (>= VW)

// Scores of NA (row, head) lanes for NV vectors of keys from j0: each score a fused multiply-add
// chain over the head dimension in order, from 0; a K^T row is read once for all lanes.
template <int NA, int NV>
inline void score_vectors(const float* __restrict__ keys_t, int64_t max_len, int64_t d, const float* __restrict__ qs,
                          int64_t j0, float* __restrict__ scores, int64_t stride) {
  vf acc[NA][NV] = {};
  for (int64_t i = 0; i < d; ++i) {
    vf k[NV];
    for (int v = 0; v < NV; ++v) k[v] = load(keys_t + i * max_len + j0 + v * VW);
    for (int a = 0; a < NA; ++a) {
      const float qi = qs[a * d + i];
      for (int v = 0; v < NV; ++v) acc[a][v] += k[v] * qi;
    }
  }
  for (int a = 0; a < NA; ++a)
    for (int v = 0; v < NV; ++v) store(scores + a * stride + j0 + v * VW, acc[a][v]);
}

// Scores of NA lanes over the key vectors from j_begin (a multiple of VW) to n rounded up to
// whole vectors: NV vectors at a time, then one.
template <int NA, int NV>
inline void score_lanes(const float* keys_t, int64_t max_len, int64_t d, const float* qs, int64_t j_begin, int64_t n,
                        float* scores, int64_t stride) {
  int64_t j0 = j_begin;
  for (; j0 + NV * VW <= n; j0 += NV * VW) score_vectors<NA, NV>(keys_t, max_len, d, qs, j0, scores, stride);
  for (; j0 < n; j0 += VW) score_vectors<NA, 1>(keys_t, max_len, d, qs, j0, scores, stride);
}

// Scores of `na` (<= 4) lanes sharing one K^T, key vectors [j_begin, n).
inline void score_group(const float* keys_t, int64_t max_len, int64_t d, const float* qs, int64_t na,
                        int64_t j_begin, int64_t n, float* scores, int64_t stride) {
  switch (na) {
    case 4: return score_lanes<4, 2>(keys_t, max_len, d, qs, j_begin, n, scores, stride);
    case 3: return score_lanes<3, 2>(keys_t, max_len, d, qs, j_begin, n, scores, stride);
    case 2: return score_lanes<2, 4>(keys_t, max_len, d, qs, j_begin, n, scores, stride);
    default: return score_lanes<1, 4>(keys_t, max_len, d, qs, j_begin, n, scores, stride);
  }
}

// out[a] += sum_{j_begin <= j < j_end} p[a][j] v_j in key order, for NA lanes reading the same V
// rows: the running sums are read from and written back to out (exact in fp32), so a lane's sum
// over [0, n) is the same whether it runs in one piece or in several.
template <int NA, int D>
inline void value_sum(const float* __restrict__ values, const float* __restrict__ probs, int64_t stride,
                      int64_t j_begin, int64_t j_end, float* const* outs) {
  constexpr int NV = D / VW;
  vf acc[NA][NV];
  for (int a = 0; a < NA; ++a)
    for (int c = 0; c < NV; ++c) acc[a][c] = load(outs[a] + c * VW);
  for (int64_t j = j_begin; j < j_end; ++j) {
    const float* v = values + j * D;
    for (int a = 0; a < NA; ++a) {
      const float p = probs[a * stride + j];
      for (int c = 0; c < NV; ++c) acc[a][c] += load(v + c * VW) * p;
    }
  }
  for (int a = 0; a < NA; ++a)
    for (int c = 0; c < NV; ++c) store(outs[a] + c * VW, acc[a][c]);
}

template <int D>
inline void value_group_d(const float* values, const float* probs, int64_t stride, int64_t na, int64_t j_begin,
                          int64_t j_end, float* const* outs) {
  switch (na) {
    case 4: return value_sum<4, D>(values, probs, stride, j_begin, j_end, outs);
    case 3: return value_sum<3, D>(values, probs, stride, j_begin, j_end, outs);
    case 2: return value_sum<2, D>(values, probs, stride, j_begin, j_end, outs);
    default: return value_sum<1, D>(values, probs, stride, j_begin, j_end, outs);
  }
}

inline void value_group(const float* values, int64_t d, const float* probs, int64_t stride, int64_t na,
                        int64_t j_begin, int64_t j_end, float* const* outs) {
  if (d == 64) return value_group_d<64>(values, probs, stride, na, j_begin, j_end, outs);
  if (d == 128) return value_group_d<128>(values, probs, stride, na, j_begin, j_end, outs);
  TORCH_CHECK(false, "head_dim must be 64 or 128");
}

// Softmax of one lane's scores over [0, n) in place; returns 1 / sum.
inline float softmax_lane(float* s, int64_t n) {
  float top[VW];
  for (int l = 0; l < VW; ++l) top[l] = -INFINITY;
  int64_t j = 0;
  for (; j + VW <= n; j += VW)
    for (int l = 0; l < VW; ++l) top[l] = std::max(top[l], s[j + l]);
  for (int l = 0; j < n; ++j, ++l) top[l] = std::max(top[l], s[j]);
  float m = top[0];
  for (int l = 1; l < VW; ++l) m = std::max(m, top[l]);
  for (j = 0; j < n; ++j) s[j] = fast_exp(s[j] - m);
  return 1.0f / lane_sum(s, n);
}

// A tile: rows attended together for one kv head. Either consecutive rows of one slot, or rows
// of different slots whose keys [0, shared) are bit-identical to those of `shared_slot` (same
// tokens: the forward is split invariant), read once from there for all of them.
struct Tile {
  std::vector<int64_t> rows;
  int64_t shared_slot = -1, shared = 0;
};

// The attention of one tile's lanes ((row, query head) pairs, row-major): lane keys [0, count).
// K^T / V of lane a's own slot: keys_t[a], values[a]; the shared part from shared_k / shared_v.
void attend_tile(const float* const* keys_t, const float* const* values, const float* shared_k, const float* shared_v,
                 int64_t shared, int64_t max_len, int64_t d, int64_t group, const float* qs, int64_t lanes,
                 const int64_t* count, float* scores, int64_t stride, float* const* outs) {
  const int64_t shared_vecs = shared / VW * VW;  // whole key vectors in the shared part
  for (int64_t lane = 0; lane < lanes; lane += 4) {
    const int64_t na = std::min<int64_t>(4, lanes - lane);
    if (shared_vecs > 0) score_group(shared_k, max_len, d, qs + lane * d, na, 0, shared_vecs, scores + lane * stride, stride);
  }
  for (int64_t lane = 0; lane < lanes; lane += group)  // a row's query heads read its own keys together
    score_group(keys_t[lane], max_len, d, qs + lane * d, group, shared_vecs, count[lane], scores + lane * stride, stride);
  std::vector<float> inv(lanes);
  for (int64_t lane = 0; lane < lanes; ++lane) inv[lane] = softmax_lane(scores + lane * stride, count[lane]);
  for (int64_t lane = 0; lane < lanes; lane += 4) {
    const int64_t na = std::min<int64_t>(4, lanes - lane);
    if (shared > 0) value_group(shared_v, d, scores + lane * stride, stride, na, 0, shared, outs + lane);
  }
  for (int64_t lane = 0; lane < lanes; lane += group)
    value_group(values[lane], d, scores + lane * stride, stride, group, shared, count[lane], outs + lane);
  for (int64_t lane = 0; lane < lanes; ++lane)
    for (int64_t i = 0; i < d; ++i) outs[lane][i] *= inv[lane];
}

// Tiles of a step: rows with a shared prefix source grouped by that source (up to TILE rows), the
// others as runs of one slot at consecutive positions (up to TILE rows). Padding rows are left out.
std::vector<Tile> make_tiles(int64_t rows, const int64_t* slot, const int64_t* pos, const int64_t* share_slot,
                             const int64_t* share_len, int64_t tile_rows) {
  std::vector<Tile> tiles;
  std::vector<std::pair<int64_t, size_t>> open;  // shared slot -> its tile being filled
  for (int64_t r = 0; r < rows; ++r) {
    if (slot[r] < 0) continue;
    const int64_t shared = std::min(share_len[r], pos[r] + 1);
    if (share_slot[r] >= 0 && shared > 0) {
      auto it = std::find_if(open.begin(), open.end(), [&](const auto& o) { return o.first == share_slot[r]; });
      if (it == open.end() || tiles[it->second].rows.size() >= static_cast<size_t>(tile_rows)) {
        tiles.push_back(Tile{{}, share_slot[r], shared});
        if (it == open.end()) open.emplace_back(share_slot[r], tiles.size() - 1);
        else it->second = tiles.size() - 1;
        it = std::find_if(open.begin(), open.end(), [&](const auto& o) { return o.first == share_slot[r]; });
      }
      Tile& t = tiles[it->second];
      t.rows.push_back(r);
      t.shared = std::min(t.shared, shared);
      continue;
    }
    if (!tiles.empty()) {
      Tile& last = tiles.back();
      const int64_t prev = last.rows.back();
      if (last.shared_slot < 0 && static_cast<int64_t>(last.rows.size()) < tile_rows && prev == r - 1 &&
          slot[prev] == slot[r] && pos[prev] + 1 == pos[r]) {
        last.rows.push_back(r);
        continue;
      }
    }
    tiles.push_back(Tile{{r}, -1, 0});
  }
  return tiles;
}

// ---------------------------------------------------------------- GatedDeltaNet

// One token of the gated delta rule on one head's state S [dk, NV * VW], in place, and its output
// o = S^T q: S <- decay S; kv = S^T k; S += k (beta (v - kv))^T; o = S^T q. Each value column is
// independent; sums over the key dimension run in order, in registers.
template <int NV>
inline void delta_rule(float* __restrict__ S, const float* __restrict__ q, const float* __restrict__ k,
                       const float* __restrict__ v, float decay, float beta, int64_t dk, float* __restrict__ o) {
  constexpr int64_t DV = NV * VW;
  vf kv[NV] = {};
  for (int64_t i = 0; i < dk; ++i) {
    float* Si = S + i * DV;
    for (int c = 0; c < NV; ++c) {
      const vf s = load(Si + c * VW) * decay;
      store(Si + c * VW, s);
      kv[c] += s * k[i];
    }
  }
  vf delta[NV];
  for (int c = 0; c < NV; ++c) delta[c] = (load(v + c * VW) - kv[c]) * beta;
  vf out[NV] = {};
  for (int64_t i = 0; i < dk; ++i) {
    float* Si = S + i * DV;
    for (int c = 0; c < NV; ++c) {
      const vf s = load(Si + c * VW) + delta[c] * k[i];
      store(Si + c * VW, s);
      out[c] += s * q[i];
    }
  }
  for (int c = 0; c < NV; ++c) store(o + c * VW, out[c]);
}

void delta_rule_step(float* S, const float* q, const float* k, const float* v, float decay, float beta, int64_t dk,
                     int64_t dv, float* o) {
  switch (dv / VW) {
    case 1: return delta_rule<1>(S, q, k, v, decay, beta, dk, o);
    case 2: return delta_rule<2>(S, q, k, v, decay, beta, dk, o);
    case 4: return delta_rule<4>(S, q, k, v, decay, beta, dk, o);
    case 8: return delta_rule<8>(S, q, k, v, decay, beta, dk, o);
    case 16: return delta_rule<16>(S, q, k, v, decay, beta, dk, o);
    default: TORCH_CHECK(false, "value head dim must be VW x 1, 2, 4, 8 or 16");
  }
}

// A head's short-conv inputs: the last `window` inputs of its channels in a ring (the oldest at
// `oldest`), its conv taps gathered into the same local channel order.
struct ConvWindow {
  int64_t window, nch, oldest = 0;
  std::vector<float> ring, taps, x;

  ConvWindow(int64_t window_, int64_t nch_) : window(window_), nch(nch_), ring(window_ * nch_), taps((window_ + 1) * nch_), x(nch_) {}

  float* slot(int64_t age) { return ring.data() + ((oldest + age) % window) * nch; }  // age 0: oldest

  // y = SiLU(tap 0 on the oldest input, each later tap added in order, the current input x last);
  // then x replaces the oldest input.
  void step(float* __restrict__ y) {
    const float* __restrict__ w = taps.data();
    const float* __restrict__ past = slot(0);
    for (int64_t i = 0; i < nch; ++i) y[i] = w[i] * past[i];
    for (int64_t j = 1; j < window; ++j) {
      const float* __restrict__ wj = w + j * nch;
      const float* __restrict__ pj = slot(j);
      for (int64_t i = 0; i < nch; ++i) y[i] += wj[i] * pj[i];
    }
    const float* __restrict__ wn = w + window * nch;
    const float* __restrict__ xn = x.data();
    for (int64_t i = 0; i < nch; ++i) y[i] = silu(y[i] + wn[i] * xn[i]);
    std::memcpy(slot(0), x.data(), nch * sizeof(float));
    oldest = (oldest + 1) % window;
  }
};

// One GatedDeltaNet head's conv channels: three contiguous ranges of the projection row and of
// the conv state (its q, its k, its v), side by side in the head's local order.
struct HeadChannels {
  int64_t base[3];
  int64_t len[3];
  int64_t local[3];

  void gather(const float* src, float* local_dst) const {
    for (int part = 0; part < 3; ++part) std::memcpy(local_dst + local[part], src + base[part], len[part] * sizeof(float));
  }

  void scatter(const float* local_src, float* dst, int first_part) const {
    for (int part = first_part; part < 3; ++part)
      std::memcpy(dst + base[part], local_src + local[part], len[part] * sizeof(float));
  }

  // Ask for the cache lines of a later token's row that this head reads.
  void prefetch(const float* row, int64_t a_off, int64_t vh, int64_t gate_off, int64_t dv) const {
    for (int part = 0; part < 3; ++part)
      for (int64_t i = 0; i < len[part]; i += 16) __builtin_prefetch(row + base[part] + i);
    __builtin_prefetch(row + a_off + vh);
    for (int64_t i = 0; i < dv; i += 16) __builtin_prefetch(row + gate_off + vh * dv + i);
  }
};

}  // namespace

namespace {

template <typename W>
at::Tensor pack_panels(const at::Tensor& weight) {
  const int64_t n = weight.size(0), k = weight.size(1), panels = (n + PANEL - 1) / PANEL;
  auto packed = at::zeros({panels, k, PANEL}, weight.options());
  const W* pw = weight.data_ptr<W>();
  W* pp = packed.data_ptr<W>();
  for (int64_t c = 0; c < n; ++c)
    for (int64_t i = 0; i < k; ++i) pp[((c / PANEL) * k + i) * PANEL + c % PANEL] = pw[c * k + i];
  return packed;
}

template <typename W>
void linear_panels(const float* px, int64_t rows, int64_t k, const W* pp, int64_t panels, int64_t n, float* po) {
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(rows * k, 1));  // >= ~256K multiply-adds a task
  at::parallel_for(0, panels, grain, [&](int64_t begin, int64_t end) {
    float tile[8 * PANEL];
    for (int64_t p = begin; p < end; ++p) {
      const W* panel = pp + p * k * PANEL;
      const int64_t c0 = p * PANEL, cols = std::min(PANEL, n - c0);
      for (int64_t r = 0; r < rows;) {
        const int64_t block = rows - r >= 8 ? 8 : rows - r >= 4 ? 4 : rows - r >= 2 ? 2 : 1;
        const float* xr = px + r * k;
        switch (block) {
          case 8: panel_rows<8>(xr, k, panel, tile); break;
          case 4: panel_rows<4>(xr, k, panel, tile); break;
          case 2: panel_rows<2>(xr, k, panel, tile); break;
          default: panel_rows<1>(xr, k, panel, tile);
        }
        for (int64_t b = 0; b < block; ++b) std::memcpy(po + (r + b) * n + c0, tile + b * PANEL, cols * sizeof(float));
        r += block;
      }
    }
  });
}

}  // namespace

// W [n, k] fp32 -> panels [ceil(n / PANEL), k, PANEL] (columns past n are zero), the layout `linear`
// reads: in bf16 where every weight is a bf16 value (exactly the same numbers), else in fp32.
at::Tensor pack_linear(const at::Tensor& weight) {
  check_f32(weight, "weight");
  const auto narrow = weight.to(at::kBFloat16);
  return narrow.to(at::kFloat).equal(weight) ? pack_panels<at::BFloat16>(narrow) : pack_panels<float>(weight);
}

// y = x W^T from `pack_linear`'s panels: every output a multiply-add chain over k in order, so a
// row's bits are the same at any row count. Tasks are panels; rows go in blocks of 8, 4, 2, 1.
at::Tensor linear(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  check_f32(x, "x");
  const bool narrow = packed.scalar_type() == at::kBFloat16;
  TORCH_CHECK(narrow || packed.scalar_type() == at::kFloat, "packed: fp32 or bf16 panels from pack_linear");
  TORCH_CHECK(packed.is_contiguous(), "packed must be contiguous");
  const int64_t rows = x.size(0), k = x.size(1), panels = packed.size(0);
  TORCH_CHECK(packed.size(1) == k && packed.size(2) == PANEL && panels * PANEL >= n, "packed weight shape");
  auto out = at::empty({rows, n}, x.options());
  const float* px = x.data_ptr<float>();
  float* po = out.data_ptr<float>();
  if (narrow)
    linear_panels(px, rows, k, packed.data_ptr<at::BFloat16>(), panels, n, po);
  else
    linear_panels(px, rows, k, packed.data_ptr<float>(), panels, n, po);
  return out;
}

// f(std::integral_constant<int, R>{}) for R = rows (1 to 8): a row block's count as a template argument.
template <typename F>
inline void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// ---------------------------------------------------------------- greedy head (greedy_head.py)
//
// The argmax of y = x W^T as `linear` computes it, reading W in bf16: every logit is screened with
// AVX-512 BF16 dot products (x and W rounded to bf16, fp32 sums), which is within
// error * |x| * max_v |w_v| of `linear`'s; only the tokens whose screen reaches the row's best
// screen less twice that are computed again, by `panel_rows<1>` on their columns of the fp32
// panels: the same chain as `linear`'s, so the same bits. The first of the largest wins.

#if defined(__AVX512BF16__)
constexpr bool kGreedyHead = true;
#else
constexpr bool kGreedyHead = false;
#endif
constexpr int64_t SCREEN_TILE = 16;  // output columns per screen tile: one fp32 vector

bool greedy_head_available() { return kGreedyHead; }

// W [n, k] fp32 -> [ceil(n / 16), ceil(k / 2), 16, 2] bf16 (rounded to nearest even): tile t, pair p
// holds W[16 t + c, 2 p + j] at [t, p, c, j], the operand order of the BF16 dot product.
at::Tensor pack_screen(const at::Tensor& weight) {
  check_f32(weight, "weight");
  const int64_t n = weight.size(0), k = weight.size(1), pairs = (k + 1) / 2, tiles = (n + SCREEN_TILE - 1) / SCREEN_TILE;
  auto packed = at::zeros({tiles, pairs, SCREEN_TILE, 2}, weight.options().dtype(at::kBFloat16));
  const float* pw = weight.data_ptr<float>();
  auto* pp = packed.data_ptr<at::BFloat16>();
  for (int64_t c = 0; c < n; ++c)
    for (int64_t i = 0; i < k; ++i)
      pp[(((c / SCREEN_TILE) * pairs + i / 2) * SCREEN_TILE + c % SCREEN_TILE) * 2 + i % 2] = at::BFloat16(pw[c * k + i]);
  return packed;
}

#if defined(__AVX512BF16__)
// R rows of bf16 pairs against one screen tile: fp32 sums over the pairs in order.
template <int R>
inline void screen_tile(const int32_t* xb, int64_t pairs, const at::BFloat16* w, float* out, int64_t out_stride) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (p + 32) * 2 * SCREEN_TILE), _MM_HINT_T0);
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + p * 2 * SCREEN_TILE);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(xb[r * pairs + p]), wv);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * out_stride, acc[r]);
}
#endif

// The screen of every tile for every row, and each tile's largest per row over its first n columns
// (NaN if one of them is).
void screen_tiles(const int32_t* xb, int64_t rows, int64_t pairs, const at::BFloat16* ps, int64_t tiles, int64_t n,
                  float* approx, float* tile_max) {
#if defined(__AVX512BF16__)
  const int64_t stride = tiles * SCREEN_TILE;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const at::BFloat16* w = ps + t * pairs * 2 * SCREEN_TILE;
      for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        const int64_t block = std::min<int64_t>(8, rows - r0);
        float* out = approx + r0 * stride + t * SCREEN_TILE;
        const int32_t* x = xb + r0 * pairs;
        with_rows(block, [&](auto r) { screen_tile<decltype(r)::value>(x, pairs, w, out, stride); });
        const int64_t cols = std::min<int64_t>(SCREEN_TILE, n - t * SCREEN_TILE);
        const __mmask16 real = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
        for (int64_t r = 0; r < block; ++r) {
          const __m512 v = _mm512_loadu_ps(out + r * stride);
          // max_ps drops a NaN operand; a NaN lane turns the tile's max into NaN here instead
          const bool nan = (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & real) != 0;
          tile_max[(r0 + r) * tiles + t] = nan ? NAN : _mm512_mask_reduce_max_ps(real, v);
        }
      }
    }
  });
#endif
}

// The tokens (< n) whose screen value reaches `floor`, in id order, scanning only the tiles whose
// largest does.
std::vector<int64_t> reaching(const float* per_token, const float* per_tile, int64_t tiles, int64_t n, float floor) {
  std::vector<int64_t> tokens;
  for (int64_t t = 0; t < tiles; ++t) {
    if (!(per_tile[t] >= floor)) continue;
    for (int64_t c = t * SCREEN_TILE; c < std::min(n, (t + 1) * SCREEN_TILE); ++c)
      if (per_token[c] >= floor) tokens.push_back(c);
  }
  return tokens;
}

void check_head_panels(const at::Tensor& panels, int64_t k, int64_t n, const char* name) {
  TORCH_CHECK((panels.scalar_type() == at::kFloat || panels.scalar_type() == at::kBFloat16) && panels.is_contiguous() &&
              panels.size(1) == k && panels.size(2) == PANEL && panels.size(0) * PANEL >= n,
              name, ": panels from pack_linear");
}

// The first of the largest of x W^T over `candidates` (ids in order), each computed by
// panel_rows<1> on its column of the panels: `linear`'s own chain, so the same bits. -1 for none.
int64_t recheck(const float* x, int64_t k, const std::vector<int64_t>& candidates, const at::Tensor& panels) {
  if (candidates.size() == 1) return candidates[0];
  const bool narrow = panels.scalar_type() == at::kBFloat16;
  const float* pp = narrow ? nullptr : panels.data_ptr<float>();
  const at::BFloat16* pb = narrow ? panels.data_ptr<at::BFloat16>() : nullptr;
  std::vector<float> panel(k * PANEL);
  float exact[PANEL];
  float best = -INFINITY;
  int64_t best_id = -1;
  for (size_t c0 = 0; c0 < candidates.size(); c0 += PANEL) {  // up to PANEL candidates a pass, in id order
    const int64_t count = std::min<int64_t>(PANEL, candidates.size() - c0);
    std::fill(panel.begin(), panel.end(), 0.0f);
    for (int64_t j = 0; j < count; ++j) {
      const int64_t c = candidates[c0 + j];
      const int64_t at = (c / PANEL) * k * PANEL + c % PANEL;  // the same fp32 numbers from either panels
      for (int64_t i = 0; i < k; ++i) panel[i * PANEL + j] = narrow ? widen(pb[at + i * PANEL]) : pp[at + i * PANEL];
    }
    panel_rows<1>(x, k, panel.data(), exact);
    for (int64_t j = 0; j < count; ++j)
      if (exact[j] > best || best_id < 0) best = exact[j], best_id = candidates[c0 + j];
  }
  return best_id;
}

// x [rows, k] fp32 (rows <= 16), screen from pack_screen, panels from pack_linear of the same W
// [n, k] -> int64 [rows]: each row's argmax of x W^T as `linear` gives it; -1 for a row whose
// screen is not finite (the caller then takes the full head).
at::Tensor greedy_ids(const at::Tensor& x, const at::Tensor& screen, const at::Tensor& panels, int64_t n,
                      double max_norm, double error) {
  check_f32(x, "x");
  const int64_t rows = x.size(0), k = x.size(1), pairs = (k + 1) / 2, tiles = screen.size(0);
  TORCH_CHECK(kGreedyHead, "greedy_ids: this build has no AVX-512 BF16");
  TORCH_CHECK(rows <= 16, "greedy_ids: at most 16 rows");
  TORCH_CHECK(screen.scalar_type() == at::kBFloat16 && screen.is_contiguous() && screen.size(1) == pairs &&
              tiles * SCREEN_TILE >= n, "greedy_ids: screen shape");
  check_head_panels(panels, k, n, "greedy_ids");
  auto ids = at::full({rows}, -1, x.options().dtype(at::kLong));
  if (rows == 0) return ids;
  const float* px = x.data_ptr<float>();
  std::vector<int32_t> xb(rows * pairs, 0);  // x in bf16 pairs, rounded to nearest even
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < k; ++i) {
      const at::BFloat16 b(px[r * k + i]);
      std::memcpy(reinterpret_cast<char*>(&xb[r * pairs + i / 2]) + 2 * (i % 2), &b, 2);
    }
  std::unique_ptr<float[]> approx(new float[rows * tiles * SCREEN_TILE]);  // every element written by screen_tiles
  std::vector<float> tile_max(rows * tiles);  // each tile's largest screen per row: the scans below skip the rest
  screen_tiles(xb.data(), rows, pairs, screen.data_ptr<at::BFloat16>(), tiles, n, approx.get(), tile_max.data());
  auto* pid = ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* a = approx.get() + r * tiles * SCREEN_TILE;
    const float* m = &tile_max[r * tiles];
    float top = -INFINITY;
    bool finite = true;
    for (int64_t t = 0; t < tiles; ++t) {  // a NaN anywhere in a tile makes its max NaN (see screen_tiles)
      finite &= std::isfinite(m[t]);
      top = std::max(top, m[t]);
    }
    if (!finite) continue;
    double norm = 0;
    for (int64_t i = 0; i < k; ++i) norm += double(px[r * k + i]) * px[r * k + i];
    const float floor = float(double(top) - 2 * (error * std::sqrt(norm) * max_norm + 1e-30));
    pid[r] = recheck(px + r * k, k, reaching(a, m, tiles, n, floor), panels);
  }
  return ids;
}

// ---------------------------------------------------------------- int8 screen (greedy_head.py)
//
// The same argmax from a screen that reads the head in int8 (a quarter of the fp32 bytes, half of
// bf16's): column v holds q_v = round(w_v / s_v) (greedy_head.py packs it, with s_v = max|w_v| / 127),
// a row x is rounded to q_x = round(x / s_x) the same way, and VNNI dot products sum q_x . q_v
// exactly in int32. The screen y^_v = s_x s_v (q_x . q_v) is within
//   B_v = |x|_1 A_v + e_x W1_v  (A_v = e_v + gamma_K max|w_v|, W1_v = s_v |q_v|_1)
// of `linear`'s fp32 logit: e_v = max_k |w_vk - s_v q_vk| and e_x = max_k |x_k - s_x q_xk| are the
// roundings' actual errors, gamma_K = K 2^-24 / (1 - K 2^-24) bounds `linear`'s own chain; plus 2^-20
// |y^_v| and 2^-16 B_v for the float arithmetic of y^ and B here. So max_u (y^_u - B_u) is at most the
// largest logit, and every token that reaches it has y^_v + B_v >= that: those are rechecked.

#if defined(__AVX512VNNI__)
constexpr bool kInt8Screen = true;
#else
constexpr bool kInt8Screen = false;
#endif

bool int8_screen_available() { return kInt8Screen; }

#if defined(__AVX512VNNI__)
// R rows of x's bytes (q_x + 128, four k's to an int32) against one tile's 16 columns of int8 quads:
// exact int32 sums of (q_x + 128) q_v.
template <int R>
inline void screen_tile_i8(const int32_t* xq, int64_t quads, const int8_t* w, __m512i* acc) {
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
  for (int64_t p = 0; p < quads; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (p + 16) * 4 * SCREEN_TILE), _MM_HINT_T0);
    const __m512i wv = _mm512_loadu_si512(w + p * 4 * SCREEN_TILE);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_dpbusd_epi32(acc[r], _mm512_set1_epi32(xq[r * quads + p]), wv);
  }
}
#endif

// One row's int8 screen inputs: its bytes, s_x, |x|_1 and e_x (rounded up); finite = false for a
// row with a NaN or an infinity (the caller takes the full head).
struct QuantRow {
  float scale = 0, l1 = 0, err = 0;
  bool finite = true;
};

QuantRow quantize_row(const float* x, int64_t k, int64_t quads, int32_t* out) {
  QuantRow q;
  float top = 0;
  for (int64_t i = 0; i < k; ++i) {
    if (!std::isfinite(x[i])) q.finite = false;
    top = std::max(top, std::fabs(x[i]));
  }
  uint8_t* bytes = reinterpret_cast<uint8_t*>(out);
  std::fill(bytes, bytes + 4 * quads, uint8_t(128));  // padding k's: q_x = 0
  if (!q.finite || top == 0) return q;
  q.scale = top / 127.0f;
  double l1 = 0, err = 0;
  for (int64_t i = 0; i < k; ++i) {
    const float v = std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] / q.scale)));
    bytes[i] = uint8_t(int(v) + 128);
    l1 += std::fabs(double(x[i]));
    err = std::max(err, std::fabs(double(x[i]) - double(q.scale) * v));
  }
  q.l1 = float(l1 * (1 + 1e-6));
  q.err = float(err * (1 + 1e-6));
  return q;
}

// Every tile of the int8 screen for every row: y^ + B per column into hi (-inf past n), each tile's
// largest of those per row into tile_hi, each tile's largest y^ - B per row into tile_lo.
void screen_tiles_i8(const int32_t* xq, const QuantRow* qr, int64_t rows, int64_t quads, const int8_t* ws,
                     const float* cols, const int32_t* comp, int64_t tiles, int64_t n, float* hi, float* tile_hi,
                     float* tile_lo) {
#if defined(__AVX512VNNI__)
  const int64_t stride = tiles * SCREEN_TILE, padded = tiles * SCREEN_TILE;
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    __m512i acc[8];
    for (int64_t t = begin; t < end; ++t) {
      const int8_t* w = ws + t * quads * 4 * SCREEN_TILE;
      const int64_t c0 = t * SCREEN_TILE, real_cols = std::min<int64_t>(SCREEN_TILE, n - c0);
      const __mmask16 real = real_cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << real_cols) - 1);
      const __m512 scale = _mm512_loadu_ps(cols + c0), a = _mm512_loadu_ps(cols + padded + c0),
                   w1 = _mm512_loadu_ps(cols + 2 * padded + c0);
      const __m512i offset = _mm512_loadu_si512(comp + c0);
      for (int64_t r0 = 0; r0 < rows; r0 += 8) {
        const int64_t block = std::min<int64_t>(8, rows - r0);
        const int32_t* x = xq + r0 * quads;
        with_rows(block, [&](auto r) { screen_tile_i8<decltype(r)::value>(x, quads, w, acc); });
        for (int64_t j = 0; j < block; ++j) {
          const QuantRow& q = qr[r0 + j];
          const __m512 sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[j], offset));  // exact: |sum| < 2^24
          const __m512 y = _mm512_mul_ps(sums, _mm512_mul_ps(scale, _mm512_set1_ps(q.scale)));
          __m512 b = _mm512_fmadd_ps(_mm512_set1_ps(q.l1), a, _mm512_mul_ps(_mm512_set1_ps(q.err), w1));
          b = _mm512_fmadd_ps(_mm512_abs_ps(y), _mm512_set1_ps(0x1p-20f),
                              _mm512_fmadd_ps(b, _mm512_set1_ps(1.0f + 0x1p-16f), _mm512_set1_ps(1e-30f)));
          const __m512 up = _mm512_mask_blend_ps(real, _mm512_set1_ps(-INFINITY), _mm512_add_ps(y, b));
          const __m512 down = _mm512_mask_blend_ps(real, _mm512_set1_ps(-INFINITY), _mm512_sub_ps(y, b));
          const int64_t r = r0 + j;
          _mm512_storeu_ps(hi + r * stride + c0, up);
          tile_hi[r * tiles + t] = _mm512_reduce_max_ps(up);
          tile_lo[r * tiles + t] = _mm512_reduce_max_ps(down);
        }
      }
    }
  });
#endif
}

// x [rows <= 16, k] fp32; screen [tiles, k / 4, 16, 4] int8, cols [3, tiles * 16] (s_v, A_v, W1_v),
// comp [tiles * 16] int32 (128 sum_k q_vk), all from greedy_head.py's packing; panels from
// pack_linear of the same W [n, k] -> int64 [rows]: each row's argmax of x W^T as `linear` gives
// it; -1 for a row that is not finite (the caller then takes the full head).
at::Tensor greedy_ids_i8(const at::Tensor& x, const at::Tensor& screen, const at::Tensor& cols,
                         const at::Tensor& comp, const at::Tensor& panels, int64_t n) {
  check_f32(x, "x");
  check_f32(cols, "cols");
  TORCH_CHECK(kInt8Screen, "greedy_ids_i8: this build has no AVX-512 VNNI");
  const int64_t rows = x.size(0), k = x.size(1), quads = (k + 3) / 4, tiles = screen.size(0);
  TORCH_CHECK(rows <= 16, "greedy_ids_i8: at most 16 rows");
  TORCH_CHECK(screen.scalar_type() == at::kChar && screen.is_contiguous() && screen.size(1) == quads &&
              tiles * SCREEN_TILE >= n, "greedy_ids_i8: screen shape");
  TORCH_CHECK(cols.size(0) == 3 && cols.size(1) == tiles * SCREEN_TILE, "greedy_ids_i8: cols shape");
  TORCH_CHECK(comp.scalar_type() == at::kInt && comp.is_contiguous() && comp.size(0) == tiles * SCREEN_TILE,
              "greedy_ids_i8: comp shape");
  TORCH_CHECK(k <= 1024, "greedy_ids_i8: the int32 sums are exact in fp32 up to K = 1024");
  check_head_panels(panels, k, n, "greedy_ids_i8");
  auto ids = at::full({rows}, -1, x.options().dtype(at::kLong));
  if (rows == 0) return ids;
  const float* px = x.data_ptr<float>();
  std::vector<int32_t> xq(rows * quads);
  std::vector<QuantRow> qr(rows);
  for (int64_t r = 0; r < rows; ++r) qr[r] = quantize_row(px + r * k, k, quads, xq.data() + r * quads);
  const int64_t stride = tiles * SCREEN_TILE;
  std::unique_ptr<float[]> hi(new float[rows * stride]);  // every element written by screen_tiles_i8
  std::vector<float> tile_hi(rows * tiles), tile_lo(rows * tiles);
  screen_tiles_i8(xq.data(), qr.data(), rows, quads, screen.data_ptr<int8_t>(), cols.data_ptr<float>(),
                  comp.data_ptr<int32_t>(), tiles, n, hi.get(), tile_hi.data(), tile_lo.data());
  auto* pid = ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    if (!qr[r].finite) continue;
    const float floor = *std::max_element(tile_lo.begin() + r * tiles, tile_lo.begin() + (r + 1) * tiles);
    pid[r] = recheck(px + r * k, k, reaching(hi.get() + r * stride, &tile_hi[r * tiles], tiles, n, floor), panels);
  }
  return ids;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_f32(x, "x");
  check_f32(weight, "weight");
  const int64_t rows = x.size(0), n = x.size(1);
  auto out = at::empty_like(x);
  const float* px = x.data_ptr<float>();
  const float* pw = weight.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = px + r * n;
      float* orow = po + r * n;
      const float inv = inv_rms(xr, n, e);
      for (int64_t i = 0; i < n; ++i) orow[i] = pw[i] * (xr[i] * inv);
    }
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  check_f32(gate_up, "gate_up");
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2;
  auto out = at::empty({rows, n}, gate_up.options());
  const float* pg = gate_up.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* g = pg + r * 2 * n;
      const float* u = g + n;
      float* o = po + r * n;
      for (int64_t i = 0; i < n; ++i) o[i] = silu(g[i]) * u[i];
    }
  });
  return out;
}

// q/k RMSNorm over all heads (Olmo's q_norm / k_norm), rotary embedding (rotate-half pairs i and
// i + d/2, cos/sin tables [positions, d/2]), K and V written to the pools at (slot, position).
at::Tensor attn_prep(const at::Tensor& qkv, const at::Tensor& q_weight, const at::Tensor& k_weight,
                     const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
                     const at::Tensor& positions, at::Tensor& k_pool, at::Tensor& v_pool, int64_t num_heads,
                     double eps) {
  check_f32(qkv, "qkv");
  check_f32(k_pool, "k_pool");
  check_f32(v_pool, "v_pool");
  check_f32(cos, "cos");
  check_f32(sin, "sin");
  check_i64(slots, "slots");
  check_i64(positions, "positions");
  const int64_t rows = qkv.size(0), kv_heads = v_pool.size(1), max_len = v_pool.size(2), d = v_pool.size(3);
  const int64_t half = d / 2, qn = num_heads * d, kn = kv_heads * d;
  TORCH_CHECK(qkv.size(1) == qn + 2 * kn, "qkv width");
  TORCH_CHECK(k_pool.size(2) == d && k_pool.size(3) == max_len, "k_pool is [slots, kv_heads, head_dim, max_len]");
  auto q_out = at::zeros({rows, qn}, qkv.options());
  const float *px = qkv.data_ptr<float>(), *pqw = q_weight.data_ptr<float>(), *pkw = k_weight.data_ptr<float>();
  const float *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();
  const int64_t *pslot = slots.data_ptr<int64_t>(), *ppos = positions.data_ptr<int64_t>();
  float *pq = q_out.data_ptr<float>(), *pk = k_pool.data_ptr<float>(), *pv = v_pool.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> normed(std::max(qn, kn)), rotated(d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t slot = pslot[r], pos = ppos[r];
      if (slot < 0) continue;
      TORCH_CHECK(pos >= 0 && pos < max_len, "position out of the pool");
      const float* row = px + r * (qn + 2 * kn);
      const float* c = pc + pos * half;
      const float* s = ps + pos * half;
      float inv = inv_rms(row, qn, e);
      for (int64_t i = 0; i < qn; ++i) normed[i] = pqw[i] * (row[i] * inv);
      for (int64_t h = 0; h < num_heads; ++h) {
        const float* x = normed.data() + h * d;
        float* o = pq + r * qn + h * d;
        for (int64_t i = 0; i < half; ++i) {
          o[i] = x[i] * c[i] - x[i + half] * s[i];
          o[i + half] = x[i + half] * c[i] + x[i] * s[i];
        }
      }
      const float* krow = row + qn;
      inv = inv_rms(krow, kn, e);
      for (int64_t i = 0; i < kn; ++i) normed[i] = pkw[i] * (krow[i] * inv);
      for (int64_t h = 0; h < kv_heads; ++h) {
        const float* x = normed.data() + h * d;
        for (int64_t i = 0; i < half; ++i) {
          rotated[i] = x[i] * c[i] - x[i + half] * s[i];
          rotated[i + half] = x[i + half] * c[i] + x[i] * s[i];
        }
        float* kt = pk + (slot * kv_heads + h) * d * max_len + pos;
        for (int64_t i = 0; i < d; ++i) kt[i * max_len] = rotated[i];
        std::memcpy(pv + ((slot * kv_heads + h) * max_len + pos) * d, krow + kn + h * d, d * sizeof(float));
      }
    }
  });
  return q_out;
}

// Causal attention of each row over its own slot's keys 0..position, in tiles (make_tiles) with
// the query heads of one kv head, so keys and values are read once per few (row, head) lanes. A
// row's own arithmetic is the same whatever its tile: each score a multiply-add chain over the
// head dimension in order (K is stored transposed, so a vector holds consecutive keys), softmax
// with lane sums, the value sum in key order, then one multiply by 1 / sum. share_slot[r] >= 0:
// row r's keys [0, share_len[r]) equal those of that slot (the caller's promise), so rows
// sharing a prompt prefix read it once.
at::Tensor row_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                         const at::Tensor& slots, const at::Tensor& positions, const at::Tensor& share_slot,
                         const at::Tensor& share_len, double scale) {
  constexpr int64_t TILE = 8;
  check_f32(q, "q");
  check_f32(k_pool, "k_pool");
  check_f32(v_pool, "v_pool");
  check_i64(slots, "slots");
  check_i64(positions, "positions");
  check_i64(share_slot, "share_slot");
  check_i64(share_len, "share_len");
  const int64_t rows = q.size(0), kv_heads = v_pool.size(1), max_len = v_pool.size(2), d = v_pool.size(3);
  const int64_t heads = q.size(1) / d, group = heads / kv_heads;
  TORCH_CHECK(max_len % KEY_VEC == 0, "the pool length must be a multiple of 16");
  TORCH_CHECK(d == 64 || d == 128, "head_dim must be 64 or 128");
  TORCH_CHECK(share_slot.size(0) == rows && share_len.size(0) == rows, "share_slot / share_len: one per row");
  auto out = at::zeros_like(q);
  const float *pq = q.data_ptr<float>(), *pk = k_pool.data_ptr<float>(), *pv = v_pool.data_ptr<float>();
  const int64_t *pslot = slots.data_ptr<int64_t>(), *ppos = positions.data_ptr<int64_t>();
  float* po = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const std::vector<Tile> tiles = make_tiles(rows, pslot, ppos, share_slot.data_ptr<int64_t>(),
                                             share_len.data_ptr<int64_t>(), TILE);
  const int64_t ntiles = static_cast<int64_t>(tiles.size());
  const int64_t kv_stride = d * max_len;  // floats per (slot, kv head) in either pool
  at::parallel_for(0, ntiles * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, qs(TILE * group * d);
    std::vector<int64_t> count(TILE * group);
    std::vector<float*> outs(TILE * group);
    std::vector<const float*> keys(TILE * group), values(TILE * group);
    for (int64_t task = begin; task < end; ++task) {
      const Tile& tile = tiles[task / kv_heads];
      const int64_t kvh = task % kv_heads, t = static_cast<int64_t>(tile.rows.size());
      const int64_t lanes = t * group;
      int64_t longest = 0;
      for (int64_t lane = 0; lane < lanes; ++lane) {
        const int64_t r = tile.rows[lane / group], g = lane % group, slot = pslot[r];
        TORCH_CHECK(ppos[r] < max_len, "position out of the pool");
        count[lane] = ppos[r] + 1;
        longest = std::max(longest, count[lane]);
        outs[lane] = po + r * heads * d + (kvh * group + g) * d;
        keys[lane] = pk + (slot * kv_heads + kvh) * kv_stride;
        values[lane] = pv + (slot * kv_heads + kvh) * kv_stride;
        for (int64_t i = 0; i < d; ++i) qs[lane * d + i] = pq[r * heads * d + (kvh * group + g) * d + i] * sc;
      }
      const int64_t stride = (longest + KEY_VEC - 1) / KEY_VEC * KEY_VEC;
      scores.resize(lanes * stride);
      // A run of one slot shares its own keys up to its first row's position: read together too.
      const int64_t first = tile.rows[0];
      const int64_t src = tile.shared_slot >= 0 ? tile.shared_slot : pslot[first];
      const int64_t shared = tile.shared_slot >= 0 ? tile.shared : ppos[first] + 1;
      attend_tile(keys.data(), values.data(), pk + (src * kv_heads + kvh) * kv_stride,
                  pv + (src * kv_heads + kvh) * kv_stride, shared, max_len, d, group, qs.data(), lanes,
                  count.data(), scores.data(), stride, outs.data());
    }
  });
  return out;
}

// The GatedDeltaNet token mixer after its input projection, stepped token by token: short causal
// conv + SiLU on q, k, v; L2-normed q (scaled by dk^-1/2) and k; beta = 2 sigmoid(b) (negative
// eigenvalues allowed); decay = exp(-exp(A_log) softplus(a + dt_bias)); the delta rule
// S <- decay S + k (beta (v - S^T k))^T, o = S^T q; then o's gated RMSNorm (weight, SiLU(gate)).
// Segments are (slot, first row, rows) of one sequence each, one task per (segment, value head);
// state is read from and written back to the slot. save_rows[i]: after that row, the state is
// copied to conv_save[i] / rec_save[i] too.
at::Tensor gdn(const at::Tensor& proj, const at::Tensor& conv_weight, const at::Tensor& a_log,
               const at::Tensor& dt_bias, const at::Tensor& norm_weight, at::Tensor& conv_state,
               at::Tensor& rec_state, const at::Tensor& seg_slot, const at::Tensor& seg_start,
               const at::Tensor& seg_len, const at::Tensor& save_rows, at::Tensor& conv_save,
               at::Tensor& rec_save, int64_t key_heads, double norm_eps) {
  check_f32(proj, "proj");
  check_f32(conv_weight, "conv_weight");
  check_f32(conv_state, "conv_state");
  check_f32(rec_state, "rec_state");
  check_f32(conv_save, "conv_save");
  check_f32(rec_save, "rec_save");
  check_i64(seg_slot, "seg_slot");
  check_i64(seg_start, "seg_start");
  check_i64(seg_len, "seg_len");
  check_i64(save_rows, "save_rows");
  const int64_t rows = proj.size(0), width = proj.size(1);
  const int64_t value_heads = rec_state.size(1), dk = rec_state.size(2), dv = rec_state.size(3);
  const int64_t taps = conv_weight.size(0), window = taps - 1, conv_dim = conv_state.size(2);
  const int64_t key_dim = key_heads * dk, value_dim = value_heads * dv, ratio = value_heads / key_heads;
  TORCH_CHECK(conv_dim == 2 * key_dim + value_dim && conv_state.size(1) == window, "conv state shape");
  TORCH_CHECK(conv_weight.size(1) == conv_dim, "conv weight is [kernel, conv_dim]");
  TORCH_CHECK(width == conv_dim + 2 * value_heads + value_dim, "projection width");
  const int64_t a_off = conv_dim, b_off = conv_dim + value_heads, gate_off = conv_dim + 2 * value_heads;
  const int64_t segments = seg_slot.size(0), saves = save_rows.size(0);
  auto out = at::zeros({rows, value_dim}, proj.options());
  const float *px = proj.data_ptr<float>(), *pw = conv_weight.data_ptr<float>();
  const float *pal = a_log.data_ptr<float>(), *pdt = dt_bias.data_ptr<float>(), *pnw = norm_weight.data_ptr<float>();
  float *pcs = conv_state.data_ptr<float>(), *prs = rec_state.data_ptr<float>(), *po = out.data_ptr<float>();
  float *pcsave = conv_save.data_ptr<float>(), *prsave = rec_save.data_ptr<float>();
  const int64_t *pslot = seg_slot.data_ptr<int64_t>(), *pstart = seg_start.data_ptr<int64_t>();
  const int64_t *plen = seg_len.data_ptr<int64_t>(), *psave = save_rows.data_ptr<int64_t>();
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  const float eps = static_cast<float>(norm_eps);

  at::parallel_for(0, segments * value_heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t nch = 2 * dk + dv;
    ConvWindow conv(window, nch);
    std::vector<float> y_buf(nch), o_buf(dv);
    float* y = y_buf.data();
    float* o = o_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t seg = task / value_heads, vh = task % value_heads, kh = vh / ratio;
      const int first_part = vh % ratio == 0 ? 0 : 2;  // a group's first head writes its shared q/k state
      const int64_t slot = pslot[seg], first = pstart[seg], count = plen[seg];
      const HeadChannels ch{{kh * dk, key_dim + kh * dk, 2 * key_dim + vh * dv}, {dk, dk, dv}, {0, dk, 2 * dk}};
      for (int64_t j = 0; j <= window; ++j) ch.gather(pw + j * conv_dim, conv.taps.data() + j * nch);
      float* cs = pcs + slot * window * conv_dim;
      conv.oldest = 0;
      for (int64_t j = 0; j < window; ++j) ch.gather(cs + j * conv_dim, conv.slot(j));
      float* S = prs + (slot * value_heads + vh) * dk * dv;
      const float neg_a = -std::exp(pal[vh]);
      for (int64_t r = first; r < first + count; ++r) {
        const float* row = px + r * width;
        if (r + 2 < first + count) ch.prefetch(row + 2 * width, a_off, vh, gate_off, dv);
        ch.gather(row, conv.x.data());
        conv.step(y);
        float* q = y;
        float* k = y + dk;
        const float* v = y + 2 * dk;
        const float q_inv = 1.0f / std::sqrt(dot(q, q, dk) + 1e-6f);
        const float k_inv = 1.0f / std::sqrt(dot(k, k, dk) + 1e-6f);
        for (int64_t i = 0; i < dk; ++i) {
          q[i] = q[i] * q_inv * q_scale;
          k[i] = k[i] * k_inv;
        }
        const float beta = 2.0f * sigmoid(row[b_off + vh]);
        const float decay = fast_exp(neg_a * softplus(row[a_off + vh] + pdt[vh]));
        delta_rule_step(S, q, k, v, decay, beta, dk, dv, o);
        const float inv = inv_rms(o, dv, eps);
        const float* gate = row + gate_off + vh * dv;
        float* orow = po + r * value_dim + vh * dv;
        for (int64_t j = 0; j < dv; ++j) orow[j] = (pnw[j] * (o[j] * inv)) * silu(gate[j]);
        for (int64_t i = 0; i < saves; ++i) {
          if (psave[i] != r) continue;
          std::memcpy(prsave + (i * value_heads + vh) * dk * dv, S, dk * dv * sizeof(float));
          for (int64_t j = 0; j < window; ++j) ch.scatter(conv.slot(j), pcsave + (i * window + j) * conv_dim, first_part);
        }
      }
      for (int64_t j = 0; j < window; ++j) ch.scatter(conv.slot(j), cs + j * conv_dim, first_part);
    }
  });
  return out;
}

// ---------------------------------------------------------------- the layer loop (model.py)
//
// model.py's decoder layers in one call: the same kernels in the same order on the same tensors,
// so the same bits, without a Python call (and a wait for the GIL) between each two of them. At a
// decode step of 8 rows each kernel runs for tens of microseconds, about what a call from Python
// costs; and the server's event loop holds the GIL while it formats the last step's tokens.

struct PackedMatrix {
  at::Tensor packed;  // pack_linear's panels
  int64_t n = 0;      // output features
  at::Tensor operator()(const at::Tensor& x) const { return linear(x, packed, n); }
};

struct DecoderLayer {
  bool attention = false;
  PackedMatrix in, out, gate_up, down;  // in: q|k|v|a|b|gate (GatedDeltaNet) or q|k|v (attention)
  at::Tensor norm_a, norm_b;  // GatedDeltaNet: input and post norm; attention: post-attention and post-MLP norm
  at::Tensor conv, a_log, dt_bias, o_norm;  // GatedDeltaNet
  at::Tensor q_norm, k_norm;                // attention
};

class LayerLoop {
 public:
  void add_linear(at::Tensor input_norm, at::Tensor w_in, int64_t n_in, at::Tensor conv, at::Tensor a_log,
                  at::Tensor dt_bias, at::Tensor o_norm, at::Tensor w_out, int64_t n_out, at::Tensor post_norm,
                  at::Tensor w_gate_up, int64_t n_gate_up, at::Tensor w_down, int64_t n_down) {
    DecoderLayer& l = add({w_in, n_in}, {w_out, n_out}, {w_gate_up, n_gate_up}, {w_down, n_down}, input_norm, post_norm);
    l.conv = conv;
    l.a_log = a_log;
    l.dt_bias = dt_bias;
    l.o_norm = o_norm;
  }

  void add_attention(at::Tensor w_qkv, int64_t n_qkv, at::Tensor q_norm, at::Tensor k_norm, at::Tensor w_out,
                     int64_t n_out, at::Tensor post_attn_norm, at::Tensor w_gate_up, int64_t n_gate_up,
                     at::Tensor w_down, int64_t n_down, at::Tensor post_ff_norm) {
    DecoderLayer& l = add({w_qkv, n_qkv}, {w_out, n_out}, {w_gate_up, n_gate_up}, {w_down, n_down}, post_attn_norm,
                          post_ff_norm);
    l.attention = true;
    l.q_norm = q_norm;
    l.k_norm = k_norm;
  }

  // The residual stream after every layer; K/V pools, conv and recurrent states updated in place,
  // snapshots written at save rows, as model.py's loop does.
  at::Tensor forward(at::Tensor x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
                     const at::Tensor& positions, const at::Tensor& share_slot, const at::Tensor& share_len,
                     const at::Tensor& seg_slot, const at::Tensor& seg_start, const at::Tensor& seg_len,
                     const at::Tensor& save_rows, std::vector<at::Tensor> keys, std::vector<at::Tensor> values,
                     const at::Tensor& conv_state, const at::Tensor& rec_state, const at::Tensor& conv_save,
                     const at::Tensor& rec_save, int64_t num_heads, int64_t key_heads, double eps, double gdn_eps,
                     double scale) const {
    size_t attn_i = 0;
    int64_t gdn_i = 0;
    for (const DecoderLayer& l : layers_) {
      if (l.attention) {
        TORCH_CHECK(attn_i < keys.size() && attn_i < values.size(), "a K/V pool per attention layer");
        at::Tensor& kp = keys[attn_i];
        at::Tensor& vp = values[attn_i];
        const at::Tensor q = attn_prep(l.in(x), l.q_norm, l.k_norm, cos, sin, slots, positions, kp, vp, num_heads, eps);
        const at::Tensor mixed = row_attention(q, kp, vp, slots, positions, share_slot, share_len, scale);
        x = x + rms_norm(l.out(mixed), l.norm_a, eps);
        const at::Tensor mlp = l.down(silu_mul(l.gate_up(x)));
        x = x + rms_norm(mlp, l.norm_b, eps);
        ++attn_i;
      } else {
        at::Tensor cs = conv_state.select(0, gdn_i), rs = rec_state.select(0, gdn_i);
        at::Tensor csave = conv_save.select(0, gdn_i), rsave = rec_save.select(0, gdn_i);
        const at::Tensor proj = l.in(rms_norm(x, l.norm_a, eps));
        const at::Tensor mixed = gdn(proj, l.conv, l.a_log, l.dt_bias, l.o_norm, cs, rs, seg_slot, seg_start, seg_len,
                                     save_rows, csave, rsave, key_heads, gdn_eps);
        x = x + l.out(mixed);
        const at::Tensor h = rms_norm(x, l.norm_b, eps);
        x = x + l.down(silu_mul(l.gate_up(h)));
        ++gdn_i;
      }
    }
    return x;
  }

 private:
  DecoderLayer& add(PackedMatrix in, PackedMatrix out, PackedMatrix gate_up, PackedMatrix down, at::Tensor norm_a,
                    at::Tensor norm_b) {
    DecoderLayer l;
    l.in = std::move(in);
    l.out = std::move(out);
    l.gate_up = std::move(gate_up);
    l.down = std::move(down);
    l.norm_a = std::move(norm_a);
    l.norm_b = std::move(norm_b);
    layers_.push_back(std::move(l));
    return layers_.back();
  }

  std::vector<DecoderLayer> layers_;
};

// Every kernel lets go of the GIL: the server's event loop (another thread of this process)
// formats and sends the previous step's tokens while the engine thread computes.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("pack_linear", &pack_linear, no_gil);
  m.def("linear", &linear, no_gil);
  m.def("greedy_head_available", &greedy_head_available);
  m.def("pack_screen", &pack_screen, no_gil);
  m.def("greedy_ids", &greedy_ids, no_gil);
  m.def("int8_screen_available", &int8_screen_available);
  m.def("greedy_ids_i8", &greedy_ids_i8, no_gil);
  m.def("rms_norm", &rms_norm, no_gil);
  m.def("silu_mul", &silu_mul, no_gil);
  m.def("attn_prep", &attn_prep, no_gil);
  m.def("row_attention", &row_attention, no_gil);
  m.def("gdn", &gdn, no_gil);
  py::class_<LayerLoop>(m, "LayerLoop")
      .def(py::init<>())
      .def("add_linear", &LayerLoop::add_linear)
      .def("add_attention", &LayerLoop::add_attention)
      .def("forward", &LayerLoop::forward, no_gil);
}
