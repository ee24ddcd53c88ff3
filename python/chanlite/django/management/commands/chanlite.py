"""``manage.py chanlite COMMAND``: the ``chanlite`` admin command (see
:mod:`chanlite.cli`) on the database of a configured channel layer
(``--layer``, default ``default``)."""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

from channels import DEFAULT_CHANNEL_LAYER
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from chanlite import cli
from chanlite.django.checks import layer_database


class _Unbuffered(io.TextIOBase):
    """An OutputWrapper that writes exactly what it is given: the wrapper
    ends every write with a newline, which would break prompts and redraws."""

    def __init__(self, wrapper: OutputWrapper) -> None:
        self._wrapper = wrapper

    def write(self, text: str) -> int:
        self._wrapper.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self._wrapper.flush()

    def isatty(self) -> bool:
        return bool(self._wrapper.isatty())


def _add_layer(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layer",
        default=DEFAULT_CHANNEL_LAYER,
        help=f"the channel layer whose database to use (default {DEFAULT_CHANNEL_LAYER!r})",
    )


class Command(BaseCommand):
    help = (
        "Look at and look after the chanlite channel layer's database: status, top, stats, "
        "dead, health, trim, flush, vacuum. Exit codes: 0 ok; 1 health warnings or flush "
        "not confirmed; 2 errors."
    )
    # The tool for when the layer is in trouble must run when checks fail.
    requires_system_checks: list[str] = []  # noqa: RUF012 (Django's own type)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        cli.add_commands(parser, _add_layer)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            database = layer_database(options["layer"])
        except (LookupError, TypeError, ValueError) as e:
            raise CommandError(str(e), returncode=cli.EXIT_ERROR) from e
        if "mode=memory" in database or database == ":memory:":
            raise CommandError(
                f"chanlite: channel layer {options['layer']!r} is in memory (test mode): "
                "only its own process can see it",
                returncode=cli.EXIT_ERROR,
            )
        code = cli.run(
            argparse.Namespace(**options),
            database,
            _Unbuffered(self.stdout),
            _Unbuffered(self.stderr),
            sys.stdin,
        )
        if code != cli.EXIT_OK:
            if getattr(self, "_called_from_command_line", False):
                sys.exit(code)  # the reason is printed already
            raise CommandError(f"chanlite {options['command']}: exit {code}", returncode=code)
