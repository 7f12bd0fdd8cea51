// Shared pieces of the CLI commands: model/thread/context options, error exit.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "core/status.h"
#include "engine/session.h"
#include "sample/sampler.h"
#include "tools/model_resolve.h"

namespace peregrine::tools {

// --kv-type (K and V), --kv-type-k, --kv-type-v as given ("" = not given).
// --kv-evict, --kv-budget, --sparse-prefill, --sparse-block likewise.
struct KvFlags {
  std::string type, type_k, type_v;
  std::string evict = "none";
  int64_t budget = 0;
  std::string sparse;
  int64_t sparse_block = 0;  // 0: not given (64)
  bool no_rotation = false;
};
void add_kv_options(CLI::App* cmd, KvFlags& o);
// The cache the flags ask for: --kv-type-k / --kv-type-v override --kv-type; default f16. Fails
// with one line on flags that contradict each other or a malformed --sparse-prefill.
KvConfig kv_config(const KvFlags& o);
// "topk:N" (N >= 1) or "topp:P" (0 < P <= 1).
Result<SparsePrefill> parse_sparse_prefill(std::string_view spec, int64_t block);

struct ModelOptions {
  std::string model = kDefaultModel;
  int threads = 0;
  int64_t ctx = 0;
  int64_t batch = 512;
  KvFlags kv;
  int64_t attn_sinks = 0;   // with attn_window: StreamingLLM sinks + window
  int64_t attn_window = 0;  // 0: the model's own attention
  // Speculative decoding (add_spec_options): --spec and --draft-policy as given.
  std::string spec = "none";
  std::string draft_policy = "dynamic";
  SpecOptions spec_opt;
};

// -m, -t, -c, -b, --kv-type, --attn-sinks, --attn-window
void add_model_options(CLI::App* cmd, ModelOptions& o, bool with_ctx = true);
// --spec, -md, --draft-max, --draft-min, --draft-policy, --draft-p-min, --draft-layers
void add_spec_options(CLI::App* cmd, ModelOptions& o);
// Sampling flags (--temp, --top-k, ..., --seed) and the output rules (--stop, --ignore-eos).
void add_generation_options(CLI::App* cmd, SequenceOptions& o);

// --spec and its flags as options (fails on inconsistent flags; resolves -md).
SpecOptions spec_options(const ModelOptions& o);
// -t/-c/-b/--kv-type/--attn-* as session options (fails on inconsistent flags).
SessionOptions session_options(const ModelOptions& o);

// Resolves -m (pulling a known model on first use) and opens a session with -t/-c/-b.
std::unique_ptr<Session> open_session(const ModelOptions& o);

// BOS (when the model wants it) followed by the text's tokens, special tokens
// recognised: the CLI user is the operator.
std::vector<TokenId> prompt_tokens(const Tokenizer& tok, const std::string& text);

// Prints "error: <message>" on stderr and leaves the command with exit code 1.
[[noreturn]] void fail(const Error& e);
[[noreturn]] void fail(const std::string& message);

// Unwrap a Result or fail with its error.
template <typename T>
T check(Result<T> r) {
  if (!r.ok()) fail(r.error());
  return std::move(r).value();
}
inline void check(const Status& s) {
  if (!s.ok()) fail(s.error());
}

}  // namespace peregrine::tools
