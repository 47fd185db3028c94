"""LIS1-A timers as LinkProfile values: the standard by default, every one read from the profile."""

from __future__ import annotations

from labbridge.config import LinkConfig
from labbridge.links.dialect import link_profile
from labbridge.protocols import e1381
from labbridge.protocols.e1381 import ACK, ENQ, EOT, NAK, E1381Link, LinkProfile, Role, build_frames

MESSAGE = (b"H|\\^&|||SimChem^1.0", b"P|1|PAT1", b"O|1|S0001||^^^GLU", b"R|1|^^^GLU|5.4|mmol/L||N||F",
           b"L|1|N")

# Odd values, none equal to a standard one, so that a timer read from the wrong place shows.
FAST = LinkProfile(reply_timeout=1.5, receive_timeout=3.25, busy_wait=0.75, contention_wait_instrument=0.125,
                   contention_wait_host=2.5, interrupt_wait=1.75)


def test_defaults_are_the_standard_values() -> None:
    p = LinkProfile()
    assert (p.reply_timeout, p.receive_timeout, p.busy_wait, p.contention_wait_instrument, p.contention_wait_host,
            p.interrupt_wait) == (15.0, 30.0, 10.0, 1.0, 20.0, 15.0)
    assert (e1381.T_SENDER_REPLY, e1381.T_RECEIVER, e1381.T_BUSY, e1381.T_CONTENTION_INSTRUMENT,
            e1381.T_CONTENTION_HOST, e1381.T_INTERRUPT) == (15.0, 30.0, 10.0, 1.0, 20.0, 15.0)
    assert not p.honor_interrupt
    # The configuration keeps the standard unless told otherwise.
    cfg = link_profile(LinkConfig())
    assert (cfg.reply_timeout, cfg.receive_timeout, cfg.busy_wait, cfg.contention_wait_instrument,
            cfg.contention_wait_host, cfg.interrupt_wait, cfg.honor_interrupt) == (15.0, 30.0, 10.0, 1.0, 20.0,
                                                                                    15.0, False)


def test_config_values_reach_the_profile() -> None:
    cfg = link_profile(LinkConfig(reply_timeout_s=1.5, receive_timeout_s=3.25, busy_wait_s=0.75,
                                  contention_wait_s=2.5, interrupt_wait_s=1.75, honor_interrupt=True))
    assert (cfg.reply_timeout, cfg.receive_timeout, cfg.busy_wait, cfg.contention_wait_host,
            cfg.interrupt_wait, cfg.honor_interrupt) == (1.5, 3.25, 0.75, 2.5, 1.75, True)


def test_receiver_timer_from_profile() -> None:
    link = E1381Link(Role.HOST, FAST)
    link.receive_data(bytes([ENQ]), 100.0)
    assert link.get_timer() == 103.25
    link.receive_data(build_frames(MESSAGE)[0], 101.0)
    assert link.get_timer() == 104.25
    link.handle_timer(104.0)
    assert link.state is e1381.State.RECEIVER
    link.handle_timer(104.25)
    assert link.state is e1381.State.NEUTRAL
    incomplete = [e for e in link.events() if isinstance(e, e1381.IncompleteMessage)]
    assert len(incomplete) == 1 and incomplete[0].reason == "no frame from the sender within 3.25 s"


def test_sender_reply_timer_and_busy_wait_from_profile() -> None:
    link = E1381Link(Role.HOST, FAST)
    handle = link.send_message(MESSAGE, 10.0)
    assert link.data_to_send() == bytes([ENQ])
    assert link.get_timer() == 11.5
    link.receive_data(bytes([ACK]), 11.0)
    link.data_to_send()
    assert link.get_timer() == 12.5  # the reply timer restarts with each frame
    link.handle_timer(12.5)
    assert link.data_to_send() == bytes([EOT])
    aborted = [e for e in link.events() if isinstance(e, e1381.SendAborted)]
    assert aborted == [e1381.SendAborted(handle, "no reply from the peer within 1.5 s")]
    assert link.get_timer() == 13.25  # busy wait, then the message goes again
    link.handle_timer(13.25)
    assert link.data_to_send() == bytes([ENQ])
    link.receive_data(bytes([NAK]), 14.0)  # busy
    assert link.get_timer() == 14.75


def test_nak_storm_aborts_after_six_and_waits_busy_wait() -> None:
    link = E1381Link(Role.HOST, FAST)
    link.send_message(MESSAGE, 0.0)
    link.data_to_send()
    link.receive_data(bytes([ACK]), 0.0)
    link.data_to_send()
    for _ in range(6):
        link.receive_data(bytes([NAK]), 1.0)
    assert link.data_to_send().endswith(bytes([EOT]))
    assert link.get_timer() == 1.75 and link.pending_messages == 1


def test_contention_waits_from_profile() -> None:
    hst = E1381Link(Role.HOST, FAST)
    hst.send_message(MESSAGE, 0.0)
    hst.data_to_send()
    hst.receive_data(bytes([ENQ]), 5.0)
    assert hst.get_timer() == 7.5
    ins = E1381Link(Role.INSTRUMENT, FAST)
    ins.send_message(MESSAGE, 0.0)
    ins.data_to_send()
    ins.receive_data(bytes([ENQ]), 5.0)
    assert ins.get_timer() == 5.125


def test_honoured_receiver_interrupt_ends_the_transfer_and_waits() -> None:
    link = E1381Link(Role.HOST, LinkProfile(honor_interrupt=True, interrupt_wait=1.75))
    handle = link.send_message(MESSAGE, 0.0)
    link.data_to_send()
    link.receive_data(bytes([ACK]), 0.0)
    link.data_to_send()
    link.receive_data(bytes([EOT]), 2.0)  # the receiver wants the line
    assert link.data_to_send() == bytes([EOT])
    assert link.state is e1381.State.NEUTRAL
    events = link.events()
    assert e1381.SendAborted(handle, "receiver interrupt (EOT)") in events
    assert e1381.TransferEnded(as_sender=True, reason="interrupted") in events
    assert link.pending_messages == 1 and link.get_timer() == 3.75
    link.receive_data(bytes([ENQ]), 2.5)  # the receiver takes the line meanwhile
    assert link.data_to_send() == bytes([ACK])


def test_interrupt_on_the_last_frame_completes_the_message() -> None:
    link = E1381Link(Role.HOST, LinkProfile(honor_interrupt=True))
    handle = link.send_message(MESSAGE[:1], 0.0)
    link.data_to_send()
    link.receive_data(bytes([ACK]), 0.0)
    link.data_to_send()
    link.receive_data(bytes([EOT]), 0.5)
    assert e1381.MessageSent(handle) in link.events()
    assert link.pending_messages == 0
