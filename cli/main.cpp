// peregrine: command-line entry point. Each command lives in src/tools/cmd_*.cpp.
#include <cstdio>

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // the command already printed its error line
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() != 0) {
      std::fprintf(stderr, "error: %s\n", e.what());
      std::fprintf(stderr, "run 'peregrine --help' for usage\n");
      return e.get_exit_code();
    }
    return app.exit(e);
  }
  return 0;
}
