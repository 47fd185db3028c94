"""Abbott Afinion 2 (point of care: HbA1c, CRP, ACR, lipid panel) over ASTM: a profile driver
(``profile.toml`` beside this file).

Connectivity choice: the Afinion 2 connects to a host over its Ethernet port either through POCT1-A (to a
point-of-care data manager) or with ASTM E1394 records over E1381 framing; this driver implements the
**ASTM** form, the one a middleware like labbridge can take directly (POCT1-A is an XML dialogue with a
device manager, not a results stream). No HL7 output of the analyzer itself was found.

Sources, and what each was used for:

* The open-source senaite.astm project's Afinion 2 notes (``instruments/abbott_afinion2.py``: record
  examples and code tables) and its public test transmission (``tests/data/abbott_afinion2.txt``, one
  HbA1c result; its device ID and timestamps suggest a real instrument, which the project does not state).
  From those: the whole message H to L comes in one frame; H-5 ``Afinion 2 Analyzer^^<device ID>``;
  H-12 processing ID ``P`` patient results, ``Q`` quality control results; P-4 the (local) patient ID;
  O-4 the analyzer's record number (there is no specimen barcode on a point-of-care cartridge); O-5
  ``^^^<assay>`` (CRP, ACR, Lipid, HbA1c); O-12 ``N``; O-16 ``^<source>`` (``C`` capillary, ``V`` venous,
  ``O`` other); R-3 ``^^^<test>`` (HbA1c, CRP, ACR, Alb, Creat, Chol, Trig...); R-4 the value, with ``>``
  or ``<`` written before a value outside the measuring range and ``--- `` when no value could be
  measured; R-5 units; R-7 flags ``<``, ``>``, ``L``, ``H``, ``LL``, ``HH``, ``!`` (ambiguous); R-9 always
  ``F``; R-11 operator; R-13 the time of measurement. Examples there read
  ``R|1|^^^CRP|16|mg/L||||F||||20100608142352|`` and ``R|1|^^^ACR|<5.6|mg/g||<||F||||20100608140536|``.

The capture ``afinion2-hba1c-crp-and-control.astm`` was composed for this driver after that layout (a
patient HbA1c, a CRP below the measuring range, an ACR with no value, and a control run marked by H-12
``Q``); it was not captured from an analyzer.

Not verified (say so to the site): Abbott's own *Afinion 2 Connectivity / LIS interface* document was not
found, so every position above comes from the open-source notes and one transmission; the sample ID is
the analyzer's record number (O-4) unless O-3 carries one, so the LIS must match point-of-care results on
the patient ID (P-4) and time, not on a barcode; the lipid panel's test names and units as sent were not
seen in a transmission (the test table lists them for the simulators only).
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class AbbottAfinion2Driver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
