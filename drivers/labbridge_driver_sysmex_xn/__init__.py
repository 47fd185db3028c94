"""Sysmex XN series (hematology): a profile driver (``profile.toml`` beside this file).

Sources, and what each was used for:

* Sysmex, *Automated Hematology Analyzer XN series ASTM Host Interface Specifications*, R314185
  (revisions 10.0 to 25 circulate publicly; read: revision history and table of contents of rev. 10.0,
  18 and 25). Section 4.3 (message layer): the Header, Patient, Analysis Order and Result records.
  The record examples given there, and reproduced by several open LIS interfaces, read
  ``H|\\^&|||XN-350^00-18^11001^^^^12345678||||||||E1394-97``,
  ``O|1||^^                00000001^B|^^^^WBC\\^^^^RBC|||||||N||||||||||||||F`` and
  ``R|1|^^^^WBC^1|7.80|10*3/uL||N||||||20011116101000``.
* From those: H-5 analyzer name^version^serial (sender); O-4 3rd component = sample number, right
  aligned and space padded (stripped here), 4th = attribute; R-3 ``^^^^parameter^dilution``: the 5th
  component is the test code; R-4 value; R-5 units; R-7 abnormal flag (``N``, ``L``, ``H``, ``W`` low
  reliability; ``LL``/``HH`` panic flags were added in revision 4.0 per the revision history); R-13 time
  of analysis; R-9 result status (the revision history says it carries the repeat/rerun/reflex
  judgment).
* Patient ID: the examples put it in P-5 (``P|1|||100|^Jim^Brown``); P-3 is the fallback.

Not verified in the document text (say so to the site): how QC file results mark themselves. This
profile treats a result as QC when O-12 is ``Q`` or the sample number starts with ``QC-``; the QC file
layout of the XN (section on QC data, QC file numbers 1-94 per the revision history) was not readable in
the copies found. A site whose XN sends QC otherwise must add its condition to ``[qc]``.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class SysmexXnDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
