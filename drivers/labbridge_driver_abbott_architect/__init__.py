"""Abbott ARCHITECT (immunoassay and chemistry): a profile driver plus one hook.

Sources, and what each was used for:

* Abbott, *Abbott Standard Interface RS-232 Manual, ARCHITECT System* (part number 91407; editions
  91407-103 of 2000, -104 of 2002, -105 of 2004 and -106 of 2008 circulate publicly; read: front matter
  and contents). Its section on the result record (R) is where R-3's layout is defined as
  ``^^^<assay number>^<assay name>^<dilution>^<status>^<reagent lot>^<reagent serial>^<control lot>^
  <result type>``, result type ``F`` final result, ``I`` interpretation, ``P`` raw result (RLU).
* Transmissions of ARCHITECT 7.01 and 9.45 reproduced in public interface code, e.g.
  ``H|\\^&|||ARCHITECT^9.45^F3452430028^H1P1O1R1C1Q1L1|||||||P|1|...``,
  ``O|1|276056250158121|276056250158121^U265^1|^^^580^Anti-HBcII^UNDILUTED^P|R|...|F``,
  ``R|1|^^^580^Anti-HBcII^UNDILUTED^P^73294BE00^02130^^F|0.15|S/CO||||R||ADMIN^ADMIN||20250613101844|i1SR52842``
  with the same test's ``...^^I|Nonreactive`` and ``...^^P|1277|RLU`` rows, and
  ``R|1|...^^F|> 15000.00|mIU/mL||>||F||...``. From these: O-3 specimen ID, O-4 specimen^carrier^position,
  R-3 as above (the test code is the assay number, R-3 4th component), R-4 value, R-5 units, R-7 flags,
  R-9 status (``F`` final, ``R`` previously transmitted), R-13 date/time completed, R-14 module serial.
* O-12 action code ``Q`` marks a control (LIS2-A2 §9 O-12 and the 91407 order record); the control lot
  is R-3's 10th component.

What does not fit the profile (the hook below): an assay with an interpretation sends the number and the
interpretation as two R records with the same assay number. The interpretation (result type ``I``) is
reported as its own test code ``<assay number>-I`` so the LIS can map both; the raw signal (``P``) is
left out by ``skip_results``.

Not verified in the manual's text (only in the transmissions above): the ``EXP`` flag; the meaning of
R-3's 7th component (``P`` in every example).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labbridge.driver import DecodeContext
from labbridge.driver_profile import ProfileAstmDriver, Scope, load_profile
from labbridge.model import Result

INTERPRETATION_SUFFIX = "-I"


class AbbottArchitectDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))

    def adjust(self, result: Result, scope: Scope, context: DecodeContext) -> Result | None:
        assert scope.result is not None
        if scope.result.component(3, 11).strip().upper() == "I":
            code = result.instrument_test_code + INTERPRETATION_SUFFIX
            return replace(result, instrument_test_code=code, test_code=context.map_test(code), units="")
        return result
