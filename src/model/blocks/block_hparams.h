// Metadata readers of the non-attention blocks: the routed-expert FFN ("<arch>.expert_*") and
// the Mamba-2 mixer ("<arch>.ssm.*"), with the defaults llama.cpp's loader applies. Every value
// is range-checked; errors name the key.
#pragma once

#include <string>

#include "core/status.h"
#include "gguf/gguf.h"
#include "model/blocks/mamba2.h"
#include "model/blocks/moe.h"

namespace peregrine {

struct MoeHparams {
  MoeConfig cfg;
  int64_t n_ff_exp = 0;    // width of one expert (expert_feed_forward_length, else n_ff / n_used)
  int64_t n_ff_shexp = 0;  // width of the shared expert, 0: none
};

// expert_count, expert_used_count (required), expert_feed_forward_length (else n_ff / n_used,
// as qwen3moe's loader; `experts_of_n_ff`: n_ff itself, as olmoe's), expert_weights_norm,
// expert_weights_scale, expert_gating_func (else `default_gating`), expert_group_count /
// expert_group_used_count. The shared expert's width is left to the architecture.
Result<MoeHparams> read_moe_hparams(const gguf::File& f, const std::string& arch, int64_t n_ff,
                                    MoeGating default_gating, bool experts_of_n_ff = false);

// ssm.conv_kernel, ssm.inner_size, ssm.state_size, ssm.time_step_rank, ssm.group_count.
Result<Mamba2Dims> read_mamba2_dims(const gguf::File& f, const std::string& arch, int64_t n_embd);

}  // namespace peregrine
