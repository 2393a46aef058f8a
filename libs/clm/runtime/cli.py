"""The command line every service shares: --help, --check-config, --asyncapi, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from clm.runtime.app import ServiceApp
from clm.runtime.logs import configure_logging
from clm.runtime.settings import ServiceSettings, SettingsError, load_settings


def _env_help(settings_cls: type[ServiceSettings]) -> str:
    lines = ["environment variables (validated at start):"]
    for name, field in settings_cls.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        lines.append(f"  CLM_{name.upper():<34} {default}")
    return "\n".join(lines)


S = TypeVar("S", bound=ServiceSettings)


def run_service(
    *,
    name: str,
    summary: str,
    settings_cls: type[S],
    build: Callable[[S], ServiceApp],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(
        prog=f"clm-{name}",
        description=summary,
        epilog=_env_help(settings_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate the environment and exit (0 when valid)"
    )
    parser.add_argument(
        "--asyncapi", action="store_true", help="print this service's AsyncAPI document (YAML) and exit"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        print(f"clm-{name}: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"clm-{name}: configuration is valid")
        return 0
    app = build(settings)
    if args.asyncapi:
        print(app.asyncapi().to_specification().to_yaml())
        return 0
    configure_logging(name, settings.log_level)
    try:
        # SIGINT is handled inside run(); this only covers a second Ctrl-C during shutdown.
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(app.run())
    except SettingsError as exc:  # found only when starting (e.g. an API that is not configured)
        print(f"clm-{name}: {exc}", file=sys.stderr)
        return 2
    return 0
