"""Siemens DCA Vantage (point of care: HbA1c, urine microalbumin / creatinine) over ASTM: a profile driver
(``profile.toml`` beside this file).

Connectivity choice: the DCA Vantage's Ethernet port speaks POCT1-A2 (the default, towards a point-of-care
data manager) or ASTM E1381/E1394 (Operator's Guide, Appendix G "Computer Interface (LIS)": "The DCA
Vantage system also supports the ASTM Specification E1381 ... and E1394"); its serial port speaks ASTM. This
driver implements the ASTM form. Note from the same appendix: with POCT1-A2 a patient ID is required, with
ASTM it may be blank.

Sources, and what each was used for:

* Siemens, *DCA Vantage Operator's Guide*, Appendix G (pages 199-200, read at easymanua.ls and
  manualslib): what is sent to the host (HbA1c results, microalbumin/creatinine results, control results,
  cartridge lot number, system serial number) and the two protocols.
* Siemens, *DCA Vantage Analyzer Host Computer Communications Link*, 17306 Rev. D (2011): title page and
  table of contents only (1.1.1 ASTM messages, 1.1.2 POCT1-A2 messages).
* The open-source senaite.astm project's field notes for this analyzer (``instruments/dca_vantage.py``,
  citing 17306 Rev. E, 2012) and its public test transmission (``tests/data/dca_vantage.txt``: a
  microalbumin/creatinine run; the serial number and software version suggest a real analyzer, which
  the project does not state). From those: one frame per message; H-5 ``DCA VANTAGE^<version>^<serial>``;
  H-12 ``P`` production (``D`` service mode); P-3 practice patient ID, P-6 ``<last>^<first>``; O-3 unused,
  O-4 ``<sample sequence number 001-999>^<reagent lot>``; O-12 ``Q`` when a control is run; O-26 report
  type ``F``/``C``; R-3 ``^^^<test>`` (``Alb``, ``Crt``, ``Ratio``); R-4 value; R-5 units; R-7 flags ``<``
  ``>`` (measurement range), ``H``/``L`` (reference or control range); R-9 ``F``/``C``; R-11 operator;
  R-12 date and time of the test; C records after results carry the user correction slope/offset and,
  after an HbA1c, the primary reporting unit and eAG (kept out of results: a C record is not a result).

The capture ``dca-microalbumin-hba1c-and-control.astm`` was composed for this driver after the public
transmission's layout (an albumin/creatinine/ratio run with its C records, an HbA1c above range with its
eAG comment, and a control run); it was not captured from an analyzer.

Not verified (say so to the site): the HbA1c test code (``HbA1c`` assumed: no HbA1c transmission was
seen) and its units when the analyzer reports IFCC mmol/mol; the sample ID is the analyzer's sequence
number (O-4, 001-999, wrapping) unless O-3 carries one, so the LIS must match these results on the
patient ID (P-3) and time; the QC marking (O-12 ``Q``) is from the field notes only, no control
transmission was seen.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class SiemensDcaVantageDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
