"""Ortho Clinical Diagnostics VITROS systems: a profile driver (``profile.toml``) with host query.

Sources, and what each was used for:

* Ortho Clinical Diagnostics, *Laboratory Information System (LIS) Guide*, Pub. No. J32799EN
  (2018-2020 editions; VITROS 5600, 4600, 3600, XT 7600, XT 3400): table of contents read for the
  scope (§2.1 functions: result upload, order download, host query); §3 for the low level (ASTM
  E1381 over RS-232 or TCP/IP, so the family's link defaults are standard LIS1-A framing); §4.5
  *Host Query*: the analyzer asks the host for a sample's program before running it.
* Ortho Clinical Diagnostics, *VITROS 5,1 FS Chemistry System Specification for Laboratory Computer
  Interface*, version 6.4 (2013-06-18), the predecessor document: same functions (upload, download,
  host query, inventory query) over "Bidirectional Mode ASTM Protocol".
* PROTOCOLS.md R-B11 (field captures): the VITROS query ``Q|1|^1068687||ALL||||||||O`` (Q-3
  ``^specimen``, Q-5 a bare ``ALL``, Q-13 ``O``) answered by the host with
  ``O|1|1068687||^^^...|R||...||||N||||5||||||||||O`` (O-12 action ``N``, O-16 specimen type).

Host query: ``host_query = true`` in the profile. A Q record becomes a host query (Q-3 specimen ID in
the 2nd component, Q-5 ``ALL`` = every test, Q-13 ``O`` orders or ``A`` cancel); the answer is the
LIS2-A2 reply shared with the generic ASTM driver (:mod:`labbridge.astm_orders`): H with labbridge as
sender, per sample P + O with O-26 ``Q`` (orders), ``Y`` (no order) or ``Z`` (unknown sample), L with
L-3 ``N``, or ``I`` when nothing is ordered.

Positions used for results (LIS2-A2 positions): O-3 specimen ID (else O-4), P-3 patient ID, R-3
``^^^test`` (4th component), R-4 value, R-5 units, R-6 reference range, R-7 flags (``N`` dropped), R-9
status, R-13 completion time (else O-23, H-14). QC: O-12 action code ``Q`` or H-12 processing ID ``Q``.

Not verified in the document text (say so to the site): the record field tables of J32799 §4 were not
readable in the copies found, so the result positions above are LIS2-A2's, which the guide follows
for the query form quoted above. The test codes in the captures (``GLU``, ``CREA``, ``NA``, ``K``,
``TSH``, ``HBSAG``) stand for the LIS codes configured for each assay on the analyzer; whether an
analyzer sends its own numeric assay numbers instead, and whether VITROS appends a dilution or other
components after the code, was not checked: map codes per instrument with ``test_map``. How VITROS
marks QC results (O-12 ``Q`` assumed) was not read in the guide.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class OrthoVitrosDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
