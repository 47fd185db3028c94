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

from labbridge.model import Patient, Result, ResultValues, result_values
from labbridge.protocols.e1394 import Record

_PATIENT_AT = ResultValues._fields.index("patient")
_ORDER_COMMENTS_AT = ResultValues._fields.index("order_comments")
_COMMENTS_AT = ResultValues._fields.index("comments")


def _with_context(result: Result, patient: Patient | None, order_comments: tuple[str, ...],
                  comments: tuple[str, ...]) -> Result:
    """``dataclasses.replace(result, patient=..., order_comments=..., comments=...)``, at half its cost (it
    runs for every result of a message that carries a patient)."""
    values = list(result_values(result))
    values[_PATIENT_AT] = patient
    values[_ORDER_COMMENTS_AT] = order_comments
    values[_COMMENTS_AT] = comments
    return Result(*values)


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

    __slots__ = ("_last", "_message", "_orders", "_orders_done", "_owners", "_patients", "_patients_done",
                 "_results")

    def __init__(self) -> None:
        self._patients: list[tuple[Record, list[str]]] = []
        self._orders: list[list[str]] = []
        self._results: dict[int, list[str]] = {}  # index in the driver's results -> comments
        self._owners: dict[int, tuple[int, int]] = {}  # index in the driver's results -> (patient, order)
        self._message: list[str] = []  # comments before any P
        self._last: tuple[str, int] = ("H", -1)
        # Filled by about() once every record is read: each order's comments, each patient (None: nothing).
        self._orders_done: list[tuple[str, ...]] | None = None
        self._patients_done: dict[int, Patient | None] = {}

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
        out = list(results)
        for i, result in enumerate(results):
            extra = self.about(i, result.patient_id)
            if extra is not None:
                out[i] = _with_context(result, *extra)
        return out

    def about(self, index: int, patient_id: str) -> tuple[Patient | None, tuple[str, ...], tuple[str, ...]] | None:
        """What the message says about result ``index`` besides its R record, once every record is read:
        ``(patient, order comments, comments)``, or None when it says nothing (or the result has no P/O/R of
        its own: a driver's hook made it from another record). ``patient_id`` is the result's
        ``Result.patient_id`` (an ID the driver took from P-4 or P-5 is not repeated in the patient).
        :meth:`apply` puts these on built results; a driver may pass them to ``Result`` itself instead, which
        builds each result once."""
        owner = self._owners.get(index)
        if owner is None:
            return None
        p, o = owner
        if self._orders_done is None:
            self._orders_done = [tuple(self._message + notes) for notes in self._orders]
        patients = self._patients_done
        if p not in patients:
            patients[p] = self._patient(p, patient_id) if p >= 0 else None
        patient = patients[p]
        order = self._orders_done[o] if o >= 0 else ()
        mine = tuple(self._results.get(index, ()))
        if patient is not None or order or mine:
            return patient, order, mine
        return None

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
