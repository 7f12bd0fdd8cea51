#include "tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>

#include "tokenizer/unicode_utf8.h"

namespace peregrine {
namespace {

// HF tokenizers runs this regex with Oniguruma, whose \s is the Unicode
// White_Space property (it includes U+0085 NEL); PCRE2's \s differs by
// version and mode, so the set is spelled out. White_Space has been stable
// since Unicode 6.3.
#define PG_WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}" \
              "\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" PG_WS "\\p{L}\\p{N}]+"
    "|[" PG_WS "]+(?![^" PG_WS "])|[" PG_WS "]+";

// HF's Sequence[Digits(individual_digits), ByteLevel] cuts the text before and
// after every \p{N} character, then runs the GPT-2 regex on each segment. One
// regex does both: " ?\p{N}+" becomes "\p{N}" (a digit alone, never with a
// leading space), and "\s+(?!\S)" may also stop before a digit, because there
// the segment ends and the lookahead sees its end. No other alternative can
// match across a digit, so the two are the same split.
constexpr const char* kDigitsIsolatedPattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+|\\p{N}| ?[^" PG_WS "\\p{L}\\p{N}]+"
    "|[" PG_WS "]+(?![^" PG_WS "\\p{N}])|[" PG_WS "]+";

// Llama 3 (its tokenizer.json's Split regex, run by HF with Oniguruma, like ByteLevel's):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
//   |\s*[\r\n]+|\s+(?!\S)|\s+
// The contractions match case-insensitively with Unicode case folding in both Oniguruma and
// PCRE2 ('S' and U+017F long s fold to 's'); llama.cpp spells them [sS] and so differs on
// "'\u017F" alone. Qwen2's regex is the same with \p{N} for \p{N}{1,3}.
#define PG_LLAMA3_PATTERN(DIGITS)                                                        \
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" DIGITS "| ?[^" PG_WS         \
  "\\p{L}\\p{N}]+[\\r\\n]*|[" PG_WS "]*[\\r\\n]+|[" PG_WS "]+(?![^" PG_WS "])|[" PG_WS "]+"
constexpr const char* kLlama3Pattern = PG_LLAMA3_PATTERN("\\p{N}{1,3}");
constexpr const char* kQwen2Pattern = PG_LLAMA3_PATTERN("\\p{N}");
#undef PG_LLAMA3_PATTERN

#undef PG_WS

// tokenizer.ggml.pre names, as llama.cpp's converter writes them (convert_hf_to_gguf.py,
// get_vocab_base_pre) and llama.cpp reads them (src/llama-vocab.cpp; both as pinned in
// llama-cpp-python 0.3.36): every name it maps to exactly one of our splits.
//  - the GPT-2 regex alone: its pre types GPT2, MPT, OLMO, JAIS, TRILLION and GRANITE_DOCLING.
//    Not "gpt2", which llama.cpp refuses and no converter writes. Not jina-v1-en, jina-v2-code
//    or roberta-bpe (llama.cpp also appends a SEP token) nor jina-v2-de / jina-v2-es (their
//    <mask> strips the space before it): encoder models, whose extra rules we do not apply.
//  - "\p{N}" then the GPT-2 regex: STARCODER, REFACT, COMMAND_R, SMOLLM, CODESHELL, EXAONE,
//    MINERVA and MELLUM2.
//  - Llama 3's regex: LLAMA3 (which also sets ignore_merges and add_bos), DBRX and SMAUG.
//    Not chatglm-bpe / glm4 (the same regex, but llama.cpp drops their BOS id).
//  - Qwen2's regex: QWEN2, STABLELM2, HUNYUAN, SOLAR_OPEN and GROK_2.
// The names differ otherwise only in clean_spaces, which llama.cpp applies when detokenizing,
// not when splitting. "default" (llama.cpp's fallback for files without the key: punctuation
// runs, then GPT-2, then digit runs cut into threes) is a different split and is refused.
struct NamedSplit {
  std::string_view name;
  PretokenizerKind kind;
  bool llama3_rules = false;  // ignore_merges and BOS by default
};
constexpr NamedSplit kNamedSplits[] = {
    {"gpt-2", PretokenizerKind::Gpt2},         {"phi-2", PretokenizerKind::Gpt2},
    {"jina-es", PretokenizerKind::Gpt2},       {"jina-de", PretokenizerKind::Gpt2},
    {"gigachat", PretokenizerKind::Gpt2},      {"a.x-4.0", PretokenizerKind::Gpt2},
    {"mellum", PretokenizerKind::Gpt2},        {"modern-bert", PretokenizerKind::Gpt2},
    {"exaone4", PretokenizerKind::Gpt2},       {"mpt", PretokenizerKind::Gpt2},
    {"olmo", PretokenizerKind::Gpt2},          {"jais", PretokenizerKind::Gpt2},
    {"trillion", PretokenizerKind::Gpt2},      {"granite-docling", PretokenizerKind::Gpt2},
    {"smollm", PretokenizerKind::DigitsIsolated},     {"starcoder", PretokenizerKind::DigitsIsolated},
    {"refact", PretokenizerKind::DigitsIsolated},     {"command-r", PretokenizerKind::DigitsIsolated},
    {"codeshell", PretokenizerKind::DigitsIsolated},  {"exaone", PretokenizerKind::DigitsIsolated},
    {"minerva-7b", PretokenizerKind::DigitsIsolated}, {"mellum2", PretokenizerKind::DigitsIsolated},
    {"llama3", PretokenizerKind::Llama3, true},       {"llama-v3", PretokenizerKind::Llama3, true},
    {"llama-bpe", PretokenizerKind::Llama3, true},    {"falcon3", PretokenizerKind::Llama3, true},
    {"falcon-h1", PretokenizerKind::Llama3, true},    {"pixtral", PretokenizerKind::Llama3, true},
    {"midm-2.0", PretokenizerKind::Llama3, true},     {"lfm2", PretokenizerKind::Llama3, true},
    {"jina-v5-nano", PretokenizerKind::Llama3, true}, {"dbrx", PretokenizerKind::Llama3},
    {"smaug-bpe", PretokenizerKind::Llama3},
    {"qwen2", PretokenizerKind::Qwen2},        {"deepseek-r1-qwen", PretokenizerKind::Qwen2},
    {"kormo", PretokenizerKind::Qwen2},        {"f2llmv2", PretokenizerKind::Qwen2},
    {"megrez", PretokenizerKind::Qwen2},       {"stablelm2", PretokenizerKind::Qwen2},
    {"hunyuan", PretokenizerKind::Qwen2},      {"solar-open", PretokenizerKind::Qwen2},
    {"grok-2", PretokenizerKind::Qwen2},
};

const char* pattern_of(PretokenizerKind kind) {
  switch (kind) {
    case PretokenizerKind::Gpt2: return kGpt2Pattern;
    case PretokenizerKind::DigitsIsolated: return kDigitsIsolatedPattern;
    case PretokenizerKind::Llama3: return kLlama3Pattern;
    case PretokenizerKind::Qwen2: return kQwen2Pattern;
  }
  return kGpt2Pattern;
}

std::string supported_names() {
  std::string out;
  for (const NamedSplit& s : kNamedSplits) {
    if (!out.empty()) out += ", ";
    out += s.name;
  }
  return out;
}

}  // namespace

struct Pretokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

Pretokenizer::Pretokenizer(PretokenizerKind kind, bool ignore_merges, bool add_bos_by_default,
                           std::unique_ptr<Regex> re)
    : kind_(kind),
      ignore_merges_(ignore_merges),
      add_bos_by_default_(add_bos_by_default),
      re_(std::move(re)) {}
Pretokenizer::~Pretokenizer() = default;

Result<std::unique_ptr<Pretokenizer>> Pretokenizer::create(std::string_view pre_name) {
  const NamedSplit* named = nullptr;
  for (const NamedSplit& s : kNamedSplits)
    if (s.name == pre_name) named = &s;
  if (named == nullptr) {
    return make_error("unsupported tokenizer pre-tokenizer '{}' (tokenizer.ggml.pre); supported: {}",
                      pre_name, supported_names());
  }
  const char* pattern = pattern_of(named->kind);
  auto re = std::make_unique<Regex>();
  int err = 0;
  PCRE2_SIZE err_off = 0;
  re->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                           PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr);
  if (re->code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return make_error("pre-tokenizer '{}': regex does not compile at offset {}: {}", pre_name,
                      err_off, reinterpret_cast<const char*>(msg));
  }
  // JIT is several times faster; without it (unsupported CPU) the interpreter
  // gives the same matches.
  pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Pretokenizer>(
      new Pretokenizer(named->kind, named->llama3_rules, named->llama3_rules, std::move(re)));
}

