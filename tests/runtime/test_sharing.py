"""The rules that tell apart instruments sharing one listener (labbridge.sharing), and their config checks."""

from __future__ import annotations

from typing import Any

import pytest

from labbridge.config import InstrumentConfig, parse_config
from labbridge.errors import ConfigError
from labbridge.protocols.hl7_parse import parse_message
from labbridge.sharing import SenderRouter, astm_sender_names, hl7_sender_names


def inst(ident: str, **settings: Any) -> dict[str, Any]:
    return {"id": ident, "site": "a", "driver": "astm-generic",
            "transport": {"kind": "tcp-server", "port": 5100}, **settings}


def router(*instruments: dict[str, Any]) -> SenderRouter:
    return SenderRouter([InstrumentConfig.model_validate(i) for i in instruments], "127.0.0.1:5100")


def ids(found: Any) -> Any:
    return found.id if found is not None else None


def test_peer_first_then_sender_then_default() -> None:
    r = router(inst("xn", peer=["10.1.2.0/24"]), inst("cobas", sender=["c501", "c702"]),
               inst("arch", sender=["ARCHITECT"]), inst("spare", listener_default=True))
    assert ids(r.at_connect("10.1.2.9")) == "xn"  # the address alone decides, at connect
    assert ids(r.at_connect("::ffff:10.1.2.9")) == "xn"  # an IPv4 peer seen on a dual-stack socket
    assert r.at_connect("10.9.9.9") is None  # several remain: the message will tell
    others = r.by_peer("10.9.9.9")
    assert [c.id for c in others] == ["cobas", "arch", "spare"]
    assert ids(r.by_sender(others, ["c702"])) == "cobas"
    assert ids(r.by_sender(others, ["ARCHITECT"])) == "arch"
    assert ids(r.by_sender(others, ["who?"])) == "spare"  # nobody named it: the listener's default


def test_without_a_default_an_unknown_sender_is_nobody() -> None:
    r = router(inst("cobas", sender=["c501"]), inst("arch", sender=["ARCHITECT"]))
    assert r.by_sender(r.by_peer("127.0.0.1"), ["c311"]) is None
    r = router(inst("xn", peer=["10.0.0.5"]), inst("arch", peer=["10.0.0.6"]))
    assert r.at_connect("10.0.0.7") is None and r.by_peer("10.0.0.7") == []


def test_sender_names_from_astm_h5_and_hl7_msh3_msh4() -> None:
    assert astm_sender_names([b"H|\\^&|||cobas c501^1.0^SN42|||||||P|1", b"L|1|N"]) == ["cobas c501"]
    assert astm_sender_names([b"H|\\^&", b"L|1|N"]) == [] and astm_sender_names([b"P|1"]) == []
    msg = parse_message(b"MSH|^~\\&|BS-480^x|LAB1|||20261123||ORU^R01|1|P|2.3.1\r")
    assert hl7_sender_names(msg) == ["BS-480", "LAB1"]


def refused(*instruments: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config({"sites": [{"id": "a", "name": "A"}], "instruments": list(instruments)})
    return str(err.value)


def test_config_refuses_what_a_shared_listener_cannot_do() -> None:
    text = refused(inst("a", sender=["X"], listener_default=True), inst("b", listener_default=True),
                   inst("c", sender=["Y"], link={"framing": "raw"}))
    assert "instruments[1].listener_default: one default per listener" in text
    assert "instruments[2].link: the same transport and link settings as instruments[0]" in text
    text = refused(inst("a", peer=["10.0.0.0/24"]), inst("b", peer=["10.0.0.8"]))
    assert "instruments[1].sender: instruments[0] and instruments[1] share 127.0.0.1:5100" in text
    assert "instruments[0].peer" in refused(inst("a", peer=["ten.0.0.1"]))
    # Told apart: accepted (a named address before any address; a named sender before any sender).
    parse_config({"sites": [{"id": "a", "name": "A"}], "instruments": [
        inst("a", peer=["10.0.0.0/24"]), inst("b", peer=["10.0.0.0/24"], sender=["B"]),
        inst("c", sender=["C"]), inst("d", listener_default=True),
        inst("e", transport={"kind": "tcp-server", "port": 5101})]})
