// The catalogue constraint (constrain/catalogue.h) at the scale: 10^6 allowed strings,
// the 50 µs per step target for the mask.
//
//   BM_build/TOK/KIND        Catalogue::build of 10^6 items (tokenization included), once, on a
//                            pool of all cores (threads); counters: build_s, tokenize_s (encode
//                            alone, one thread), trie_s (from_tokens on the same tokens, one
//                            thread), nodes, bytes_per_item
//   BM_mask/TOK/KIND/POS     CatalogueConstraint::mask() on one logits row [n_vocab] at a node:
//                            the root (the widest fan-out) and deeper nodes along one item;
//                            counters: fanout, pct_target (time per step / 50 µs, in %)
//   BM_bits/TOK/KIND/POS     allowed_tokens() into a bitmask [(n_vocab + 31) / 32] there
//
// TOK: smollm2 (49,152 tokens) and gemma3 (262,144), each when its GGUF is in the model cache
// ($PEREGRINE_MODEL_PATH / $PEREGRINE_GEMMA_PATH override), else "synthetic": random token
// sequences over 49,152 ids with the same shape. KIND: "ids" ("item-<7 digits>-<word>", one
// shared first token, so the root is narrow and the fan-out is in the digits), "products"
// (brand, adjective, noun, model number, colour: a root of some hundred words) and "titles"
// (2 to 4 of the vocabulary's own words: a root of thousands of tokens, the widest case).
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "constrain/catalogue.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {
namespace {

using constrain::Catalogue;
using constrain::CatalogueConstraint;
constexpr size_t kItems = 1'000'000;
constexpr double kTargetSeconds = 50e-6;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string cache_path(const char* env, const char* file) {
  if (const char* p = std::getenv(env); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/" + file;
}

// ---- items ------------------------------------------------------------------------------------

const std::vector<std::string>& words() {
  static const std::vector<std::string> w = {
      "amber", "birch", "cobalt", "delta", "ember", "falcon", "garnet", "harbor", "indigo",
      "juniper", "kestrel", "lagoon", "maple", "nectar", "onyx", "pepper", "quartz", "raven",
      "saffron", "timber", "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "atlas",
      "beacon", "cedar", "dune", "echo", "fjord", "glacier", "heron", "iris", "jade", "koala",
      "lotus", "meadow", "nova", "orchid", "prairie", "quill", "ridge", "summit", "tundra"};
  return w;
}

std::vector<std::string> make_ids(std::mt19937& rng) {
  std::vector<std::string> out;
  out.reserve(kItems);
  char buf[64];
  for (size_t i = 0; i < kItems; ++i) {
    std::snprintf(buf, sizeof buf, "item-%07u-%s", unsigned(rng() % 10'000'000),
                  words()[rng() % words().size()].c_str());
    out.emplace_back(buf);
  }
  return out;
}

std::vector<std::string> make_products(std::mt19937& rng) {
  static const char* kBrand[] = {"Acme", "Nordic", "Zenith", "Orion", "Helix", "Vertex", "Lumen",
                                 "Aurora", "Summit", "Pioneer", "Titan", "Nimbus", "Solace",
                                 "Kinetic", "Everest", "Polar", "Quantum", "Radiant", "Sierra",
                                 "Vista", "Café Bleu", "Über", "Fjällräven", "Müller"};
  static const char* kAdj[] = {"Ultra", "Pro", "Mini", "Classic", "Smart", "Eco", "Max", "Lite",
                               "Deluxe", "Compact", "Wireless", "Portable", "Digital", "Premium",
                               "Essential", "Advanced", "Silent", "Turbo", "Slim", "Rugged"};
  static const char* kNoun[] = {"Blender", "Kettle", "Toaster", "Lamp", "Chair", "Desk", "Mixer",
                                "Speaker", "Router", "Backpack", "Drill", "Juicer", "Monitor",
                                "Keyboard", "Headphones", "Vacuum", "Heater", "Fan", "Camera",
                                "Tripod", "Grill", "Oven", "Scale", "Watch", "Charger", "Tent",
                                "Jacket", "Boots", "Bottle", "Mattress"};
  static const char* kColour[] = {"Black", "White", "Silver", "Red", "Blue", "Green", "Graphite",
                                  "Sand", "Olive", "Rose Gold"};
  std::vector<std::string> out;
  out.reserve(kItems);
  for (size_t i = 0; i < kItems; ++i) {
    std::string s = kBrand[rng() % std::size(kBrand)];
    s += ' ';
    s += kAdj[rng() % std::size(kAdj)];
    s += ' ';
    s += kNoun[rng() % std::size(kNoun)];
    s += ' ';
    s += std::to_string(100 + rng() % 9900);
    if (rng() % 2) s += std::string(" ") + kColour[rng() % std::size(kColour)];
    if (rng() % 3 == 0) s += std::string(" ") + std::to_string(1 + rng() % 64) + "GB";
    out.push_back(std::move(s));
  }
  return out;
}

// 2 to 4 of the vocabulary's alphabetic tokens of 4+ letters (without their leading space
// marker), capitalised first: the first token of an item ranges over thousands of ids.
std::vector<std::string> make_titles(std::mt19937& rng, const Tokenizer& tok) {
  std::vector<std::string> vocab_words;
  for (TokenId id = 0; id < tok.n_vocab(); ++id) {
    if (tok.token_type(id) != TokenType::Normal) continue;
    std::string b = tok.token_bytes(id);
    if (!b.empty() && b[0] == ' ') b.erase(0, 1);
    if (b.size() < 4) continue;
    bool alpha = true;
    for (char c : b) alpha = alpha && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
    if (alpha) vocab_words.push_back(std::move(b));
  }
  std::vector<std::string> out;
  out.reserve(kItems);
  for (size_t i = 0; i < kItems; ++i) {
    const size_t n = 2 + rng() % 3;
    std::string s;
    for (size_t k = 0; k < n; ++k) {
      if (k) s += ' ';
      s += vocab_words[rng() % vocab_words.size()];
    }
    if (s[0] >= 'a' && s[0] <= 'z') s[0] = char(s[0] - 'a' + 'A');
    out.push_back(std::move(s));
  }
  return out;
}

// ---- catalogues -------------------------------------------------------------------------------

struct Built {
  std::shared_ptr<const Catalogue> cat;
  std::vector<TokenId> end_tokens;
  std::vector<uint32_t> nodes;  // the benchmarked positions: root, then along one item
  std::vector<std::string> node_names;
  double build_s = 0, tokenize_s = 0, trie_s = 0;
  int threads = 1;  // build()'s pool
};

// The positions: the root, its widest child, and depths 2, 4 and 6 along the path of one item
// (as far as it goes).
void pick_nodes(Built& b, std::mt19937& rng) {
  const Catalogue& c = *b.cat;
  b.nodes = {Catalogue::kRoot};
  b.node_names = {"root"};
  {
    const auto next = c.next_tokens(Catalogue::kRoot);
    uint32_t best = c.first_child(Catalogue::kRoot);
    for (size_t i = 0; i < next.size(); ++i) {
      const uint32_t child = c.first_child(Catalogue::kRoot) + uint32_t(i);
      if (c.next_tokens(child).size() > c.next_tokens(best).size()) best = child;
    }
    b.nodes.push_back(best);
    b.node_names.push_back("widest-child");
  }
  uint32_t n = Catalogue::kRoot;
  for (int depth = 1; depth <= 6; ++depth) {
    const auto next = c.next_tokens(n);
    if (next.empty()) break;
    n = c.first_child(n) + uint32_t(rng() % next.size());
    if (depth % 2 == 0) {
      b.nodes.push_back(n);
      b.node_names.push_back("depth" + std::to_string(depth));
    }
  }
}

Built build_text(const Tokenizer& tok, const std::vector<std::string>& items, ThreadPool& pool) {
  Built b;
  b.threads = pool.size();
  auto t0 = std::chrono::steady_clock::now();
  auto r = Catalogue::build(items, tok, {}, &pool);
  b.build_s = seconds_since(t0);
  if (!r.ok()) {
    std::fprintf(stderr, "error: %s\n", r.error().message.c_str());
    std::exit(1);
  }
  b.cat = std::move(r).value();
  // The parts: encoding alone, and the trie from the same tokens.
  std::vector<std::vector<TokenId>> seqs;
  seqs.reserve(items.size());
  t0 = std::chrono::steady_clock::now();
  for (const std::string& s : items) seqs.push_back(tok.encode(s, false));
  b.tokenize_s = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  auto trie = Catalogue::from_tokens(seqs, tok.n_vocab());
  b.trie_s = seconds_since(t0);
  b.end_tokens = constrain::end_of_generation_tokens(tok);
  return b;
}

// Without a model file: token sequences of the same shape (first token from a few thousand,
// then 3 to 9 tokens from the whole vocab, skewed to low ids as BPE frequencies are).
Built build_synthetic(std::mt19937& rng) {
  const int32_t n_vocab = 49152;
  std::vector<std::vector<TokenId>> seqs(kItems);
  for (auto& s : seqs) {
    s.push_back(TokenId(rng() % 4000));
    const size_t n = 3 + rng() % 7;
    for (size_t k = 0; k < n; ++k) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      s.push_back(TokenId(double(n_vocab - 1) * u * u));
    }
  }
  Built b;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = Catalogue::from_tokens(seqs, n_vocab);
  b.trie_s = b.build_s = seconds_since(t0);
  b.cat = std::move(r).value();
  b.end_tokens = {0};
  return b;
}

// ---- benchmarks -------------------------------------------------------------------------------

void bm_build(benchmark::State& state, const Built* b) {
  for (auto _ : state) benchmark::DoNotOptimize(b->cat.get());  // built once, before
  state.counters["build_s"] = b->build_s;
  state.counters["threads"] = b->threads;
  state.counters["tokenize_s"] = b->tokenize_s;
  state.counters["trie_s"] = b->trie_s;
  state.counters["items"] = double(b->cat->n_items());
  state.counters["nodes"] = double(b->cat->n_nodes());
  state.counters["MiB"] = double(b->cat->memory_bytes()) / double(1 << 20);
  state.counters["bytes_per_item"] = double(b->cat->memory_bytes()) / double(b->cat->n_items());
}

// A constraint standing at node n: walked there from the root along the trie's own tokens.
CatalogueConstraint at_node(const Built& b, uint32_t n) {
  // Parent chain by inverting "edge e leads to node e + 1": the parent of node m is the node
  // whose edge range holds m - 1 (offsets are increasing, so a binary search over nodes).
  const Catalogue& c = *b.cat;
  std::vector<TokenId> path;
  while (n != Catalogue::kRoot) {
    uint32_t lo = 0, hi = uint32_t(c.n_nodes());  // the last node p with first_child(p) <= n
    while (hi - lo > 1) {
      const uint32_t mid = lo + (hi - lo) / 2;
      (c.first_child(mid) <= n ? lo : hi) = mid;
    }
    path.push_back(c.next_tokens(lo)[n - c.first_child(lo)]);
    n = lo;
  }
  CatalogueConstraint k(b.cat, b.end_tokens);
  for (auto it = path.rbegin(); it != path.rend(); ++it) {
    if (!k.advance(*it)) std::abort();
  }
  return k;
}

// pct_target: the wall time per step as a percentage of the 50 µs target.
void report_target(benchmark::State& state, double seconds) {
  if (state.iterations() == 0) return;
  state.counters["pct_target"] = 100.0 * seconds / double(state.iterations()) / kTargetSeconds;
}

// One step's work at a node: mask() into a logits row, or (bits) allowed_tokens() into a
// bitmask.
void bm_step(benchmark::State& state, const Built* b, uint32_t node, bool bits) {
  const CatalogueConstraint c = at_node(*b, node);
  const int64_t n_vocab = b->cat->n_vocab();
  std::vector<float> row(bits ? 0 : size_t(n_vocab), 1.0f);          // [n_vocab]
  std::vector<uint32_t> words(bits ? size_t(n_vocab + 31) / 32 : 0);  // [(n_vocab + 31) / 32]
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    if (bits) {
      c.allowed_tokens(words.data(), n_vocab);
    } else {
      c.mask(row.data(), n_vocab);
    }
    benchmark::DoNotOptimize(row.data());
    benchmark::DoNotOptimize(words.data());
    benchmark::ClobberMemory();
  }
  report_target(state, seconds_since(t0));
  state.counters["fanout"] = double(c.next_tokens().size());
  state.counters["n_vocab"] = double(n_vocab);
}

