// Per-layer K/V storage that keeps only what each layer can see, and can go back.
//
// Each layer has an attention kind:
//   global        position p sees 0..p; the layer stores n_ctx positions.
//   window W      p sees the last W positions (p-W+1..p): a ring of R = W + B - 1 slots,
//                 position p in slot p % R, where B = n_batch + n_draft is the most positions
//                 of one sequence a forward pass writes. The extra B - 1 slots let a step of B
//                 new tokens be written before any of them attends, without evicting what the
//                 step's first token still sees, and let rejected drafts be rewound (below).
//   sinks S + W   p sees positions 0..S-1 (kept forever: the "attention sinks" of
//                 StreamingLLM, Xiao et al. 2023) and the last W positions: S fixed slots,
//                 then a ring as for a window.
//   none          the layer attends to nothing (a state-space mixer, or a feed-forward-only
//                 layer of a hybrid stack): it keeps no K/V rows.
// Layout per layer: K and V each [n_seq][slots][kv_dim] of the cache type (f16 by
// default, f32 on request). A cache whose layers are all windowed has no position
// limit: a stream can run past n_ctx (and past the model's trained context) with
// bounded memory.
//
// Paged (block_size > 0, for serving): the global layers keep no per-sequence rows but one
// pool of n_blocks blocks of block_size positions, K and V each [n_blocks][block_size][kv_dim].
// Each sequence slot has a block table (set_block_table, chosen by a BlockManager):
// position p of the sequence lives in block table[p / block_size], row p % block_size, so
// sequences can share blocks (prefix caching, n > 1) and need only the blocks they fill.
// Window layers keep their per-sequence rings. With block_size a multiple of the attention
// tile (16), attention reads the same tiles as from a contiguous cache: paged and
// contiguous results are bit-identical. Only paged global layers can share a prefix
// between sequences (supports_prefix_sharing): a ring or a contiguous row belongs to one.
//
// Going back (speculative decoding drafts k tokens, verifies them in one forward pass and
// rejects some): rewind(seq, n_keep) keeps positions [0, n_keep); the rows past it become
// invalid and are overwritten by the next step. Global layers lose nothing. Why a ring of
// R = W + B - 1 slots stays exact:
//   - Writing position p into a ring evicts p - R (same slot). After a sequence has been
//     written up to e - 1, the ring holds [e - R, e).
//   - A step writes [n, n + m), m <= B, before any of its tokens attends; token q needs
//     [q - W + 1, q]. The oldest of these, n - W + 1, is evicted only by writing
//     n - W + 1 + R = n + B, past the step's last position n + m - 1.
//   - Rewinding after a step that ended at e to n_keep >= e - B (dropping only positions
//     of that step: the rejected drafts) leaves [e - R, n_keep) held, and
//     e - R <= n_keep + B - R = n_keep - W + 1: everything position n_keep sees is still
//     there, and the rejected rows are past the end. The next step therefore reads exactly
//     what a cache that never saw the rejected tokens holds.
// So B must count the largest step including its drafted tokens (n_draft). Rewinding
// further back than one step can find evicted positions: rewind() then keeps less (the
// sinks, or nothing) and returns how much, and the caller recomputes from there.
//
// Recurrent state (state-space layers, Mamba-2): a layer with state_floats > 0 keeps, per
// sequence, a fixed-size f32 block (its conv window and SSM state) that a forward pass
// advances token by token instead of K/V rows. It cannot go back by itself: checkpoint(seq)
// copies every layer's state of seq (taken before a speculative step), and rewind() to a
// position before the state's end restores that checkpoint when it lies at or before the
// kept position (returning the checkpoint's position: the caller recomputes from there),
// or empties the sequence (returning 0). fork() copies the state; reset() zeroes it. Such
// a cache shares no prefixes (a block of K/V does not carry the state at its end).
//
// Quantized rows (q8_0, q4_0): a position's K or V row is kv_dim / 32 blocks, written once by
// store() from the layer's float rows; attention reads them in place (AttnFormat), so paged
// blocks, copy-on-write, forks and prefix sharing work on them as on f16 rows.
//
// Rotation (kv/hadamard.h): with `rotate`, a layer whose K rows are quantized (q8_0, q4_0,
// KIVI) stores every head's keys rotated by a Walsh-Hadamard matrix of the largest power of two
// that divides the head dimension, and attention rotates the queries alike; quantized V rows
// are rotated in blocks of 64 and attention rotates its output back. Scores and outputs are
// those of the unrotated rows up to rounding, with the outlier channels spread over the block
// before a scale is chosen for it (llama.cpp rotates q8_0 / q4_0 caches the same way). Head
// dimensions that are not a multiple of 64 are not rotated. KIVI's per-channel key scales are
// the paper's own answer to outlier channels, but post-RoPE keys still gain from the rotation:
// SmolLM2-135M at 1k context, kivi2 perplexity +20.5% over f16 unrotated, +14.6% rotated.
//
// KIVI (kivi2, global layers): V rows are 2-bit per token (AttnFormat::Q2, written by store());
// K is 2-bit per channel over groups of kKiviGroup positions (AttnFormat::Q2Channel), a group
// taking the rows of its positions, quantized when its last position is stored. Each sequence
// also keeps an f16 ring of kivi_ring() positions of K and V (the "residual" of the paper): the
// query at position p reads the groups before kivi_quantized(p) in 2 bits and the rest, at
// least kivi_residual positions, in f16. Which positions a query reads in 2 bits depends only
// on its own position, so results do not depend on how tokens were batched. The ring holds what
// the first token of the largest step reads (the argument for window rings above, with
// W = kivi_residual + kKiviGroup - 1): rewinding the last step is exact; rewinding further than
// the ring holds keeps nothing (the caller recomputes). A group is requantized whenever its
// last position is stored again. KIVI layers share no prefixes (the residual ring is per
// sequence), and paged KIVI layers need blocks of a multiple of kKiviGroup positions.
//
// Eviction (kv/kv_evict.h; --kv-evict h2o|snapkv --kv-budget N): an evicting global layer keeps,
// per (sequence, KV head), up to evict_capacity() entries in position order, each a head's K
// and V row with its position and an attention score that attention() accumulates (the kernel
// adds each entry's softmax probabilities, no score matrix). After a step's attention,
// after_step() compacts every head that holds more than the budget to what its method keeps.
// A sequence within its budget is never compacted and reads the same rows in the same order
// and tiles as without eviction: its results are identical. Evicting layers are per sequence
// (never paged, no prefix sharing); rewind() drops the entries past the kept position, but what
// was evicted stays evicted, so speculative decoding is refused with eviction.
//
// Validity. Per (layer, sequence) the cache records which positions hold valid rows:
// [0, end) for a global layer; the sinks [0, min(S, end)) and the ring positions [lo, end)
// for a window layer. A sequence is written in position order: store() of position p
// makes p its last position (end = p + 1; writing p again drops what followed it), and a
// store past end (a gap) is an error in debug builds. rewind() lowers end, reset() empties
// the sequence, fork() copies the record with the rows, adopt_prefix() accepts rows
// another sequence wrote into shared blocks. spans() checks in debug builds that every
// position it returns is valid, so reading rows never written (or evicted) aborts with
// the positions; release builds only keep the record (a few compares per store).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/huge_buffer.h"
#include "core/status.h"
#include "kernels/kernels.h"

