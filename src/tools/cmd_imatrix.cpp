// peregrine imatrix: being written (issue 15).
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {

void register_imatrix(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("imatrix", "(not yet available)");
  cmd->callback([] { fail("imatrix: not yet available"); });
}

}  // namespace peregrine::tools
