"""Sysmex UN series urinalysis (UC-3500 / UC-1000 strips, UF-5000 / UF-4000 sediment, UD-10 imaging) through
the U-WAM workarea software: a profile driver (``profile.toml``).

Sources, and what each was used for:

* Sysmex, *Urinalysis Workarea Information Management System U-WAM — ASTM Host Online Specifications*,
  R315168, revision 21 (26 July 2023): revision history and outline read. It names the sections this
  driver relies on: §5.2 "Data Link Layer (Transmission Protocol)" (E1381, one or two ports), §5.3.3.3
  "Analysis Order Record" (field 8.4.26 Report Type), §5.3.3.4 "Analysis Result Record" (field 9.7
  Abnormal Flag; result types, "S" for research parameters), §5.3.2.2 / §5.3.3.6 order inquiry (U-WAM to
  host), Appendix B "Analysis Parameters" (B.1 Urine Chemistry, profile *Chemistry*, with qualitative data
  values such as ``normal`` for urobilinogen and SI units; B.7 QC Parameters for urine chemistry analyzers
  and imaging devices) and Appendix G "Units".
* Sysmex, *UC-3500 Host Communication Specifications (Except North America)*, version 0.0.5 (2017-04-14):
  revision history read: Table 6-17/6-19 list the strip parameter values as grades (``-``, ``+-``,
  ``1+``..``4+``; ``3+`` removed for one parameter in 0.0.4), specific gravity written ``S.G``, A/C ratio
  grades such as ``>=1+``; used for the qualitative words in the capture and the translations.

Positions used: the CLSI LIS2-A2 positions, which U-WAM §5.3.3 follows record by record (section numbering
8.4.x = Order record field x, 9.x = Result record field x): O-3 specimen ID (else the Sysmex-style O-4.3
sample number), P-3 practice patient ID (else P-4, then P-5), R-3 universal test ID
``^^^^<parameter>^<dilution>`` as the other Sysmex families send it (5th component; 4th as fallback), R-4 data
value, R-5 units, R-6 reference range, R-7 abnormal flag (§5.3.3.4 field 9.7; ``N`` dropped, ``H``/``L``/``A``
kept), R-9 status, R-13 completion time (else H-14). QC: O-12 action code ``Q`` (LIS2-A2) or a ``QC-`` sample
number, the same marking as the Sysmex XN driver.

Qualitative strip results go through the profile's ``[qualitative]`` table: ``-`` becomes ``NEG``, ``+-``
becomes ``TRACE``, ``normal`` becomes ``NORMAL``; grades ``1+``..``4+`` and comparisons such as ``>=1+``
pass unchanged. A site that wants other words overrides them in the driver's profile copy or maps codes
with ``test_map``.

Not verified in the document text (say so to the site): the field tables of §5.3.3 and the parameter list
of Appendix B were not readable in the copies found, so the positions above are LIS2-A2's and the Sysmex
XN conventions, not read from U-WAM's tables; the parameter mnemonics (``GLU``, ``PRO``, ``BLD``, ``LEU``,
``NIT``, ``KET``, ``BIL``, ``UBG``, ``pH``, ``S.G``, ``RBC``, ``WBC``, ``EC``, ``BACT``...) and units are
those printed on UN-series reports; how U-WAM marks a control run (O-12 ``Q`` or a ``QC-`` number
assumed; B.7 lists QC parameters but its layout was not read), whether it sends the grade and the
concentration of one strip parameter in one R record or two, and its research parameters (result type
``S``, which a site may want skipped with ``skip_results``) were not checked. Order inquiry (§5.3.2.2)
is not enabled here (``host_query`` off).
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class SysmexUnDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