namespace peregrine {

// How K or V rows are stored (--kv-type, --kv-type-k, --kv-type-v):
//   f32, f16     as floats;
//   q8_0, q4_0   per 32 values of a row one fp16 scale and 8-bit / 4-bit codes (ggml's
//                Q8_0 / Q4_0 blocks, as llama.cpp's -ctk/-ctv q8_0, q4_0);
//   kivi2        KIVI (Liu et al. 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
//                Cache"): 2-bit codes with an fp16 scale and minimum per 32 values, keys per
//                channel over groups of 32 positions, values per token, and the most recent
//                positions in f16 (see "KIVI" below). Global layers only: a window layer
//                keeps its bounded ring in f16. K and V may differ (KIVI keys, q8_0 values);
//                the f16 residual then covers both.
enum class KvType { F32, F16, Q8_0, Q4_0, Kivi2 };
std::string_view kv_type_name(KvType t);
std::optional<KvType> parse_kv_type(std::string_view name);
inline constexpr const char* kKvTypeNames = "f32, f16, q8_0, q4_0, kivi2";
// Whether rows of the type are blocks of 32 values (the head dimension must be a multiple of 32).
bool kv_type_blocked(KvType t);

// KV eviction (--kv-evict, --kv-budget): which entries a global layer keeps per KV head once
// a sequence holds more than the budget (kv/kv_evict.h).
enum class KvEvict { None, H2O, SnapKV };
std::string_view kv_evict_name(KvEvict e);
std::optional<KvEvict> parse_kv_evict(std::string_view name);

// Block-sparse prefill attention (--sparse-prefill, ops/sparse_prefill.h): a query block
// attends to the key blocks its pooled Q.K estimate selects.
struct SparsePrefill {
  enum class Mode { Off, TopK, TopP };
  Mode mode = Mode::Off;
  int64_t top_k = 0;   // TopK: key blocks kept per query block (besides the forced ones)
  double top_p = 1.0;  // TopP: smallest set of key blocks with this much estimated mass
  int64_t block = 64;  // positions per query and key block
  bool on() const { return mode != Mode::Off; }
};

// How the user asked for the cache to be kept (--kv-type, --kv-type-k, --kv-type-v,
// --kv-evict, --kv-budget, --sparse-prefill).
struct KvConfig {
  KvType k = KvType::F16;
  KvType v = KvType::F16;
  KvEvict evict = KvEvict::None;
  int64_t budget = 0;  // entries per layer and KV head with eviction
  SparsePrefill sparse;
  bool rotate = true;  // Hadamard-rotate quantized K/V rows (kv/hadamard.h)
};

// KIVI: positions of a group of this many are quantized together (keys per channel).
inline constexpr int64_t kKiviGroup = 32;

struct AttnKind {
  enum class Type { Global, Window, SinksWindow, None };
  Type type = Type::Global;
  int64_t window = 0;  // W (Window, SinksWindow)
  int64_t sinks = 0;   // S (SinksWindow)

