"""Cepheid GeneXpert (molecular): a profile driver (``profile.toml``).

Sources, and what each was used for:

* Cepheid, *GeneXpert System Software LIS Interface Protocol Specification*, section 6.3 (upload
  messages; 6.3.2.1.5 the host query example ``H|@^\\|...||ICU^GeneXpert^1.0|||||LIS||P|1394-97|...``),
  as transcribed field by field in OpenELIS Global's GeneXpert integration notes ("ASTM Field Mapping -
  Result Upload"), and quoted in T. Genaux, *Introduction to ASTM Message Formats* (2024):
  - H-2 delimiters ``@^\\``: repeat ``@``, component ``^``, escape ``\\`` (read from every H record by
    the E1394 codec, never assumed); H-5 system ID^``GeneXpert``^software version (sender);
    H-12 ``P``; H-13 ``1394-97``;
  - O-3 specimen ID; O-12 action code ``Q`` = QC specimen; O-26 report type ``F``/``X``/``I``;
  - R-3 ``^<panel ID>^^<test ID>^<test name>^<version>^<analyte/result name>^<complementary name>``:
    R-3.4 is the host test code (single-result assay) or the result test code (multi-result panel);
    only the *main* result has a test name (R-3.5); analyte rows have an analyte name (R-3.7) and
    complementary rows (Ct, EndPt, Delta Ct, LOG) a name in R-3.8;
  - R-4 ``<qualitative>^<quantitative>`` (``DETECTED^``, ``NOT DETECTED^``, ``POS^``, ``^1234.56``),
    R-5 units, R-6 range ``"a to b"``, R-7 flags, R-9 status ``F``/``I``/``X``/``C`` combinable as
    ``F@C``, R-12 started, R-13 completed, R-14 computer^instrument S/N^module^cartridge^lot^expiry;
  - C records (``C|1|I|Error^code^text...|N``) follow O or R records: kept raw, not results.
* A GeneXpert 6.4 MTB/XDR transmission reproduced in public code (main rows such as
  ``R|34|^MTBX^^mtb^Xpert MTB-XDR^1^MTB^|DETECTED^|||||F||...|20230515144553|20230515161609|...``).

Not verified: the specification itself was read only through the transcriptions above, not in Cepheid's
own PDF. Per the transcription, a result *upload* carries main results only; analyte and complementary
rows (sent when the LIS asks for results) are skipped by ``skip_results``.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class CepheidGenexpertDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
