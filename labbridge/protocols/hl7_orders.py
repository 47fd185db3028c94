"""HL7 v2.5.1 orders, sans-I/O: IHE LAW LAB-27 (query for work) and LAB-28 (work orders), and the orders
a LIS sends (OML^O21, OML^O33, ORM^O01). PROTOCOLS.md part (c), "IHE LAW essentials".

Theory of operation (labbridge is the LAW *Analyzer Manager*):

* LAB-27: the analyzer sends ``QBP^Q11^QBP_Q11`` with QPD-1 ``WOS^Work Order Step^IHE_LABTF`` (by
  specimen, QPD-3), ``WOS_ALL`` (everything the manager has for it), ``WOS_BY_RACK`` (QPD-4 rack,
  QPD-5 position) or ``WOS_BY_TRAY`` (QPD-6 tray, QPD-7 position). :func:`read_wos_query` reads it.
  The manager acknowledges the query with ``RSP^K11^RSP_K11`` (:func:`build_rsp_k11`: MSA, QAK, QPD
  echoed) and then sends the work as LAB-28 ``OML^O33`` (:func:`build_oml_o33`), one message per
  specimen; a specimen without work gets an OML^O33 whose ORC-1 is ``DC`` (LAB27-002..004).
* LAB-28: each test of an order is one AWOS (an ORC/TQ1/OBR group); its ID (ORC-2, placer order
  number) is ``LB<order id>-<n>`` (:func:`awos_id`), so the ID names the order it belongs to and is never
  used for other work. The analyzer answers ``ORL^O34`` (:func:`read_orl`): per AWOS, ORC-1 ``OK``
  (accepted) or ``UA`` (unable to accept, with the reason in ERR or MSA-3); a re-sent or reused AWOS ID
  is refused by the analyzer with ERR code 205 (duplicate key identifier, HL7 table 0357).
* LIS orders: :func:`read_lis_orders` reads the order control, specimen, tests, priority and patient of
  OML^O21, OML^O33 and ORM^O01; the shell stores them and answers with an ordinary ACK.

Pure: no clock (``now`` is passed in), no I/O. What is built passes hl7apy's strict v2.5.1 validation
(tests/protocols/test_hl7_orders.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from labbridge.model import PRIORITIES, OrderPriority
from labbridge.protocols.hl7 import ENCODING_CHARS, Party
from labbridge.protocols.hl7_parse import Hl7Message, escape

WOS = "WOS"  # LAB-27 query by specimen
WOS_ALL = "WOS_ALL"  # LAB27-005: every work order the manager holds for this analyzer
WOS_BY_RACK = "WOS_BY_RACK"  # LAB27-006
WOS_BY_TRAY = "WOS_BY_TRAY"  # LAB27-007
WOS_QUERIES = frozenset({WOS, WOS_ALL, WOS_BY_RACK, WOS_BY_TRAY})
QUERY_NAME = "Work Order Step"
QUERY_CODING = "IHE_LABTF"
ERR_DUPLICATE_KEY = "205"  # HL7 table 0357: duplicate key identifier (a re-sent or reused AWOS ID)

# HL7 table 0485 (extended priority codes), TQ1-9.
_TQ1_PRIORITY: dict[OrderPriority, str] = {"stat": "S^Stat^HL70485", "asap": "A^ASAP^HL70485",
                                           "routine": "R^Routine^HL70485"}
_PRIORITY_CODES: dict[str, OrderPriority] = {"S": "stat", "A": "asap", "R": "routine", "P": "routine",
                                             "T": "asap", "C": "stat"}
_AWOS = re.compile(r"^LB(\d+)-(\d+)$")


class Hl7OrderError(ValueError):
    """A query or order message labbridge cannot use; ``reason`` is for the sender (MSA-3/ERR)."""

    def __init__(self, reason: str, *, error_code: str = "207") -> None:
        self.reason = reason
        self.error_code = error_code
        super().__init__(reason)


# ---- LAB-27: the analyzer's query ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WosQuery:
    kind: str  # WOS, WOS_ALL, WOS_BY_RACK, WOS_BY_TRAY
    query_tag: str  # QPD-2, echoed in QAK-1
    specimen_ids: tuple[str, ...]  # QPD-3 (each repetition)
    rack: str = ""  # QPD-4 (and QPD-5 the position)
    rack_position: str = ""
    tray: str = ""  # QPD-6 (and QPD-7 the position)
    tray_position: str = ""
    qpd: tuple[str, ...] = ()  # QPD fields as received (escaped), echoed in the RSP^K11

    @property
    def all_samples(self) -> bool:
        return self.kind == WOS_ALL


def read_wos_query(message: Hl7Message) -> WosQuery:
    """The LAB-27 query in a QBP^Q11; :class:`Hl7OrderError` when it is not one labbridge answers."""
    qpd = message.first("QPD")
    if qpd is None:
        raise Hl7OrderError("QBP^Q11 without a QPD segment", error_code="100")
    kind = message.value(qpd, 1, 1).upper()
    if kind not in WOS_QUERIES:
        raise Hl7OrderError(f"query {kind or '(empty QPD-1)'} is not supported: labbridge answers IHE LAW "
                            f"{', '.join(sorted(WOS_QUERIES))}", error_code="202")
    tag = message.value(qpd, 2, 1)
    if not tag:
        raise Hl7OrderError("QPD-2 (query tag) is required", error_code="101")
    samples = tuple(s for s in (message.value(qpd, 3, 1, repeat=r + 1)
                                for r in range(qpd.raw(3).count(message.separators.repetition) + 1)) if s)
    if kind == WOS and not samples:
        raise Hl7OrderError("a WOS query needs the specimen ID in QPD-3", error_code="101")
    return WosQuery(kind=kind, query_tag=tag, specimen_ids=samples, rack=message.value(qpd, 4, 1),
                    rack_position=message.value(qpd, 5, 1), tray=message.value(qpd, 6, 1),
                    tray_position=message.value(qpd, 7, 1), qpd=qpd.fields)


def _msh(message_type: str, *, control_id: str, now: datetime, sender: Party, receiver: Party,
         profile: str, ack_types: tuple[str, str] = ("", "")) -> str:
    return "|".join(["MSH", ENCODING_CHARS, escape(sender.application), escape(sender.facility),
                     escape(receiver.application), escape(receiver.facility), now.strftime("%Y%m%d%H%M%S%z"), "",
                     message_type, control_id, "P", "2.5.1", "", "", *ack_types, "", "UNICODE UTF-8", "", "",
                     profile]).rstrip("|")


def build_rsp_k11(query: WosQuery, *, query_control_id: str, control_id: str, now: datetime, sender: Party,
                  receiver: Party, found: bool) -> bytes:
    """The query acknowledgement (LAB-27): MSA AA, QAK-2 ``OK`` (work follows) or ``NF`` (none), QPD echoed."""
    qpd = ("|".join(query.qpd) if query.qpd
           else f"QPD|{query.kind}^{QUERY_NAME}^{QUERY_CODING}|{escape(query.query_tag)}")
    segments = [
        _msh("RSP^K11^RSP_K11", control_id=control_id, now=now, sender=sender, receiver=receiver,
             profile="LAB-27R^IHE"),
        f"MSA|AA|{escape(query_control_id)}",
        f"QAK|{escape(query.query_tag)}|{'OK' if found else 'NF'}|{query.kind}^{QUERY_NAME}^{QUERY_CODING}",
        qpd,
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


# ---- LAB-28: work orders to the analyzer ---------------------------------------------------------


def awos_id(order_id: int, test_index: int) -> str:
    """The AWOS ID (ORC-2) of test ``test_index`` (1-based) of order ``order_id``."""
    return f"LB{order_id}-{test_index}"


def order_of_awos(awos: str) -> int | None:
    """The order ID an AWOS ID of ours names; None for an ID labbridge did not make."""
    match = _AWOS.match(awos)
    return int(match.group(1)) if match else None


@dataclass(frozen=True, slots=True)
class Awos:
    """One work order step: one test (the instrument's code) of one order."""

    awos_id: str
    test_code: str  # the instrument's code (mapped from the LIS code by the caller)
    priority: OrderPriority = "routine"


def build_oml_o33(sample_id: str, steps: Sequence[Awos], *, control_id: str, now: datetime, sender: Party,
                  receiver: Party, patient_id: str = "") -> bytes:
    """One LAB-28 OML^O33 for one specimen: per AWOS SPM / ORC (NW) / TQ1 (priority) / OBR (the test).

    With no ``steps`` it is the negative answer to a query: ORC-1 ``DC`` (LAB27-004). Original mode
    (MSH-15/16 empty): the analyzer answers ORL^O34.
    """
    segments = [_msh("OML^O33^OML_O33", control_id=control_id, now=now, sender=sender, receiver=receiver,
                     profile="LAB-28^IHE")]
    if patient_id:
        segments.append(f'PID|1||{escape(patient_id)}^^^^PI||""')
    spm = f"|{escape(sample_id)}&LABBRIDGE||UNK^Unknown^HL70487" if sample_id else "|||UNK^Unknown^HL70487"
    if not steps:
        segments += [f"SPM|1{spm}", "ORC|DC"]
    for n, step in enumerate(steps, start=1):
        # One specimen group per AWOS: after an OBR a second ORC in the same group would read as the
        # "prior order" of the first (OML_O33's PRIOR_RESULT group), so each AWOS gets its own SPM.
        awos = escape(step.awos_id)
        segments += [f"SPM|{n}{spm}", f"ORC|NW|{awos}"]
        segments.append(f"TQ1|1||||||||{_TQ1_PRIORITY[step.priority]}")
        segments.append(f"OBR|1|{awos}||{escape(step.test_code)}^^99INST")
    return ("\r".join(segments) + "\r").encode("utf-8")


@dataclass(frozen=True, slots=True)
class OrlAnswer:
    """What the analyzer said about one OML^O33 (ORL^O34, or an ACK when it answers in that mode)."""

    code: str  # MSA-1
    control_id: str  # MSA-2: the OML's MSH-10
    accepted: tuple[str, ...] = ()  # AWOS IDs with ORC-1 OK (or all of them for an AA without ORC)
    refused: dict[str, str] = field(default_factory=dict)  # AWOS ID -> the analyzer's reason
    duplicates: tuple[str, ...] = ()  # refused as re-sent/reused AWOS IDs (ERR 205): the analyzer has them
    text: str = ""  # MSA-3 / ERR
    has_orders: bool = False  # an ORL with ORC segments (else a plain ACK)


def read_orl(message: Hl7Message) -> OrlAnswer:
    """Read an ORL^O34 (or an ACK) from the analyzer."""
    msa = message.first("MSA")
    if msa is None:
        raise Hl7OrderError("an ORL^O34 or ACK needs an MSA segment", error_code="100")
    code = message.value(msa, 1).upper()
    texts = [t for t in (message.value(msa, 3),) if t]
    duplicate = False
    for seg in message.segments:
        if seg.name == "ERR":
            if message.value(seg, 3, 1) == ERR_DUPLICATE_KEY:
                duplicate = True
            detail = message.value(seg, 8) or message.value(seg, 3, 2)
            if detail:
                texts.append(detail)
    text = "; ".join(dict.fromkeys(texts))
    accepted: list[str] = []
    refused: dict[str, str] = {}
    dups: list[str] = []
    has_orders = False
    for seg in message.segments:
        if seg.name != "ORC":
            continue
        has_orders = True
        control = message.value(seg, 1).upper()
        awos = message.value(seg, 2, 1)
        if not awos:
            continue
        if control == "OK" and code in ("AA", "CA"):
            accepted.append(awos)
        elif duplicate:
            dups.append(awos)
        else:
            refused[awos] = text or f"the analyzer answered {control or code} without a reason"
    return OrlAnswer(code=code, control_id=message.value(msa, 2), accepted=tuple(accepted), refused=refused,
                     duplicates=tuple(dups), text=text, has_orders=has_orders)


# ---- orders from the LIS ---------------------------------------------------------------------------

LIS_ORDER_TYPES = frozenset({"OML^O21", "OML^O33", "ORM^O01"})


@dataclass(frozen=True, slots=True)
class LisOrder:
    """One sample's order as a LIS sent it (test codes are LIS codes)."""

    sample_id: str
    test_codes: tuple[str, ...]
    priority: OrderPriority = "routine"
    patient_id: str = ""
    placer_ids: tuple[str, ...] = ()


def _priority(code: str) -> OrderPriority:
    return _PRIORITY_CODES.get(code.upper()[:1], "routine")


def read_lis_orders(message: Hl7Message) -> list[LisOrder]:
    """The new orders in an OML^O21, OML^O33 or ORM^O01, one per sample (in the order first seen).

    Where values sit: patient PID-3.1 (else PID-2.1); specimen SPM-2 (placer part, else filler part)
    when there is an SPM, else OBR-2 (placer order number, which v2.3.1 systems use for the sample
    barcode), else ORC-2; test OBR-4.1; priority TQ1-9.1, else ORC-7.6 / OBR-27.6 (v2.3.1 TQ), table
    0485 (S stat, A asap, R routine). Only ORC-1 ``NW`` (new order) is taken: other order controls
    raise :class:`Hl7OrderError`, so the LIS gets AE with the reason and nothing is half-stored.
    """
    if message.message_type not in LIS_ORDER_TYPES:
        raise Hl7OrderError(f"message type {message.message_type} is not an order message labbridge takes "
                            f"({', '.join(sorted(LIS_ORDER_TYPES))})", error_code="200")
    patient = specimen = placer = ""
    priority: OrderPriority = "routine"
    found: dict[str, tuple[list[str], OrderPriority, str, list[str]]] = {}
    saw_orc = False
    for index, seg in enumerate(message.segments, start=1):
        name = seg.name
        if name == "PID":
            patient = message.value(seg, 3, 1) or message.value(seg, 2, 1)
            specimen = ""
        elif name == "SPM":
            specimen = message.value(seg, 2, 1, subcomponent=1) or message.value(seg, 2, 2, subcomponent=1)
        elif name == "ORC":
            saw_orc = True
            control = message.value(seg, 1).upper()
            if control != "NW":
                raise Hl7OrderError(f"order control {control or '(empty)'} in ORC-1 (segment {index}) is not "
                                    "supported: labbridge takes new orders (NW) only", error_code="207")
            placer = message.value(seg, 2, 1)
            priority = _priority(message.value(seg, 7, 6))
        elif name == "TQ1":
            if message.value(seg, 9, 1):
                priority = _priority(message.value(seg, 9, 1))
        elif name == "OBR":
            test = message.value(seg, 4, 1)
            if not test:
                raise Hl7OrderError(f"OBR-4 (test code) is empty in segment {index}", error_code="101")
            sample = specimen or message.value(seg, 2, 1) or placer
            if not sample or sample == '""':
                raise Hl7OrderError(f"no specimen ID (SPM-2, OBR-2 or ORC-2) for the OBR in segment {index}",
                                    error_code="101")
            if message.value(seg, 27, 6):
                priority = _priority(message.value(seg, 27, 6))
            tests, prio, pid, placers = found.setdefault(sample, ([], priority, patient, []))
            if test not in tests:
                tests.append(test)
            if placer and placer not in placers:
                placers.append(placer)
            if prio != priority:  # the highest priority of the sample's tests wins
                found[sample] = (tests, max(prio, priority, key=PRIORITIES.index), pid, placers)
    if not found:
        raise Hl7OrderError("no order in the message (an ORC followed by an OBR with the test in OBR-4)"
                            if saw_orc else "no ORC/OBR segment: nothing to order", error_code="101")
    return [LisOrder(sample_id=s, test_codes=tuple(t), priority=p, patient_id=pid, placer_ids=tuple(pl))
            for s, (t, p, pid, pl) in found.items()]