  static AttnKind global() { return {}; }
  static AttnKind sliding(int64_t w) { return {Type::Window, w, 0}; }
  static AttnKind sinks_window(int64_t s, int64_t w) { return {Type::SinksWindow, w, s}; }
  static AttnKind none() { return {Type::None, 0, 0}; }
  bool windowed() const { return type == Type::Window || type == Type::SinksWindow; }
  bool keeps_kv() const { return type != Type::None; }
  std::string describe() const;  // "global", "window 512", "sinks 4 + window 1020", "none"
  // Positions p sees: [0, min(p+1, sinks)) and [max(sinks, p-W+1), p]; global: [0, p].
  int64_t first_recent(int64_t p) const;
};

// The most tokens one step may draft (speculative decoding); every cache a model makes has room
// for them (KvShape::n_draft), so the window rings are the same size with and without drafts.
inline constexpr int64_t kMaxDraftTokens = 64;

struct KvShape {
  int64_t n_layer = 0;
  int64_t n_ctx = 0;      // positions per sequence for global layers
  int64_t n_seq = 1;      // sequence slots
  int64_t kv_dim = 0;     // n_kv_head * head_dim
  KvType type = KvType::F16;    // K, and V unless type_v says otherwise
  std::vector<AttnKind> kinds;  // per layer; empty: all global
  int64_t n_batch = 512;        // most tokens of one sequence written by one forward pass
  int64_t block_size = 0;       // > 0: global layers are paged (see above)
  int64_t n_blocks = 0;         // paged: blocks in the pool
  int64_t n_draft = 0;          // drafted tokens one step may add to n_batch (speculative decoding)
  // Per layer: f32 values of recurrent state one sequence keeps (see "Recurrent state");
  // empty: none anywhere.
  std::vector<int64_t> state_floats;
  std::optional<KvType> type_v;  // V's type when it differs from K's
  int64_t head_dim = 0;          // of a KV head; 0: kv_dim (quantized types need a multiple of 32)
  // KIVI: the most recent positions every query reads in f16 (a multiple of kKiviGroup).
  int64_t kivi_residual = 128;
  KvEvict evict = KvEvict::None;
  int64_t evict_budget = 0;  // entries kept per (global layer, sequence, KV head)
  SparsePrefill sparse;      // an attention option of the cache's global layers
  bool rotate = true;        // Hadamard-rotate quantized rows (see "Rotation")

