#!/usr/bin/python3
"""Reference renderer for the chat-template tests: python3-jinja2 configured as Hugging Face
transformers configures it (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, a
raise_exception global). Reads JSON lines {"template": str, "context": {...}} on stdin and writes
one JSON line per request: {"text": rendered} or {"error": message}."""
import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            text = env.from_string(request["template"]).render(**request["context"])
            answer = {"text": text}
        except Exception as error:  # every failure is an answer the C++ side must also fail on
            answer = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
