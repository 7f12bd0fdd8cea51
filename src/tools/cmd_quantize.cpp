// peregrine quantize: being written (issue 15).
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {

void register_quantize(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("quantize", "(not yet available)");
  cmd->callback([] { fail("quantize: not yet available"); });
}

}  // namespace peregrine::tools
