"""Conversations rendered with Gemma 3's published chat template, for the engine's native renderer.

gemma3_chat_template.jinja is the `chat_template` of Google's Gemma 3 checkpoints
(tokenizer_config.json of google/gemma-3-270m and its siblings; the GGUF of gemma-3-270m, converted
from the base checkpoint, carries no template). make_cases() builds varied conversations with a
fixed seed and renders each with jinja2 configured as `transformers` renders chat templates
(sandboxed, trim_blocks, lstrip_blocks, raise_exception). gemma_chat_cases.json holds the result;
tests/unit/test_tokenizer_chat.cpp renders the same conversations natively and must produce the
same text (less the leading BOS, which the engine adds as a token), and
test_chat_template_gemma.py checks that the JSON is what this script makes.

    python tests/reference/gemma_chat_cases.py   # rewrite gemma_chat_cases.json
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "gemma3_chat_template.jinja"
CASES = HERE / "gemma_chat_cases.json"
BOS = "<bos>"

# Python's str.isspace() characters (Jinja's `trim` strips them) and some that are not spaces.
SPACES = [" ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680",
          "\u2000", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\u200b", "\ufeff", "\u180e", "\x00", "\x7f"]
TEXTS = ["Hello", "Write a haiku about rivers", "What is 2+2?", "Sure! Here it is:\n\n1. a\n2. b",
         "你好，世界", "Привет", "😀 emoji", "code:\n    x = 1\n\ty = 2", "<start_of_turn>literal",
         "ends with <end_of_turn>", "a  b   c", "", "x"]


def _content(rng: random.Random) -> str:
    s = rng.choice(TEXTS)
    if rng.random() < 0.6:
        s = "".join(rng.choice(SPACES + NOT_SPACES[:1]) for _ in range(rng.randint(1, 3))) + s
    if rng.random() < 0.6:
        s = s + "".join(rng.choice(SPACES + NOT_SPACES) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.05:
        s = rng.choice(SPACES) * 3  # whitespace only: trims to nothing
    return s


def make_conversations(n: int = 60, seed: int = 20250814) -> list[dict]:
    rng = random.Random(seed)
    out = [
        {"messages": [{"role": "user", "content": "Write a haiku about rivers"}], "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "  untrimmed system  "}], "add_generation_prompt": True},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "}],
         "add_generation_prompt": False},
    ]
    for _ in range(n):
        msgs = []
        if rng.random() < 0.4:
            msgs.append({"role": "system", "content": _content(rng)})
        for k in range(rng.randint(1, 5)):
            msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": _content(rng)})
        out.append({"messages": msgs, "add_generation_prompt": rng.random() < 0.7})
    return out


def render(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=BOS, eos_token="<eos>",
                                            add_generation_prompt=add_generation_prompt)


def make_cases() -> list[dict]:
    template = TEMPLATE.read_text(encoding="utf-8")
    cases = []
    for c in make_conversations():
        text = render(template, c["messages"], c["add_generation_prompt"])
        assert text.startswith(BOS)
        cases.append({**c, "expected": text[len(BOS):]})
    return cases


if __name__ == "__main__":
    CASES.write_text(json.dumps(make_cases(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {CASES}")