  KvType type_k() const { return type; }
  KvType type_of_v() const { return type_v.value_or(type); }
  bool paged() const { return block_size > 0; }
  // Paged: the most blocks one sequence's table can hold (n_ctx positions).
  int64_t max_blocks_per_seq() const { return paged() ? (n_ctx + block_size - 1) / block_size : 0; }

  // How a layer stores K (kv 0) or V (kv 1), and the bytes of one position's row (kv_dim
  // values; a KIVI key group of kKiviGroup positions takes kKiviGroup rows).
  AttnFormat format(int64_t layer, int kv) const;
  size_t row_bytes(int64_t layer, int kv) const;
  // The Hadamard rotation a layer's K (kv 0) or V (kv 1) rows are stored under: the block size,
  // 0 for none (see "Rotation").
  int64_t rotation(int64_t layer, int kv) const;
  // Whether the layer is a KIVI layer (2-bit groups plus an f16 residual ring per sequence).
  bool kivi(int64_t layer) const;
  // Whether the layer evicts entries (a global layer with --kv-evict; see "Eviction").
  bool evicting(int64_t layer) const {
    return evict != KvEvict::None && kind(layer).type == AttnKind::Type::Global;
  }
  int64_t n_head_kv() const { return kv_dim / (head_dim > 0 ? head_dim : kv_dim); }
  // Entries an evicting layer holds per (sequence, KV head): h2o the budget and one step,
  // snapkv a whole context (a prompt is compressed once it has been read).
  int64_t evict_capacity() const {
    return evict == KvEvict::H2O ? std::min(n_ctx, evict_budget + max_step()) : n_ctx;
  }
  // Slots of a KIVI layer's f16 residual ring per sequence: every position a query of the
  // largest step reads in f16 (kivi_residual + kKiviGroup - 1 before it, the step itself).
  int64_t kivi_ring() const { return kivi_residual + kKiviGroup + max_step(); }
  // KIVI: positions [0, kivi_quantized(pos)) are read from the 2-bit groups by the query at pos,
  // [kivi_quantized(pos), pos] from the f16 ring: the whole groups older than the last
  // kivi_residual positions.
  int64_t kivi_quantized(int64_t pos) const {
    const int64_t n = pos + 1 - kivi_residual;
    return n <= 0 ? 0 : n / kKiviGroup * kKiviGroup;
  }
  const AttnKind& kind(int64_t layer) const;
  int64_t state(int64_t layer) const { return state_floats.empty() ? 0 : state_floats[size_t(layer)]; }
  bool recurrent() const;  // some layer keeps recurrent state
  // Bytes of recurrent state one sequence keeps (all layers).
  size_t state_bytes_per_seq() const;
  // Whether the layer keeps anything per sequence (K/V rows or state).
  bool keeps(int64_t layer) const { return kind(layer).keeps_kv() || state(layer) > 0; }
  // Most positions of one sequence a forward pass may write: n_batch + n_draft.
  int64_t max_step() const { return n_batch + n_draft; }
  // Slots a layer keeps per sequence (window layers: S + W + max_step() - 1, at most n_ctx
  // when global layers bound the positions).
  int64_t slots(int64_t layer) const;
  // Checks the kinds against n_layer and n_ctx (windows must be positive and fit the context
  // when the cache is bounded by global layers; sinks non-negative).
  Status validate() const;
  // True when no layer is global: positions are not bounded by n_ctx.
  bool unbounded() const;
  bool any_windowed() const;
  // Whether sequences may share this layer's rows of a common prefix: only a paged global
  // layer (its blocks hold the prefix; a ring or a contiguous row belongs to one sequence).
  bool supports_prefix_sharing(int64_t layer) const {
    return paged() && kind(layer).type == AttnKind::Type::Global && !evicting(layer);
  }
  // Every layer that keeps anything does (and no layer keeps recurrent state): a BlockManager
  // may take cached prefix blocks (prefix caching).
  bool prefix_sharing() const;
  // Rows of one layer's K (and of its V): a paged global layer holds the block pool, any other
  // layer its slots for every sequence.
  int64_t layer_rows(int64_t layer) const;
  // Bytes a sequence keeps in a layer besides its rows: a KIVI layer's f16 residual rings (K
  // and V), an evicting layer's positions and scores.
  size_t side_bytes(int64_t layer) const;
  // Bytes of K and V for all layers and sequences, recurrent state included.
  size_t bytes() const;
  // Layer kinds with the slots each keeps: "30 x global (4096 slots)", "15 x window 512
  // (1023 slots: W + 512 batch - 1), 3 x global (paged: 256 blocks of 16)"; with drafts
  // "(1027 slots: W + 512 batch + 4 draft - 1)".
  std::string describe() const;
  // K and V bytes one position adds to a global layer, summed over layers (what a dense
  // cache would cost per token; KIVI: its 2-bit rows, the f16 residual is per sequence).
  int64_t bytes_per_token() const;
  // Bytes one sequence slot takes at its full context: every layer's rows or ring, KIVI
  // residual rings and recurrent state (a paged layer counts n_ctx positions).
  size_t bytes_per_seq() const;
  // "f16", or "K q8_0, V f16", with KIVI's residual.
  std::string describe_types() const;
};

// Error when the cache would take more than 3/4 of the machine's physical memory (so an
// oversized -c, --parallel or --kv-blocks is a one-line error, not an OOM kill).
Status check_kv_memory(const KvShape& shape);

// A run of visible positions: rows k_stride / v_stride bytes apart in the formats named (a
// KIVI key group: k_stride between groups of kKiviGroup positions, see AttnFormat::Q2Channel).
struct KvSpan {
  const void* k;
  const void* v;
  int64_t n;
  int64_t first_pos;  // position of the first row
  int64_t k_stride = 0, v_stride = 0;
  AttnFormat kf = AttnFormat::F16, vf = AttnFormat::F16;
};

// Byte offset of KV head h's part of a row (or of a KIVI key group) stored in format f.
size_t kv_head_offset(AttnFormat f, int64_t head_dim, int64_t h);

class KvCache {
 public:
  explicit KvCache(const KvShape& shape);  // the shape must validate()

