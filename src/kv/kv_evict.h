// Which KV entries a layer keeps per KV head once a sequence holds more than its budget
// (--kv-evict, --kv-budget); the cache (kv_cache.h, "Eviction") compacts what is chosen.
//
//   h2o     Heavy-Hitter Oracle (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for Efficient
//           Generative Inference of Large Language Models"): every query adds its softmax
//           probabilities to the entries it attends (summed over the query heads of a GQA
//           group); after each step a layer keeps, per KV head, the attention sinks, the most
//           recent half of the budget and the entries with the largest accumulated attention.
//           Memory is bounded: budget + one step per head.
//   snapkv  SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for Before
//           Generation"): the last kSnapWindow queries of a prompt (its observation window) vote
//           for the entries they attend; votes are max-pooled over neighbouring positions
//           (kernel kSnapPool) so that whole phrases survive, and when generation starts the
//           prompt is compressed to the sinks, the window and the best-voted entries. Tokens
//           generated afterwards are kept (the paper compresses prompts); a new prompt in the
//           same sequence (a chat turn) is compressed again.
// Both keep the first kEvictSinks positions (attention sinks, Xiao et al. 2023).
#pragma once

#include <cstdint>
#include <vector>

namespace peregrine {

inline constexpr int64_t kEvictSinks = 4;
inline constexpr int64_t kSnapWindow = 32;
inline constexpr int64_t kSnapPool = 7;
// The smallest budget: the sinks, the observation window and room to choose.
inline constexpr int64_t kMinEvictBudget = 64;

// Entries 0..n-1 of one head, in position order (pos ascending) with their scores; writes the
// indices to keep, ascending, into `keep` (at most budget of them; all when n <= budget).
void h2o_select(const int32_t* pos, const float* score, int64_t n, int64_t budget, std::vector<int32_t>& keep);
void snapkv_select(const int32_t* pos, const float* score, int64_t n, int64_t budget, std::vector<int32_t>& keep);

}  // namespace peregrine
