// y = x W^T for a few rows (decode and verify steps), bf16 in, fp32 accumulation, bf16 out.
//
// At a few rows a linear layer is a stream of its weights: the work is reading them. W is
// repacked once into tiles of 16 output columns, each tile K/2 vectors of (16 columns x 2
// consecutive k) bf16 pairs, which is the operand order of AVX-512 BF16's dot-product
// instruction; each tile is read once per call and used for every row. Tiles are split
// between threads.
//
// Every row is accumulated by the same instruction sequence (over k in order, one fp32 lane per
// output column) whatever the other rows are, so a row's result does not depend on how many
// rows the call has: 1-row decodes and 9-row verify chunks give the same numbers.
//
// On a CPU with AMX the same tiles are AMX B tiles (16 pairs x 16 columns x 2 = 1 KB): each tile's
// 32-k chunks go through the tile unit's bf16 dot product, up to 16 rows an A tile. The dot products
// are then ~1/30 of the work (16 cycles for 16 x 16 x 32 multiply-adds whatever the rows), so every
// row count up to 32 costs about the weight stream, where the AVX-512 loop is compute-bound from ~5
// rows. Each row is still summed alone, by the same chunk sequence at any row count: a row's bits
// do not depend on the call's rows. The two paths round differently; a process uses one (set once,
// before the engine's first step: small_gemm_use_amx).
//
// Without AVX-512 BF16 (an Intel Xeon before Cooper Lake: Ice Lake, Skylake) the AVX-512 loop takes
// each pair as two fp32 multiply-adds (a bf16 is the top half of an fp32, so widening is exact):
// twice the instructions of the dot product, still one sequence per row.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define SMALL_GEMM_AVX512 1
#if defined(__AVX512BF16__)
#define SMALL_GEMM_AVX512BF16 1
#endif
#endif
#if defined(SMALL_GEMM_AVX512BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#define SMALL_GEMM_AMX 1
#endif

namespace {

using bf16 = at::BFloat16;
constexpr int64_t kTile = 16;  // output columns per tile: one fp32 vector
constexpr int64_t kRowBlock = 8;  // rows accumulated together (8 vector registers)
// Pair vectors (one 64-byte line each) read ahead of the dot products. The stream of a layer's
// weights comes from DRAM, and from ~5 rows the core is busy with the dot products: the
// hardware prefetcher then fell behind (EPYC, SmolLM2-135M steps: 9 rows 19.2 -> 16.7 ms,
// 16 rows 28.9 -> 26.6; 1-3 rows unchanged). Reading past a tile's end reads the next tile.
constexpr int64_t kPrefetchPairs = 32;

inline int64_t tiles_of(int64_t n) { return (n + kTile - 1) / kTile; }

#ifdef SMALL_GEMM_AVX512
#ifdef SMALL_GEMM_AVX512BF16
using XElem = bf16;  // x as given: each pair is one 32-bit operand of the dot product
#else
using XElem = float;  // x widened once a call: each k is one broadcast operand of a multiply-add
#endif

// Rows [0, R) of x against one tile: w points at the tile's K/2 pair vectors. Two accumulators
// per row (even and odd pairs, added at the end) hide the dot product's latency at few rows;
// every row uses this same split, so its sums do not depend on R.
template <int R>
void tile_rows(const XElem* x, int64_t x_stride, const bf16* w, int64_t pairs, float* out) {
  __m512 even[R], odd[R];
  for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  auto step = [&](__m512* acc, int64_t p) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (p + kPrefetchPairs) * 2 * kTile), _MM_HINT_T0);
#ifdef SMALL_GEMM_AVX512BF16
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + p * 2 * kTile);
#else
    const __m512i wp = _mm512_loadu_si512(w + p * 2 * kTile);  // per column: k even low, k odd high
    const __m512 w_even = _mm512_castsi512_ps(_mm512_slli_epi32(wp, 16));
    const __m512 w_odd = _mm512_castsi512_ps(_mm512_and_si512(wp, _mm512_set1_epi32(int32_t(0xFFFF0000u))));
