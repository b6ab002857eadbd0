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
#include "kernels.h"

#include <ATen/Parallel.h>

#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define SMALL_GEMM_AVX512BF16 1
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

#ifdef SMALL_GEMM_AVX512BF16
// Rows [0, R) of x against one tile: w points at the tile's K/2 pair vectors. Two accumulators
// per row (even and odd pairs, added at the end) hide the dot product's latency at few rows;
// every row uses this same split, so its sums do not depend on R.
template <int R>
void tile_rows(const bf16* x, int64_t x_stride, const bf16* w, int64_t pairs, float* out) {
  __m512 even[R], odd[R];
  for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_ps();
  auto step = [&](__m512* acc, int64_t p) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (p + kPrefetchPairs) * 2 * kTile), _MM_HINT_T0);
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + p * 2 * kTile);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * x_stride + 2 * p, sizeof(pair));
      acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(pair), wv);
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

using TileFn = void (*)(const bf16*, int64_t, const bf16*, int64_t, float*);
constexpr TileFn kTileFns[kRowBlock + 1] = {nullptr, tile_rows<1>, tile_rows<2>, tile_rows<3>, tile_rows<4>,
                                            tile_rows<5>, tile_rows<6>, tile_rows<7>, tile_rows<8>};
#endif

}  // namespace

void small_gemm_tiles(const bf16* xp, int64_t M, int64_t stride, const bf16* wp, int64_t pairs, int64_t N, bf16* op,
                      int64_t first, int64_t last) {
#ifdef SMALL_GEMM_AVX512BF16
  // Row blocks of equal size (9 rows: 5 + 4, not 8 + 1): a small block is latency-bound.
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock, block = (M + blocks - 1) / blocks;
  float tmp[kRowBlock * kTile];
  for (int64_t t = first; t < last; ++t) {
    const bf16* w = wp + t * pairs * 2 * kTile;
    const int64_t cols = std::min<int64_t>(kTile, N - t * kTile);
    for (int64_t r0 = 0; r0 < M; r0 += block) {
      const int64_t rows = std::min<int64_t>(block, M - r0);
      kTileFns[rows](xp + r0 * stride, stride, w, pairs, tmp);
      for (int64_t r = 0; r < rows; ++r) {
        bf16* dst = op + (r0 + r) * N + t * kTile;
        if (cols == kTile) {  // round to nearest even, as bf16(float) does, 16 at a time (lm_head: 49K columns a row)
          const __m256bh packed16 = _mm512_cvtneps_pbh(_mm512_loadu_ps(tmp + r * kTile));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)packed16);
        } else {
          for (int64_t c = 0; c < cols; ++c) dst[c] = bf16(tmp[r * kTile + c]);
        }
      }
    }
  }
#endif
}

bool small_gemm_available() {
#ifdef SMALL_GEMM_AVX512BF16
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
  TORCH_CHECK(small_gemm_available(), "small_gemm: this build has no AVX-512 BF16");
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
#ifdef SMALL_GEMM_AVX512BF16
  const bf16 *xp = xc.data_ptr<bf16>(), *wp = packed.data_ptr<bf16>();
  bf16* op = out.data_ptr<bf16>();
  // ~64K multiply-adds per task at least (see grain_for), so small layers stay on one thread.
  at::parallel_for(0, tiles, grain_for(M * pairs * 2 * kTile), [&](int64_t a, int64_t b) {
    small_gemm_tiles(xp, M, stride, wp, pairs, N, op, a, b);
  });
#endif
  return out;
}
