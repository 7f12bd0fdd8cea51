// peregrine: command-line entry point. Each command lives in src/tools/cmd_*.cpp.
#include <cstdio>
#include <algorithm>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"peregrine: fast LLM inference on the CPU"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Help for every command");
  namespace t = peregrine::tools;
  t::register_pull(app);
  t::register_info(app);
  t::register_run(app);
  t::register_chat(app);
  t::register_perplexity(app);
  t::register_tokenize(app);
  t::register_logits(app);
  t::register_dequant(app);
  t::register_quantize_row(app);
  t::register_bench(app);
  t::register_serve(app);
  t::register_masks(app);
  t::register_quantize(app);
  t::register_imatrix(app);
  t::register_eval(app);

  std::string commands;
  for (const CLI::App* sub : app.get_subcommands({}))
    commands += (commands.empty() ? "" : ", ") + sub->get_name();
  if (argc > 1 && argv[1][0] != '-') {
    try {
      app.get_subcommand(argv[1]);
    } catch (const CLI::OptionNotFound&) {
      std::fprintf(stderr, "error: unknown command '%s' (commands: %s)\n", argv[1], commands.c_str());
      return 2;
    }
  }
  // llama.cpp's two-letter short flag for the draft model; CLI11 short names are one letter.
  // Not where it is the value of a text option (a prompt "-md").
  std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const bool is_value = i > 0 && (args[i - 1] == "-p" || args[i - 1] == "--prompt" || args[i - 1] == "--system" ||
                                    args[i - 1] == "--stop" || args[i - 1] == "--spec-prompt");
    if (args[i] == "-md" && !is_value) args[i] = "--model-draft";
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments last first
  try {
    app.parse(args);
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // the command already printed its error line
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    // One line, as every error: the message and where to look for usage.
    std::string where = argc > 1 && argv[1][0] != '-' ? std::string("peregrine ") + argv[1] : "peregrine";
    std::fprintf(stderr, "error: %s (see '%s --help')\n", e.what(), where.c_str());
    return 2;
  }
  return 0;
}
