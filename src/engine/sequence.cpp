#include "engine/sequence.h"

#include <algorithm>
#include <cmath>

namespace peregrine {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

TokenText TokenText::of(const Tokenizer& tok) {
  return {[&tok](TokenId id) { return tok.token_bytes(id); },
          [&tok](TokenId id) { return tok.is_end_of_generation(id); }};
}

SequenceState::SequenceState(const SequenceOptions& opt, const TokenText& text, int64_t n_vocab)
    : opt_(opt), text_(text), n_vocab_(n_vocab), sampler_(opt.sampling), stop_(opt.stop) {
  if (opt_.constraint) constraint_ = opt_.constraint();
}

void SequenceState::set_prompt(std::span<const TokenId> prompt) {
  // Room for the whole output when its length is bounded: no reallocation per token.
  if (opt_.max_tokens > 0) tokens_.reserve(prompt.size() + size_t(std::min<int64_t>(opt_.max_tokens, 1 << 20)));
  tokens_.assign(prompt.begin(), prompt.end());
  n_prompt_ = int64_t(tokens_.size());
  sampler_.reset();
  for (TokenId t : prompt) sampler_.accept(t);
}

const float* SequenceState::constrained(const float* row) {
  if (!constraint_) return row;
  masked_.assign(row, row + n_vocab_);
  constraint_->mask(masked_.data(), n_vocab_);
  return masked_.data();
}

TokenId SequenceState::choose(const float* r, TokenId draft, const TokenDist* q) {
  if (q == nullptr || draft < 0 || draft >= n_vocab_ || opt_.sampling.temperature <= 0.0f)
    return sampler_.sample(r, n_vocab_);
  // Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the draft token d was
  // drawn from q; keep it with probability min(1, p(d) / q(d)), else draw from the residual
  // max(0, p - q), normalised. Either way the token is a draw from p.
  sampler_.distribution(r, n_vocab_, p_);
  // q densely (it may hold the whole vocabulary, as p may): O(|p| + |q|) per row.
  if (qdense_.size() != size_t(n_vocab_)) qdense_.assign(size_t(n_vocab_), 0.0f);
  for (const auto& [id, pr] : *q)
    if (id >= 0 && id < n_vocab_) qdense_[size_t(id)] = pr;
  double pd = 0.0;
  for (const auto& [id, pr] : p_)
    if (id == draft) pd = pr;
  const double qd = qdense_[size_t(draft)];
  const bool keep = sampler_.uniform() * qd < pd;
  double sum = 0.0;
  if (!keep) {
    for (auto& [id, pr] : p_) {
      pr = std::max(0.0f, pr - qdense_[size_t(id)]);
      sum += pr;
    }
  }
  for (const auto& [id, pr] : *q)
    if (id >= 0 && id < n_vocab_) qdense_[size_t(id)] = 0.0f;
  if (keep) return draft;
  if (!(sum > 0.0)) return sampler_.sample(r, n_vocab_);  // p == q up to rounding
  double u = sampler_.uniform() * sum;
  for (const auto& [id, pr] : p_) {
    u -= pr;
    if (u < 0.0) return id;
  }
  for (size_t i = p_.size(); i-- > 0;)
    if (p_[i].second > 0.0f) return p_[i].first;
  return p_.back().first;
}

SequenceState::Took SequenceState::emit(TokenId tok, const float* row, std::vector<Emitted>& out,
                                        StepResult& res) {
  if (!opt_.ignore_eos && text_.is_end_of_generation(tok) && (!constraint_ || constraint_->complete())) {
    end_step(res, FinishReason::Stop);
    return Took::End;
  }
  Emitted e;
  e.token = tok;
  if (opt_.top_logprobs >= 0) {
    e.has_logprobs = true;
    compute_logprobs(row, n_vocab_, tok, opt_.top_logprobs, e.logprobs);  // the model's own distribution
  }
  sampler_.accept(tok);
  sampler_.count_output(tok);
  tokens_.push_back(tok);
  if (constraint_ && !constraint_->advance(tok)) {
    out.push_back(std::move(e));
    finished_ = true;
    res.finished = true;
    res.reason = FinishReason::Error;
    return Took::TokenAndEnd;
  }
  StopMatcher::Out o = stop_.push(decoder_.push_bytes(text_.bytes(tok)));
  e.text = std::move(o.text);
  out.push_back(std::move(e));
  if (o.stopped) {
    end_step(res, FinishReason::Stop);  // nothing is held back after a stop string
    return Took::TokenAndEnd;
  }
  if (opt_.max_tokens > 0 && n_generated() >= opt_.max_tokens) {
    end_step(res, FinishReason::Length);
    return Took::TokenAndEnd;
  }
  return Took::Token;
}

SequenceState::StepResult SequenceState::step(const float* rows, int64_t n_rows, std::span<const TokenId> draft,
                                              std::vector<Emitted>& out, int64_t room,
                                              std::span<const TokenDist> draft_dists) {
  PG_ASSERT(!finished_ && n_rows >= 1 && int64_t(draft.size()) + 1 >= n_rows);
  PG_ASSERT(draft_dists.empty() || draft_dists.size() == draft.size());
  StepResult res;
  if (room <= 0) return finish(FinishReason::Length);
  for (int64_t i = 0; i < n_rows; ++i) {
    const float* row = constrained(rows + i * n_vocab_);
    const bool drafted = size_t(i) < draft.size();
    const TokenId d = drafted ? draft[size_t(i)] : -1;
    const TokenId tok = choose(row, d, drafted && !draft_dists.empty() ? &draft_dists[size_t(i)] : nullptr);
    const Took took = emit(tok, row, out, res);
    if (took == Took::End) return res;
    ++res.accepted;
    if (took == Took::TokenAndEnd) return res;
    if (--room == 0) {
      end_step(res, FinishReason::Length);
      return res;
    }
    // A row past the draft, or a token that left it: the step ends here.
    if (!drafted || tok != d) break;
    ++res.draft_accepted;
  }
  return res;
}

void SequenceState::end_step(StepResult& res, FinishReason reason) {
  StepResult f = finish(reason);
  res.finished = true;
  res.reason = f.reason;
  res.tail = std::move(f.tail);
}

SequenceState::StepResult SequenceState::finish(FinishReason reason) {
  StepResult res;
  res.finished = true;
  res.reason = reason;
  if (finished_) return res;
  finished_ = true;
  StopMatcher::Out tail = stop_.push(decoder_.flush());
  if (tail.stopped) {
    res.reason = FinishReason::Stop;
    res.tail = std::move(tail.text);
    return res;
  }
  res.tail = tail.text + stop_.flush();
  return res;
}

}  // namespace peregrine
