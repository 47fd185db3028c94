"""Roche cobas c 111 (compact chemistry): a profile driver (``profile.toml`` beside this file).

Why a family of its own: the c 111 speaks the cobas "host format" of ``roche-cobas`` but its records differ
where a driver looks. It sends the sample ID in **O-4** (instrument specimen ID:
``<sample ID>^<rack>^<position>^<tray>^<rack type>^<control type>``) and leaves O-3 (the specimen ID it
reads only when *receiving* orders) empty, so ``roche-cobas`` (O-3) would put every c 111 message in the
dead letters; it keeps no patient (``P|1||``); its test codes carry no dilution part (``^^^687``); each
result is followed by a ``C`` record and an ``M`` record of raw photometric readings
(``M|1|RR^BM^c111^1|...``), neither of them a result; and each record comes in its own frame, the
intermediate frames ended by ETB, the last by ETX (one E1381 message either way).

Sources, and what each was used for:

* Roche, *cobas c 111 Host Interface Manual*, version 2.1, page 50 (R record), as cited by the
  ``roche-cobas`` driver: R-9 status ``F`` final, ``C`` correction, ``X`` cannot be completed, ``R``
  repeat of a result already sent, ``I`` QC result ignored; R-13 date and time the result was calculated;
  R-7 flags ``H``, ``<``.
* The open-source senaite.astm project's c 111 field notes (``instruments/roche_cobas_c111.py``: H-5
  ``<name>^Roche^c111^<software>^<protocol>^<serial>``, H-11 message purpose ``RSUPL^REAL`` or
  ``RSUPL^BATCH``; O-3 used only when the c 111 receives, O-4 when it transmits, with the six components
  above; O-6 priority ``R``/``S``; O-23 date/time reported; R-3 ``^^^<test>^<treatment>``; R-7 ``L``,
  ``H``, ``<``, ``>``, ``N``, ``A``; R-11 operator) and two public transmissions kept as its test data
  (``tests/test_cobas_c111.py``: an ALP result framed record by record with ETB; ``tests/data/
  cobas_c111.txt``: an ALT result on a control named by the lab, with its C and M records). Their serial
  numbers suggest real analyzers, which the project does not state.

The capture ``c111-alt-glucose-control-and-correction.astm`` was composed for this driver after those
transmissions' layout and framing (ETB between records): a patient sample with two results, each followed
by its C and M records, a control with O-12 ``Q`` and a control type, and a correction (R-9 ``C``); it was
not captured from an analyzer.

Not verified (say so to the site): how the c 111 marks a control result. The public control transmission
carries O-12 ``N`` and no control type: the control was recognisable only by the name the laboratory gave
it. This profile treats a result as QC when O-12 is ``Q`` or O-4's 6th component (control type) is set; a
site whose c 111 sends controls as in that transmission must add its own condition (for instance a prefix
of its control names on ``O.4.1``) to ``[qc]``, or its controls reach the LIS as patient results. The c 111
test table lists a few application numbers for the simulators; a site's numbers are set on its analyzer.
"""

from __future__ import annotations

from pathlib import Path

from labbridge.driver_profile import ProfileAstmDriver, load_profile


class RocheCobasC111Driver(ProfileAstmDriver):
    profile = load_profile(Path(__file__).with_name("profile.toml"))
