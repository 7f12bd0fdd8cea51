// GGUF general.architecture -> model factory. Adding an architecture is one file in
// model/arch/ plus one entry in PEREGRINE_ARCHITECTURES (arch/arch.h).
#include <fmt/ranges.h>

#include "model/arch/arch.h"
#include "model/model.h"

namespace peregrine {
namespace {

using Factory = Result<std::unique_ptr<Model>> (*)(std::shared_ptr<const gguf::File>, ThreadPool&);

struct Entry {
  const char* name;
  Factory make;
};

#define PEREGRINE_ARCH_ENTRY(name, id) {name, arch::make_##id},
constexpr Entry kArchitectures[] = {PEREGRINE_ARCHITECTURES(PEREGRINE_ARCH_ENTRY)};
#undef PEREGRINE_ARCH_ENTRY

}  // namespace

std::vector<std::string> supported_architectures() {
  std::vector<std::string> names;
  for (const Entry& e : kArchitectures) names.emplace_back(e.name);
  return names;
}

Result<std::unique_ptr<Model>> load_model(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  PG_ASSIGN(std::string arch, file->get_string("general.architecture"));
  for (const Entry& e : kArchitectures)
    if (arch == e.name) return e.make(std::move(file), pool);
  return make_error("{}: unsupported architecture '{}' (supported: {})", file->name(), arch,
                    fmt::join(supported_architectures(), ", "));
}

}  // namespace peregrine
