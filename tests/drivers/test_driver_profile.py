"""The declarative driver base: paths, conditions, hierarchy rules, profile validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from labbridge.driver import DecodeContext, load_driver, load_driver_class
from labbridge.driver_profile import FieldPath, ProfileAstmDriver, ProfileError, load_profile
from labbridge.errors import DecodeError, DriverLoadError
from labbridge.protocols.e1394 import parse_records

FAMILIES = ["sysmex-xn", "roche-cobas", "abbott-architect", "horiba-yumizen", "cepheid-genexpert"]
FAMILIES += ["sysmex-xp", "abbott-afinion2", "siemens-dca-vantage", "roche-cobas-c111"]  # issue 20, part 7
CTX = DecodeContext(instrument="t")


def test_paths_read_fields_components_and_repeats() -> None:
    (rec,) = parse_records([b"R|1|^^^^WBC^1|7.8|10&S&3/uL||H\\W"])
    assert FieldPath.parse("R.3.5").read(rec) == ["WBC"]
    assert FieldPath.parse("R.5").read(rec) == ["10^3/uL"]
    assert FieldPath.parse("R.7[*]").read(rec) == ["H", "W"]
    assert FieldPath.parse("R.7[2]").read(rec) == ["W"]
    assert FieldPath.parse("R.40.2").read(rec) == [""]
    for bad in ("R3", "X.3", "R.0", "R.3.", "R.3[0]"):
        with pytest.raises(ValueError, match="not a field path"):
            FieldPath.parse(bad)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_is_a_profile_driver_with_metadata_from_its_profile(name: str) -> None:
    cls = load_driver_class(name)
    assert issubclass(cls, ProfileAstmDriver)
    assert cls.name == cls.profile.driver.name == name
    assert cls.models == tuple(cls.profile.driver.models)
    assert cls.profile.link.framing == "e1381"


@pytest.mark.parametrize("name", FAMILIES)
def test_hierarchy_result_without_order_and_order_without_patient(name: str) -> None:
    driver = load_driver(name)
    with pytest.raises(DecodeError) as err:
        driver.decode([b"H|\\^&", b"P|1", b"R|1|^^^^GLU^1|1", b"L|1|N"], CTX)
    assert err.value.record_index == 2
    with pytest.raises(DecodeError) as err:
        driver.decode([b"H|\\^&", b"O|1|S1|S1|^^^^GLU", b"L|1|N"], CTX)
    assert err.value.record_index == 1
    # A new patient ends the previous patient's orders.
    with pytest.raises(DecodeError) as err:
        driver.decode([b"H|\\^&", b"P|1", b"O|1|S1|^^S1|^^^1^A", b"P|2", b"R|1|^^^1^A^1|1", b"L|1|N"], CTX)
    assert err.value.record_index == 4


def test_bad_delimiters_are_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        load_driver("sysmex-xn").decode([b"H|||||", b"L|1|N"], CTX)


def test_qc_conditions_flags_qualitative_and_status() -> None:
    driver = load_driver("cepheid-genexpert")
    records = [b"H|@^\\|id||GX^GeneXpert^6.4|||||LIS||P|1394-97|20261123100000", b"P|1",
               b"O|1|S9||^^^CTNG|R||||||Q", b"R|1|^^^CTNG^Xpert CT_NG^3^^|pos^|||N||F@C", b"L|1|N"]
    (r,) = driver.decode(records, DecodeContext(instrument="t", test_map={"CTNG": "LIS-CTNG"})).results
    assert (r.kind, r.value, r.status, r.flags, r.test_code) == ("qc", "POSITIVE", "correction", (), "LIS-CTNG")


def test_invalid_profile_names_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "profile.toml"
    bad.write_text('[driver]\nname = "x"\nvendor = "v"\nmodels = ["m"]\n[fields]\ntest_code = "R.three"\n'
                   '[qc]\nany = [{ path = "O.12", equals = "Q", prefix = "Q" }]\n')
    with pytest.raises(ProfileError) as err:
        load_profile(bad)
    text = str(err.value)
    assert str(bad) in text and "fields.test_code" in text and "qc.any.0" in text


def test_a_driver_with_a_broken_profile_fails_to_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labbridge import driver as registry

    pkg = tmp_path / "labbridge_driver_broken_profile"
    pkg.mkdir()
    (pkg / "profile.toml").write_text("[driver]\nname = 'broken'\n")
    (pkg / "__init__.py").write_text(
        "from pathlib import Path\nfrom labbridge.driver_profile import ProfileAstmDriver, load_profile\n"
        "class D(ProfileAstmDriver):\n    profile = load_profile(Path(__file__).with_name('profile.toml'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN_DRIVERS, "broken-profile", "labbridge_driver_broken_profile:D")
    with pytest.raises(DriverLoadError, match=r"broken-profile.*ProfileError.*driver\.vendor"):
        load_driver_class("broken-profile")
    assert load_driver_class("sysmex-xn").name == "sysmex-xn"
