"""Per-family traffic for the simulated ASTM analyzer: each family's record layout, codes, flags, QC runs.

Each factory mirrors one driver in ``drivers/`` and the captures it ships (whose docstrings cite the
vendor documents): the same fields in the same places, the family's test codes, flags and status codes,
and a QC run every ``qc_every`` messages in the family's way of marking QC. ``next()`` returns a
:class:`~labbridge_simulators.astm_analyzer.SimMessage` whose ``results`` are the identities the LIS must
receive (instrument, sample, instrument test code *as the driver reports it*, value). The sample IDs of QC
runs are collected in ``qc_samples`` so a test can check that the daemon stored them as QC.

Host queries: a family in ``QUERY_FAMILIES`` (Ortho VITROS) can ask the host about a sample first
(``query``, driven by the simulator's ``query_share``) and then run only the tests the host ordered
(``results_for(sample, codes)``), as :class:`~labbridge_simulators.astm_analyzer.MessageFactory` does.

Framing: every family is sent with standard E1381 framing (one record per frame). Roche cobas analyzers
send a whole message in one frame; the E1381 core's sender cannot do that yet (the link-dialect work adds
it), so the cobas simulator differs from the real analyzer in framing only. Its captures carry the
one-frame form. The families added for issue 20 part 7 whose analyzers send a whole message in one frame
(Sysmex XP and the others in ``LINK_DIALECTS`` with ``one_frame_per_message``) are sent that way.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from labbridge.protocols import e1381
from labbridge_simulators.astm_analyzer import ResultIdentity, SimMessage

FAMILIES = ("sysmex-xn", "roche-cobas", "abbott-architect", "horiba-yumizen", "cepheid-genexpert", "snibe-maglumi",
            "ortho-vitros", "siemens-advia", "beckman-dxh", "sysmex-un",
            # issue 20, part 7 (more families)
            "sysmex-xp", "abbott-afinion2", "siemens-dca-vantage", "roche-cobas-c111")
# Families whose analyzers ask the host for a sample's orders first (host query, ``query_share`` > 0).
QUERY_FAMILIES = frozenset({"ortho-vitros"})

# The E1381 dialect each family's analyzer speaks, where it is not the standard (the driver's link defaults).
LINK_DIALECTS: dict[str, e1381.LinkProfile] = {
    "snibe-maglumi": e1381.LinkProfile(frame_numbers=False, checksums=False),
    # issue 20, part 7: families whose analyzers send a whole message (H to L) in one frame
    "sysmex-xp": e1381.LinkProfile(one_frame_per_message=True),
    "abbott-afinion2": e1381.LinkProfile(one_frame_per_message=True),
    "siemens-dca-vantage": e1381.LinkProfile(one_frame_per_message=True),
}


def link_dialect(family: str) -> e1381.LinkProfile | None:
    """The link profile a family's simulated analyzer speaks (None: standard LIS1-A framing)."""
    return LINK_DIALECTS.get(family)


@dataclass(frozen=True, slots=True)
class Param:
    code: str
    units: str
    low: float
    high: float
    decimals: int = 1
    extra: str = ""  # family-specific: Horiba LOINC, Architect assay name


SYSMEX = (Param("WBC", "10*3/uL", 4.0, 10.0, 2), Param("RBC", "10*6/uL", 4.0, 5.5, 2),
          Param("HGB", "g/dL", 12.0, 16.0), Param("HCT", "%", 36, 48), Param("MCV", "fL", 80, 100),
          Param("PLT", "10*3/uL", 150, 400, 0), Param("NEUT#", "10*3/uL", 1.8, 7.5, 2),
          Param("LYMPH#", "10*3/uL", 1.0, 4.0, 2))
COBAS = (Param("687", "U/L", 7, 56, 0), Param("767", "mmol/L", 3.9, 6.1), Param("690", "umol/L", 59, 104, 0),
         Param("10", "uIU/mL", 0.27, 4.2, 2), Param("20", "pmol/L", 12, 22))
ARCHITECT = (Param("16", "uIU/mL", 0.35, 4.94, 3, "TSH"), Param("196", "ng/mL", 10, 291, 1, "Ferritin"),
             Param("580", "S/CO", 0, 1, 2, "Anti-HBcII"), Param("531", "AU/mL", 0, 6, 1, "CMV IgG"))
