"""An instrument's stage in the reconnection campaign, and which changes are allowed (pure).

Theory of operation (DESIGN §4, issue 16): an analyzer goes ``inventoried -> cabled -> link-up ->
first-message -> mapping-verified -> validating -> live``, or is ``rolled-back``. The daemon moves the stages
it can observe by itself (``link-up`` when the analyzer first connects, ``first-message`` when its first
message is stored), only ever forward. A person sets the others, with who and why. ``live`` is reached only
by a sign-off of a ``validating`` instrument (the validation gate); a rollback takes a ``live`` (or
validating) instrument out of service.

The gate: results of an instrument in any stage but ``live`` are stored and shown but held from the LIS
(or sent flagged as test results, per destination). An analyzer that is not live has not been validated:
nothing it sends may reach a patient's record before a person signed it off.
"""

from __future__ import annotations

from typing import Literal, get_args

from labbridge.errors import LabbridgeError

Stage = Literal["inventoried", "cabled", "link-up", "first-message", "mapping-verified", "validating", "live",
                "rolled-back"]
STAGES: tuple[Stage, ...] = get_args(Stage)
# The way forward, in order (rolled-back is off it).
PATH: tuple[Stage, ...] = ("inventoried", "cabled", "link-up", "first-message", "mapping-verified", "validating",
                           "live")
LIVE: Stage = "live"
VALIDATING: Stage = "validating"
ROLLED_BACK: Stage = "rolled-back"
# What the daemon observes, and the stages it advances from (forward only).
AUTOMATIC: dict[Stage, tuple[Stage, ...]] = {
    "link-up": ("inventoried", "cabled"),
    "first-message": ("inventoried", "cabled", "link-up"),
}
# The actor recorded for the daemon's own changes.
DAEMON_ACTOR = "labbridge"

# Per destination, what becomes of a not-yet-live instrument's results (config: [[lis]] validating).
GateMode = Literal["hold", "send-test"]


def holds(stage: str | None) -> bool:
    """Whether results of an instrument in this stage are held from the LIS (no stage recorded: live)."""
    return stage is not None and stage != LIVE


def rank(stage: str) -> int:
    """Position on the way forward (rolled-back counts as before validating)."""
    return PATH.index(stage) if stage in PATH else PATH.index(VALIDATING) - 1


def set_problem(current: str, target: str) -> str | None:
    """Why a person may not set ``target`` by hand now (None: allowed).

    Any stage before ``live`` may be set (a cable re-done, a mapping found wrong: back a step), but ``live``
    only by a sign-off and ``rolled-back`` only by a rollback, so both always carry their checks and audit.
    """
    if target not in STAGES:
        return f"unknown stage {target!r}: one of {', '.join(STAGES)}"
    if target == LIVE:
        return "live is reached by a sign-off of a validating instrument (campaign sign-off)"
    if target == ROLLED_BACK:
        return "use campaign rollback to take an instrument out of service"
    if current == target:
        return f"already {target}"
    if current == LIVE:
        return "the instrument is live: roll it back first (campaign rollback), then set its stage"
    return None


def sign_off_problem(current: str) -> str | None:
    if current != VALIDATING:
        return f"only a validating instrument can be signed off (it is {current})"
    return None


def rollback_problem(current: str) -> str | None:
    if current == ROLLED_BACK:
        return "already rolled-back"
    if current not in (LIVE, VALIDATING):
        return f"only a live or validating instrument can be rolled back (it is {current}); set its stage instead"
    return None


class CampaignRefused(LabbridgeError, ValueError):
    """A campaign action that cannot be done now (wrong stage, unknown instrument, outside tolerance), and why."""


class CampaignNotFound(CampaignRefused, LookupError):
    """The instrument or site named is not in the configuration (or not in the campaign's store)."""
