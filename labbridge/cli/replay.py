"""``labbridge replay``: decode a capture offline; with ``--render``, print what a LIS destination would receive.

stdout carries the data: one line per result (or JSON object with ``--json``) and per problem, or with
``--render`` the destination's payloads and nothing else. stderr carries the summary (:func:`labbridge.replay.
summary`), always, and with ``--render`` the problems. Exit status: 0 when at least one message decoded and
every message decoded; 1 when nothing decoded, a message could not be decoded, or (``--strict``) the capture
deviates in any way; 2 for a bad config or an unknown instrument or destination.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from labbridge.cli import output
from labbridge.errors import ConfigError, LabbridgeError

EXIT_OK = 0
EXIT_FAILURE = 1


def run(args: argparse.Namespace) -> int:
    from labbridge.config import Config, Destination, InstrumentConfig, load_config, with_link_defaults
    from labbridge.driver import Driver, driver_link_defaults, load_driver
    from labbridge.links.intake import load_instrument_driver
    from labbridge.replay import conforms, destination_format, render, replay_capture, summary

    capture = Path(args.file).read_bytes()
    config: Config | None = None
    instrument: InstrumentConfig | None = None
    dest: Destination | None = None
    driver: Driver
    if args.config:
        config = with_link_defaults(load_config(args.config), driver_link_defaults, args.config)
        instrument = next((i for i in config.instruments if i.id == args.instrument), None)
        if instrument is None:
            known = ", ".join(i.id for i in config.instruments) or "none"
            raise ConfigError(args.config, [("instruments", f"no instrument {args.instrument!r} (known: {known}); "
                                             "name it with --instrument")])
        if args.driver and args.driver != instrument.driver:
            raise LabbridgeError(f"instrument {instrument.id} uses driver {instrument.driver!r}, not {args.driver!r}")
        loaded, why = load_instrument_driver(instrument)
        if loaded is None:
            raise LabbridgeError(why or f"driver {instrument.driver!r} cannot be used")
        driver = loaded
    elif args.driver:
        driver = load_driver(args.driver)
    else:
        raise LabbridgeError("name the driver (--driver NAME), or the instrument of a config "
                             "(-c CONFIG --instrument ID)")
    if args.render:
        if config is None or instrument is None or not args.destination:
            raise LabbridgeError("--render needs the config (-c), the instrument (--instrument) and the LIS "
                                 "destination (--destination) whose payloads to show")
        dest = next((d for d in config.lis if d.id == args.destination), None)
        if dest is None:
            known = ", ".join(d.id for d in config.lis) or "none"
            raise ConfigError(args.config, [("lis", f"no destination {args.destination!r} (known: {known})")])
        if destination_format(dest) != args.render:
            raise LabbridgeError(f"destination {dest.id} receives {destination_format(dest)}, not {args.render}: "
                                 f"use --render {destination_format(dest)}")
    result = replay_capture(driver, capture, instrument=instrument, instrument_id=args.instrument,
                            timezone=args.timezone, encoding=args.encoding, strict=args.strict)
    notes: list[str] = []
    if dest is not None and config is not None and instrument is not None:
        rendered = render(result, config, instrument, dest)
        for payload in rendered.payloads:
            sys.stdout.buffer.write(payload if payload.endswith(b"\n") else payload + b"\n")
        sys.stdout.flush()
        notes = [f"render: {len(rendered.payloads)} payload(s) for destination {dest.id}", *rendered.notes]
        if rendered.duplicates:
            notes.append(f"render: {rendered.duplicates} result(s) repeated in the capture are not sent again "
                         "(the store keeps one of each)")
    else:
        _print_items(args.json, result.items)
    for line in summary(result, strict=args.strict) + notes:
        print(line, file=sys.stderr)
    failed = any(m.error is not None for m in result.messages)
    if not result.decoded or failed or (args.strict and not conforms(result)):
        return EXIT_FAILURE
    return EXIT_OK


def _print_items(as_json: bool, items: Sequence[object]) -> None:
    from labbridge.replay import ReplayedMessage, ReplayProblem

    for item in items:
        if isinstance(item, ReplayProblem):
            output.line(as_json, {"problem": item.kind, "detail": item.detail, "where": item.where},
                        f"! {item.kind}: {item.detail}")
        elif isinstance(item, ReplayedMessage) and item.decoded is None:
            output.line(as_json, {"message": item.index, "error": item.error},
                        f"message {item.index}: cannot decode: {item.error}")
        elif isinstance(item, ReplayedMessage) and item.decoded is not None:
            for r in item.decoded.results:
                output.line(as_json, {"message": item.index, **r.to_json()},
                            f"message {item.index}: {r.kind:<7} {r.sample_id:<14} {r.test_code:<8} {r.value:>10} "
                            f"{r.units:<8} {','.join(r.flags):<4} {r.measured_at or ''}")
            for query in item.decoded.queries:
                output.line(as_json, {"message": item.index, "query": list(query.sample_ids)},
                            f"message {item.index}: host query for {len(query.sample_ids)} sample(s)")
