"""The beckman-au driver beyond its golden capture: what it refuses, inquiries and calibration texts, and the
link it needs (framing = "au"), including re-decoding a stored text from its raw bytes."""

from __future__ import annotations

import pytest
from labbridge_simulators.au_analyzer import AuTest, head, result_texts

from labbridge.config import InstrumentConfig, LinkConfig
from labbridge.driver import AstmDriver, DecodeContext, load_driver
from labbridge.errors import DecodeError
from labbridge.links.intake import InstrumentDecoder, load_instrument_driver
from labbridge.model import HostQuery
from labbridge.protocols.au_online import build_block


def driver() -> AstmDriver:
    loaded = load_driver("beckman-au")
    assert isinstance(loaded, AstmDriver)
    return loaded


CONTEXT = DecodeContext(instrument="au-1", test_map={"001": "GLU"})
TESTS = [AuTest("001", "5.4"), AuTest("002", "131", ("H", "r")), AuTest("003", "")]


def test_a_blocked_text_gives_one_result_per_test_with_a_value_mapped_through_the_test_map() -> None:
    blocks = result_texts("D ", TESTS, per_block=2, sample_id="2611230042", rack=12, cup=3, sample_no=118)
    assert [b[29:30] for b in blocks] == [b"0", b"E"]
    decoded = driver().decode(blocks, CONTEXT)
    assert [(r.sample_id, r.test_code, r.instrument_test_code, r.value, r.flags, r.kind, r.status)
            for r in decoded.results] == [("2611230042", "GLU", "001", "5.4", (), "patient", "final"),
                                          ("2611230042", "002", "002", "131", ("H", "r"), "patient", "final")]
    assert decoded.sender == "01"


def test_qc_rerun_and_stat_texts() -> None:
    qc = driver().decode(result_texts("DQ", TESTS[:1], control="3"), CONTEXT)
    assert [(r.sample_id, r.kind) for r in qc.results] == [("CONTROL-3", "qc")]
    rerun = driver().decode(result_texts("DH", TESTS[:1], sample_id="S1"), CONTEXT)
    assert [r.status for r in rerun.results] == ["correction"]
    stat = driver().decode(result_texts("d ", TESTS[:1], sample_no=7), CONTEXT)
    assert [(r.sample_id, r.status, r.kind) for r in stat.results] == [("0007", "final", "patient")]


def test_calibration_gives_no_result_and_an_inquiry_a_host_query() -> None:
    assert driver().decode(result_texts("DA", TESTS[:1]), CONTEXT).results == []
    inquiry = driver().decode([head("R ", rack=12, cup=3, sample_no=118, sample_id="2611230042").encode()], CONTEXT)
    assert inquiry.results == [] and inquiry.queries == [HostQuery(instrument="au-1", sample_ids=("2611230042",))]


@pytest.mark.parametrize(("blocks", "reason"), [
    ([], "no text"),
    ([b"H|\\^&|||"], "is not an AU result text"),
    ([b"D 01001203"], "shorter than the 30-character head"),
    (result_texts("D ", TESTS[:2], per_block=1)[::-1], "block number"),
    ([result_texts("D ", TESTS[:2], per_block=1, sample_id="A")[0],
      result_texts("D ", TESTS[:2], per_block=1, sample_id="B")[1]], "another sample"),
    ([result_texts("D ", TESTS[:1])[0] + b"0047"], "not a whole number of 20-character test groups"),
    ([b"D 01" + b" " * 25 + b"E" + b"001      5.4        "], "neither a sample ID nor a sample number"),
])
def test_texts_that_do_not_fit_the_layout_are_refused_with_the_reason(blocks: list[bytes], reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        driver().decode(blocks, CONTEXT)


def instrument(driver_name: str, **link: object) -> InstrumentConfig:
    return InstrumentConfig.model_validate({"id": "au-1", "site": "arlon", "driver": driver_name, "link": link,
                                            "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0}})


def test_the_au_driver_needs_the_au_framing_and_the_au_framing_the_au_driver() -> None:
    assert load_instrument_driver(instrument("beckman-au", framing="au"))[1] is None
    _, why = load_instrument_driver(instrument("beckman-au", framing="e1381"))
    assert why is not None and 'framing = "au"' in why
    _, why = load_instrument_driver(instrument("astm-generic", framing="au"))
    assert why is not None and "beckman-au" in why


def test_a_stored_text_is_decoded_again_from_its_raw_bytes() -> None:
    blocks = result_texts("D ", TESTS, per_block=2, sample_id="2611230042")
    raw = build_block(blocks[0], last=False) + build_block(blocks[1])
    decoder = InstrumentDecoder(driver(), CONTEXT, link=LinkConfig(framing="au"))
    intake = decoder.decode_raw("astm", raw)
    assert intake.error is None and [r.value for r in intake.results] == ["5.4", "131"]
    assert decoder.decode_raw("astm", raw[:-5]).error is not None  # not one whole text


def test_an_au_instrument_without_a_link_table_gets_the_au_framing_and_its_settings_reach_the_link() -> None:
    from labbridge.config import parse_config, with_link_defaults
    from labbridge.driver import driver_link_defaults
    from labbridge.links.dialect import host_link
    from labbridge.protocols.au_online import AuLink

    data = {"node": "t", "store": {"path": "s.db"}, "sites": [{"id": "arlon", "name": "Arlon"}],
            "lis": [{"id": "lis", "host": "127.0.0.1", "port": 2575}],
            "instruments": [{"id": f"au-{i}", "site": "arlon", "driver": "beckman-au", "link": link,
                             "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 4000 + i}}
                            for i, link in enumerate([{}, {"au_bcc": False, "au_acknowledge": False,
                                                           "receive_timeout_s": 5}])]}
    config = with_link_defaults(parse_config(data), driver_link_defaults)
    plain, set_up = (host_link(i.link) for i in config.instruments)
    assert isinstance(plain, AuLink) and plain.profile.bcc and plain.profile.acknowledge
    assert isinstance(set_up, AuLink)
    assert (set_up.profile.bcc, set_up.profile.acknowledge, set_up.profile.receive_timeout) == (False, False, 5.0)


def test_replay_reads_an_au_capture_with_or_without_bcc_and_reports_a_corrupted_block() -> None:
    from labbridge.replay import ReplayedMessage, ReplayProblem, replay

    blocks = result_texts("D ", TESTS, per_block=2, sample_id="2611230042")
    for with_bcc in (True, False):
        capture = b"".join(build_block(b, last=i == 1, with_bcc=with_bcc) for i, b in enumerate(blocks))
        items = list(replay(driver(), capture))
        assert [i.decoded and [r.value for r in i.decoded.results] for i in items
                if isinstance(i, ReplayedMessage)] == [["5.4", "131"]]
    good = build_block(blocks[1])
    corrupted = build_block(blocks[0], last=False) + good[:-1] + bytes((good[-1] ^ 1,))
    kinds = [i.kind for i in replay(driver(), corrupted) if isinstance(i, ReplayProblem)]
    assert kinds == ["frame rejected", "incomplete transmission"]