#endif
    for (int r = 0; r < R; ++r) {
#ifdef SMALL_GEMM_AVX512BF16
      int32_t pair;
      std::memcpy(&pair, x + r * x_stride + 2 * p, sizeof(pair));
      acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(pair), wv);
#else
      const float* xr = x + r * x_stride + 2 * p;
      acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(xr[1]), w_odd, _mm512_fmadd_ps(_mm512_set1_ps(xr[0]), w_even, acc[r]));
#endif
    }
  };
  int64_t p = 0;
  for (; p + 1 < pairs; p += 2) {
    step(even, p);
    step(odd, p + 1);
  }
  if (p < pairs) step(even, p);
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * kTile, _mm512_add_ps(even[r], odd[r]));
}

using TileFn = void (*)(const XElem*, int64_t, const bf16*, int64_t, float*);

#ifndef SMALL_GEMM_AVX512BF16
// Rows [0, M) of x (2 * pairs bf16 each, `stride` apart) widened to fp32, 2 * pairs apart. Once a
// call, not once a pair and row: the widening and the broadcast from a register cost more than
// the two multiply-adds (an Ice Lake Xeon, SmolLM2-135M's layer matmuls at 32 rows: 92.7 ms
// widening in the loop, 52.8 widened first).
const float* widened(const bf16* x, int64_t M, int64_t stride, int64_t pairs) {
  thread_local std::vector<float> wide;
  const int64_t width = 2 * pairs;
  wide.resize(M * width);
  for (int64_t r = 0; r < M; ++r) {
    const bf16* src = x + r * stride;
    float* dst = wide.data() + r * width;
    int64_t k = 0;
    for (; k + 16 <= width; k += 16) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k));
      _mm512_storeu_ps(dst + k, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16)));
    }
    for (; k < width; ++k) dst[k] = static_cast<float>(src[k]);
  }
  return wide.data();
}
#endif
constexpr TileFn kTileFns[kRowBlock + 1] = {nullptr, tile_rows<1>, tile_rows<2>, tile_rows<3>, tile_rows<4>,
                                            tile_rows<5>, tile_rows<6>, tile_rows<7>, tile_rows<8>};

// 16 fp32 columns of `rows` rows (row stride 16) to bf16, nearest even as bf16(float) rounds.
void store_rows(const float* tmp, int64_t rows, int64_t cols, bf16* op, int64_t N) {
  for (int64_t r = 0; r < rows; ++r) {
    bf16* dst = op + r * N;
    if (cols == kTile) {  // 16 at a time (lm_head: 49K columns a row)
#ifdef SMALL_GEMM_AVX512BF16
      const __m256i packed16 = (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(tmp + r * kTile));
#else
      // bf16(float)'s rounding: + 0x7FFF + the kept part's lowest bit, keep the top half; NaN -> 0x7FC0.
      const __m512 v = _mm512_loadu_ps(tmp + r * kTile);
      const __m512i u = _mm512_castps_si512(v);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i top = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
      top = _mm512_mask_mov_epi32(top, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
      const __m256i packed16 = _mm512_cvtepi32_epi16(top);
#endif
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), packed16);
    } else {
      for (int64_t c = 0; c < cols; ++c) dst[c] = bf16(tmp[r * kTile + c]);
    }
  }
}
#endif

#ifdef SMALL_GEMM_AMX
constexpr int64_t kChunkPairs = 16;  // k pairs per tile product: B is 16 rows of 64 bytes
constexpr int64_t kAmxRows = 16;     // rows per A / C tile

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands out the tile registers' state only on request, once per process.
bool amx_permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  return ok;
}

