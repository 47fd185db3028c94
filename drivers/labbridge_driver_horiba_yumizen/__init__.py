"""HORIBA Medical Yumizen H500 / H550 and ABX Pentra (hematology): a profile driver.

Sources, and what each was used for:

* HORIBA Medical, *Yumizen H500 Output Formats*, ref. RAA055BEN (2015) / RAA055CEN (2016), and *Output
  Format for Host Connection*, ref. RAA055DEN (2016) and, for the H550, RAA066AEN: chapter "ASTM
  Format" (ASTM-CI, LIS01-A2 connection, LIS2-A2 records: H, P, O, R, C, L), "Records General Format
  Specifications", "Special characteristics for HORIBA Medical data" and "Example of Data Frame". Read:
  the introduction and definitions ("No single communications packet contains more than one record", so
  standard framing, one record per frame) and the contents; the record tables themselves were not
  readable in the copies found.
* PROTOCOLS.md, header fields: H-12 processing ID ``Q`` for QC runs on the Yumizen (field captures).
* Pentra headers read ``H|\\^&|||ABX^PENTRA60^V2.0|...`` in public integrations (H-5 sender).

Not verified in a HORIBA document's text, and therefore written as fallbacks: the test code is taken
from R-3's 5th component (``^^^^WBC^...``, as Sysmex and the LIS2-A2 examples place it) and, when that is
empty, from the 4th (``^^^WBC``, as Pentra integrations show); sample ID from O-3, else O-4. The flags
listed are LIS2-A2 R-7 codes; HORIBA's suspected-pathology and alarm messages (sent in C records) are not
decoded into flags. A site should replay a capture of its own analyzer (``labbridge replay``) before going
live.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class HoribaYumizenDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
