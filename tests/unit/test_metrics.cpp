// Metrics: the rendered Prometheus text parsed back (HELP/TYPE lines, label escaping,
// cumulative buckets ending in +Inf, _sum and _count), and concurrent updates adding up.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve/metrics.h"

namespace peregrine::serve {
namespace {

struct Parsed {
  std::map<std::string, double> samples;  // "name{labels}" as written -> value
  std::map<std::string, std::string> type;
  std::map<std::string, std::string> help;
  std::vector<std::string> order;  // sample keys in order
};

// Parses the text format strictly: every line is a HELP, a TYPE, or a sample of a family
// whose TYPE came before it.
Parsed parse(const std::string& text) {
  Parsed p;
  EXPECT_TRUE(text.empty() || text.back() == '\n');
  std::istringstream in(text);
  std::string line;
  static const std::regex help_re(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$)");
  static const std::regex type_re(
      R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
  static const std::regex sample_re(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"\})? (\S+)$)");
  std::string family;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help_re)) {
      family = m[1];
      EXPECT_EQ(p.help.count(family), 0u) << "HELP twice for " << family;
      p.help[family] = m[2];
    } else if (std::regex_match(line, m, type_re)) {
      EXPECT_EQ(m[1], family) << "TYPE must follow its HELP";
      p.type[family] = m[2];
    } else if (std::regex_match(line, m, sample_re)) {
      const std::string name = m[1];
      EXPECT_EQ(name.rfind(family, 0), 0u) << line << " outside family " << family;
      EXPECT_EQ(name.rfind("peregrine_", 0), 0u) << line;
      const std::string key = name + std::string(m[2]);
      EXPECT_EQ(p.samples.count(key), 0u) << "duplicate sample " << key;
      const std::string v = m[3];
      p.samples[key] = v == "+Inf" ? INFINITY : v == "-Inf" ? -INFINITY : std::stod(v);
      p.order.push_back(key);
    } else {
      ADD_FAILURE() << "unparseable line: '" << line << "'";
    }
  }
  return p;
}

TEST(Metrics, RendersEveryKind) {
  Metrics reg;
  Counter& requests = reg.counter("requests_total", "Requests answered, by HTTP status.", "status");
  Counter& tokens = reg.counter("generated_tokens_total", "Tokens generated.");
  Gauge& running = reg.gauge("requests_running", "Requests being decoded.");
  Histogram& ttft =
      reg.histogram("time_to_first_token_seconds", "Time to first token.", {0.01, 0.1, 1.0});
  requests.inc("200");
  requests.inc("200");
  requests.inc("400");
  tokens.inc(5);
  tokens.inc(0.5);
  running.set(3);
  running.add(-1);
  for (double v : {0.005, 0.01, 0.05, 0.5, 2.0, 100.0}) ttft.observe(v);

  Parsed p = parse(reg.render());
  EXPECT_EQ(p.type["peregrine_requests_total"], "counter");
  EXPECT_EQ(p.type["peregrine_generated_tokens_total"], "counter");
  EXPECT_EQ(p.type["peregrine_requests_running"], "gauge");
  EXPECT_EQ(p.type["peregrine_time_to_first_token_seconds"], "histogram");
  EXPECT_EQ(p.help["peregrine_requests_total"], "Requests answered, by HTTP status.");
  EXPECT_EQ(p.samples["peregrine_requests_total{status=\"200\"}"], 2);
  EXPECT_EQ(p.samples["peregrine_requests_total{status=\"400\"}"], 1);
  EXPECT_EQ(p.samples["peregrine_generated_tokens_total"], 5.5);
  EXPECT_EQ(p.samples["peregrine_requests_running"], 2);
  const std::string h = "peregrine_time_to_first_token_seconds";
  EXPECT_EQ(p.samples[h + "_bucket{le=\"0.01\"}"], 2);  // le is inclusive: 0.01 counts
  EXPECT_EQ(p.samples[h + "_bucket{le=\"0.1\"}"], 3);
  EXPECT_EQ(p.samples[h + "_bucket{le=\"1\"}"], 4);
  EXPECT_EQ(p.samples[h + "_bucket{le=\"+Inf\"}"], 6);
  EXPECT_EQ(p.samples[h + "_count"], 6);
  EXPECT_NEAR(p.samples[h + "_sum"], 102.565, 1e-9);
  EXPECT_EQ(ttft.count(), 6u);
  EXPECT_EQ(requests.value("200"), 2);
  EXPECT_EQ(requests.value("404"), 0);
  EXPECT_EQ(tokens.value(), 5.5);
  EXPECT_EQ(running.value(), 2);
  // Registration order.
  EXPECT_LT(reg.render().find("peregrine_requests_total"),
            reg.render().find("peregrine_requests_running"));
}

