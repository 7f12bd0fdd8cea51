// Metrics: a small thread-safe registry rendered in the Prometheus text format (version 0.0.4)
// for GET /metrics.
//
// Three kinds, each registered once under a name that gets the "peregrine_" prefix:
//   Counter    only goes up; optionally split by one label (requests_total{status="200"}),
//   Gauge      a value that is set (running requests, KV blocks in use),
//   Histogram  observations counted into fixed buckets: cumulative _bucket{le="..."} series
//              ending in le="+Inf", then _sum and _count.
// Registration returns a reference that stays valid for the registry's lifetime; updates lock
// only the metric they touch. Names and label names are chosen by the program and checked with
// PG_ASSERT; label values may come from outside and are escaped.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peregrine::serve {

class Metric {
 public:
  virtual ~Metric() = default;
  const std::string& name() const { return name_; }  // with the prefix

 protected:
  Metric(std::string name, std::string help) : name_(std::move(name)), help_(std::move(help)) {}
  friend class Metrics;
  virtual const char* type() const = 0;
  virtual void render_samples(std::string& out) const = 0;

  std::string name_;
  std::string help_;
  mutable std::mutex mu_;
};

class Counter final : public Metric {
 public:
  // Unlabelled counter. Negative or NaN increments are ignored (counters never go down).
  void inc(double v = 1.0);
  // Labelled counter: the series for label_value, created at 0 on first use.
  void inc(std::string_view label_value, double v = 1.0);
  double value() const;
  double value(std::string_view label_value) const;  // 0 for a series never incremented

 private:
  friend class Metrics;
  Counter(std::string name, std::string help, std::string label)
      : Metric(std::move(name), std::move(help)), label_(std::move(label)) {}
  const char* type() const override { return "counter"; }
  void render_samples(std::string& out) const override;

  std::string label_;                                  // empty: unlabelled
  std::map<std::string, double, std::less<>> values_;  // label value -> count ("" unlabelled)
};

class Gauge final : public Metric {
 public:
  void set(double v);
  void add(double v);  // negative to decrease
  double value() const;

 private:
  friend class Metrics;
  using Metric::Metric;
  const char* type() const override { return "gauge"; }
  void render_samples(std::string& out) const override;

  double value_ = 0.0;
};

class Histogram final : public Metric {
 public:
  // Counts v into the first bucket whose upper bound is >= v (the +Inf bucket at the end).
  // NaN is ignored.
  void observe(double v);
  uint64_t count() const;
  double sum() const;

 private:
  friend class Metrics;
  Histogram(std::string name, std::string help, std::vector<double> bounds);
  const char* type() const override { return "histogram"; }
  void render_samples(std::string& out) const override;

  std::vector<double> bounds_;    // [n] strictly increasing, finite
  std::vector<uint64_t> counts_;  // [n + 1] per bucket, not cumulative; the last is +Inf
  double sum_ = 0.0;
};

class Metrics {
 public:
  // name: without the "peregrine_" prefix, [a-zA-Z_:][a-zA-Z0-9_:]*, not registered before.
  // label: empty for none, else [a-zA-Z_][a-zA-Z0-9_]* and not "le".
  Counter& counter(std::string_view name, std::string_view help, std::string_view label = {});
  Gauge& gauge(std::string_view name, std::string_view help);
  // bounds: strictly increasing finite upper bounds; +Inf is added.
  Histogram& histogram(std::string_view name, std::string_view help, std::vector<double> bounds);

  // start, start*factor, ... (count bounds); start > 0, factor > 1.
  static std::vector<double> exponential_buckets(double start, double factor, int count);

  // Every metric in registration order: # HELP, # TYPE, then its samples.
  std::string render() const;

 private:
  std::string checked_name(std::string_view name) const;  // caller holds mu_

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Metric>> metrics_;
};

}  // namespace peregrine::serve
