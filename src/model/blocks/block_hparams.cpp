#include "model/blocks/block_hparams.h"

#include <cmath>

#include "model/tensor_table.h"

namespace peregrine {

Result<MoeHparams> read_moe_hparams(const gguf::File& f, const std::string& arch, int64_t n_ff,
                                    MoeGating default_gating, bool experts_of_n_ff) {
  const std::string a = arch + ".";
  MoeHparams h;
  for (const char* key : {"expert_count", "expert_used_count"})
    if (f.find(a + key) == nullptr) return make_error("{}: missing metadata '{}{}'", f.name(), a, key);
  PG_ASSIGN(h.cfg.n_expert, read_hparam(f, a + "expert_count", 1, kMaxExperts));
  PG_ASSIGN(h.cfg.n_used, read_hparam(f, a + "expert_used_count", 1, h.cfg.n_expert));
  if (f.find(a + "expert_feed_forward_length")) {
    PG_ASSIGN(h.n_ff_exp, read_hparam(f, a + "expert_feed_forward_length", 1, 1 << 18));
  } else {
    h.n_ff_exp = experts_of_n_ff ? n_ff : n_ff / h.cfg.n_used;
    if (h.n_ff_exp < 1)
      return make_error("{}: no '{}expert_feed_forward_length' and feed_forward_length {} gives no expert width",
                        f.name(), a, n_ff);
  }
  if (f.find(a + "expert_weights_norm")) {
    PG_ASSIGN(h.cfg.norm_weights, f.get_bool(a + "expert_weights_norm"));
  }
  if (f.find(a + "expert_weights_scale")) {
    PG_ASSIGN(double s, f.get_float(a + "expert_weights_scale"));
    if (!std::isfinite(s) || s < 0.0 || s > 1e4)
      return make_error("{}: metadata '{}expert_weights_scale' = {} is out of range", f.name(), a, s);
    h.cfg.weights_scale = float(s);
  }
  h.cfg.gating = default_gating;
  if (f.find(a + "expert_gating_func")) {
    PG_ASSIGN(int64_t g, read_hparam(f, a + "expert_gating_func", 1, 4));
    h.cfg.gating = MoeGating(g);
  }
  if (f.find(a + "expert_group_count")) {
    PG_ASSIGN(h.cfg.n_group, read_hparam(f, a + "expert_group_count", 0, kMaxExperts));
  }
  if (f.find(a + "expert_group_used_count")) {
    PG_ASSIGN(h.cfg.n_group_used, read_hparam(f, a + "expert_group_used_count", 0, kMaxExperts));
  }
  if (Status st = check_moe_config(h.cfg); !st.ok()) return make_error("{}: {}", f.name(), st.error().message);
  return h;
}

Result<Mamba2Dims> read_mamba2_dims(const gguf::File& f, const std::string& arch, int64_t n_embd) {
  const std::string a = arch + ".ssm.";
  for (const char* key : {"conv_kernel", "inner_size", "state_size", "time_step_rank", "group_count"})
    if (f.find(a + key) == nullptr) return make_error("{}: missing metadata '{}{}'", f.name(), a, key);
  Mamba2Dims d;
  d.n_embd = n_embd;
  PG_ASSIGN(d.d_conv, read_hparam(f, a + "conv_kernel", 1, 64));
  PG_ASSIGN(d.d_inner, read_hparam(f, a + "inner_size", 1, 1 << 16));
  PG_ASSIGN(d.d_state, read_hparam(f, a + "state_size", 1, 1024));
  PG_ASSIGN(d.n_head, read_hparam(f, a + "time_step_rank", 1, 4096));
  PG_ASSIGN(d.n_group, read_hparam(f, a + "group_count", 1, 4096));
  if (Status st = d.check(); !st.ok()) return make_error("{}: {}", f.name(), st.error().message);
  return d;
}

}  // namespace peregrine