TEST(Metrics, FreshMetricsRender) {
  Metrics reg;
  reg.counter("a_total", "A.");
  reg.counter("b_total", "B.", "kind");
  reg.histogram("h", "H.", {});
  Parsed p = parse(reg.render());
  EXPECT_EQ(p.samples["peregrine_a_total"], 0);       // unlabelled: 0 from the start
  EXPECT_EQ(p.type["peregrine_b_total"], "counter");  // labelled: no series until used
  EXPECT_EQ(p.samples.count("peregrine_b_total"), 0u);
  EXPECT_EQ(p.samples["peregrine_h_bucket{le=\"+Inf\"}"], 0);
  EXPECT_EQ(p.samples["peregrine_h_sum"], 0);
  EXPECT_EQ(p.samples["peregrine_h_count"], 0);
  EXPECT_EQ(parse(Metrics{}.render()).samples.size(), 0u);
}

TEST(Metrics, EscapesHelpAndLabelValues) {
  Metrics reg;
  Counter& c = reg.counter("odd_total", "Line one\nback\\slash \"quoted\".", "path");
  c.inc("a\"b\\c\nd");
  const std::string text = reg.render();
  EXPECT_NE(text.find(R"(# HELP peregrine_odd_total Line one\nback\\slash "quoted".)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(peregrine_odd_total{path="a\"b\\c\nd"} 1)"), std::string::npos) << text;
  parse(text);  // and every line still parses
}

TEST(Metrics, CountersIgnoreNegativeAndNan) {
  Metrics reg;
  Counter& c = reg.counter("c_total", "C.");
  c.inc(2);
  c.inc(-1);
  c.inc(NAN);
  EXPECT_EQ(c.value(), 2);
  Histogram& h = reg.histogram("h", "H.", {1});
  h.observe(NAN);
  h.observe(-5);  // a negative observation lands in the first bucket
  EXPECT_EQ(h.count(), 1u);
  EXPECT_EQ(h.sum(), -5);
  Parsed p = parse(reg.render());
  EXPECT_EQ(p.samples["peregrine_h_bucket{le=\"1\"}"], 1);
}

TEST(Metrics, ExponentialBuckets) {
  const std::vector<double> b = Metrics::exponential_buckets(0.001, 2.0, 4);
  EXPECT_EQ(b, (std::vector<double>{0.001, 0.002, 0.004, 0.008}));
  EXPECT_TRUE(Metrics::exponential_buckets(1, 10, 0).empty());
}

TEST(Metrics, ConcurrentUpdatesAddUp) {
  Metrics reg;
  Counter& c = reg.counter("requests_total", "R.", "status");
  Counter& plain = reg.counter("tokens_total", "T.");
  Gauge& g = reg.gauge("inflight", "I.");
  Histogram& h = reg.histogram("latency_seconds", "L.", Metrics::exponential_buckets(0.001, 4, 8));
  constexpr int kThreads = 4, kIters = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIters; ++i) {
        c.inc(i % 2 ? "200" : "500");
        plain.inc();
        g.add(1);
        g.add(-1);
        h.observe(0.0001 * (i % 1000) * (t + 1));
      }
    });
  }
  // Render while they run: every snapshot parses and its buckets never decrease.
  for (int r = 0; r < 50; ++r) {
    Parsed p = parse(reg.render());
    double prev = 0;
    for (const std::string& key : p.order) {
      if (key.rfind("peregrine_latency_seconds_bucket", 0) != 0) continue;
      EXPECT_GE(p.samples[key], prev) << key;
      prev = p.samples[key];
    }
  }
  for (auto& th : threads) th.join();
  Parsed p = parse(reg.render());
  EXPECT_EQ(p.samples["peregrine_requests_total{status=\"200\"}"], kThreads * kIters / 2);
  EXPECT_EQ(p.samples["peregrine_requests_total{status=\"500\"}"], kThreads * kIters / 2);
  EXPECT_EQ(p.samples["peregrine_tokens_total"], kThreads * kIters);
  EXPECT_EQ(p.samples["peregrine_inflight"], 0);
  EXPECT_EQ(p.samples["peregrine_latency_seconds_count"], kThreads * kIters);
  // Cumulative buckets: monotonic in le order, the last (+Inf) equal to _count.
  double prev = 0;
  std::string last;
  for (const std::string& key : p.order) {
    if (key.rfind("peregrine_latency_seconds_bucket", 0) != 0) continue;
    EXPECT_GE(p.samples[key], prev);
    prev = p.samples[key];
    last = key;
  }
  EXPECT_EQ(last, "peregrine_latency_seconds_bucket{le=\"+Inf\"}");
  EXPECT_EQ(prev, kThreads * kIters);
}

}  // namespace
}  // namespace peregrine::serve
