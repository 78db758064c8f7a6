"""MkDocs hook: the reference pages' tables, generated from the code that is their truth.

A page holds a marker line, ``<!-- generated: NAME -->``, that this hook replaces with NAME's
Markdown when the site is built: ``cli`` (the argparse parser), ``configuration``
(``config.KEYS``), ``exit-codes`` (``errors.EXIT_CODES``), ``metrics`` (``metrics.CATALOGUE``)
and ``json`` (the schemas in docs/schemas/). A marker without a generator fails the build.
"""

import argparse
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
SHAPES_FIRST = ("run", "plan", "rollback-plan", "runs", "fleet", "revisions", "tenants", "error")
"""The JSON reference's order: the shapes a deploy hook reads first, then the rest by name."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every command that runs something: (its words, its parser, its one-line help)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                inner = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if inner:
                    yield from _leaves(sub, (*words, name))
                else:
                    yield (*words, name), sub, helps.get(name, "")


def _option(action: argparse.Action) -> tuple[str, str]:
    if action.option_strings:
        flags = ", ".join(action.option_strings)
        if action.nargs != 0:
            flags += f" {action.metavar or action.dest.upper()}"
    else:
        flags = str(action.metavar or action.dest).upper()
    meaning = (action.help or "").replace("%%", "%")
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        meaning += f" (one of {', '.join(map(str, action.choices))})"
    said = "default" in meaning
    if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0 and not said:
        meaning += f" (default {action.default})"
    if isinstance(action, argparse._AppendAction):
        meaning += " (repeatable)"
    return flags, meaning


def cli() -> str:
    from tenantfleet.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal's width
    parser = build_parser()
    lines = [
        "Every command reads the configuration (see [Configuration](configuration.md)) and takes"
        " the global options before the command: "
        + ", ".join(
            f"`{_option(a)[0]}` ({_option(a)[1]})"
            for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)
        )
        + ".",
        "",
    ]
    for words, sub, summary in _leaves(parser):
        usage = sub.format_usage().strip().removeprefix("usage: ")
        sentence = summary[:1].upper() + summary[1:] + "."
        lines += [f"## tenantfleet {' '.join(words)}", "", sentence, "", "```", usage, "```", ""]
        rows = [_option(a) for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        if rows:
            lines += ["| argument | meaning |", "| --- | --- |"]
            lines += [f"| `{_cell(flags)}` | {_cell(meaning)} |" for flags, meaning in rows]
            lines.append("")
    return "\n".join(lines)


def configuration() -> str:
    from tenantfleet.config import KEYS

    lines = ["| key | variable | default | meaning |", "| --- | --- | --- | --- |"]
    for key in KEYS:
        lines.append(
            f"| `{key.name}` | `{key.variable}` | {_cell(key.default)} | {_cell(key.meaning)} |"
        )
    return "\n".join(lines)


def exit_codes() -> str:
    from tenantfleet.errors import EXIT_CODES

    lines = ["| code | meaning |", "| --- | --- |"]
    lines += [f"| {code} | {_cell(meaning)} |" for code, _, meaning in EXIT_CODES]
    return "\n".join(lines)


def metrics() -> str:
    from tenantfleet.metrics import CATALOGUE

    lines: list[str] = []
    for source, title in (("worker", "A worker's `metrics_port`"),
                          ("run tables", "`tenantfleet metrics` (the run tables)")):  # fmt: skip
        lines += [
            f"## {title}",
            "",
            "| name | type | labels | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for metric in CATALOGUE:
            if metric.source == source:
                labels = ", ".join(f"`{label}`" for label in metric.labels) or "-"
                lines.append(
                    f"| `{metric.exposed}` | {metric.kind} | {labels} | {_cell(metric.help)} |"
                )
        lines.append("")
    return "\n".join(lines)


def _type(node: dict[str, Any]) -> str:
    if "anyOf" in node:
        return " or ".join(_type(option) for option in node["anyOf"])
    kind = node.get("type", "any")
    found = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if "enum" in node:
        found += ": " + ", ".join(f"`{value}`" for value in node["enum"] if value is not None)
    return found


def json_shapes() -> str:
    lines: list[str] = []

    def rank(path: Path) -> tuple[int, str]:
        name = path.name.removesuffix(".schema.json")
        return (SHAPES_FIRST.index(name) if name in SHAPES_FIRST else len(SHAPES_FIRST), name)

    for path in sorted(SCHEMAS.glob("*.schema.json"), key=rank):
        found = json.loads(path.read_text())
        lines += [f"## {found['title']}", "", found["description"], "",
                  f"Schema: [`{path.name}`](../schemas/{path.name})", ""]  # fmt: skip
        top = found.get("items", found) if found.get("type") == "array" else found
        properties = top.get("properties", {})
        if properties:
            prefix = "each item: " if top is not found else ""
            lines += [f"| {prefix}key | type | meaning |", "| --- | --- | --- |"]
            for name, node in properties.items():
                lines.append(
                    f"| `{name}` | {_cell(_type(node))} | {_cell(node.get('description', ''))} |"
                )
            lines.append("")
    return "\n".join(lines)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli,
    "configuration": configuration,
    "exit-codes": exit_codes,
    "metrics": metrics,
    "json": json_shapes,
}


def expand(markdown: str) -> str:
    """``markdown`` with every marker replaced by its generator's output."""

    def generated(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"no generator for <!-- generated: {name} -->")
        return GENERATORS[name]()

    return MARKER.sub(generated, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return expand(markdown)
