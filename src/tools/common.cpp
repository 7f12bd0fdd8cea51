#include "tools/common.h"

#include <cstdio>
#include <cstdlib>

namespace peregrine::tools {

void add_model_options(CLI::App* cmd, ModelOptions& o, bool with_ctx) {
  cmd->add_option("-m,--model", o.model, "Model: a cache name (smollm2-135m) or a GGUF path")
      ->capture_default_str();
  cmd->add_option("-t,--threads", o.threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  if (with_ctx) {
    cmd->add_option("-c,--ctx-size", o.ctx, "Context size in tokens (default: min(trained, 4096))")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  }
  cmd->add_option("-b,--batch-size", o.batch, "Prompt tokens per forward pass")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  add_kv_options(cmd, o.kv);
  cmd->add_option("--attn-window", o.attn_window,
                  "Attend to the last W positions only (0 = the model's own attention)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--attn-sinks", o.attn_sinks,
                  "With --attn-window: also keep the first S positions (attention sinks)")
      ->check(CLI::Range(int64_t(0), int64_t(64)));
}

void add_kv_options(CLI::App* cmd, KvFlags& o) {
  const std::vector<std::string> names{"f32", "f16", "q8_0", "q4_0", "kivi2"};
  cmd->add_option("--kv-type", o.type, "KV cache type of K and V: f16 (default), f32, q8_0, q4_0, kivi2")
      ->check(CLI::IsMember(names));
  cmd->add_option("--kv-type-k", o.type_k, "KV cache type of K (overrides --kv-type)")->check(CLI::IsMember(names));
  cmd->add_option("--kv-type-v", o.type_v, "KV cache type of V (overrides --kv-type)")->check(CLI::IsMember(names));
  cmd->add_flag("--kv-no-rotation", o.no_rotation,
                "Store quantized K/V rows as they are, without the Hadamard rotation that spreads outlier channels");
  cmd->add_option("--kv-evict", o.evict,
                  "Keep at most --kv-budget KV entries per layer and head: h2o (heavy hitters + recent), snapkv "
                  "(observation-window votes), none")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "h2o", "snapkv"}));
  cmd->add_option("--kv-budget", o.budget, "With --kv-evict: KV entries kept per layer and KV head")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  cmd->add_option("--sparse-prefill", o.sparse,
                  "Block-sparse prefill attention: topk:N (N key blocks per query block) or topp:P (estimated mass P)");
  cmd->add_option("--sparse-block", o.sparse_block, "With --sparse-prefill: positions per query and key block (64)")
      ->check(CLI::Range(int64_t(16), int64_t(4096)));
}

Result<SparsePrefill> parse_sparse_prefill(std::string_view spec, int64_t block) {
  SparsePrefill s;
  s.block = block;
  if (spec.empty() || spec == "off") return s;
  const size_t colon = spec.find(':');
  const std::string_view mode = spec.substr(0, colon), value = colon == spec.npos ? "" : spec.substr(colon + 1);
  const std::string v(value);
  char* end = nullptr;
  if (mode == "topk") {
    const long long k = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || k < 1 || k > (1 << 24))
      return make_error("--sparse-prefill {}: topk needs a whole number of key blocks >= 1", spec);
    s.mode = SparsePrefill::Mode::TopK;
    s.top_k = k;
  } else if (mode == "topp") {
    const double p = v.empty() ? 0.0 : std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(p > 0.0 && p <= 1.0))
      return make_error("--sparse-prefill {}: topp needs a mass in (0, 1]", spec);
    s.mode = SparsePrefill::Mode::TopP;
    s.top_p = p;
  } else {
    return make_error("--sparse-prefill {}: expected topk:N or topp:P", spec);
  }
  if (block % 16 != 0) return make_error("--sparse-block {} must be a multiple of 16", block);
  return s;
}

KvConfig kv_config(const KvFlags& o) {
  KvConfig c;
  const KvType both = o.type.empty() ? KvType::F16 : *parse_kv_type(o.type);
  c.k = o.type_k.empty() ? both : *parse_kv_type(o.type_k);
  c.v = o.type_v.empty() ? both : *parse_kv_type(o.type_v);
  c.rotate = !o.no_rotation;
  c.evict = *parse_kv_evict(o.evict);
  c.budget = o.budget;
  if (c.evict != KvEvict::None && o.budget == 0) fail("--kv-evict " + o.evict + " needs --kv-budget N");
  if (c.evict == KvEvict::None && o.budget > 0) fail("--kv-budget needs --kv-evict h2o or snapkv");
  if (o.sparse_block > 0 && o.sparse.empty()) fail("--sparse-block needs --sparse-prefill topk:N or topp:P");
  c.sparse = check(parse_sparse_prefill(o.sparse, o.sparse_block > 0 ? o.sparse_block : SparsePrefill{}.block));
  return c;
}

