"""Results of an instrument being validated, sent to a ``send-test`` destination, say so in every format."""

from __future__ import annotations

import json

import hl7

from labbridge.model import Result
from labbridge.protocols.hl7 import Party
from labbridge.relay.lis.render import render_astm, render_hl7, render_json

RESULTS = (Result(instrument="chem-1", sample_id="S1", test_code="GLUC", instrument_test_code="GLU", value="5.1"),)


def test_hl7_msh_11_is_t_for_test_results_and_p_otherwise() -> None:
    for test, expected in ((True, "T"), (False, "P")):
        for message_type in ("ORU^R01", "OUL^R22"):
            raw = render_hl7(RESULTS, control_id="LB1", created_at=0.0, sender=Party("LABBRIDGE", ""),
                             receiver=Party("LIS", ""), message_type=message_type, test=test)
            assert str(hl7.parse(raw.decode()).segment("MSH")[11]) == expected


def test_astm_h_12_and_json_flag_test_results() -> None:
    assert render_astm(RESULTS, control_id="LB1", created_at=0.0, sender="LABBRIDGE", test=True).split(b"\r")[0] \
        .split(b"|")[12] == b"T"
    assert render_astm(RESULTS, control_id="LB1", created_at=0.0, sender="LABBRIDGE").split(b"\r")[0] \
        .split(b"|")[12] == b"P"
    assert json.loads(render_json(RESULTS, control_id="LB1", created_at=0.0, backlog=False, test=True))["test"] is True
    assert "test" not in json.loads(render_json(RESULTS, control_id="LB1", created_at=0.0, backlog=False))