  const KvShape& shape() const { return shape_; }
  size_t bytes() const { return bytes_; }

  // Writes one position's K and V rows (kv_dim floats each), converting to the cache type.
  // pos becomes the sequence's last position in this layer (see "Validity"); pos must not
  // be past the layer's end (checked in debug builds).
  void store(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v);

  // The positions token (seq, pos) of a layer attends to, as runs of rows: at most 3 for a
  // window layer (sinks, then the window, which may wrap around its ring), one for a
  // contiguous global layer, one per block for a paged one; out must hold max_spans().
  // Rows are kv_dim elements apart. Every position of the batch up to pos must have been
  // stored (debug builds abort otherwise).
  int spans(int64_t layer, int64_t seq, int64_t pos, KvSpan* out) const;
  int max_spans() const;

  // --- Eviction ---
  // The entries of an evicting layer that token (seq, pos) attends to in KV head h: one run
  // (in `out`, rows at the head's part already) and that run's scores; 0 runs when none.
  int evict_span(int64_t layer, int64_t seq, int64_t pos, int64_t h, KvSpan* out, float** scores);
  // Entries (seq, h) holds, and their positions (tests, info).
  int64_t evict_count(int64_t layer, int64_t seq, int64_t h) const;
  const int32_t* evict_positions(int64_t layer, int64_t seq, int64_t h) const;
  // SnapKV votes only come from a prompt's observation window: a step of several tokens of seq
  // clears its votes first (attention() calls this before the step attends).
  void begin_step(int64_t layer, int64_t seq, int64_t n_tok);
  // After a step of n_tok tokens of seq attended: compacts its heads that are over budget.
  void after_step(int64_t layer, int64_t seq, int64_t n_tok);

