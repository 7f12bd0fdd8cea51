#include "tools/common.h"

#include <cstdio>

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
  cmd->add_option("--kv-type", o.kv_type, "KV cache element type")
      ->capture_default_str()
      ->check(CLI::IsMember({"f16", "f32"}));
  cmd->add_option("--attn-window", o.attn_window,
                  "Attend to the last W positions only (0 = the model's own attention)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--attn-sinks", o.attn_sinks,
                  "With --attn-window: also keep the first S positions (attention sinks)")
      ->check(CLI::Range(int64_t(0), int64_t(64)));
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
  SessionOptions so{o.threads, o.ctx, o.batch, *parse_kv_type(o.kv_type)};
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