ARCHITECT_QUALITATIVE = {"580": 1.0, "531": 6.0}  # assay -> cut-off: interpretation row sent too
HORIBA = (Param("WBC", "10^3/uL", 4.0, 10.0, 1, "26464-8"), Param("RBC", "10^6/uL", 4.0, 5.5, 2, "26453-1"),
          Param("HGB", "g/dL", 12.0, 16.0, 1, "718-7"), Param("PLT", "10^3/uL", 150, 400, 0, "777-3"),
          Param("MCV", "fL", 80, 100, 0, "30428-7"))
MAGLUMI = (Param("TSH", "uIU/mL", 0.3, 4.5, 2), Param("FT4", "pmol/L", 12.0, 22.0, 1),
           Param("FT3", "pmol/L", 3.1, 6.8, 2), Param("FER", "ng/mL", 30, 400, 0), Param("PCT", "ng/mL", 0.0, 0.5, 2))
VITROS = (Param("GLU", "mmol/L", 3.9, 6.1), Param("CREA", "umol/L", 59, 104, 0), Param("NA", "mmol/L", 136, 145, 0),
          Param("K", "mmol/L", 3.5, 5.1), Param("TSH", "mIU/L", 0.4, 4.0, 2))
ADVIA = (Param("TSH3UL", "uIU/mL", 0.55, 4.78, 3), Param("FT4", "ng/dL", 0.89, 1.76, 2),
         Param("PSA", "ng/mL", 0.0, 4.0, 2), Param("HBsII", "Index", 0.0, 1.0, 2), Param("TnIH", "ng/L", 0, 45, 0))
ADVIA_QUALITATIVE = {"HBsII": 1.0}  # assay -> index cut-off: an INTERP row is sent too
DXH = (Param("WBC", "10*3/uL", 4.0, 10.0, 2), Param("RBC", "10*6/uL", 3.9, 5.2, 2), Param("HGB", "g/dL", 12.0, 15.5),
       Param("HCT", "%", 36.0, 46.0), Param("MCV", "fL", 80, 100), Param("PLT", "10*3/uL", 150, 400, 0))
# Sysmex UN (urinalysis through U-WAM): strip parameters send grades; the driver's [qualitative] table turns
# "-" into NEG, "+-" into TRACE, "normal" into NORMAL, so each grade is listed as sent and as reported.
UN_STRIP = (("GLU", (("-", "NEG"), ("+-", "TRACE"), ("1+", "1+"), ("3+", "3+"))),
            ("PRO", (("-", "NEG"), ("+-", "TRACE"), ("1+", "1+"), ("2+", "2+"))),
            ("BLD", (("-", "NEG"), ("+-", "TRACE"), ("2+", "2+"))),
            ("UBG", (("normal", "NORMAL"), ("1+", "1+"))))
UN_SEDIMENT = (Param("RBC", "/uL", 0.0, 25.0), Param("WBC", "/uL", 0.0, 20.0))
XP = (Param("WBC", "10*3/uL", 4.0, 10.0, 1), Param("RBC", "10*6/uL", 4.0, 5.5, 2), Param("HGB", "g/dL", 12.0, 16.0),
      Param("HCT", "%", 36.0, 48.0), Param("PLT", "10*3/uL", 150, 400, 0), Param("LYM%", "%", 20.0, 45.0))
AFINION = (Param("HbA1c", "%", 4.0, 6.0, 1), Param("CRP", "mg/L", 5.0, 10.0, 0), Param("ACR", "mg/g", 0.0, 30.0, 1))
DCA_ACR = (Param("Alb", "mg/L", 0.0, 30.0, 1), Param("Crt", "mg/dL", 20.0, 300.0, 1),
           Param("Ratio", "mg/g", 0.0, 30.0, 1))
DCA_A1C = Param("HbA1c", "%", 4.0, 6.0, 1)
C111 = (Param("687", "U/L", 7, 56, 1), Param("767", "mmol/L", 3.9, 6.1), Param("550", "U/L", 40, 129, 1),
        Param("798", "mmol/L", 3.0, 5.2, 2))
