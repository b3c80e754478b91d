# ruff: noqa: INP001 - loaded by path from mkdocs.yml, not imported as a package
"""A griffe extension for the API reference: the docstrings' Sphinx markup, in Markdown.

The docstrings use Sphinx roles (``:class:`~cqrs.store.PersistedEventStore```) and ``::``
before literal blocks; mkdocstrings renders Markdown. Each role becomes a cross-reference
to the object's entry in the reference (an optional autorefs link: plain code when the
reference has no entry for it, as for names of other packages), and ``text::`` becomes
``text:``, a lone ``::`` nothing.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`<]+?)(?:\s*<([\w.]+)>)?`"
)
LITERAL = re.compile(r"(?m)^(\s*)::\s*$|::$")


def _link(match: re.Match[str]) -> str:
    shortened, target, explicit = match[1], match[2].strip(), match[3]
    if explicit:  # :meth:`title <target>`
        target, title = explicit, target
    else:
        title = target.rsplit(".", 1)[-1] if shortened else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _literal(match: re.Match[str]) -> str:
    return "" if match.group(0).strip() == "::" and match[1] is not None else ":"


def markdown(docstring: str) -> str:
    """The docstring with its Sphinx roles and literal markers as Markdown."""
    return LITERAL.sub(_literal, ROLE.sub(_link, docstring))


class SphinxRoles(griffe.Extension):
    """Rewrites every loaded docstring with :func:`markdown`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: ARG002, ANN401 - griffe's hook signature
        """Rewrite the object's docstring, if it has one."""
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # noqa: ARG002, ANN401 - as above
        """Rewrite the package's own docstring (the rewrite is idempotent)."""
        self.on_object(obj=pkg)