  // --- Sequences: validity, going back, forking ---
  // Keeps positions [0, n_keep) of seq in every layer; later rows become invalid and are
  // overwritten by the next step. Returns the positions kept: n_keep (or the sequence's
  // length if shorter) when every layer still holds what the next position attends to;
  // less when a ring already evicted some of it (rewinding more than max_step() positions
  // past a ring's wrap): then only its sinks, or nothing, are kept, and the caller
  // recomputes from the returned position. Paged: the block table stays the caller's (a
  // BlockManager::truncate).
  [[nodiscard]] int64_t rewind(int64_t seq, int64_t n_keep);
  // Empties seq in every layer (a new sequence in the slot).
  void reset(int64_t seq) { (void)rewind(seq, 0); }
  // dst becomes a copy of src: contiguous rows and rings are copied, a paged layer copies
  // the block table (the blocks are shared: fork them in the BlockManager too, and copy the
  // partly filled last block on write).
  void fork(int64_t src_seq, int64_t dst_seq);
  // The first n positions of seq's block table hold KV another sequence wrote (prefix-cache
  // hits): they count as written. Only when prefix_sharing().
  void adopt_prefix(int64_t seq, int64_t n);
  // Whether the layer holds a valid row for position pos of seq (a state layer: whether its
  // state has consumed pos).
  bool written(int64_t layer, int64_t seq, int64_t pos) const;
  // Positions seq holds in every layer (the smallest end).
  int64_t n_pos(int64_t seq) const;

  // --- Recurrent state ---
  // The state of (layer, seq): shape().state(layer) floats, zero for an empty sequence.
  float* state(int64_t layer, int64_t seq) { return state_.data() + state_offset(layer, seq); }
  const float* state(int64_t layer, int64_t seq) const { return state_.data() + state_offset(layer, seq); }
  // A state layer has consumed positions [0, n) of seq (a forward pass after advancing it).
  void state_advanced(int64_t layer, int64_t seq, int64_t n);
  // Positions seq's recurrent state has consumed (the smallest over state layers); -1: no
  // state layers.
  int64_t state_pos(int64_t seq) const;
  // Saves every state layer's state of seq, at its current position, for rewind().
  void checkpoint(int64_t seq);

  // --- Paged caches ---
  // The blocks holding sequence seq's positions, in order (at most max_blocks_per_seq,
  // each in 0..n_blocks-1); positions past the table are not addressable.
  Status set_block_table(int64_t seq, const int32_t* blocks, int64_t n);
  // Whether position pos of seq can be stored (paged: its block is in the table).
  bool holds(int64_t seq, int64_t pos) const;
  // Copies the K and V of every paged layer from block src to block dst (copy-on-write).
  void copy_block(int32_t src, int32_t dst);

  // Raw rows of a position the layer still holds (in the layer's format; a KIVI key: inside
  // its group).
  const void* k(int64_t layer, int64_t seq, int64_t pos) const { return data_.data() + offset(layer, seq, pos, 0); }
  const void* v(int64_t layer, int64_t seq, int64_t pos) const { return data_.data() + offset(layer, seq, pos, 1); }
  // One value as float (tests and debugging: raw memory, valid or not; see written()). KIVI:
  // the value the sequence's last position reads (f16 in the residual, else 2-bit).
  float k_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const;
  float v_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const;

