"""Beckman Coulter UniCel DxH (hematology): a profile driver (``profile.toml``).

Sources, and what each was used for:

* Beckman Coulter, *UniCel DxH Series with System Manager Software Host Transmission Manual*, PN
  B26711AE (September 2016; DxH 800, DxH 600, DxH Slidemaker Stainer): revision history and contents
  read: ch. 1 "Low Level Transfer Protocol" (E1381 over RS-232, TCP/IP), ch. 2 "Message Layer", ch. 3
  "Record Field Contents", whose sections follow the CLSI record sections (Header Record, CLSI §6;
  Patient Information Record, §7; Test Order Record, §8; Result Record, §9).
* Beckman Coulter, *DxH 500 Series Host Transmission Manual*, PN B38989AB (March 2018): the same
  chapter layout for the DxH 500 series (TCP/IP data exchange added in that issue).

Positions used (the CLSI LIS2-A2 positions that chapter 3 follows section by section): O-3 specimen ID
(else O-4), P-3 patient ID, R-3 universal test ID ``^^^parameter`` (4th component: ``WBC``, ``RBC``,
``HGB``, ``HCT``, ``MCV``, ``PLT``...), R-4 value, R-5 units, R-6 reference range, R-7 flags (``N``
dropped; ``H``, ``L``, ``HH``, ``LL`` kept), R-9 status, R-13 completion time (else H-14). QC: O-12
action code ``Q``.

Not verified in the document text (say so to the site): the field tables of chapter 3 were not readable
in the copies found, so the positions are LIS2-A2's; the parameter mnemonics and units in the captures
are those printed on DxH reports, not read from the manual's table; how a control run is marked (O-12
``Q`` assumed), whether the DxH uses delimiters other than ``|\\^&`` and how it sends suspect/definitive
messages (comment records, ignored here) were not checked. The DxH also offers HL7; this driver is the
ASTM one.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class BeckmanDxhDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