// Tiles: 0, 1 the sums of rows [r0, r0 + 16) and [r0 + 16, r0 + 32); 2, 3 their x chunks; 4 the weight
// chunk; 5, 6, 7 the same for the last chunk of fewer than 16 pairs.
void amx_configure(int64_t rows0, int64_t rows1, int64_t tail_pairs) {
  TileConfig cfg;
  const int64_t rows[2] = {rows0, rows1};
  for (int b = 0; b < 2; ++b) {
    if (rows[b] == 0) continue;
    cfg.rows[b] = cfg.rows[2 + b] = static_cast<uint8_t>(rows[b]);
    cfg.colsb[b] = cfg.colsb[2 + b] = 64;
    if (tail_pairs) {
      cfg.rows[5 + 2 * b] = static_cast<uint8_t>(rows[b]);
      cfg.colsb[5 + 2 * b] = static_cast<uint16_t>(4 * tail_pairs);
    }
  }
  cfg.rows[4] = kChunkPairs;
  cfg.colsb[4] = 64;
  if (tail_pairs) {
    cfg.rows[6] = static_cast<uint8_t>(tail_pairs);
    cfg.colsb[6] = 64;
  }
  _tile_loadconfig(&cfg);
}

// Rows [0, rows0 + rows1) of x against tiles [first, last), up to 32 rows.
void amx_tiles(const bf16* xp, int64_t rows0, int64_t rows1, int64_t stride, const bf16* wp, int64_t pairs,
               int64_t N, bf16* op, int64_t first, int64_t last) {
  const int64_t chunks = pairs / kChunkPairs, tail = pairs % kChunkPairs, xb = stride * sizeof(bf16);
  const bf16* x1 = xp + kAmxRows * stride;
  alignas(64) float tmp[2 * kAmxRows * kTile];
  amx_configure(rows0, rows1, tail);
  for (int64_t t = first; t < last; ++t) {
    const bf16* w = wp + t * pairs * 2 * kTile;
    _tile_zero(0);
    if (rows1) _tile_zero(1);
    for (int64_t c = 0; c < chunks; ++c) {
      const bf16* wc = w + c * kChunkPairs * 2 * kTile;
      // The next chunk's 16 lines, 4 chunks ahead: the weight stream comes from DRAM.
      for (int64_t l = 0; l < kChunkPairs; l += 2)
        _mm_prefetch(reinterpret_cast<const char*>(wc + (4 * kChunkPairs + l) * 2 * kTile), _MM_HINT_T0);
      _tile_loadd(4, wc, 64);
      _tile_loadd(2, xp + c * 2 * kChunkPairs, xb);
      _tile_dpbf16ps(0, 2, 4);
      if (rows1) {
        _tile_loadd(3, x1 + c * 2 * kChunkPairs, xb);
        _tile_dpbf16ps(1, 3, 4);
      }
    }
    if (tail) {
      _tile_loadd(6, w + chunks * kChunkPairs * 2 * kTile, 64);
      _tile_loadd(5, xp + chunks * 2 * kChunkPairs, xb);
      _tile_dpbf16ps(0, 5, 6);
      if (rows1) {
        _tile_loadd(7, x1 + chunks * 2 * kChunkPairs, xb);
        _tile_dpbf16ps(1, 7, 6);
      }
    }
    _tile_stored(0, tmp, kTile * sizeof(float));
    if (rows1) _tile_stored(1, tmp + kAmxRows * kTile, kTile * sizeof(float));
    store_rows(tmp, rows0 + rows1, std::min<int64_t>(kTile, N - t * kTile), op + t * kTile, N);
  }
  _tile_release();
}

std::atomic<bool> g_amx{false};  // small_gemm_use_amx
#endif

}  // namespace

bool small_gemm_use_amx(bool wanted) {
#ifdef SMALL_GEMM_AMX
  g_amx = wanted && amx_permitted();
  return g_amx;
#else
  return false;
#endif
}

bool small_gemm_amx() {
#ifdef SMALL_GEMM_AMX
  return g_amx;
#else
  return false;
#endif
}