 private:
  // Valid rows of one (layer, sequence): global [0, end); window the sinks [0, min(S, end))
  // and the ring positions [lo, end), lo >= S.
  struct Held {
    int64_t lo = 0;
    int64_t end = 0;
  };
  int64_t slot(int64_t layer, int64_t pos) const;
  bool paged_layer(int64_t layer) const { return shape_.supports_prefix_sharing(layer); }
  size_t offset(int64_t layer, int64_t seq, int64_t pos, int kv) const;
  // A KIVI layer's f16 residual row of (seq, pos).
  uint16_t* residual(int64_t layer, int64_t seq, int64_t pos, int kv) const;
  void store_kivi(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v);
  void store_evicting(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v);
  // n values of x into a row (or a head's part of one) of format f.
  static void store_row(AttnFormat f, const float* x, int64_t n, uint8_t* dst);
  float evicted_value(int64_t layer, int64_t seq, int64_t pos, int64_t i, int kv) const;
  // Row `slot` of KV head h of an evicting layer.
  uint8_t* head_row(int64_t layer, int64_t seq, int64_t h, int64_t slot, int kv) const;
  size_t evict_index(int64_t layer, int64_t seq, int64_t h) const {
    return size_t((evict_base_[size_t(layer)] + seq * shape_.n_head_kv() + h));
  }
  void compact(int64_t layer, int64_t seq, int64_t h, const std::vector<int32_t>& keep);
  // Byte offset of a layer's K (kv 0) or V (kv 1) rows.
  size_t state_offset(int64_t layer, int64_t seq) const {
    return size_t(state_base_[size_t(layer)] + seq * shape_.state(layer));
  }
  // Positions every layer keeping KV rows still holds when going back to n_keep (less when a
  // ring evicted what n_keep attends to).
  int64_t kv_keepable(int64_t seq, int64_t n_keep) const;
  size_t plane_offset(int64_t layer, int kv) const { return layer_base_[size_t(layer)] + (kv ? plane_[size_t(layer)] : 0); }
  Held& held(int64_t layer, int64_t seq) { return held_[size_t(layer * shape_.n_seq + seq)]; }
  const Held& held(int64_t layer, int64_t seq) const { return held_[size_t(layer * shape_.n_seq + seq)]; }
  // Debug builds: abort unless positions [first, last] of (layer, seq) are all valid.
  void check_valid(int64_t layer, int64_t seq, int64_t first, int64_t last) const;
  KvShape shape_;
  std::vector<int64_t> slots_;       // per layer
  std::vector<int64_t> ring_;        // per layer: ring slots R of a window layer, 0 otherwise
  std::vector<size_t> layer_base_;   // byte offset of each layer's K block (V follows)
  std::vector<size_t> plane_;        // per layer: bytes of its K plane (its V plane follows)
  std::vector<size_t> kivi_base_;    // per layer: byte offset of its f16 residual rings (K, then V)
  std::vector<int32_t> tables_;      // paged: [n_seq][max_blocks_per_seq], -1 = none
  std::vector<Held> held_;           // [n_layer][n_seq]
  std::vector<int64_t> state_base_;  // per layer: offset of its state block in state_ (floats)
  std::vector<float> state_;         // [layer][n_seq][state(layer)]
  std::vector<float> checkpoint_;    // same layout, allocated by the first checkpoint()
  // Eviction: per evicting layer n_seq * n_head_kv heads (evict_base_: the layer's first, -1
  // for other layers), each evict_capacity() entries of position and score.
  std::vector<int64_t> evict_base_;
  std::vector<int32_t> evict_n_;      // entries per head
  std::vector<int32_t> evict_pos_;    // [head][capacity]
  std::vector<float> evict_score_;    // [head][capacity]
  std::vector<uint8_t> snap_done_;    // per (layer, seq): SnapKV compressed the current prompt
  std::vector<int64_t> checkpoint_pos_;  // per sequence: position of its checkpoint, -1: none
  // calloc: large blocks come as untouched zero pages, so a pool costs memory as it fills.
  HugeBuffer data_;  // every layer's K and V planes (plane_offset)
  size_t bytes_ = 0;
};

}  // namespace peregrine
