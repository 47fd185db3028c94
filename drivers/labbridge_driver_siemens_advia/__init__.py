"""Siemens Healthineers ADVIA Centaur and Atellica IM (immunoassay): a profile driver (``profile.toml``).

Sources, and what each was used for:

* Siemens Healthcare Diagnostics, *ADVIA Centaur / ADVIA Centaur XP Immunoassay Systems Interface
  Specification Guide*, REF 10815871 Rev. A (2014-06), and its predecessor 078D0357-04 (Bayer, 2006):
  contents read: ch. 2 layered protocols, ch. 3 "Implementation of ASTM Protocols" (physical and data
  link layer: E1381 over RS-232; application layer: E1394 records), Appendix C messages, Appendix D
  records, Appendix E test map (the assay names the analyzer sends, e.g. ``TSH3UL``).
* Siemens Healthcare Diagnostics, *ADVIA Centaur CP Immunoassay System Interface Specification
  Guide*, 086D0411-01 Rev. A (2011-09): same layering, for the CP.
* Siemens Healthcare Diagnostics, *Atellica Data Manager LIS Interface Guide*, 11314645 Rev. 02
  (2019-05), ch. 4 "ASTM 1394 Protocol": the Atellica side speaks the same ASTM 1394 records.

Positions used (LIS2-A2 positions, which the guides implement): O-3 specimen ID (else O-4), P-3 patient
ID, R-3 universal test ID ``^^^assay^aspect`` (4th component the assay name from the test map, 5th the
result aspect), R-4 value, R-5 units, R-6 reference range, R-7 flags (``N`` dropped), R-9 status, R-13
completion time (else H-14). QC: O-12 action code ``Q``.

Result aspects: one assay can come as several R records. ``DOSE`` (the measured value) and ``INDX``
(index against the cut-off) are reported under the assay's code; ``INTERP`` (the interpretation word,
``Reactive``/``NonReactive``/``Equivocal``) is reported as its own result under ``<assay>-I``, as the
Abbott Architect driver does, so both reach the LIS; a raw ``RLU`` signal is dropped.

Not verified in the document text (say so to the site): Appendix D's field tables were not readable in
the copies found, so the positions are LIS2-A2's; the aspect words (``DOSE``, ``INDX``, ``INTERP``,
``RLU``) and their place in R-3's 5th component come from field practice, not from a page read; how
the analyzer marks a control sample (O-12 ``Q`` assumed) was not read. Atellica IM connected directly
(without Atellica Data Manager) was not checked against its own guide.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labbridge.driver import DecodeContext
from labbridge.driver_profile import ProfileAstmDriver, Scope, load_profile
from labbridge.model import Result

INTERPRETATION_ASPECT = "INTERP"
INTERPRETATION_SUFFIX = "-I"


class SiemensAdviaDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))

    def adjust(self, result: Result, scope: Scope, context: DecodeContext) -> Result | None:
        assert scope.result is not None
        if scope.result.component(3, 5).strip().upper() == INTERPRETATION_ASPECT:
            code = result.instrument_test_code + INTERPRETATION_SUFFIX
            return replace(result, instrument_test_code=code, test_code=context.map_test(code), units="",
                           reference_range="")
        return result
