"""Roche cobas c / e series (chemistry and immunoassay): a profile driver (``profile.toml``).

Sources, and what each was used for:

* Roche, *cobas e 411 analyzer Host Interface Manual*, document version 2.3 (US, 2016), pages 16
  (result data of patient *and* quality control samples are sent; no calibration results), 28 ("Record
  structure": compatible with the cobas 6000 protocol; a barcode read error gives a sample ID
  ``@<sequence no.>``), 35 (Q record: ``^^<SampleID>^<SequenceNo>^<CarrierNo>^<PositionNo>^^<SampleType>^
  <ContainerType>``) and 40 (order record: O-12 action code, cobas type ``Q`` = control sample result
  from the analyzer, Elecsys type ``X\\Q``; O-16 specimen descriptor; O-23 date/time results reported;
  O-26 report type ``F``). Read at easymanua.ls (pages 16, 28, 35, 40).
* Roche host interface manual, section 7.3.7 "Result Record" (transcribed at 1library.net; the page
  does not say which analyzer's manual it is): R-3 universal test ID ``^^^<Application Code>/<Dilution>/
  <Pre-Dil.>`` (hence ``test_code_before = "/"``); examples ``R|1|^^^64/1/not|46.22|IU/L||H||F||BMSERV|
  20050915150011||E11``: R-4 value (a 2nd component carries a data message code when enabled), R-5 units,
  R-7 flag, R-9 status, R-12 time stamp of pipetting when enabled.
* Roche, *cobas c 111 Host Interface Manual* version 2.1, page 50 (R record): R-9 status ``F`` final,
  ``C`` correction, ``X`` cannot be completed, ``R`` repeat of a result already sent, ``I`` QC result
  ignored; R-13 date and time the result was calculated; R-7 flags ``H``, ``<`` in its examples; c 111
  test codes have no dilution part (``^^^687``).
* All records of a message in one frame: PROTOCOLS.md vendor deviation 1 (cobas c 311 field capture);
  the E1381 receiver accepts it, and the ``[link.dialect]`` table records it.

The cobas c 111 sends its sample ID in O-4, not O-3, and is read by its own driver, ``roche-cobas-c111``
(this driver's c 111 manual citations above concern the R record, which the two share).

Not verified in the text read: the immunoassay qualitative result code in R-4's first component for
qualitative tests (the manual's example ``-1^1.61`` with units ``COI``) is sent to the LIS as the
analyzer wrote it; its meaning per test must be mapped by the site. The ``LL``/``HH``/``>`` flags are from
LIS2-A2's R-7 table, not seen in a cobas example. The test table lists a few application codes for the
simulators; a site's codes are set on its analyzer (e 411 "Host Test Code Setting").
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class RocheCobasDriver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
