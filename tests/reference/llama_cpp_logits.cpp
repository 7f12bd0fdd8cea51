// llama.cpp as a logits oracle for the reference tests (tests/reference/llama_cpp_oracle.py builds
// and runs it). Loads a GGUF with llama.h, runs a token list as ONE batch from an empty KV cache
// with logits requested at every position, and writes them as raw little-endian float32
// [n_tokens, n_vocab] (row = position) to the output file.
//
//   llama_cpp_logits MODEL.gguf 1,2,3 OUT.f32 [-t THREADS] [-c CTX] [--kv f32|f16]
//
// CPU only, no weight repacking (no extra buffer types: the AMX / repack paths are not what an
// oracle should exercise), no flash attention, K/V in f32 unless --kv f16: the oracle should add
// as little error of its own as llama.cpp allows. llama.cpp's log goes to stderr only on failure.
// Errors: one line `error: ...` on stderr (with the tail of llama.cpp's log), exit status 1.

#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

std::string g_log;  // llama.cpp's log, kept for error messages

void log_cb(ggml_log_level, const char* text, void*) {
    g_log += text;
    if (g_log.size() > (1u << 20)) g_log.erase(0, g_log.size() - (1u << 19));
}

[[noreturn]] void fail(const std::string& msg) {
    if (!g_log.empty()) {
        const size_t keep = 4000;
        std::fprintf(stderr, "%s", g_log.size() > keep ? g_log.c_str() + g_log.size() - keep : g_log.c_str());
    }
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(1);
}

std::vector<llama_token> parse_tokens(const std::string& s) {
    std::vector<llama_token> out;
    size_t i = 0;
    while (i < s.size()) {
        size_t j = s.find(',', i);
        if (j == std::string::npos) j = s.size();
        std::string t = s.substr(i, j - i);
        char* end = nullptr;
        long v = std::strtol(t.c_str(), &end, 10);
        if (t.empty() || *end != '\0' || v < 0 || v > 0x7fffffff) fail("bad token id '" + t + "'");
        out.push_back(static_cast<llama_token>(v));
        i = j + 1;
    }
    if (out.empty()) fail("no tokens");
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> pos;
    int threads = 1;
    int ctx = 0;
    ggml_type kv = GGML_TYPE_F32;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-t") threads = std::atoi(next().c_str());
        else if (a == "-c") ctx = std::atoi(next().c_str());
        else if (a == "--kv") {
            std::string k = next();
            if (k == "f32") kv = GGML_TYPE_F32;
            else if (k == "f16") kv = GGML_TYPE_F16;
            else fail("--kv takes f32 or f16");
        } else if (!a.empty() && a[0] == '-') fail("unknown option " + a);
        else pos.push_back(a);
    }
    if (pos.size() != 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf TOKENS(1,2,3) OUT.f32 [-t N] [-c CTX] [--kv f32|f16]\n", argv[0]);
        return 2;
    }
    const std::vector<llama_token> tokens = parse_tokens(pos[1]);
    const int n_tok = static_cast<int>(tokens.size());
    if (threads < 1) threads = 1;
    if (ctx < n_tok) ctx = n_tok < 256 ? 256 : n_tok;

    llama_log_set(log_cb, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = false;  // no AMX / CPU_REPACK buffers: plain ggml-cpu kernels
    llama_model* model = llama_model_load_from_file(pos[0].c_str(), mp);
    if (!model) fail("llama.cpp could not load " + pos[0]);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(ctx);
    cp.n_batch = static_cast<uint32_t>(n_tok);
    cp.n_ubatch = static_cast<uint32_t>(n_tok);
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = kv;
    cp.type_v = kv;
    cp.no_perf = true;
    llama_context* lctx = llama_init_from_model(model, cp);
    if (!lctx) fail("llama.cpp could not create a context for " + pos[0]);

    const llama_vocab* vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    for (llama_token t : tokens)
        if (t >= n_vocab) fail("token id " + std::to_string(t) + " >= n_vocab " + std::to_string(n_vocab));

    llama_batch batch = llama_batch_init(n_tok, 0, 1);
    for (int i = 0; i < n_tok; ++i) {
        batch.token[i] = tokens[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_tok;
    if (int rc = llama_decode(lctx, batch); rc != 0) fail("llama_decode returned " + std::to_string(rc));

    FILE* f = std::fopen(pos[2].c_str(), "wb");
    if (!f) fail("cannot open " + pos[2] + " for writing");
    for (int i = 0; i < n_tok; ++i) {
        const float* row = llama_get_logits_ith(lctx, i);
        if (!row) fail("no logits for position " + std::to_string(i));
        if (std::fwrite(row, sizeof(float), static_cast<size_t>(n_vocab), f) != static_cast<size_t>(n_vocab))
            fail("short write to " + pos[2]);
    }
    if (std::fclose(f) != 0) fail("cannot write " + pos[2]);

    llama_batch_free(batch);
    llama_free(lctx);
    llama_model_free(model);
    llama_backend_free();
    std::fprintf(stderr, "llama_cpp_logits: %d tokens x %d logits -> %s\n", n_tok, n_vocab, pos[2].c_str());
    return 0;
}