// Everything built before the benchmarks run (kept alive until exit).
std::vector<std::unique_ptr<Built>>& built() {
  static std::vector<std::unique_ptr<Built>> b;
  return b;
}

void register_catalogue(const std::string& name, std::unique_ptr<Built> b, std::mt19937& rng) {
  pick_nodes(*b, rng);
  const Built* p = b.get();
  built().push_back(std::move(b));
  std::fprintf(stderr, "%s: %zu items, %zu nodes, %.1f bytes/item, built in %.2f s\n", name.c_str(),
               p->cat->n_items(), p->cat->n_nodes(),
               double(p->cat->memory_bytes()) / double(p->cat->n_items()), p->build_s);
  benchmark::RegisterBenchmark(("BM_build/" + name).c_str(), bm_build, p)->Iterations(1);
  for (size_t k = 0; k < p->nodes.size(); ++k) {
    const uint32_t n = p->nodes[k];
    for (const bool bits : {false, true}) {
      const std::string bm = (bits ? "BM_bits/" : "BM_mask/") + name + "/" + p->node_names[k];
      benchmark::RegisterBenchmark(bm.c_str(), bm_step, p, n, bits)->Unit(benchmark::kMicrosecond);
    }
  }
}

struct Model {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
};

std::vector<std::unique_ptr<Model>>& models() {
  static std::vector<std::unique_ptr<Model>> m;
  return m;
}

