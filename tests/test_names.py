"""Name lists for identity inference decoys and the zoo's pseudonymous people."""

from __future__ import annotations

import pytest

from audit_lib import names


def test_lists_come_from_faker_for_every_locale():
    for loc in names.LOCALES:
        lists = names.name_lists(loc)
        assert len(lists.first["f"]) >= 50 and len(lists.first["m"]) >= 50 and len(lists.last) >= 100
        assert len(set(lists.last)) == len(lists.last)
    us = names.name_lists("en_US")
    assert "Smith" in us.last and "Abigail" in us.first["f"] and "James" in us.first["m"]


def test_decoys_are_distinct_balanced_by_sex_and_reproducible():
    decoys = names.decoy_names(1000)
    assert len(decoys) == 1000 and len({d.casefold() for d in decoys}) == 1000
    assert decoys == names.decoy_names(1000)
    assert decoys != names.decoy_names(1000, seed=43)
    assert all(len(d.split(" ")) >= 2 for d in decoys)

    def sex_of(full: str) -> set[str]:
        first = full.split(" ")[0]
        return {s for loc in names.LOCALES for s in names.SEXES if first in names.name_lists(loc).first[s]}

    female = sum("f" in sex_of(d) and "m" not in sex_of(d) for d in decoys)
    male = sum("m" in sex_of(d) and "f" not in sex_of(d) for d in decoys)
    assert abs(female - male) < 60 and female + male > 850  # 500/500 up to unisex first names


def test_decoys_by_sex_and_locale():
    de = names.name_lists("de_DE")
    women = names.decoy_names(40, sex="f", locale="de_DE")
    assert all(w.split(" ")[0] in de.first["f"] and w.split(" ", 1)[1] in de.last for w in women)
    men = names.decoy_names(40, sex="m", locale="de_DE")
    assert all(m.split(" ")[0] in de.first["m"] for m in men)


def test_decoys_exclude_true_names_case_insensitively():
    first = names.decoy_names(200, locale="en_US")
    excluded = first[:50]
    again = names.decoy_names(200, locale="en_US", exclude=[e.upper() for e in excluded])
    assert not {a.casefold() for a in again} & {e.casefold() for e in excluded}


def test_bad_requests_are_refused_with_a_message():
    with pytest.raises(names.NamesError, match="sex 'x'"):
        names.decoy_names(3, sex="x")
    with pytest.raises(names.NamesError, match="locale 'xx_XX'"):
        names.decoy_names(3, locale="xx_XX")
    with pytest.raises(names.NamesError, match="only allow about"):
        names.decoy_names(10**9, sex="f", locale="fr_FR")
    with pytest.raises(names.NamesError, match="3 given for 2"):
        names.pseudonymous_names(2, sexes=["f", "m", "f"])


def test_pseudonymous_people_are_fixed_distinct_and_match_sex():
    sexes = ["f", "m", "m", "f"] * 10
    people = names.pseudonymous_names(40, seed=2024, sexes=sexes)
    assert people == names.pseudonymous_names(40, seed=2024, sexes=sexes)
    assert len({p.name for p in people}) == 40
    for p, s in zip(people, sexes):
        assert p.sex == s and p.name.split(" ")[0] in names.name_lists(p.locale).first[s]
    assert str(people[0]) == people[0].name
