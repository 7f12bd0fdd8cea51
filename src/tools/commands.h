// CLI commands. Each registers a subcommand on the app; main() dispatches.
#pragma once

#include <CLI/CLI.hpp>

namespace peregrine::tools {

void register_pull(CLI::App& app);
void register_info(CLI::App& app);
void register_run(CLI::App& app);
void register_chat(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_logits(CLI::App& app);
void register_dequant(CLI::App& app);
void register_quantize_row(CLI::App& app);  // hidden test hook
void register_bench(CLI::App& app);
void register_serve(CLI::App& app);
void register_masks(CLI::App& app);  // constraint engine alone (oracles, benchmarks)
void register_quantize(CLI::App& app);
void register_imatrix(CLI::App& app);
void register_eval(CLI::App& app);

}  // namespace peregrine::tools