void small_gemm_tiles(const bf16* xp, int64_t M, int64_t stride, const bf16* wp, int64_t pairs, int64_t N, bf16* op,
                      int64_t first, int64_t last) {
#ifdef SMALL_GEMM_AMX
  if (g_amx && stride % 2 == 0) {  // 4-byte pairs, as the A tile reads them
    for (int64_t r0 = 0; r0 < M; r0 += 2 * kAmxRows) {
      const int64_t rows0 = std::min<int64_t>(kAmxRows, M - r0), rows1 = std::min<int64_t>(kAmxRows, M - r0 - rows0);
      amx_tiles(xp + r0 * stride, rows0, rows1, stride, wp, pairs, N, op + r0 * N, first, last);
    }
    return;
  }
#endif
#ifdef SMALL_GEMM_AVX512
  // Row blocks of equal size (9 rows: 5 + 4, not 8 + 1): a small block is latency-bound.
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock, block = (M + blocks - 1) / blocks;
  float tmp[kRowBlock * kTile];
#ifdef SMALL_GEMM_AVX512BF16
  const XElem* xs = xp;
  const int64_t xs_stride = stride;
#else
  const XElem* xs = widened(xp, M, stride, pairs);
  const int64_t xs_stride = 2 * pairs;
#endif
  for (int64_t t = first; t < last; ++t) {
    const bf16* w = wp + t * pairs * 2 * kTile;
    const int64_t cols = std::min<int64_t>(kTile, N - t * kTile);
    for (int64_t r0 = 0; r0 < M; r0 += block) {
      const int64_t rows = std::min<int64_t>(block, M - r0);
      kTileFns[rows](xs + r0 * xs_stride, xs_stride, w, pairs, tmp);
      store_rows(tmp, rows, cols, op + r0 * N + t * kTile, N);
    }
  }
#endif
}

bool small_gemm_available() {
#ifdef SMALL_GEMM_AVX512
  return true;
#else
  return false;
#endif
}

// W [N, K] bf16 -> [tiles, K/2 (rounded up), 16, 2]: tile t, pair p holds W[16t + c, 2p + j] at [t, p, c, j];
// padding columns and the odd k are zero.
torch::Tensor small_gemm_pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "small_gemm_pack: W must be [N, K] bf16");
  auto w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1), pairs = (K + 1) / 2, tiles = tiles_of(N);
  auto packed = torch::zeros({tiles, pairs, kTile, 2}, w.options());
  const bf16* src = w.data_ptr<bf16>();
  bf16* dst = packed.data_ptr<bf16>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t t = n / kTile, c = n % kTile;
    for (int64_t k = 0; k < K; ++k) dst[((t * pairs + k / 2) * kTile + c) * 2 + k % 2] = src[n * K + k];
  }
  return packed;
}

// x [M, K] bf16 (rows contiguous), packed from small_gemm_pack of W [N, K] -> [M, N] bf16.
torch::Tensor small_gemm(const torch::Tensor& x, const torch::Tensor& packed, int64_t N) {
  TORCH_CHECK(small_gemm_available(), "small_gemm: this build has no AVX-512");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16, "small_gemm: x must be [M, K] bf16");
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kTile && packed.size(3) == 2 && packed.size(0) == tiles_of(N),
              "small_gemm: packed does not come from small_gemm_pack of an [N, K] weight");
  const int64_t pairs = packed.size(1), K = x.size(1);
  TORCH_CHECK((K + 1) / 2 == pairs, "small_gemm: x has ", K, " columns, the weight ", 2 * pairs);
  // An odd K reads one padding element past each row: copy x into an even-width buffer.
  auto xc = (K % 2 == 0) ? x.contiguous() : at::constant_pad_nd(x, {0, 1}).contiguous();
  const int64_t M = xc.size(0), stride = xc.size(1), tiles = packed.size(0);
  auto out = torch::empty({M, N}, x.options());
  if (M == 0) return out;
#ifdef SMALL_GEMM_AVX512
  const bf16 *xp = xc.data_ptr<bf16>(), *wp = packed.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  // ~64K multiply-adds per task at least (see grain_for), so small layers stay on one thread.
  at::parallel_for(0, tiles, grain_for(M * pairs * 2 * kTile), [&](int64_t a, int64_t b) {
    small_gemm_tiles(xp, M, stride, wp, pairs, N, op, a, b);
  });
#endif
  return out;
}