const Tokenizer* load_tokenizer(const std::string& path) {
  if (!std::filesystem::exists(path)) return nullptr;
  auto f = gguf::File::open(path);
  if (!f.ok()) return nullptr;
  auto m = std::make_unique<Model>();
  m->file = std::move(f).value();
  auto t = Tokenizer::from_gguf(*m->file);
  if (!t.ok()) return nullptr;
  m->tok = std::move(t).value();
  models().push_back(std::move(m));
  return models().back()->tok.get();
}

void register_all(const std::string& only) {
  std::mt19937 rng(2025);
  ThreadPool pool(ThreadPool::default_threads());
  const std::pair<const char*, std::string> kTokenizers[] = {
      {"smollm2", cache_path("PEREGRINE_MODEL_PATH", "SmolLM2-135M-Instruct.Q4_1.gguf")},
      {"gemma3", cache_path("PEREGRINE_GEMMA_PATH", "gemma-3-270m-q4_k_m.gguf")}};
  const char* kKinds[] = {"ids", "products", "titles"};
  // A filter that names no tokenizer (or no kind) keeps them all.
  auto names_any = [&](auto& list, auto name_of) {
    for (const auto& x : list) {
      if (only.find(name_of(x)) != std::string::npos) return true;
    }
    return false;
  };
  const bool all_tok = !names_any(kTokenizers, [](const auto& t) { return std::string(t.first); });
  const bool all_kinds = !names_any(kKinds, [](const char* k) { return std::string(k); });
  bool any = false;
  for (const auto& [tname, path] : kTokenizers) {
    if (!all_tok && only.find(tname) == std::string::npos) continue;
    const Tokenizer* tok = load_tokenizer(path);
    if (tok == nullptr) {
      std::fprintf(stderr, "%s: no tokenizer at %s, skipped\n", tname, path.c_str());
      continue;
    }
    any = true;
    for (const char* kind : kKinds) {
      const std::string name = std::string(tname) + "/" + kind;
      if (!all_kinds && only.find(kind) == std::string::npos) continue;
      const std::vector<std::string> items = std::string(kind) == "ids"        ? make_ids(rng)
                                             : std::string(kind) == "products" ? make_products(rng)
                                                                               : make_titles(rng, *tok);
      register_catalogue(name, std::make_unique<Built>(build_text(*tok, items, pool)), rng);
    }
  }
  if (!any) register_catalogue("synthetic/tokens", std::make_unique<Built>(build_synthetic(rng)), rng);
}

}  // namespace
}  // namespace peregrine

// PEREGRINE_CATALOGUES=smollm2,ids,products (any of the names) limits what is built: each
// 10^6-item catalogue takes seconds to build.
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const char* only = std::getenv("PEREGRINE_CATALOGUES");
  peregrine::register_all(only ? only : "");
  benchmark::AddCustomContext("target", "mask < 50 us per step for 10^6 items (pct_target = time per step / 50 us)");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  std::fprintf(stderr, "peak RSS %.2f GiB\n", double(ru.ru_maxrss) / double(1 << 20));
  return 0;
}