void Pretokenizer::split(std::string_view text, std::vector<std::string_view>& out) const {
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t run = utf8::valid_prefix(text.substr(pos));
    if (run > 0) {
      split_valid(text.substr(pos, run), out);
      pos += run;
    }
    if (pos < text.size()) {
      const utf8::Seq q = utf8::next(text, pos);  // Invalid or Truncated
      out.push_back(text.substr(pos, q.len));
      pos += q.len;
    }
  }
}

void Pretokenizer::split_valid(std::string_view text, std::vector<std::string_view>& out) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    // The text was validated above, so PCRE2 need not re-check it on every
    // call (which would make a long text quadratic).
    const int rc =
        pcre2_match(re_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    size_t start = text.size(), end = text.size();
    if (rc >= 0) {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      start = ov[0];
      end = ov[1];
    }
    // Every character is in \s, \p{L}, \p{N} or the complement class, so no
    // gap and no empty match occur; should the matcher fail (a resource
    // limit), the rest still becomes a piece rather than being lost.
    if (start > pos) out.push_back(text.substr(pos, start - pos));
    if (end <= start) {
      if (start < text.size()) out.push_back(text.substr(start));
      break;
    }
    out.push_back(text.substr(start, end - start));
    pos = end;
  }
  pcre2_match_data_free(md);
}

}  // namespace peregrine
