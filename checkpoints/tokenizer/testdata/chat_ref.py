#!/usr/bin/python3
"""Renders chat templates as transformers' apply_chat_template(tokenize=False) does.

The reference for checkpoints/tokenizer's Jinja rendering: Python's Jinja2 (Debian's
python3-jinja2) set up as transformers' _compile_jinja_template sets it up, an
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, transformers' tojson filter and its globals raise_exception and strftime_now, rendered
with messages, tools=None, documents=None, add_generation_prompt and the tokenizer's special
tokens (special_tokens_map) as transformers passes them.

Usage (from checkpoints/tokenizer):

    /usr/bin/python3 testdata/chat_ref.py testdata/chat_templates testdata/chat_templates/chats.jsonl > testdata/chat_templates/golden.jsonl

It renders every conversation of the JSONL file ({"messages": [...]} lines) with every template
of DIR/templates.json ({"name": {"file": ..., "bos_token": ..., "eos_token": ..., ...}}), with
add_generation_prompt false and true, and writes one JSON line per rendering:
{"template", "conversation", "add_generation_prompt", "text"} or, where the template raises,
{"template", "conversation", "add_generation_prompt", "error"} with the exception's message.
"""

import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' own tojson: json.dumps without Jinja's HTML escaping and key sorting.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: chat_ref.py TEMPLATE_DIR CHATS.jsonl")
    tdir, chats_path = argv[1], argv[2]
    with open(tdir + "/templates.json", encoding="utf-8") as f:
        specs = json.load(f)
    with open(chats_path, encoding="utf-8") as f:
        chats = [json.loads(line)["messages"] for line in f if line.strip()]
    env = environment()
    out = sys.stdout
    for name in sorted(specs):
        spec = dict(specs[name])
        with open(tdir + "/" + spec.pop("file"), encoding="utf-8") as f:
            template = env.from_string(f.read())
        spec.pop("source", None)
        for i, messages in enumerate(chats):
            for agp in (False, True):
                line = {"template": name, "conversation": i, "add_generation_prompt": agp}
                try:
                    line["text"] = template.render(messages=messages, tools=None, documents=None,
                                                   add_generation_prompt=agp, **spec)
                except jinja2.exceptions.TemplateError as e:
                    line["error"] = str(e)
                out.write(json.dumps(line, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv)
