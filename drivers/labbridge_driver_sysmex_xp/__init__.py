"""Sysmex XP series (XP-100, XP-300) and XS series (XS-500i/800i/1000i) hematology: a profile driver
(``profile.toml`` beside this file).

Sources, and what each was used for:

* Sysmex, *XP Series ASTM Communication Specifications (ASTM E1394-97, E1381-02/95)*, revision 1.0
  (18 June 2012): title page and table of contents read (a copy at vbook.pub); it places the XP on
  ASTM E1381 framing and E1394 records, which is what this driver reads. The field tables themselves were
  not readable in that copy.
* A public XP-100 transmission kept as test data by the open-source senaite.astm project
  (``tests/data/sysmex_xp100.txt``; its serial number and timestamps suggest a real instrument, which the
  project does not state), and that project's field notes (``instruments/sysmex_xp.py``, citing the same
  revision 1.0). From those: the whole message H to L comes in **one frame** (frame number 1, then every
  record with its CR, ETX and the checksum) -- hence ``single_frame_message``; H-5
  ``XP-100^<software version>^^^^<device no.>^<PS code>``; ``P|1`` with no patient ID; O-4
  ``^^<sample no.>^<attribute>`` with the sample number space or zero padded to 15 and the attribute
  ``M`` manual, ``A`` automatic, ``B`` read by the ID reader; O-5 the parameter list ``^^^^WBC\\^^^^RBC...``;
  O-12 action code ``N`` normal sample, ``Q`` QC data; R-3 ``^^^^<parameter>^<dilution>`` (dilution ``1``
  whole blood, ``26`` prediluted); R-4 the value right aligned in a 5-character field; R-5 units; R-7 flag
  ``N`` normal, ``L``/``H`` (shown ``-``/``+``), ``>`` (shown ``!``), ``W`` (shown ``*``), ``A`` masked;
  R-11 operator (15 characters, space padded); R-13 the time of analysis.
* The XS series is listed because Sysmex publishes an *XS Series ASTM Communication Specifications*
  (revision 2.2 of January 2006 to 2.5 of December 2012; revision history and table of contents read): the
  same ASTM layering and the same QC file notion as the XP.

The capture ``xp-cbc-qc-and-flags.astm`` was composed for this driver after the layout of the public XP-100
transmission (new sample numbers, values, a QC run, a second patient with ``W``/``>`` flags); it was not
captured from an analyzer.

Not verified (say so to the site): the XS series' record layout was not read (assumed to be the XP's; its
parameters such as ``NEUT#``, ``RDW-CV``, ``IG%`` pass through as sent); whether the XS also sends one frame
(the receiver accepts either); how the XP marks a QC run beyond O-12 ``Q`` (the QC file number is not
read); R-9 result status (the public capture leaves it empty, so ``final`` is assumed).
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class SysmexXpDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
