#include "serve/metrics.h"

#include <cmath>

#include <fmt/format.h>

#include "core/status.h"

namespace peregrine::serve {

namespace {

constexpr std::string_view kPrefix = "peregrine_";

bool valid_name(std::string_view s, bool allow_colon) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

// Prometheus writes floats as Go does: shortest round-trip digits, +Inf, -Inf, NaN.
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

// HELP text escapes backslash and newline; label values also the double quote.
void append_escaped(std::string& out, std::string_view s, bool quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (quote && c == '"') {
      out += "\\\"";
    } else {
      out += c;
    }
  }
}

}  // namespace

// --- Counter -----------------------------------------------------------------------------------

void Counter::inc(double v) {
  PG_ASSERT(label_.empty());
  if (!(v >= 0.0)) return;
  std::lock_guard lock(mu_);
  values_[""] += v;
}

void Counter::inc(std::string_view label_value, double v) {
  PG_ASSERT(!label_.empty());
  if (!(v >= 0.0)) return;
  std::lock_guard lock(mu_);
  auto it = values_.find(label_value);
  if (it == values_.end()) it = values_.emplace(std::string(label_value), 0.0).first;
  it->second += v;
}

double Counter::value() const {
  PG_ASSERT(label_.empty());
  std::lock_guard lock(mu_);
  return values_.at("");
}

double Counter::value(std::string_view label_value) const {
  PG_ASSERT(!label_.empty());
  std::lock_guard lock(mu_);
  auto it = values_.find(label_value);
  return it == values_.end() ? 0.0 : it->second;
}

void Counter::render_samples(std::string& out) const {
  std::lock_guard lock(mu_);
  for (const auto& [label_value, v] : values_) {
    out += name_;
    if (!label_.empty()) {
      out += '{';
      out += label_;
      out += "=\"";
      append_escaped(out, label_value, /*quote=*/true);
      out += "\"}";
    }
    out += ' ';
    out += format_value(v);
    out += '\n';
  }
}

// --- Gauge -------------------------------------------------------------------------------------

void Gauge::set(double v) {
  std::lock_guard lock(mu_);
  value_ = v;
}

void Gauge::add(double v) {
  std::lock_guard lock(mu_);
  value_ += v;
}

double Gauge::value() const {
  std::lock_guard lock(mu_);
  return value_;
}

void Gauge::render_samples(std::string& out) const {
  std::lock_guard lock(mu_);
  out += fmt::format("{} {}\n", name_, format_value(value_));
}

// --- Histogram ---------------------------------------------------------------------------------

Histogram::Histogram(std::string name, std::string help, std::vector<double> bounds)
    : Metric(std::move(name), std::move(help)), bounds_(std::move(bounds)) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    PG_ASSERT(std::isfinite(bounds_[i]));
    PG_ASSERT(i == 0 || bounds_[i - 1] < bounds_[i]);
  }
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::observe(double v) {
  if (std::isnan(v)) return;
  // Buckets are few (tens): a linear scan beats a binary search's branches.
  size_t b = 0;
  while (b < bounds_.size() && v > bounds_[b]) ++b;
  std::lock_guard lock(mu_);
  counts_[b]++;
  sum_ += v;
}

uint64_t Histogram::count() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (uint64_t c : counts_) n += c;
  return n;
}

double Histogram::sum() const {
  std::lock_guard lock(mu_);
  return sum_;
}

void Histogram::render_samples(std::string& out) const {
  std::lock_guard lock(mu_);
  uint64_t cumulative = 0;
  for (size_t b = 0; b < counts_.size(); ++b) {
    cumulative += counts_[b];
    const std::string le = b < bounds_.size() ? format_value(bounds_[b]) : "+Inf";
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name_, le, cumulative);
  }
  out += fmt::format("{}_sum {}\n", name_, format_value(sum_));
  out += fmt::format("{}_count {}\n", name_, cumulative);
}

// --- Registry ----------------------------------------------------------------------------------

std::string Metrics::checked_name(std::string_view name) const {
  PG_ASSERT(valid_name(name, /*allow_colon=*/true));
  std::string full = fmt::format("{}{}", kPrefix, name);
  for (const auto& m : metrics_) PG_ASSERT(m->name() != full);
  return full;
}

Counter& Metrics::counter(std::string_view name, std::string_view help, std::string_view label) {
  PG_ASSERT(label.empty() || (valid_name(label, /*allow_colon=*/false) && label != "le"));
  std::lock_guard lock(mu_);
  std::unique_ptr<Counter> c(
      new Counter(checked_name(name), std::string(help), std::string(label)));
  if (label.empty()) c->values_[""] = 0.0;  // an unlabelled counter shows 0 from the start
  Counter& ref = *c;
  metrics_.push_back(std::move(c));
  return ref;
}

Gauge& Metrics::gauge(std::string_view name, std::string_view help) {
  std::lock_guard lock(mu_);
  std::unique_ptr<Gauge> g(new Gauge(checked_name(name), std::string(help)));
  Gauge& ref = *g;
  metrics_.push_back(std::move(g));
  return ref;
}

Histogram& Metrics::histogram(std::string_view name, std::string_view help,
                              std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  std::unique_ptr<Histogram> h(
      new Histogram(checked_name(name), std::string(help), std::move(bounds)));
  Histogram& ref = *h;
  metrics_.push_back(std::move(h));
  return ref;
}

std::vector<double> Metrics::exponential_buckets(double start, double factor, int count) {
  PG_ASSERT(start > 0.0 && factor > 1.0 && count >= 0);
  std::vector<double> b;
  b.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) b.push_back(start * std::pow(factor, i));
  return b;
}

std::string Metrics::render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& m : metrics_) {
    out += "# HELP ";
    out += m->name_;
    out += ' ';
    append_escaped(out, m->help_, /*quote=*/false);
    out += fmt::format("\n# TYPE {} {}\n", m->name_, m->type());
    m->render_samples(out);
  }
  return out;
}

}  // namespace peregrine::serve
