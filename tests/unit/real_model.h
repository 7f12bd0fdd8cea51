// The real SmolLM2 file for the tests that need one: its path ($PEREGRINE_MODEL_PATH, else the
// model cache) and a fixture that loads it (the test is skipped when the file is absent).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "model/model.h"

namespace peregrine::test {

inline std::string smollm_path() {
  if (const char* p = std::getenv("PEREGRINE_MODEL_PATH"); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class RealModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(smollm_path())) GTEST_SKIP() << "model not found";
    auto f = gguf::File::open(smollm_path());
    ASSERT_TRUE(f.ok()) << f.error().message;
    file_ = std::shared_ptr<const gguf::File>(std::move(f).value());
    auto m = load_model(file_, pool_);
    ASSERT_TRUE(m.ok()) << m.error().message;
    model_ = std::move(m).value();
  }
  ThreadPool pool_{2};
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> model_;
};

}  // namespace peregrine::test