GENEXPERT = (("MTB", "Xpert MTB-RIF Ultra", ("MTB NOT DETECTED", "MTB DETECTED LOW", "MTB DETECTED MEDIUM")),
             ("SARSCOV2", "Xpert Xpress SARS-CoV-2", ("NEGATIVE", "POSITIVE")),
             ("CTNG", "Xpert CT_NG", ("CT NOT DETECTED", "CT DETECTED")))


def _esc(text: str) -> str:
    """LIS2-A2 escapes for the default delimiters (a '^' in units is sent as &S&)."""
    return text.replace("&", "&E&").replace("|", "&F&").replace("\\", "&R&").replace("^", "&S&")


@dataclass
class FamilyFactory:
    """Messages in one family's dialect. ``qc_every=N``: every Nth message is a QC run."""

    family: str
    instrument: str
    sample_prefix: str
    seed: int | None = None
    panel_size: int = 5
    qc_every: int = 5
    counter: int = 0
    qc_samples: set[str] = field(default_factory=set)
    rng: random.Random = field(init=False)
    _requested: tuple[str, ...] = ()  # the tests the host ordered for the message being built

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(FAMILIES)}")
        self.rng = random.Random(self.seed)

    def sample_id(self, number: int) -> str:
        """The ID of the ``number``-th sample (1-based) when it is not a QC run: lets a test order it."""
        return f"{self.sample_prefix}{number:06d}"

    def new_sample(self) -> str:
        """The next sample ID; every ``qc_every``-th is a QC run (its ID starts ``QC-``)."""
        self.counter += 1
        qc = self.qc_every > 0 and self.counter % self.qc_every == 0
        sample = f"{'QC-' if qc else ''}{self.sample_id(self.counter)}"
        if qc:
            self.qc_samples.add(sample)
        return sample

    def next(self, now: datetime | None = None) -> SimMessage:
        return self.results_for(self.new_sample(), now=now)

    def results_for(self, sample: str, codes: tuple[str, ...] = (), now: datetime | None = None) -> SimMessage:
        """Results for ``sample``: of the tests in ``codes`` that are on the panel (the host's orders), else
        of the whole panel."""
        now = now or datetime.now()
        build: Callable[[str, bool, str], tuple[list[str], list[ResultIdentity]]] = {
            "sysmex-xn": self._sysmex, "roche-cobas": self._cobas, "abbott-architect": self._architect,
            "horiba-yumizen": self._horiba, "cepheid-genexpert": self._genexpert,
            "snibe-maglumi": self._maglumi, "ortho-vitros": self._vitros, "siemens-advia": self._advia,
            "beckman-dxh": self._dxh, "sysmex-un": self._un,
            "sysmex-xp": self._xp, "abbott-afinion2": self._afinion, "siemens-dca-vantage": self._dca,
            "roche-cobas-c111": self._c111,
        }[self.family]
        self._requested = codes
        try:
            records, identities = build(sample, sample in self.qc_samples, now.strftime("%Y%m%d%H%M%S"))
        finally:
            self._requested = ()
        return SimMessage(tuple(r.encode("latin-1") for r in records), tuple(identities))

    def query(self, sample: str, now: datetime | None = None) -> SimMessage:
        """A host query for ``sample``, all tests, in the family's form (VITROS: J32799 §4.5)."""
        if self.family not in QUERY_FAMILIES:
            raise ValueError(f"family {self.family!r} sends no host queries (those that do: "
                             f"{', '.join(sorted(QUERY_FAMILIES))})")
        ts = (now or datetime.now()).strftime("%Y%m%d%H%M%S")
        records = (f"H|\\^&|||VITROS5600^3.7.2^{self.instrument}|||||LIS||P|LIS2-A2|{ts}",
                   f"Q|1|^{sample}||ALL||||||||O", "L|1|N")
        return SimMessage(tuple(r.encode("latin-1") for r in records), (), query_for=sample)

    # ---- helpers -----------------------------------------------------------------------------

    def _panel(self, params: tuple[Param, ...]) -> list[Param]:
        ordered = [p for p in params if p.code in self._requested]
        return ordered or list(params[:max(1, min(self.panel_size, len(params)))])

    def _value(self, p: Param) -> tuple[str, str]:
        spread = p.high - p.low
        v = max(self.rng.uniform(p.low - spread * 0.3, p.high + spread * 0.3), 0.0)
        return f"{v:.{p.decimals}f}", "H" if v > p.high else "L" if v < p.low else "N"

    def _patient(self) -> str:
        return f"PAT{self.rng.randrange(10**6):06d}"

    # ---- families ----------------------------------------------------------------------------

    def _sysmex(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(SYSMEX)
        recs = [f"H|\\^&|||XN-1000^00-24^13126^^^^{self.instrument}||||||||E1394-97",
                "P|1" if qc else f"P|1|||{self._patient()}|^DUPONT^JANE||19700101|F",
                f"O|1||^^{sample:>22}^B|" + "\\".join(f"^^^^{p.code}" for p in panel)
                + f"|||||||{'Q' if qc else 'N'}||||||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^^{p.code}^1|{value:>6}|{p.units}||{'' if qc else flag}||||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _cobas(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(COBAS)
        recs = ["H|\\^&|||cobas-c311^1|||||host|RSUPL^REAL|P|1",
                "P|1" if qc else f"P|1||{self._patient()}||MARTIN^LUC",
                f"O|1|{sample}|0^801^3^^S1^SC|" + "\\".join(f"^^^{p.code}" for p in panel)
                + f"|R||||||{'Q' if qc else 'N'}||||1|||||||{ts}|||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^{p.code}/1/not|{value}|{p.units}|{p.low}\\{p.high}|{flag}||F||admin|{ts}|{ts}|E11")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _architect(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        p = ARCHITECT[(self.counter - 1) % min(self.panel_size, len(ARCHITECT))]
        test = f"^^^{p.code}^{p.extra}^UNDILUTED^P"
        recs = ["H|\\^&|||ARCHITECT^9.45^F3452430028^H1P1O1R1C1Q1L1|||||||P|1|" + ts,
                "P|1|||||||U" if qc else f"P|1|{self._patient()}||||||U",
                f"O|1|{sample}|{sample}^C101^1|{test}|R||||||{'Q' if qc else ''}||||||||||||||F"]
        value, flag = self._value(p)
        lot = "^12345LI00^09876^" + ("40123L100" if qc else "")
        recs.append(f"R|1|{test}{lot}^F|{value}|{p.units}||{flag}||F||ADMIN^ADMIN||{ts}|i1SR52842")
        ids: list[ResultIdentity] = [(self.instrument, sample, p.code, value)]
        cutoff = ARCHITECT_QUALITATIVE.get(p.code)
        if cutoff is not None:
            word = "Reactive" if float(value) >= cutoff else "Nonreactive"
            recs.append(f"R|2|{test}{lot}^I|{word}|||||F||ADMIN^ADMIN||{ts}|i1SR52842")
            ids.append((self.instrument, sample, f"{p.code}-I", word.upper()))
        rlu = self.rng.randrange(500, 90000)
        recs.append(f"R|{len(recs) - 2}|{test}{lot}^P|{rlu}|RLU||||F||ADMIN^ADMIN||{ts}|i1SR52842")
        return [*recs, "L|1"], ids

    def _horiba(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(HORIBA)
        recs = [f"H|\\^&|||H500^CT^2.1.0^{self.instrument}|||||||{'Q' if qc else 'P'}|LIS2-A2|{ts}",
                "P|1" if qc else f"P|1||{self._patient()}||LAMBERT^SOPHIE||19851212|F",
                f"O|1|{sample}||^^^^CBC|R|{ts}|||||N||||BLOOD||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^^{p.code}^{p.extra}|{value}|{_esc(p.units)}|{p.low}-{p.high}|{flag}||F||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _genexpert(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        code, name, outcomes = GENEXPERT[(self.counter - 1) % len(GENEXPERT)]
        outcome = outcomes[-1] if qc else self.rng.choice(outcomes)
        recs = [f"H|@^\\|GXM-{self.counter:011d}||{self.instrument}^GeneXpert^6.4|||||LIS||P|1394-97|{ts}",
                "P|1" if qc else f"P|1|||{self._patient()}|PEETERS^LUC",
                f"O|1|{sample}||^^^{code}|R|{ts}|||||{'Q' if qc else ''}||||ORH|||||||||||F",
                f"R|1|^^^{code}^{name}^4^^|{outcome}^|||||F||Operator One|{ts}|{ts}|Cepheid-1F28376^110012723",
                f"R|2|^^^{code}^^^{code}-target^|POS^|||",
                f"R|3|^^^{code}^^^{code}-target^Ct|^{self.rng.uniform(15, 38):.1f}|||",
                "L|1|N"]
        return recs, [(self.instrument, sample, code, outcome)]

    def _maglumi(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(MAGLUMI)
        recs = [f"H|\\^&|||MAGLUMI|||||Host|||1|{ts}",
                "P|1" if qc else f"P|1|{self._patient()}|||DUBOIS^MARIE||19650102|F||||||61^Y",
                f"O|1|{sample}||" + "\\".join(f"^^^{p.code}" for p in panel)
                + f"|R|{ts}|||||{'Q' if qc else 'N'}||||SERUM||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^{p.code}|{value}|{p.units}|{p.low}-{p.high}|{'' if qc else flag}||F||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _vitros(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(VITROS)
        recs = [f"H|\\^&|||VITROS5600^3.7.2^{self.instrument}|||||LIS||{'Q' if qc else 'P'}|LIS2-A2|{ts}",
                "P|1" if qc else f"P|1||{self._patient()}||MARTIN^PAUL||19580412|M",
                f"O|1|{sample}||" + "\\".join(f"^^^{p.code}" for p in panel)
                + f"|R|{ts}|||||{'Q' if qc else 'N'}||||5||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^{p.code}|{value}|{p.units}|{p.low}-{p.high}|{'' if qc else flag}||F||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _advia(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(ADVIA)
        recs = [f"H|\\^&|||ADVIA Centaur XPT^1.0^{self.instrument}|||||LIS||P|1|{ts}",
                "P|1" if qc else f"P|1||{self._patient()}||PEETERS^AN||19720311|F",
                f"O|1|{sample}||" + "\\".join(f"^^^{p.code}" for p in panel)
                + f"|R|{ts}|||||{'Q' if qc else 'N'}||||SER||||||||||F"]
        ids: list[ResultIdentity] = []
        for p in panel:
            value, flag = self._value(p)
            n = len(recs) - 2
            aspect = "INDX" if p.code in ADVIA_QUALITATIVE else "DOSE"
            recs.append(f"R|{n}|^^^{p.code}^{aspect}|{value}|{p.units}|{p.low}-{p.high}|{'' if qc else flag}||F"
                        f"||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
            cutoff = ADVIA_QUALITATIVE.get(p.code)
            if cutoff is not None:
                word = "Reactive" if float(value) >= cutoff else "NonReactive"
                recs.append(f"R|{n + 1}|^^^{p.code}^INTERP|{word}|||||F||||{ts}")
                ids.append((self.instrument, sample, f"{p.code}-I", word.upper()))
            recs.append(f"R|{len(recs) - 2}|^^^{p.code}^RLU|{self.rng.randrange(1000, 900000)}|RLU||||F||||{ts}")
        return [*recs, "L|1|N"], ids

    def _dxh(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(DXH)
        recs = [f"H|\\^&|||DxH800^3.0.1.0^{self.instrument}|||||LIS||P|LIS2-A2|{ts}",
                "P|1" if qc else f"P|1||{self._patient()}||JANSSENS^LIES||19900707|F",
                f"O|1|{sample}||^^^CBC|R|{ts}|||||{'Q' if qc else 'N'}||||WB||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^{p.code}|{value}|{p.units}|{'' if qc else f'{p.low}-{p.high}'}|"
                        f"{'' if qc else flag}||F||||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _un(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        codes = [c for c, _ in UN_STRIP] + [p.code for p in UN_SEDIMENT]
        wanted = [c for c in codes if c in self._requested] or codes[:max(1, self.panel_size)]
        recs = [f"H|\\^&|||U-WAM^00-09^{self.instrument}||||||||E1394-97|{ts}",
                "P|1" if qc else f"P|1||{self._patient()}||DUBOIS^ANNE||19720314|F",
                f"O|1|{'' if qc else sample}|^^{sample:>28}^B|^^^^GLU|R|{ts}|||||{'Q' if qc else 'N'}||||URINE"
                f"||||||||||F"]
        ids: list[ResultIdentity] = []
        for code, grades in UN_STRIP:
            if code in wanted:
                sent, reported = self.rng.choice(grades)
                flag = "" if qc else "N" if reported in ("NEG", "NORMAL") else "A"
                recs.append(f"R|{len(recs) - 2}|^^^^{code}^1|{sent}|||{flag}||F||||{ts}")
                ids.append((self.instrument, sample, code, reported))
        for p in UN_SEDIMENT:
            if p.code in wanted:
                value, flag = self._value(p)
                recs.append(f"R|{len(recs) - 2}|^^^^{p.code}^1|{value}|{p.units}|{p.low}-{p.high}|"
                            f"{'' if qc else flag}||F||||{ts}")
                ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    # ---- issue 20, part 7: more families ------------------------------------------------------------

    def _xp(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        panel = self._panel(XP)
        recs = [f"H|\\^&|||XP-300^00-13^^^^{self.instrument}^BS612877||||||||E1394-97", "P|1",
                f"O|1||^^{sample:>15}^B|" + "\\".join(f"^^^^{p.code}" for p in panel)
                + f"|||||||{'Q' if qc else 'N'}||||||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs.append(f"R|{i}|^^^^{p.code}^1|{value:>5}|{p.units}||{'N' if qc else flag}||||OPERATOR1      ||{ts}")
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _afinion(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        # One cartridge, one assay per message; no barcode: the sample ID rides in O-4 (the record number).
        p = next((q for q in AFINION if q.code in self._requested), AFINION[(self.counter - 1) % len(AFINION)])
        value, flag = self._value(p)
        recs = [f"H|\\^&|||Afinion 2 Analyzer^^{self.instrument}|||||||{'Q' if qc else 'P'}|1|{ts}",
                f"P|1||{'' if qc else self._patient()}|||||U",
                f"O|1||{sample}|^^^{p.code}|||||||N||||^{'O' if qc else 'C'}||||||||^10231187||F",
                f"R|1|^^^{p.code}|{value}|{p.units}||{'' if qc or flag == 'N' else flag}||F||NURSE01||{ts}",
                "L|1|N"]
        return recs, [(self.instrument, sample, p.code, value)]

    def _dca(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        # Alternating cartridges: an HbA1c, then a microalbumin/creatinine run (three results); the sample ID
        # rides in O-4 (the analyzer's sequence number), a C record follows each result.
        wanted = [p for p in (DCA_A1C, *DCA_ACR) if p.code in self._requested]
        panel = wanted or ([DCA_A1C] if self.counter % 2 else list(DCA_ACR))
        recs = [f"H|\\^&|||DCA VANTAGE^04.04.00.00^{self.instrument}|||||||P||{ts}",
                "P|1" if qc else f"P|1|{self._patient()}|||MARTIN^LUC",
                f"O|1||{sample}^0101||||||||{'Q' if qc else ''}||||||||||||||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            recs += [f"R|{i}|^^^{p.code}|{value}|{p.units}||{'' if flag == 'N' else flag}||F|||{ts}",
                     f"C|1|I|1.000^0.0 {p.units}|G"]
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids

    def _c111(self, sample: str, qc: bool, ts: str) -> tuple[list[str], list[ResultIdentity]]:
        # Sample ID in O-4 (O-3 empty), no patient; every result followed by its C and M (raw data) records.
        # The real c 111 ends its intermediate frames with ETB; the simulator's sender frames record by record.
        panel = self._panel(C111)
        recs = [f"H|\\^&|||C111^Roche^c111^4.2.2.1730^1^{self.instrument}|||||host|RSUPL^REAL|P|1|{ts}", "P|1||",
                f"O|1||{sample}^^4{'^^^1' if qc else ''}||R||||||{'Q' if qc else 'N'}|||||||||||{ts}|||F"]
        ids: list[ResultIdentity] = []
        for i, p in enumerate(panel, 1):
            value, flag = self._value(p)
            raw = self.rng.randrange(90, 600)
            recs += [f"R|{i}|^^^{p.code}|{value}|{p.units}||{flag}||F||$SYS$||{ts}", "C|1|I||I",
                     f"M|1|RR^BM^c111^1|{raw}|{raw}\\{raw - 2}\\{raw * 3}|0.004217"]
            ids.append((self.instrument, sample, p.code, value))
        return [*recs, "L|1|N"], ids
