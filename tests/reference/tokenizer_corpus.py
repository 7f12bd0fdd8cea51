"""Deterministic corpus of varied text lines for the tokenizer comparison (no downloads).

Each line is made by one generator chosen round-robin, with random choices from a fixed seed,
so the same lines come out on every machine. Lines may contain newlines, tabs and runs of
spaces: they travel as JSON strings.

    python tests/reference/tokenizer_corpus.py [N] > corpus.jsonl   # write N lines as JSONL
"""

from __future__ import annotations

import json
import random
import sys

WORDS = (
    "the of and to in is was for on that with as by at from his her they we you it be are this "
    "have had not but what all were when there can said which do their time if will way about "
    "many then them would write like so these long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may "
    "down side been now find any new work part take get place made live where after back little "
    "only round man year came show every good me give our under name very through just form "
    "sentence great think say help low line differ turn cause much mean before move right boy "
    "old too same tell does set three want air well also play small end put home read hand port "
    "large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth "
    "father tokenizer inference quantization transformer attention embedding vocabulary"
).split()

CONTRACTIONS = ["don't", "I'LL", "we're", "they've", "it's", "IT'S", "I'm", "you'd", "she'll",
                "can't", "won't", "y'all", "'s", "'S", "'t", "o'clock", "rock'n'roll", "isn't",
                "We'Ve", "DON'T", "l'homme", "'twas", "ma'am"]

CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "if __name__ == \"__main__\":\n    main()",
    "class Foo:\n    def __init__(self, bar=None):\n        self.bar = bar or {}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "const x = arr.map((v, i) => v ** 2).filter(Boolean);",
    "\t\tif err != nil {\n\t\t\treturn nil, err\n\t\t}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "    x_1 = np.zeros((3, 4), dtype=np.float32)  # shape [3, 4]",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "<div class=\"row\"><span id='a1'>&nbsp;</span></div>",
    "matrix[i][j] += alpha*A[i][k]*B[k][j];",
    "    \n    \n\tpass\n",
    "lambda: {'a': [1, 2, 3], \"b\": (4.5, -6e7)}",
    "git commit -m \"fix: off-by-one in bpe_merges.cpp\" && ./test.sh --verbose",
    "$ echo $HOME | sed -e 's/\\//_/g'",
]

NUMBERS = ["0", "7", "42", "1234567890", "3.14159", "-0.5", "1e-10", "6.022e23", "1,234,567",
           "2024-01-15", "12:34:56", "+1 (555) 123-4567", "0xDEADBEEF", "0b1010", "100%",
           "$19.99", "€5,00", "v1.2.3", "192.168.0.1", "١٢٣٤", "१२३", "１２３", "x²", "½", "Ⅻ",
           "3rd", "21st", "1000000000000000000000", "007", "9.99.9"]

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "1️⃣", "❤️", "🤖", "🔥🔥🔥",
         "👩🏾‍💻", "🧑‍🤝‍🧑", "✨", "☕", "🐍", "🦀", "😂😂", "🙏"]

SCRIPTS = [
    "中文分词测试，你好世界。", "日本語のテキストです。カタカナとひらがな", "한국어 문장입니다.",
    "Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок",
    "مرحبا بالعالم، كيف حالك؟", "नमस्ते दुनिया, आप कैसे हैं?", "Γειά σου Κόσμε",
    "שלום עולם", "สวัสดีชาวโลก", "Xin chào thế giới, tiếng Việt", "Ελληνικά και ελληνικά",
    "Ünïcödé çàfé naïve résumé", "Straße Maß Größe", "ǅemal ŉ ﬁ ﬂ", "ꦲꦏ꧀ꦱꦫ ᐃᓄᒃᑎᑐᑦ",
]

COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "Z\u0351\u036b\u0343\u036a\u0302",
             "\u0915\u094d\u0937", "\u0627\u064e", "a\u20dd", "\u1100\u1161\u11a8"]

# Characters where regex engines disagree on "whitespace", plus ones whose bytes are missing
# from SmolLM2's vocab (0x04, 0x06, ..., lead bytes 0xF1/0xF2), which both sides drop.
ODD = ["\u00a0", "\u3000", "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\r\n", "\u001c",
       "\u001f", "\u180e", "\u200b", "\u200d", "\ufeff", "\u2007", "\u202f", "\u205f", "\u1680",
       "\x00", "\x04", "\x06", "\x13", "\x7f", "\U00040000", "\U000a1234", "\U000e0041",
       "\U0010fffd", "\ufffd", "\ufffe"]

URLS = ["https://example.com/path/to/page?q=hello+world&lang=en#section-2",
        "http://localhost:8080/v1/chat/completions", "ftp://files.example.org/pub/file.tar.gz",
        "mailto:someone@example.com", "user.name+tag@sub.domain.co.uk", "/usr/share/common-licenses/GPL-3",
        "C:\\Users\\Admin\\Documents\\file (1).txt", "www.example.com/~user/index.html"]

PUNCT = ["!!!", "???", "...", "…", "---", "-->", "<<<>>>", "''", "\"\"", "«»", "“quoted”",
         "‘single’", "(*&^%$#@!)", "[]{}()", "~`|\\", ";;", "::", "——", "•", "§¶", "°C", "±",
         "™®©", "→←↑↓", "∑∫√∞≠≤≥"]

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<filename>", "<jupyter_code>",
            "<gh_stars>", "<issue_comment>", "<empty_output>", "<|im_start", "im_end|>", "<|",
            "|>", "<<|im_start|>>", "<|im_start|><|im_end|>", "<reponame>", "<repo_name>"]

SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", " \n ", "\n    ", "  \t  ", "\r\n"]


def _words(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        r = rng.random()
        if r < 0.1:
            w = w.capitalize()
        elif r < 0.13:
            w = w.upper()
        out.append(w)
    return out


def prose(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 4)):
        ws = _words(rng, rng.randint(3, 16))
        if rng.random() < 0.5:
            ws.insert(rng.randrange(len(ws) + 1), rng.choice(CONTRACTIONS))
        ws[0] = ws[0].capitalize()
        s = " ".join(ws)
        if rng.random() < 0.3:
            s = s.replace(" ", ", ", 1)
        sentences.append(s + rng.choice([".", "!", "?", "...", ":", ";", ""]))
    return " ".join(sentences)


def code(rng: random.Random) -> str:
    parts = rng.sample(CODE, rng.randint(1, 3))
    s = "\n".join(parts)
    if rng.random() < 0.3:
        s = s.replace("    ", "\t")
    if rng.random() < 0.2:
        s = "    " + s.replace("\n", "\n    ")
    return s


def numbers(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.4:
            out.append(rng.choice(NUMBERS))
        elif r < 0.7:
            out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25))))
        else:
            out.append(rng.choice(WORDS) + rng.choice(["", " ", "-", "_", "."]) + str(rng.randint(0, 99999)))
    return rng.choice([" ", "", ", ", "  ", "\n"]).join(out)


def whitespace(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(2, 10)):
        out.append(rng.choice([rng.choice(WORDS), rng.choice(SPACES) * rng.randint(1, 3), rng.choice(NUMBERS)]))
    s = "".join(out)
    if rng.random() < 0.3:
        s = rng.choice(SPACES) + s
    if rng.random() < 0.3:
        s = s + rng.choice(SPACES)
    return s


def emoji(rng: random.Random) -> str:
    out = _words(rng, rng.randint(0, 5))
    for _ in range(rng.randint(1, 4)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(EMOJI) * rng.randint(1, 2))
    return rng.choice([" ", ""]).join(out)


def scripts(rng: random.Random) -> str:
    parts = rng.sample(SCRIPTS, rng.randint(1, 3))
    if rng.random() < 0.5:
        parts.append(rng.choice(NUMBERS))
    if rng.random() < 0.3:
        parts.insert(0, " ".join(_words(rng, 3)))
    return rng.choice([" ", "", "\n"]).join(parts)


def combining(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 6)):
        w = rng.choice(WORDS)
        i = rng.randrange(len(w) + 1)
        out.append(w[:i] + rng.choice(COMBINING) + w[i:])
    return " ".join(out)


def odd(rng: random.Random) -> str:
    out = _words(rng, rng.randint(1, 5))
    for _ in range(rng.randint(1, 4)):
        c = rng.choice(ODD) * rng.randint(1, 3)
        if rng.random() < 0.5:
            c = rng.choice(["", " ", "!"]) + c + rng.choice(["", " ", "a", "1", "!"])
        out.insert(rng.randrange(len(out) + 1), c)
    return rng.choice([" ", ""]).join(out)


def urls(rng: random.Random) -> str:
    return rng.choice(["see ", "Visit: ", "", "(", "<"]) + rng.choice(URLS) + rng.choice(["", ".", ")", ">", " now"])


def punct(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(2, 8)):
        out.append(rng.choice(PUNCT + [rng.choice(WORDS), rng.choice(CONTRACTIONS)]))
    return rng.choice(["", " ", "  "]).join(out)


def specials(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.4:
            out.append(rng.choice(SPECIALS))
        elif r < 0.7:
            out.append(prose(rng))
        else:
            out.append(rng.choice(["user\n", "assistant\n", "system\n", "\n", " "]))
    return "".join(out)


def random_codepoints(rng: random.Random) -> str:
    # Scalar values from blocks of every kind (no surrogates: not encodable in UTF-8).
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2100, 0x23FF),
              (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF),
              (0x0, 0x1F), (0x10000, 0x1007F), (0x1D400, 0x1D4FF)]
    out = []
    for _ in range(rng.randint(1, 30)):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def chat(rng: random.Random) -> str:
    turns = []
    for role in rng.sample(["system", "user", "assistant"], rng.randint(1, 3)):
        turns.append(f"<|im_start|>{role}\n{prose(rng)}<|im_end|>\n")
    return "".join(turns) + rng.choice(["", "<|im_start|>assistant\n"])


GENERATORS = [prose, code, numbers, whitespace, emoji, scripts, combining, odd, urls, punct,
              specials, random_codepoints, chat]


def generate(n: int = 2600, seed: int = 20240601) -> list[str]:
    rng = random.Random(seed)
    lines = [GENERATORS[i % len(GENERATORS)](rng) for i in range(n)]
    # A few fixed edge cases that random choice might miss.
    lines += ["", " ", "  ", "\n", "a", "1", " 1", "  1", "a  1", "\t1", "'s", "I'LL", "don't",
              "<|im_start|>", "<|im_start|>user\nhi<|im_end|>", "x" * 3000, " " * 500, "9" * 200,
              "ab" * 700, "\n" * 50, "😀" * 100]
    return lines


if __name__ == "__main__":
    for line in generate(int(sys.argv[1]) if len(sys.argv) > 1 else 2600):
        print(json.dumps(line))
