"""Name lists for people: first names by sex and surnames, from Faker's locale providers.

Identity inference ranks a subject's true name against
decoy names: random "first last" combinations of common first names and surnames, equal
numbers per sex, fixed seed. The published IDIA code drew them from US baby-name and
census lists; we read the same kind of lists from Faker's person providers, which ship
inside the installed ``faker`` wheel (no network), for several locales so that decoys can
be matched to the origin of the subject's name. The reference zoo also uses these lists to
give each face identity a fixed pseudonymous full name (:func:`pseudonymous_names`).

Where we depart from the published setting: names are drawn uniformly from each locale's
list (Faker's frequency weights are not used), and several locales are mixed unless one is
asked for. First and last name of one decoy always come from the same locale.
Random combinations can coincide with a real person's name; no list of public figures is
available offline to exclude them.
"""

from __future__ import annotations

import importlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

#: Locales whose Faker person provider has first names by sex and sex-neutral surnames
#: in Latin script.
LOCALES: tuple[str, ...] = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL",
                            "sv_SE", "pt_BR")
SEXES: tuple[str, ...] = ("f", "m")
_NAME_RE = re.compile(r"^[^\W\d_][^\W\d_'\-]*(?:[ '\-][^\W\d_]+)*$")


class NamesError(ValueError):
    """A request for names that cannot be met (unknown locale or sex, too many names)."""


@dataclass(frozen=True)
class NameLists:
    """One locale's first names by sex and its surnames (deduplicated, in Faker's order)."""

    locale: str
    first: dict[str, tuple[str, ...]]  # sex ("f"/"m") -> first names
    last: tuple[str, ...]


@dataclass(frozen=True)
class NamedPerson:
    """A pseudonymous person: full name, sex (for decoy matching) and the name's locale."""

    name: str
    sex: str
    locale: str

    def __str__(self) -> str:
        return self.name


def _clean(names: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for raw in names:
        name = " ".join(str(raw).split())
        if name and _NAME_RE.match(name):
            seen.setdefault(name, None)
    return tuple(seen)


@lru_cache(maxsize=None)
def name_lists(locale: str) -> NameLists:
    """The name lists of one locale, read from ``faker.providers.person.<locale>``."""
    if locale not in LOCALES:
        raise NamesError(f"locale {locale!r}: not one of {', '.join(LOCALES)}")
    provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
    female = _clean(provider.first_names_female)
    male = _clean(provider.first_names_male)
    last = _clean(provider.last_names)
    if not female or not male or not last:
        raise NamesError(f"locale {locale!r}: Faker's provider lacks first names by sex or surnames")
    return NameLists(locale=locale, first={"f": female, "m": male}, last=last)


def _check(sex: str | None, locale: str | None) -> None:
    if sex is not None and sex not in SEXES:
        raise NamesError(f"sex {sex!r}: expected 'f' or 'm'")
    if locale is not None and locale not in LOCALES:
        raise NamesError(f"locale {locale!r}: not one of {', '.join(LOCALES)}")


def _draw(rng: random.Random, count: int, sex: str, locales: Sequence[str],
          taken: set[str]) -> list[tuple[str, str]]:
    """``count`` distinct (full name, locale) of one sex, none of them in ``taken``."""
    capacity = sum(len(name_lists(loc).first[sex]) * len(name_lists(loc).last) for loc in locales)
    if count + len(taken) > capacity // 4:
        raise NamesError(f"{count} names of sex {sex!r} asked for, but the lists of "
                         f"{', '.join(locales)} only allow about {capacity // 4} distinct ones")
    out: list[tuple[str, str]] = []
    while len(out) < count:
        loc = locales[rng.randrange(len(locales))]
        lists = name_lists(loc)
        full = f"{rng.choice(lists.first[sex])} {rng.choice(lists.last)}"
        key = full.casefold()
        if key not in taken:
            taken.add(key)
            out.append((full, loc))
    return out


def decoy_names(n: int, *, sex: str | None = None, locale: str | None = None, seed: int = 42,
                exclude: Iterable[str] = ()) -> list[str]:
    """``n`` distinct decoy full names ("First Last") for identity inference.

    Equal numbers of female and male names when ``sex`` is None (the odd one out is
    female), all of one sex otherwise; from one ``locale`` or all :data:`LOCALES` mixed.
    Names in ``exclude`` (case-insensitive; the true names of the audited people) never
    appear. The same arguments give the same list, shuffled with ``seed``.
    """
    if n < 0:
        raise NamesError(f"n = {n}: the number of decoys cannot be negative")
    _check(sex, locale)
    rng = random.Random(f"decoys:{seed}:{sex}:{locale}")
    locales = (locale,) if locale else LOCALES
    taken = {" ".join(str(e).split()).casefold() for e in exclude}
    if sex is None:
        counts = {"f": n - n // 2, "m": n // 2}
    else:
        counts = {sex: n}
    names = [full for s, c in counts.items() for full, _ in _draw(rng, c, s, locales, taken)]
    rng.shuffle(names)
    return names


def pseudonymous_names(n: int, seed: int = 0, *, sexes: Sequence[str] | None = None,
                       locale: str | None = None) -> list[NamedPerson]:
    """``n`` distinct fixed pseudonymous people for the zoo's face identities.

    ``sexes`` gives each person's sex (length ``n``, "f"/"m") so the name matches it;
    by default they alternate f, m, f, … The result depends only on the arguments.
    """
    if n < 0:
        raise NamesError(f"n = {n}: the number of names cannot be negative")
    if sexes is None:
        sexes = [SEXES[i % 2] for i in range(n)]
    if len(sexes) != n:
        raise NamesError(f"sexes: {len(sexes)} given for {n} people")
    for s in sexes:
        _check(s, None)
    _check(None, locale)
    rng = random.Random(f"pseudonyms:{seed}:{locale}")
    locales = (locale,) if locale else LOCALES
    taken: set[str] = set()
    people = []
    for s in sexes:
        (full, loc), = _draw(rng, 1, s, locales, taken)
        people.append(NamedPerson(name=full, sex=s, locale=loc))
    return people