void add_spec_options(CLI::App* cmd, ModelOptions& o) {
  SpecOptions& s = o.spec_opt;
  cmd->add_option("--spec", o.spec, "Speculative decoding: none, ngram (prompt lookup), draft (-md), layerskip")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "ngram", "draft", "layerskip"}));
  cmd->add_option("--model-draft", s.draft_model, "Draft model for --spec draft, also -md (same vocabulary as -m)");
  cmd->add_option("--draft-max", s.draft.max, "Most tokens drafted per step (1 to 64)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--draft-min", s.draft.min, "Drafts shorter than this are not verified")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  cmd->add_option("--draft-policy", o.draft_policy,
                  "Draft length: dynamic (drafts while it pays, measured), fixed (--draft-max), pmin (stop below "
                  "--draft-p-min)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dynamic", "fixed", "pmin"}));
  cmd->add_option("--draft-p-min", s.draft.p_min, "pmin: stop drafting at a token the draft gives less than this")
      ->capture_default_str()
      ->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--draft-layers", s.draft_layers, "layerskip: the target's first N layers draft (default: half)")
      ->check(CLI::Range(int64_t(1), int64_t(4096)));
}

void add_generation_options(CLI::App* cmd, SequenceOptions& g) {
  SamplerOptions& o = g.sampling;
  cmd->add_option("--temp", o.temperature, "Temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Keep the k most likely tokens (0 = off)")->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "Nucleus sampling mass (1 = off)")->capture_default_str();
  cmd->add_option("--min-p", o.min_p, "Drop tokens below min-p times the top probability")
      ->capture_default_str();
  cmd->add_option("--repeat-penalty", o.repeat_penalty, "Penalty for recent tokens (1 = off)")
      ->capture_default_str();
  cmd->add_option("--repeat-last-n", o.repeat_last_n, "How many recent tokens are penalised")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", o.presence_penalty,
                  "Subtract this from generated tokens' logits once they occurred (OpenAI's, -2 to 2)")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", o.frequency_penalty,
                  "Subtract this times a generated token's count from its logit (OpenAI's, -2 to 2)")
      ->capture_default_str();
  cmd->add_option("-s,--seed", o.seed, "Random seed")->capture_default_str();
  cmd->add_option("--stop", g.stop, "Stop at this text, which is not printed (repeatable)");
  cmd->add_flag("--ignore-eos", g.ignore_eos, "Go on past end-of-generation tokens (benchmarks)");
}

SessionOptions session_options(const ModelOptions& o) {
  if (o.attn_sinks > 0 && o.attn_window == 0) fail("--attn-sinks needs --attn-window");
  SessionOptions so{o.threads, o.ctx, o.batch, kv_config(o.kv)};
  if (o.attn_window > 0)
    so.attention = o.attn_sinks > 0 ? AttnKind::sinks_window(o.attn_sinks, o.attn_window)
                                    : AttnKind::sliding(o.attn_window);
  so.spec = spec_options(o);
  return so;
}

SpecOptions spec_options(const ModelOptions& o) {
  SpecOptions s = o.spec_opt;
  s.kind = *parse_spec_kind(o.spec);
  s.draft.policy = *parse_draft_policy(o.draft_policy);
  check(s.validate());
  if (s.kind == SpecKind::Draft) {
    Result<std::string> path = resolve_model(s.draft_model);
    if (!path.ok()) fail("draft model (-md): " + path.error().message);
    s.draft_model = *path;
  }
  return s;
}

std::unique_ptr<Session> open_session(const ModelOptions& o) {
  std::string path = check(resolve_model(o.model));
  return check(Session::open(path, session_options(o)));
}

std::vector<TokenId> prompt_tokens(const Tokenizer& tok, const std::string& text) {
  std::vector<TokenId> ids;
  if (tok.add_bos()) ids.push_back(tok.bos());
  std::vector<TokenId> body = tok.encode(text, true);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

void fail(const Error& e) { fail(e.message); }

void fail(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  std::fflush(stderr);
  throw CLI::RuntimeError(1);
}

}  // namespace peregrine::tools
