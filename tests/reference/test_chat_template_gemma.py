"""Gemma's chat template: the published Jinja template, rendered with jinja2, is the oracle.

The engine renders Gemma conversations natively (src/tokenizer/chat_template.cpp);
tests/unit/test_tokenizer_chat.cpp checks its output on every conversation of
gemma_chat_cases.json. Here: that file is exactly what jinja2 makes of those conversations with
the template (so the C++ expectations come from Jinja, not from the engine), and a few facts of
the format stated by hand.
"""

from __future__ import annotations

import json

import pytest
from gemma_chat_cases import BOS, CASES, TEMPLATE, make_cases, render


def test_cases_file_is_what_jinja_renders():
    on_disk = json.loads(CASES.read_text(encoding="utf-8"))
    fresh = make_cases()
    assert len(fresh) >= 50
    assert on_disk == fresh, "gemma_chat_cases.json is stale: run python tests/reference/gemma_chat_cases.py"


def test_format_by_hand():
    tpl = TEMPLATE.read_text(encoding="utf-8")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert render(tpl, msgs, True) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    assert render(tpl, msgs[1:2], False) == f"{BOS}<start_of_turn>user\nHi<end_of_turn>\n"


def test_template_refuses_roles_out_of_turn():
    """The engine's renderer does not check this; its chat commands only alternate user/model."""
    from jinja2.exceptions import TemplateError

    tpl = TEMPLATE.read_text(encoding="utf-8")
    with pytest.raises(TemplateError, match="alternate"):
        render(tpl, [{"role": "assistant", "content": "x"}], True)
