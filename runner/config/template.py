"""`data.prompt.template`: the Jinja sandbox prompt templates render in, and the checks a template gets
before any row renders (safety, the columns it reads).

Part of the config because the input reader checks a template's columns against the dataset before
a job kind builds its first prompt (`jobs.generate.prompts` renders with the same environment).
"""

from __future__ import annotations

import jinja2
import jinja2.meta
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.errors import ConfigError

# Templates come from configs and render on every replica: Jinja's immutable sandbox (as transformers
# uses for chat templates) refuses attribute access into Python internals and mutation of values.
ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def check_template_safe(template: str) -> None:
    """Refuse, before any row renders, a template that reaches for Python internals (`__x`/`_x`
    attributes, e.g. `cycler.__init__.__globals__`): the sandbox would refuse it on every row."""
    try:
        tree = ENV.parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise ConfigError(f"data.prompt.template: invalid Jinja (line {err.lineno}: {err.message})") from None
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        name = node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise ConfigError(
                f"data.prompt.template: access to {name!r} (line {node.lineno}) is not allowed: "
                "templates render in a sandbox"
            )


def template_variables(template: str) -> list[str]:
    """Row columns a Jinja template reads (Jinja's own globals such as ``range`` excluded)."""
    check_template_safe(template)
    names = jinja2.meta.find_undeclared_variables(ENV.parse(template))
    return sorted(names - set(ENV.globals))
