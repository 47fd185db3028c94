"""What an ASTM message says besides the values, for the ASTM drivers: patient fields and comments.

Shared by the generic ASTM driver and the profile drivers (:mod:`labbridge.driver_profile`), which keep
their own reading of the values; pure (no I/O).

* Patient (CLSI LIS2-A2 §8): P-4 laboratory-assigned ID, P-5 patient ID No. 3, P-6 name
  (``last^first^middle^suffix^title``), P-7 mother's maiden name, P-8 birth date, P-9 sex, each as sent.
  (P-3, the practice-assigned ID, is ``Result.patient_id``: the drivers read it, some elsewhere.)
* Comments (LIS2-A2 §12, C record): C-4 is the text; each repeat of C-4 is one comment, its non-empty
  components joined by a space (``Notes^^Sputum`` reads ``Notes Sputum``). A C record is about the
  record before it (LIS2-A2 §5.1: comments follow the record they annotate): after a P, the patient;
  after an O, the order; after an R, that result. A C after an R the driver leaves out (a raw signal row,
  say) is about the order, and one before any P is about every order of the message: never dropped.
  C-3 (source) and C-5 (type) are not carried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from labbridge.model import Patient, Result
from labbridge.protocols.e1394 import Record


def patient_from(rec: Record) -> Patient | None:
    """The P record's fields besides P-3, or None when it sends none of them."""
    name = tuple(c.strip() for c in rec.components(6))
    while name and not name[-1]:
        name = name[:-1]
    patient = Patient(lab_id=rec.component(4, 1).strip(), alt_id=rec.component(5, 1).strip(), name=name,
                      mothers_maiden_name=rec.component(7, 1).strip(), birth_date=rec.component(8, 1).strip(),
                      sex=rec.component(9, 1).strip())
    return patient if patient else None


def comment_texts(rec: Record) -> tuple[str, ...]:
    """The comments of one C record: one per repeat of C-4 that says anything."""
    out = []
    for repeat in range(max(1, len(rec.repeats(4)))):
        text = " ".join(c.strip() for c in rec.components(4, repeat) if c.strip())
        if text:
            out.append(text)
    return tuple(out)


class Comments:
    """Collects one message's patients, orders and comments while a driver walks its records, then puts
    them on the results (:meth:`apply`). The driver calls ``patient``/``order``/``result``/``comment`` for
    each P, O, R (kept or not) and C record, in order."""

    __slots__ = ("_last", "_message", "_orders", "_owners", "_patients", "_results")

    def __init__(self) -> None:
        self._patients: list[tuple[Record, list[str]]] = []
        self._orders: list[list[str]] = []
        self._results: dict[int, list[str]] = {}  # index in the driver's results -> comments
        self._owners: dict[int, tuple[int, int]] = {}  # index in the driver's results -> (patient, order)
        self._message: list[str] = []  # comments before any P
        self._last: tuple[str, int] = ("H", -1)

    def patient(self, rec: Record) -> None:
        self._patients.append((rec, []))
        self._last = ("P", len(self._patients) - 1)

    def order(self) -> None:
        self._orders.append([])
        self._last = ("O", len(self._orders) - 1)

    def result(self, index: int | None) -> None:
        """An R record: ``index`` of the result the driver kept for it, None when it left it out."""
        if index is None:
            self._last = ("O", len(self._orders) - 1)
            return
        self._owners[index] = (len(self._patients) - 1, len(self._orders) - 1)
        self._last = ("R", index)

    def comment(self, rec: Record) -> None:
        texts = comment_texts(rec)
        if not texts:
            return
        kind, index = self._last
        if kind == "R":
            self._results.setdefault(index, []).extend(texts)
        elif kind == "O" and index >= 0:
            self._orders[index].extend(texts)
        elif kind == "P":
            self._patients[index][1].extend(texts)
        else:
            self._message.extend(texts)

    def apply(self, results: Sequence[Result]) -> list[Result]:
        """The results with their comments and patient; unchanged (the same objects) when there are none."""
        patients: dict[int, Patient | None] = {}
        orders = [tuple(self._message + notes) for notes in self._orders]
        out = list(results)
        for i, result in enumerate(results):
            owner = self._owners.get(i)
            if owner is None:
                continue  # a result a driver's hook made from another record: no P/O/R of its own
            p, o = owner
            if p not in patients:
                patients[p] = self._patient(p, result.patient_id) if p >= 0 else None
            patient = patients[p]
            order = orders[o] if o >= 0 else ()
            mine = tuple(self._results.get(i, ()))
            if patient is not None or order or mine:
                out[i] = dataclasses.replace(result, patient=patient, order_comments=order, comments=mine)
        return out

    def _patient(self, index: int, patient_id: str) -> Patient | None:
        """Patient ``index``'s fields; an ID the driver took as the patient ID (P-4 or P-5) is not repeated."""
        rec, notes = self._patients[index]
        found = patient_from(rec)
        if found is not None and patient_id and patient_id in (found.lab_id, found.alt_id):
            found = dataclasses.replace(found, lab_id="" if found.lab_id == patient_id else found.lab_id,
                                        alt_id="" if found.alt_id == patient_id else found.alt_id)
            found = found if found else None
        if notes:
            found = dataclasses.replace(found or Patient(), comments=tuple(notes))
        return found


__all__ = ["Comments", "comment_texts", "patient_from"]
