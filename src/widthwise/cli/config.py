"""``widthwise config show``: a resolved config with each field's value, default and one-line help."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .args import Parser, Subparsers, add_overrides, builtin_configs


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("config", help="show a config: every field with its value, default and help",
                       description="Work with train configs.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    show = actions.add_parser(
        "show", help="print a config with each field's default and help",
        description="Print the config (after --set overrides) as YAML, every field commented with its default and "
                    "what it means; the output loads as a config file.",
        epilog=builtin_configs(),
    )
    show.add_argument("config", nargs="?", metavar="NAME|PATH",
                      help="built-in config name or YAML file, e.g. a run's config.yaml (default: all defaults)")
    add_overrides(show)
    show.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..app.config import load_config

    print(show_config(load_config(args.config, args.overrides)), end="")
    return 0


def _scalar(value: Any) -> str:
    """``value`` as a one-line YAML flow value (``null``, ``0.003``, ``[0.9, 0.95]``, ``''``)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def show_config(config: Any) -> str:
    """YAML text of ``config``, one ``key: value  # default D — help`` line per field, sections in order."""
    from ..app.config import config_fields

    lines, section = [], None
    for key, f in config_fields():
        name, _, field_name = key.partition(".")
        if name != section:
            lines.append(f"{name}:")
            section = name
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        lines.append(f"  {field_name}: {_scalar(config.get(key))}  # default {_scalar(default)} — "
                     f"{f.metadata['help']}")
    return "\n".join(lines) + "\n"
