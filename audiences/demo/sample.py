"""Synthetic healthcare CRM: realistic, messy, deterministic sample data.

``generate(rows, seed=..., as_of=...)`` returns ``(contacts, events)`` with exactly the
schema of docs/internals.md ("The sample CRM"); ``write(out_dir, ...)`` writes them as
``contacts.{parquet,csv}`` and ``events.{parquet,csv}``.

What the data looks like
    * a US-like age pyramid from 0 to 95 (about 20 % minors);
    * cities, states, ZIP3 prefixes and phone area codes that belong together
      (New York 100xx / 212, Newark 071xx / 973, Los Angeles 900xx / 213, ...);
    * conditions whose prevalence depends on age and sex (type-2 diabetes, hypertension
      and coronary disease rise with age; pregnancy only for women 18-45; asthma and
      ADHD in the young; cancers rare), with the ICD-10 codes, service lines and
      medication classes that go with them, and a shared frailty factor so that
      conditions cluster in the same people;
    * insurance by age (medicare for almost everyone 65+), consent columns with
      realistic rates (older people and the deceased included);
    * events: visits in the departments of the person's service lines (mostly in the
      last 3 years), appointments (some up to 180 days after ``as_of``), portal logins
      and email clicks; about 6 per contact on average, more for people with conditions.

Messy on purpose, so that identifier normalization has real work to do: emails with
mixed case and surrounding whitespace, gmail addresses with dots, ``+tags`` and
``googlemail.com``; phones in national and international forms; names with accents,
hyphens, apostrophes, spaces and case noise; ZIP+4 and stray spaces; 2-8 % missing
values per identifier column; and about 2 % duplicate people (a second contact row for
the same person, spelled differently).

Phone numbers all use the 555 exchange and addresses are made up; any resemblance of a
generated record to a real person is chance.

CSV files cannot hold list columns: ``diagnosis_codes``, ``service_lines`` and
``medication_classes`` are written to CSV as ``;``-joined strings (an empty list is an
empty string). Split them back with ``pl.col(c).str.split(";")``. Parquet keeps them as
lists.

Everything is vectorized: a ``numpy.random.Generator`` seeded with ``seed`` draws index
arrays, and polars assembles strings by gathering from small precomputed tables, so
the same ``(rows, seed, as_of)`` always gives identical frames.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from audiences.core.errors import UsageError

__all__ = [
    "CONTACTS_SCHEMA",
    "EVENTS_SCHEMA",
    "LIST_COLUMNS",
    "LIST_SEPARATOR",
    "MAX_ROWS",
    "generate",
    "write",
]

CONTACTS_SCHEMA = pl.Schema(
    {  # type: ignore[arg-type]
        "contact_id": pl.String,
        "email": pl.String,
        "phone": pl.String,
        "first_name": pl.String,
        "last_name": pl.String,
        "birth_date": pl.Date,
        "sex": pl.String,
        "street": pl.String,
        "city": pl.String,
        "state": pl.String,
        "zip": pl.String,
        "country": pl.String,
        "preferred_language": pl.String,
        "created_at": pl.Datetime("us"),
        "marketing_opt_in": pl.Boolean,
        "hipaa_auth_date": pl.Date,
        "hipaa_auth_expires": pl.Date,
        "hipaa_auth_revoked_at": pl.Date,
        "ad_personalization_consent": pl.String,
        "do_not_contact": pl.Boolean,
        "deceased": pl.Boolean,
        "diagnosis_codes": pl.List(pl.String),
        "service_lines": pl.List(pl.String),
        "medication_classes": pl.List(pl.String),
        "insurance_type": pl.String,
        # privacy-law consents (jurisdiction packs), drawn after everything else from their
        # own generator, so the columns above keep their values for a seed
        "ad_user_data_consent": pl.String,
        "share_health_data": pl.String,
        "explicit_health_marketing": pl.String,
        "limit_sensitive_pi": pl.Boolean,
        "opt_out_of_sharing": pl.Boolean,
        "mhmda_sale_authorization_date": pl.Date,
        "mhmda_sale_authorization_expires": pl.Date,
        "mhmda_sale_authorization_revoked": pl.Date,
    }
)
# The columns drawn by _privacy_consents (the last of CONTACTS_SCHEMA).
PRIVACY_COLUMNS = (
    "ad_user_data_consent",
    "share_health_data",
    "explicit_health_marketing",
    "limit_sensitive_pi",
    "opt_out_of_sharing",
    "mhmda_sale_authorization_date",
    "mhmda_sale_authorization_expires",
    "mhmda_sale_authorization_revoked",
)

EVENTS_SCHEMA = pl.Schema(
    {  # type: ignore[arg-type]
        "event_id": pl.String,
        "contact_id": pl.String,
        "event_type": pl.String,
        "event_time": pl.Datetime("us"),
        "department": pl.String,
        "visit_type": pl.String,
    }
)

LIST_COLUMNS = ("diagnosis_codes", "service_lines", "medication_classes")
LIST_SEPARATOR = ";"
FORMATS = ("parquet", "csv")
MAX_ROWS = 100_000_000  # contact ids have 9 digits; events ids 10

_EPOCH = dt.date(1970, 1, 1)
_US_PER_DAY = 86_400_000_000

# --------------------------------------------------------------------------- tables

# Share of the US population by 5-year age band (2020 census, rounded), 0-4 ... 90-95.
_AGE_BANDS = (5.7, 6.0, 6.3, 6.5, 6.6, 6.9, 6.8, 6.6, 6.2, 6.1, 6.3, 6.6, 6.3, 5.3, 4.3, 2.9,
              1.9, 1.1, 0.6)  # fmt: skip
_MAX_AGE = 96  # ages are in [0, 96): the last band is 90-95

# (state, city, ZIP3, area codes, weight): every row is real-world consistent.
_CITIES: tuple[tuple[str, str, str, tuple[int, ...], float], ...] = (
    ("NY", "New York", "100", (212, 646, 917), 8.0),
    ("NY", "Brooklyn", "112", (718, 347), 7.0),
    ("NY", "Bronx", "104", (718,), 3.0),
    ("NY", "Jamaica", "114", (718,), 3.0),
    ("NY", "Staten Island", "103", (718,), 1.0),
    ("NY", "Hempstead", "115", (516,), 2.0),
    ("NY", "Yonkers", "107", (914,), 1.0),
    ("NY", "Albany", "122", (518,), 1.0),
    ("NY", "Buffalo", "142", (716,), 1.5),
    ("NY", "Rochester", "146", (585,), 1.5),
    ("NY", "Syracuse", "132", (315,), 1.0),
    ("NJ", "Newark", "071", (973,), 2.0),
    ("NJ", "Jersey City", "073", (201,), 2.0),
    ("NJ", "Paterson", "075", (973,), 1.0),
    ("NJ", "Hackensack", "076", (201,), 1.0),
    ("NJ", "Camden", "081", (856,), 1.0),
    ("NJ", "Trenton", "086", (609,), 1.0),
    ("NJ", "New Brunswick", "089", (732,), 1.0),
    ("CA", "Los Angeles", "900", (213, 323, 310), 10.0),
    ("CA", "Long Beach", "908", (562,), 2.0),
    ("CA", "Pasadena", "911", (626,), 1.0),
    ("CA", "San Diego", "921", (619, 858), 4.0),
    ("CA", "Riverside", "925", (951,), 2.0),
    ("CA", "Santa Ana", "927", (714,), 2.0),
    ("CA", "Fresno", "937", (559,), 2.0),
    ("CA", "San Francisco", "941", (415,), 3.0),
    ("CA", "Oakland", "946", (510,), 2.0),
    ("CA", "San Jose", "951", (408,), 3.0),
    ("CA", "Sacramento", "958", (916,), 2.0),
    ("TX", "Plano", "750", (972,), 1.0),
    ("TX", "Dallas", "752", (214, 469, 972), 4.0),
    ("TX", "Fort Worth", "761", (817,), 2.0),
    ("TX", "Houston", "770", (713, 281, 832), 6.0),
    ("TX", "San Antonio", "782", (210,), 4.0),
    ("TX", "Corpus Christi", "784", (361,), 0.8),
    ("TX", "Austin", "787", (512,), 3.0),
    ("TX", "Lubbock", "794", (806,), 0.7),
    ("TX", "El Paso", "799", (915,), 2.0),
    ("FL", "Jacksonville", "322", (904,), 2.0),
    ("FL", "Tallahassee", "323", (850,), 1.0),
    ("FL", "Gainesville", "326", (352,), 0.7),
    ("FL", "Orlando", "328", (407,), 3.0),
    ("FL", "Miami", "331", (305, 786), 4.0),
    ("FL", "Fort Lauderdale", "333", (954,), 2.0),
    ("FL", "West Palm Beach", "334", (561,), 1.5),
    ("FL", "Tampa", "336", (813,), 3.0),
    ("FL", "St. Petersburg", "337", (727,), 1.5),
    ("PA", "Pittsburgh", "152", (412,), 3.0),
    ("PA", "Erie", "165", (814,), 0.7),
    ("PA", "Harrisburg", "171", (717,), 1.0),
    ("PA", "Lancaster", "176", (717,), 0.8),
    ("PA", "Allentown", "181", (610,), 1.0),
    ("PA", "Scranton", "185", (570,), 1.0),
    ("PA", "Philadelphia", "191", (215, 267), 5.0),
    ("PA", "Reading", "196", (610,), 0.7),
    ("IL", "Evanston", "602", (847,), 1.0),
    ("IL", "Joliet", "604", (815,), 1.0),
    ("IL", "Aurora", "605", (630,), 1.0),
    ("IL", "Naperville", "605", (630,), 1.0),
    ("IL", "Chicago", "606", (312, 773, 872), 8.0),
    ("IL", "Rockford", "611", (815,), 1.0),
    ("IL", "Peoria", "616", (309,), 0.7),
    ("IL", "Springfield", "627", (217,), 0.7),
    ("MA", "Springfield", "011", (413,), 1.0),
    ("MA", "Worcester", "016", (508, 774), 1.5),
    ("MA", "Lowell", "018", (978,), 1.0),
    ("MA", "Boston", "021", (617, 857), 4.0),
    ("MA", "Cambridge", "021", (617,), 1.5),
    ("MA", "Quincy", "021", (617,), 0.7),
    ("MA", "Brockton", "023", (508,), 0.7),
    ("MA", "New Bedford", "027", (508,), 0.6),
    ("OH", "Columbus", "432", (614,), 3.0),
    ("OH", "Toledo", "436", (419,), 1.0),
    ("OH", "Cleveland", "441", (216,), 3.0),
    ("OH", "Akron", "443", (330,), 1.0),
    ("OH", "Cincinnati", "452", (513,), 3.0),
    ("OH", "Dayton", "454", (937,), 1.0),
    ("GA", "Atlanta", "303", (404, 470, 678), 5.0),
    ("GA", "Augusta", "309", (706,), 1.0),
    ("GA", "Macon", "312", (478,), 0.8),
    ("GA", "Savannah", "314", (912,), 1.0),
    ("NC", "Winston-Salem", "271", (336,), 1.0),
    ("NC", "Greensboro", "274", (336,), 1.2),
    ("NC", "Raleigh", "276", (919,), 2.5),
    ("NC", "Durham", "277", (919,), 1.2),
    ("NC", "Charlotte", "282", (704, 980), 3.0),
    ("NC", "Asheville", "288", (828,), 0.5),
    ("MI", "Ann Arbor", "481", (734,), 1.0),
    ("MI", "Detroit", "482", (313,), 3.0),
    ("MI", "Flint", "485", (810,), 0.8),
    ("MI", "Lansing", "489", (517,), 1.0),
    ("MI", "Grand Rapids", "495", (616,), 1.5),
    ("WA", "Bellevue", "980", (425,), 1.0),
    ("WA", "Seattle", "981", (206,), 3.0),
    ("WA", "Tacoma", "984", (253,), 1.2),
    ("WA", "Spokane", "992", (509,), 1.0),
    ("AZ", "Phoenix", "850", (602, 480), 5.0),
    ("AZ", "Mesa", "852", (480,), 1.5),
    ("AZ", "Tucson", "857", (520,), 2.0),
    ("AZ", "Flagstaff", "860", (928,), 0.3),
    ("CO", "Aurora", "800", (303,), 1.0),
    ("CO", "Denver", "802", (303, 720), 3.0),
    ("CO", "Boulder", "803", (303,), 0.6),
    ("CO", "Fort Collins", "805", (970,), 0.6),
    ("CO", "Colorado Springs", "809", (719,), 1.5),
    ("MN", "Saint Paul", "551", (651,), 1.5),
    ("MN", "Minneapolis", "554", (612,), 2.5),
    ("MN", "Duluth", "558", (218,), 0.4),
    ("MN", "Rochester", "559", (507,), 0.6),
    ("LA", "New Orleans", "701", (504,), 1.5),
    ("LA", "Baton Rouge", "708", (225,), 1.0),
    ("MD", "Rockville", "208", (301,), 1.0),
    ("MD", "Silver Spring", "209", (301,), 1.0),
    ("MD", "Baltimore", "212", (410, 443), 3.0),
    ("MD", "Annapolis", "214", (410,), 0.5),
    ("DC", "Washington", "200", (202,), 1.5),
    ("VA", "Arlington", "222", (703,), 1.0),
    ("VA", "Alexandria", "223", (703,), 1.0),
    ("VA", "Richmond", "232", (804,), 1.5),
    ("VA", "Virginia Beach", "234", (757,), 1.5),
    ("VA", "Norfolk", "235", (757,), 1.0),
    ("TN", "Nashville", "372", (615,), 2.0),
    ("TN", "Chattanooga", "374", (423,), 0.8),
    ("TN", "Knoxville", "379", (865,), 1.0),
    ("TN", "Memphis", "381", (901,), 2.0),
)

_STREETS = ("Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park",
            "Walnut", "Sunset", "Lincoln", "Jackson", "Church", "River", "Highland", "Madison",
            "Jefferson", "Franklin", "Spring", "Chestnut", "Ridge", "Center", "Broad", "Market",
            "Union", "Water", "Forest", "Meadow", "1st", "2nd", "3rd", "5th", "Martin Luther King Jr",
            "O'Connell", "Peña", "Saint-Laurent", "Green Valley", "Willow", "Prospect", "Adams")  # fmt: skip
_STREET_SUFFIXES = ("St", "Street", "Ave", "Avenue", "Rd", "Blvd", "Dr", "Ln", "Ct", "Way", "Pl")
_UNITS = ("", *(f" Apt {n}{s}" for n in range(1, 31) for s in ("", "A", "B")),
          *(f" Unit {n}" for n in range(1, 21)), *(f" #{n}" for n in range(100, 121)))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _NameGroup:
    """Names people of one background tend to carry, and the languages they prefer."""

    weight: float
    languages: tuple[tuple[str, float], ...]
    female: tuple[str, ...]
    male: tuple[str, ...]
    last: tuple[str, ...]


# fmt: off
_NAME_GROUPS = (
    _NameGroup(
        0.60,
        (("en", 1.0),),
        ("Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
         "Sarah", "Karen", "Emily", "Ashley", "Olivia", "Emma", "Ava", "Madison", "Abigail",
         "Hannah", "Zoë", "Chloé", "Renée", "Siobhan", "Mary Ann", "Anne-Marie", "Kayla",
         "Brittany", "Deborah", "Danielle", "Aaliyah", "Imani", "Ebony", "Latoya"),
        ("James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
         "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Steven", "Andrew",
         "Joshua", "Kevin", "Brian", "Tyrone", "DeShawn", "Jamal", "Liam", "Noah", "Seán",
         "Billy Ray", "Jean-Luc", "Zachary", "Ethan"),
        ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson",
         "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Thompson", "White",
         "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
         "Scott", "Hill", "Green", "Adams", "Baker", "O'Brien", "O'Connor", "O'Neil", "McDonald",
         "MacArthur", "D'Angelo", "Müller", "Schröder", "Weiß", "Jäger", "van der Berg",
         "St. John", "Van Buren"),
    ),
    _NameGroup(
        0.19,
        (("es", 0.55), ("en", 0.45)),
        ("María", "Guadalupe", "Sofía", "Lucía", "Ana", "Verónica", "Mónica", "Ximena",
         "Isabel", "Carmen", "Rosa", "Daniela", "Valentina", "María José", "Inés", "Begoña"),
        ("José", "Juan", "Luis", "Jesús", "Carlos", "Andrés", "Raúl", "Óscar", "Héctor",
         "Martín", "Sebastián", "Iván", "Miguel Ángel", "Alejandro", "Diego", "Ramón"),
        ("García", "Rodríguez", "Martínez", "Hernández", "López", "González", "Pérez", "Sánchez",
         "Ramírez", "Torres", "Flores", "Rivera", "Gómez", "Díaz", "Cruz", "Morales", "Ortiz",
         "Gutiérrez", "Chávez", "Ramos", "De La Cruz", "Núñez", "Peña", "Muñoz", "de León"),
    ),
    _NameGroup(
        0.035,
        (("zh", 0.45), ("en", 0.55)),
        ("Wei", "Jing", "Li", "Xiu Ying", "Hui", "Mei", "Yan", "Fang", "Xiaoling"),
        ("Wei", "Ming", "Jun", "Hao", "Lei", "Jian", "Tao", "Zhi Hao", "Yong"),
        ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Lin"),
    ),
    _NameGroup(
        0.02,
        (("vi", 0.5), ("en", 0.5)),
        ("Hương", "Thảo", "Linh", "Phương", "Ngọc", "Trang", "Lan Anh"),
        ("Minh", "Tuấn", "Dũng", "Hùng", "Quang", "Đức", "Văn Long"),
        ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Võ", "Đặng", "Bùi"),
    ),
    _NameGroup(
        0.015,
        (("ko", 0.4), ("en", 0.6)),
        ("Seo-yeon", "Ji-woo", "Ha-eun", "Soo-jin", "Min-ji", "Eun-ji"),
        ("Min-jun", "Jae-hyun", "Ji-hoon", "Sung-min", "Dong-hyun", "Hyun-woo"),
        ("Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang"),
    ),
    _NameGroup(
        0.015,
        (("ru", 0.4), ("en", 0.6)),
        ("Olga", "Natalia", "Svetlana", "Tatiana", "Yelena", "Irina", "Anastasia"),
        ("Dmitri", "Sergei", "Alexei", "Yuri", "Vladimir", "Nikolai", "Andrei"),
        ("Ivanov", "Ivanova", "Smirnov", "Smirnova", "Kuznetsov", "Popova", "Volkov", "Sokolova",
         "Petrov", "Fyodorov"),
    ),
    _NameGroup(
        0.015,
        (("ht", 0.5), ("fr", 0.2), ("en", 0.3)),
        ("Marie", "Fabienne", "Wideline", "Ketly", "Nadège", "Guerline", "Roseline"),
        ("Jean", "Jean-Claude", "Wilner", "Frantz", "Réginald", "Jean-Baptiste", "Ti-Jo"),
        ("Jean-Baptiste", "Pierre", "Joseph", "Louis", "Charles", "Étienne", "Désir", "Célestin",
         "Saint-Fleur"),
    ),
    _NameGroup(
        0.03,
        (("fr", 0.3), ("en", 0.7)),
        ("Hélène", "Gaëlle", "Élodie", "Margaux", "Noëlle", "Françoise", "Sølvi", "Björk"),
        ("François", "Benoît", "Jérôme", "Noël", "Loïc", "Jürgen", "Søren", "Łukasz"),
        ("Dubois", "Lefèvre", "Moreau", "Laurent", "Girard", "Bélanger", "Côté", "Gagnon",
         "Lévesque", "Kowalski", "Nowak", "Løvberg"),
    ),
)
# fmt: on

_LANGUAGES = ("en", "es", "zh", "ru", "ko", "vi", "ht", "fr")


@dataclasses.dataclass(frozen=True)
class _Condition:
    """A condition: prevalence by age and sex, and what comes with it in a CRM."""

    ages: tuple[float, ...]
    rates: tuple[float, ...]
    female: float
    male: float
    lines: tuple[str, ...]
    # (weight, ICD-10 codes, medication classes): how the condition shows up in one person
    presentations: tuple[tuple[float, tuple[str, ...], tuple[str, ...]], ...]


_A = (0, 18, 35, 50, 65, 80, 96)  # default age knots
_CONDITIONS = (
    _Condition(_A, (0.001, 0.004, 0.03, 0.09, 0.18, 0.22, 0.20), 0.9, 1.1, ("endocrinology",),
               ((0.45, ("E11.9",), ("metformin",)), (0.2, ("E11.65",), ("metformin", "insulin")),
                (0.15, ("E11.9",), ("insulin",)), (0.1, ("E11.22",), ("metformin", "glp1_agonist")),
                (0.1, ("E11.9",), ()))),
    _Condition(_A, (0.04, 0.10, 0.16, 0.18, 0.17, 0.12, 0.08), 1.1, 0.9, ("weight_management",),
               ((0.7, ("E66.9",), ()), (0.2, ("E66.01",), ("glp1_agonist",)),
                (0.1, ("E66.01",), ()))),
    _Condition(_A, (0.0, 0.02, 0.10, 0.28, 0.45, 0.60, 0.65), 0.95, 1.05, ("cardiology",),
               ((0.4, ("I10",), ("ace_inhibitor",)), (0.25, ("I10",), ("beta_blocker",)),
                (0.2, ("I10",), ("diuretic", "ace_inhibitor")), (0.15, ("I10",), ()))),
    _Condition(_A, (0.0, 0.0005, 0.005, 0.03, 0.09, 0.16, 0.20), 0.6, 1.4, ("cardiology",),
               ((0.6, ("I25.10",), ("statin", "antiplatelet")), (0.25, ("I25.10",), ("statin",)),
                (0.15, ("I25.2", "I25.10"), ("statin", "beta_blocker", "antiplatelet")))),
    _Condition(_A, (0.0, 0.01, 0.08, 0.22, 0.35, 0.38, 0.33), 1.0, 1.0, ("cardiology",),
               ((0.7, ("E78.5",), ("statin",)), (0.3, ("E78.00",), ()))),
    _Condition(_A, (0.0, 0.0, 0.001, 0.005, 0.03, 0.08, 0.11), 0.8, 1.2, ("cardiology",),
               ((0.8, ("I48.91",), ("anticoagulant",)), (0.2, ("I48.0",), ("anticoagulant",)))),
    _Condition((0, 12, 18, 35, 65, 96), (0.0, 0.04, 0.09, 0.09, 0.07, 0.07), 1.4, 0.65,
               ("behavioral_health",),
               ((0.45, ("F32.9",), ("ssri",)), (0.2, ("F32.A",), ()), (0.2, ("F33.1",), ("snri",)),
                (0.15, ("F33.1",), ("ssri", "antipsychotic")))),
    _Condition((0, 8, 18, 35, 65, 96), (0.0, 0.04, 0.12, 0.10, 0.07, 0.05), 1.4, 0.65,
               ("behavioral_health",),
               ((0.5, ("F41.1",), ("ssri",)), (0.3, ("F41.9",), ()),
                (0.2, ("F41.1",), ("benzodiazepine",)))),
    _Condition((0, 4, 8, 17, 30, 60, 96), (0.0, 0.0, 0.09, 0.10, 0.05, 0.02, 0.01), 0.6, 1.4,
               ("behavioral_health",),
               ((0.6, ("F90.0",), ("stimulant",)), (0.4, ("F90.2",), ("stimulant",)))),
    _Condition((0, 5, 17, 35, 65, 96), (0.05, 0.09, 0.09, 0.08, 0.07, 0.06), 1.1, 0.9,
               ("pulmonology",),
               ((0.5, ("J45.909",), ("bronchodilator",)),
                (0.3, ("J45.20",), ("bronchodilator", "inhaled_corticosteroid")),
                (0.2, ("J45.40",), ("inhaled_corticosteroid",)))),
    _Condition((0, 40, 50, 65, 80, 96), (0.0, 0.002, 0.02, 0.06, 0.10, 0.10), 1.0, 1.1,
               ("pulmonology",), ((1.0, ("J44.9",), ("bronchodilator",)),)),
    _Condition((0, 17.99, 18, 25, 32, 40, 45.99, 46, 96),
               (0.0, 0.0, 0.04, 0.10, 0.10, 0.04, 0.01, 0.0, 0.0), 1.0, 0.0, ("maternity",),
               ((0.4, ("O80",), ("prenatal_vitamin",)), (0.3, ("O09.90",), ("prenatal_vitamin",)),
                (0.1, ("O24.419",), ("insulin",)), (0.1, ("O13.9",), ()),
                (0.1, ("O09.90", "O24.419"), ("prenatal_vitamin", "insulin")))),
    _Condition((0, 30, 50, 65, 80, 96), (0.0, 0.0, 0.006, 0.015, 0.02, 0.02), 1.0, 0.0,
               ("oncology",),
               ((0.6, ("C50.911",), ("aromatase_inhibitor",)), (0.4, ("C50.912",), ("chemotherapy",)))),
    _Condition((0, 45, 55, 65, 80, 96), (0.0, 0.0, 0.01, 0.03, 0.06, 0.06), 0.0, 1.0,
               ("oncology", "urology"), ((0.7, ("C61",), ("antiandrogen",)), (0.3, ("C61",), ()))),
    _Condition((0, 18, 40, 60, 80, 96), (0.0005, 0.001, 0.003, 0.012, 0.025, 0.025), 1.0, 1.1,
               ("oncology",),
               ((0.35, ("C18.9",), ("chemotherapy",)), (0.3, ("C34.90",), ("chemotherapy",)),
                (0.25, ("C43.9",), ()), (0.1, ("C91.00",), ("chemotherapy",)))),
    _Condition((0, 40, 55, 65, 80, 96), (0.0, 0.01, 0.05, 0.12, 0.20, 0.20), 1.2, 0.8,
               ("orthopedics",),
               ((0.5, ("M17.11",), ("nsaid",)), (0.3, ("M17.0",), ("nsaid",)), (0.2, ("M17.12",), ()))),
    _Condition((0, 18, 40, 65, 96), (0.005, 0.04, 0.08, 0.08, 0.06), 1.0, 1.0, ("orthopedics",),
               ((0.6, ("M54.50",), ("nsaid",)), (0.2, ("M54.50",), ("muscle_relaxant",)),
                (0.2, ("M54.16",), ("opioid",)))),
    _Condition((0, 40, 50, 65, 80, 96), (0.0, 0.01, 0.02, 0.08, 0.15, 0.15), 1.0, 1.0,
               ("nephrology",),
               ((0.6, ("N18.30",), ()), (0.3, ("N18.4",), ("diuretic",)), (0.1, ("N18.6",), ()))),
    _Condition((0, 10, 25, 45, 65, 96), (0.0, 0.02, 0.09, 0.09, 0.03, 0.02), 1.7, 0.45,
               ("neurology",), ((0.7, ("G43.909",), ("triptan",)), (0.3, ("G43.009",), ()))),
    _Condition((0, 18, 40, 65, 96), (0.001, 0.01, 0.04, 0.08, 0.10), 1.6, 0.4, ("endocrinology",),
               ((1.0, ("E03.9",), ("thyroid_hormone",)),)),
    _Condition((0, 60, 70, 80, 90, 96), (0.0, 0.0, 0.03, 0.10, 0.25, 0.30), 1.2, 0.9,
               ("neurology",),
               ((0.6, ("G30.9",), ("cholinesterase_inhibitor",)), (0.4, ("F03.90",), ()))),
    _Condition((0, 18, 30, 50, 70, 96), (0.0, 0.002, 0.005, 0.005, 0.002, 0.001), 0.3, 1.7,
               ("infectious_disease",), ((1.0, ("B20",), ("antiretroviral",)),)),
    _Condition((0, 16, 25, 45, 65, 96), (0.0, 0.005, 0.02, 0.02, 0.01, 0.005), 0.6, 1.4,
               ("behavioral_health",), ((0.7, ("F10.20",), ("naltrexone",)), (0.3, ("F10.20",), ()))),
    _Condition((0, 16, 25, 45, 65, 96), (0.0, 0.002, 0.008, 0.007, 0.002, 0.0), 0.7, 1.3,
               ("behavioral_health",), ((0.8, ("F11.20",), ("buprenorphine",)), (0.2, ("F11.20",), ()))),
)  # fmt: skip

_SERVICE_LINES = ("primary_care", "pediatrics", "behavioral_health", "cardiology",
                  "endocrinology", "infectious_disease", "maternity", "nephrology", "neurology",
                  "oncology", "orthopedics", "pulmonology", "urology", "weight_management")  # fmt: skip
_PRIMARY_CARE, _PEDIATRICS = 0, 1
_MEDICATIONS = tuple(
    sorted({m for c in _CONDITIONS for _, _, meds in c.presentations for m in meds})
)
_CODES = tuple(sorted({x for c in _CONDITIONS for _, codes, _ in c.presentations for x in codes}))

_INSURANCE = ("commercial", "medicare", "medicaid", "self_pay")
# P(insurance) by age group: <18, 18-25, 26-64, 65+
_INSURANCE_BY_AGE = np.array(
    [[0.55, 0.0, 0.41, 0.04], [0.62, 0.01, 0.22, 0.15], [0.70, 0.03, 0.17, 0.10],
     [0.04, 0.93, 0.02, 0.01]]
)  # fmt: skip
_EVENT_TYPES = ("visit", "appointment", "portal_login", "email_click")
_EVENT_TYPE_SHARES = (0.36, 0.22, 0.28, 0.14)
_VISIT_TYPES = ("outpatient", "inpatient", "emergency", "telehealth")
_VISIT_TYPE_SHARES = (0.68, 0.05, 0.10, 0.17)
_MEAN_EVENTS = 6.0

_EMAIL_DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "aol.com",
                  "icloud.com", "comcast.net", "msn.com", "att.net", "verizon.net")  # fmt: skip
_EMAIL_DOMAIN_SHARES = (0.40, 0.16, 0.10, 0.09, 0.05, 0.08, 0.04, 0.03, 0.03, 0.02)
_GMAIL, _GOOGLEMAIL = 0, len(_EMAIL_DOMAINS)  # googlemail.com is the last domain entry
_EMAIL_TAGS = ("", "+news", "+health", "+promo", "+mychart", "+1")

# (prefix, before area, after area, between exchange and line), e.g. "(212) 555-0143"
_PHONE_FORMATS = (
    ("", "(", ") ", "-"),
    ("", "", "-", "-"),
    ("", "", ".", "."),
    ("", "", "", ""),
    ("+1 ", "", " ", " "),
    ("+1 ", "(", ") ", "-"),
    ("001 ", "", " ", " "),
    ("001-", "", "-", "-"),
    ("1-", "", "-", "-"),
    ("+1", "", "", ""),
)
_PHONE_FORMAT_SHARES = (0.30, 0.22, 0.08, 0.10, 0.08, 0.05, 0.04, 0.04, 0.05, 0.04)
_COUNTRIES = ("US", "United States", "USA", "us", "U.S.")
_COUNTRY_SHARES = (0.86, 0.06, 0.04, 0.02, 0.02)

# Share of missing values per identifier column.
_MISSING = {"email": 0.04, "phone": 0.05, "first_name": 0.02, "last_name": 0.02,
            "birth_date": 0.03, "sex": 0.02, "street": 0.04, "city": 0.03, "state": 0.02,
            "zip": 0.03, "country": 0.04}  # fmt: skip
_DUPLICATE_SHARE = 0.02
_CHUNK = 1_000_000  # rows per assembly step: bounds the memory of intermediate columns


def _fold_accents(text: str) -> str:
    """ASCII spelling of a name, as people type it when the keyboard has no accents."""
    text = text.replace("Đ", "D").replace("đ", "d").replace("Ł", "L").replace("ł", "l")
    text = text.replace("ß", "ss").replace("ø", "o").replace("Ø", "O")
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if ch.isascii())


def _email_word(text: str) -> str:
    return "".join(ch for ch in _fold_accents(text).lower() if ch.isalnum())


def _name_variants(name: str) -> tuple[str, ...]:
    """The ways one name gets typed into a CRM: as is, UPPER, lower, unaccented, padded, swapped."""
    return (name, name.upper(), name.lower(), _fold_accents(name), f" {name}  ", name.swapcase())


_NAME_VARIANT_SHARES = (0.82, 0.07, 0.04, 0.03, 0.03, 0.01)
_NAME_VARIANTS = len(_NAME_VARIANT_SHARES)


def _email_cases(text: str) -> tuple[str, str, str]:
    return (text, text[:1].upper() + text[1:], text.upper())


_EMAIL_CASE_SHARES = (0.86, 0.09, 0.05)


# --------------------------------------------------------------------------- public API


def generate(
    rows: int, *, seed: int = 0, as_of: dt.date, abroad: int = 0
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return ``(contacts, events)``: ``rows`` synthetic CRM records and their events.

    ``abroad`` more records (and their events) follow the ``rows`` ones: people living in
    the EEA and the UK (see ``_ABROAD``), drawn from generators of their own, so the first
    ``rows`` records and their events are the same with or without them.

    Deterministic: the same ``rows``, ``seed``, ``as_of`` and ``abroad`` give identical frames.
    """
    _check_rows(rows)
    _check_rows(abroad)
    if rows + abroad > MAX_ROWS:
        raise UsageError(
            f"rows plus abroad must be at most {MAX_ROWS:,}, got {rows + abroad:,}",
            "choose a smaller size",
        )
    if not isinstance(as_of, dt.date) or isinstance(as_of, dt.datetime):
        raise UsageError(
            f"as_of must be a date, got {type(as_of).__name__}", "pass a datetime.date"
        )
    rng = np.random.default_rng(seed)
    people = _draw_people(rng, rows, as_of)
    contacts = _contacts_frame(rng, people)
    events = _events_frame(rng, people, contacts.get_column("contact_id").rechunk())
    contacts = _privacy_consents(contacts, seed, as_of)
    if abroad:
        more_contacts, more_events = _abroad(abroad, seed, as_of, contacts, events)
        contacts = pl.concat([contacts, more_contacts])
        events = pl.concat([events, more_events])
    return contacts, events


def _privacy_consents(
    contacts: pl.DataFrame, seed: int, as_of: dt.date, *stream: int
) -> pl.DataFrame:
    """The privacy-law consent columns, from a generator of their own (seeded by ``seed``
    and ``stream``): consents to share health data and to health marketing are rare and
    sometimes withdrawn; a few people limit the use of sensitive data or send GPC; some
    unknown. Fewer signed an authorization to sell (Washington MHMDA) in the two years
    before ``as_of``: over a year old ones have expired, some record the expiry date,
    some were revoked since."""
    rng = np.random.default_rng([seed, 23, *stream])
    n = contacts.height
    granted = ("granted", "denied", None)
    withdrawn = ("granted", "withdrawn", "denied", None)

    def text(values: Sequence[str | None], shares: Sequence[float]) -> pl.Series:
        picks = _choice(rng, shares, n)
        return pl.Series([*values]).gather(pl.Series(picks, dtype=pl.UInt32))

    def flag(yes: float, unknown: float) -> pl.Series:
        draw = rng.random(n, dtype=np.float32)
        known = pl.Series(draw <= 1 - unknown)
        return pl.Series(draw < yes).zip_with(known, pl.Series([None] * n, dtype=pl.Boolean))

    columns = {
        "ad_user_data_consent": text(granted, (0.40, 0.15, 0.45)),
        "share_health_data": text(withdrawn, (0.22, 0.04, 0.06, 0.68)),
        "explicit_health_marketing": text(withdrawn, (0.18, 0.03, 0.05, 0.74)),
        "limit_sensitive_pi": flag(0.04, 0.25),
        "opt_out_of_sharing": flag(0.09, 0.25),
    }
    columns |= _sale_authorizations(rng, n, as_of)
    return contacts.with_columns(v.alias(k) for k, v in columns.items())


def _sale_authorizations(rng: np.random.Generator, n: int, as_of: dt.date) -> dict[str, pl.Series]:
    """Signed on (8 % of people, up to two years before ``as_of``), expires on (the
    statute's one year after signing, recorded for 60 % of them), revoked on (10 % of
    them, between signing and ``as_of``); empty otherwise."""
    today = (as_of - _EPOCH).days
    signed_ago = rng.integers(0, 730, n)
    draw = rng.random((3, n), dtype=np.float32)
    has = draw[0] < 0.08
    signed = today - signed_ago
    revoked = signed + (draw[2] * signed_ago).astype(np.int64)

    def day(values: np.ndarray, where: np.ndarray) -> pl.Series:
        out = pl.Series(values, dtype=pl.Int32).cast(pl.Date)
        return out.zip_with(pl.Series(where), pl.Series([None] * n, dtype=pl.Date))

    return {
        "mhmda_sale_authorization_date": day(signed, has),
        "mhmda_sale_authorization_expires": day(signed + 365, has & (draw[1] < 0.6)),
        "mhmda_sale_authorization_revoked": day(revoked, has & (draw[1] >= 0.9)),
    }


def write(
    out_dir: Path,
    rows: int,
    *,
    seed: int,
    as_of: dt.date,
    formats: Sequence[str] = FORMATS,
    progress: Callable[[str, float], None] | None = None,
    abroad: int = 0,
) -> dict[str, list[Path]]:
    """Generate the sample CRM (``rows`` records, then ``abroad`` records of people in the
    EEA and the UK) and write ``contacts`` and ``events`` in each format
    (``progress(stage, fraction)`` is told each stage, with its row counts).

    Each file is written to a temporary file in ``out_dir`` (mode 0600: the rows look like
    PII) and renamed over the target, so a crash never leaves a half-written file. Returns ``{"contacts": [...], "events":
    [...]}`` with the written paths in the order of ``formats``.
    """
    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UsageError(
            f"unknown sample data format(s): {', '.join(unknown) or '(none given)'}",
            f"use one or more of {', '.join(FORMATS)}",
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the sample data folder {out_dir} ({exc.strerror})",
            "choose a writable folder",
        ) from exc
    step = progress or (lambda _msg, _frac: None)
    step(f"generating {rows + abroad:,} contacts and their events", 0.0)
    contacts, events = generate(rows, seed=seed, as_of=as_of, abroad=abroad)
    written: dict[str, list[Path]] = {}
    files = 2 * len(dict.fromkeys(formats))
    for name, frame in (("contacts", contacts), ("events", events)):
        written[name] = []
        for fmt in dict.fromkeys(formats):
            target = out_dir / f"{name}.{fmt}"
            done = sum(len(paths) for paths in written.values())
            step(f"writing {target.name} ({frame.height:,} rows)", 0.5 + 0.5 * done / files)
            with _atomic_target(target) as tmp:
                if fmt == "parquet":
                    frame.write_parquet(tmp, compression="zstd", statistics=True)
                else:
                    _csv_ready(frame).write_csv(tmp)
            written[name].append(target)
    return written


# --------------------------------------------------------------------------- people


@dataclasses.dataclass
class _People:
    """Per-row index arrays; strings are only assembled in ``_contacts_frame``."""

    n: int
    as_of_day: int  # days since 1970-01-01
    age: np.ndarray  # whole years, int8
    age_days: np.ndarray  # int32
    sex: np.ndarray  # 0 F, 1 M, 2 unknown
    group: np.ndarray
    first: np.ndarray  # index into the flat first-name table
    last: np.ndarray  # index into the flat last-name table
    last2: np.ndarray  # second half of a hyphenated last name, -1 if none
    city: np.ndarray
    created_ago: np.ndarray  # days before as_of the record was created (>= 1)
    condition_key: np.ndarray  # index into the distinct condition combinations
    n_conditions: np.ndarray
    has_email: np.ndarray
    deceased: np.ndarray
    duplicate: np.ndarray  # bool: this row repeats an earlier person
    source: np.ndarray  # row whose person this row repeats (itself if not a duplicate)
    lists: _ConditionLists


def _check_rows(rows: int) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int | np.integer):
        raise UsageError(f"rows must be a whole number, got {type(rows).__name__}",
                         "pass e.g. rows=10000")  # fmt: skip
    if not 0 <= rows <= MAX_ROWS:
        raise UsageError(
            f"rows must be between 0 and {MAX_ROWS:,}, got {rows:,}", "choose a smaller size"
        )


_LOOKUP_SLOTS = 1 << 16


def _choice(rng: np.random.Generator, shares: Sequence[float], size: int) -> np.ndarray:
    """Vectorized categorical draw (int8/int16 codes) with the given shares.

    A 65,536-slot lookup table indexed by uint16 draws: shares are kept to 1/65,536.
    """
    cum = np.cumsum(np.asarray(shares, dtype=np.float64))
    bounds = np.round(cum / cum[-1] * _LOOKUP_SLOTS).astype(np.int64)
    dtype = np.int16 if len(cum) > 127 else np.int8
    lookup = np.repeat(np.arange(len(cum), dtype=dtype), np.diff(bounds, prepend=0))
    return lookup[rng.integers(0, _LOOKUP_SLOTS, size, dtype=np.uint16)]


def _name_tables() -> tuple[list[str], np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Flat first/last name lists with per-group offsets and sizes (F and M first names)."""
    first: list[str] = []
    first_off = np.zeros((len(_NAME_GROUPS), 2), dtype=np.int32)
    first_len = np.zeros((len(_NAME_GROUPS), 2), dtype=np.int32)
    last: list[str] = []
    last_off = np.zeros(len(_NAME_GROUPS), dtype=np.int32)
    last_len = np.zeros(len(_NAME_GROUPS), dtype=np.int32)
    for g, group in enumerate(_NAME_GROUPS):
        for s, names in enumerate((group.female, group.male)):
            first_off[g, s], first_len[g, s] = len(first), len(names)
            first.extend(names)
        last_off[g], last_len[g] = len(last), len(group.last)
        last.extend(group.last)
    return first, first_off, first_len, last, last_off, last_len


_FIRST, _FIRST_OFF, _FIRST_LEN, _LAST, _LAST_OFF, _LAST_LEN = _name_tables()


def _draw_people(rng: np.random.Generator, n: int, as_of: dt.date) -> _People:
    as_of_day = (as_of - _EPOCH).days
    # Age pyramid: pick a 5-year band, then a uniform point in it.
    band = _choice(rng, _AGE_BANDS, n).astype(np.float32)
    age_years = (band + rng.random(n, dtype=np.float32)) * np.float32(5.0)
    np.minimum(age_years, np.float32(_MAX_AGE - 1e-3), out=age_years)
    age = age_years.astype(np.int8)
    age_days = (age_years * np.float32(365.25)).astype(np.int32)
    sex = _choice(rng, (0.505, 0.475, 0.02), n)
    group = _choice(rng, [g.weight for g in _NAME_GROUPS], n)
    binary_sex = np.where(sex == 2, rng.integers(0, 2, n, dtype=np.int8), sex)
    pick = rng.random((3, n), dtype=np.float32)
    first = _FIRST_OFF[group, binary_sex] + (pick[0] * _FIRST_LEN[group, binary_sex]).astype(
        np.int32
    )
    last = _LAST_OFF[group] + (pick[1] * _LAST_LEN[group]).astype(np.int32)
    hyphenated = pick[2] < 0.045
    last2 = np.where(
        hyphenated,
        _LAST_OFF[group] + (rng.random(n, dtype=np.float32) * _LAST_LEN[group]).astype(np.int32),
        -1,
    ).astype(np.int32)
    last2[last2 == last] = -1  # no "Smith-Smith"
    city = _choice(rng, [c[4] for c in _CITIES], n)
    created_span = np.minimum(age_days, 3650).clip(1)
    created_ago = (1 + rng.random(n, dtype=np.float32) * created_span).astype(np.int32)

    # Duplicates: a second row for an earlier person (same person, different record).
    duplicate = rng.random(n, dtype=np.float32) < _DUPLICATE_SHARE
    duplicate[:1] = False
    dup_rows = np.flatnonzero(duplicate)
    originals = np.flatnonzero(~duplicate)
    source = np.arange(n, dtype=np.int64)
    if dup_rows.size:
        source[dup_rows] = originals[rng.integers(0, originals.size, dup_rows.size)]
    for arr in (age, age_days, sex, group, first, last, last2, city):
        arr[dup_rows] = arr[source[dup_rows]]

    condition_key, n_conditions, lists = _draw_conditions(rng, age, sex)
    condition_key[dup_rows] = condition_key[source[dup_rows]]
    n_conditions[dup_rows] = n_conditions[source[dup_rows]]

    # Children under 13 often have no email of their own.
    has_email = rng.random(n, dtype=np.float32) >= np.where(age < 13, 0.25, _MISSING["email"])
    death_rate = np.interp(
        np.arange(_MAX_AGE), (0, 50, 65, 80, 95), (0.001, 0.004, 0.02, 0.05, 0.12)
    )
    deceased = rng.random(n, dtype=np.float32) < death_rate[age].astype(np.float32)
    deceased[dup_rows] = deceased[source[dup_rows]]
    return _People(
        n=n, as_of_day=as_of_day, age=age, age_days=age_days, sex=sex, group=group, first=first,
        last=last, last2=last2, city=city, created_ago=created_ago, condition_key=condition_key,
        n_conditions=n_conditions, has_email=has_email, deceased=deceased, duplicate=duplicate,
        source=source, lists=lists,
    )  # fmt: skip


# --------------------------------------------------------------------------- conditions


@dataclasses.dataclass
class _ConditionLists:
    """List columns for each distinct combination of conditions, plus service-line lookup."""

    diagnosis_codes: pl.Series
    service_lines: pl.Series
    medication_classes: pl.Series
    line_offsets: np.ndarray  # per combination: start in line_values
    line_counts: np.ndarray
    line_values: np.ndarray  # service-line indices


def _draw_conditions(
    rng: np.random.Generator, age: np.ndarray, sex: np.ndarray
) -> tuple[np.ndarray, np.ndarray, _ConditionLists]:
    """Draw conditions per row and encode each row's combination as one small integer."""
    n = age.size
    # A shared frailty factor (mean 1) makes conditions cluster in the same people.
    frailty = rng.lognormal(-0.18, 0.6, n).astype(np.float32)
    age_sex = age.astype(np.int32) * 3 + sex
    key = np.zeros(n, dtype=np.int64)
    n_conditions = np.zeros(n, dtype=np.int8)
    radix = 1
    years = np.arange(_MAX_AGE, dtype=np.float64) + 0.5
    for cond in _CONDITIONS:
        base = np.interp(years, cond.ages, cond.rates)
        by_age_sex = (
            np.stack(
                [base * cond.female, base * cond.male, base * (cond.female + cond.male) / 2], axis=1
            )
            .reshape(-1)
            .astype(np.float32)
        )
        p = np.minimum(by_age_sex[age_sex] * frailty, np.float32(0.95))
        u = rng.random(n, dtype=np.float32)
        present = u < p
        # Reuse the draw: u / p is uniform in [0, 1) among the rows that have the condition.
        cum = np.cumsum([w for w, _, _ in cond.presentations])
        cum = (cum / cum[-1]).astype(np.float32)
        which = np.searchsorted(cum, u[present] / p[present], side="right")
        np.minimum(which, len(cum) - 1, out=which)
        key[present] += (which.astype(np.int64) + 1) * radix
        n_conditions += present
        radix *= len(cond.presentations) + 1
    # Base service line: most people have a primary-care (or pediatric) relationship.
    has_primary = rng.random(n, dtype=np.float32) < 0.75
    key += radix * np.where(has_primary, np.where(age < 18, 2, 1), 0)
    radix *= 3
    if radix >= 2**63:
        raise AssertionError("condition combinations do not fit in int64")
    keys = pl.Series(key)
    combos = keys.unique().sort()
    inverse = keys.replace_strict(combos, pl.int_range(len(combos), dtype=pl.Int32, eager=True))
    return inverse.to_numpy().copy(), n_conditions, _combination_lists(combos.to_numpy())


def _combination_lists(combos: np.ndarray) -> _ConditionLists:
    """Diagnosis codes, service lines and medications for each distinct combination."""
    u = combos.size
    digits = np.empty((u, len(_CONDITIONS) + 1), dtype=np.int64)
    rest = combos.copy()
    for c, cond in enumerate(_CONDITIONS):
        digits[:, c] = rest % (len(cond.presentations) + 1)
        rest //= len(cond.presentations) + 1
    digits[:, -1] = rest  # 0 none, 1 primary care, 2 pediatrics

    # Flat tables over every (condition, presentation).
    code_index = {code: i for i, code in enumerate(_CODES)}
    med_index = {m: i for i, m in enumerate(_MEDICATIONS)}
    line_index = {s: i for i, s in enumerate(_SERVICE_LINES)}
    pres_start = np.cumsum([0] + [len(c.presentations) for c in _CONDITIONS])[:-1]
    pres_codes, pres_meds, pres_lines = [], [], []
    for cond in _CONDITIONS:
        for _, codes, meds in cond.presentations:
            pres_codes.append([code_index[x] for x in codes])
            pres_meds.append([med_index[m] for m in meds])
            pres_lines.append([line_index[s] for s in cond.lines])

    combo, cond_idx = np.nonzero(digits[:, :-1])  # ordered by combination, then condition
    pres = pres_start[cond_idx] + digits[combo, cond_idx] - 1

    def expand(table: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        sizes = np.array([len(t) for t in table], dtype=np.int64)
        flat = np.array([v for t in table for v in t], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        counts = sizes[pres]
        owner = np.repeat(combo, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return owner, flat[np.repeat(starts[pres], counts) + within]

    code_owner, code_values = expand(pres_codes)
    med_owner, med_values = expand(pres_meds)
    line_owner, line_values = expand(pres_lines)
    base = digits[:, -1]
    with_base = np.flatnonzero(base > 0)
    line_owner = np.concatenate([line_owner, with_base])
    line_values = np.concatenate(
        [line_values, np.where(base[with_base] == 2, _PEDIATRICS, _PRIMARY_CARE)]
    )
    # Service lines and medications: distinct, in vocabulary order.
    width = max(len(_SERVICE_LINES), len(_MEDICATIONS))
    line_owner, line_values = _distinct_pairs(line_owner, line_values, width)
    med_owner, med_values = _distinct_pairs(med_owner, med_values, width)

    line_counts = np.bincount(line_owner, minlength=u).astype(np.int32)
    line_offsets = (np.cumsum(line_counts) - line_counts).astype(np.int64)
    return _ConditionLists(
        diagnosis_codes=_lists(code_owner, code_values, _CODES, u),
        service_lines=_lists(line_owner, line_values, _SERVICE_LINES, u),
        medication_classes=_lists(med_owner, med_values, _MEDICATIONS, u),
        line_offsets=line_offsets,
        line_counts=line_counts,
        line_values=line_values.astype(np.int8),
    )


def _distinct_pairs(
    owner: np.ndarray, values: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct (owner, value) pairs, values in ``[0, width)``."""
    pairs = np.sort(owner.astype(np.int64) * width + values)
    keep = np.ones(pairs.size, dtype=bool)
    keep[1:] = pairs[1:] != pairs[:-1]
    pairs = pairs[keep]
    return pairs // width, pairs % width


def _lists(owner: np.ndarray, values: np.ndarray, vocabulary: Sequence[str], n: int) -> pl.Series:
    """List(String) Series of length ``n`` from (owner, value index) pairs sorted by owner."""
    pairs = pl.DataFrame(
        {"owner": owner.astype(np.int64), "value": pl.Series(vocabulary).gather(values)}
    )
    grouped = pairs.group_by("owner", maintain_order=True).agg(pl.col("value"))
    return (
        pl.DataFrame({"owner": np.arange(n, dtype=np.int64)})
        .join(grouped, on="owner", how="left", maintain_order="left")
        .get_column("value")
        .fill_null(pl.lit([], dtype=pl.List(pl.String)))
    )


# --------------------------------------------------------------------------- contacts


def _table(values: Sequence[str | None]) -> pl.Series:
    return pl.Series(values, dtype=pl.String)


def _gather(table: Sequence[str | None] | pl.Series, column: str) -> pl.Expr:
    series = table if isinstance(table, pl.Series) else _table(table)
    return pl.lit(series).gather(pl.col(column))


def _fixed_digits(prefix: str, width: int) -> np.ndarray:
    """Bytes array ``prefix`` + every ``width``-digit number, zero-padded (index = number)."""
    numbers = np.arange(10**width, dtype=np.int64)
    matrix = np.empty((numbers.size, len(prefix) + width), dtype=np.uint8)
    matrix[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    for j in range(width):
        matrix[:, len(prefix) + j] = 48 + (numbers // 10 ** (width - 1 - j)) % 10
    return matrix.view(f"S{matrix.shape[1]}").ravel()


def _identifiers(name: str, prefix: str, number: np.ndarray, digits: int) -> pl.Series:
    """``prefix`` + ``number`` zero-padded to ``digits``, built as fixed-width bytes in numpy."""
    high = len(prefix) + digits - 4
    packed = np.empty(number.size, dtype=[("high", f"S{high}"), ("low", "S4")])
    packed["high"] = _fixed_digits(prefix, digits - 4)[number // 10**4]
    packed["low"] = _fixed_digits("", 4)[number % 10**4]
    return pl.Series(name, packed.view(f"S{high + 4}")).cast(pl.String)


def _missing(rng: np.random.Generator, n: int, column: str) -> np.ndarray:
    return rng.random(n, dtype=np.float32) < _MISSING[column]


def _contacts_frame(rng: np.random.Generator, p: _People) -> pl.DataFrame:
    n = p.n
    dup = np.flatnonzero(p.duplicate)
    src = p.source[dup]
    contact_id = _contact_ids(rng, n)
    idx = _name_indices(rng, p, dup, src)
    email = _email_indices(rng, p, dup, src)
    phone = _phone_indices(rng, p, dup, src)
    address = _address_indices(rng, p, dup, src)
    for pieces in (email, phone, address):
        idx.update(pieces.indices)
        pieces.indices = {}  # the index arrays live on only in the frame below

    idx["sex"] = np.where(_missing(rng, n, "sex"), 2, p.sex)
    idx["language"] = _languages(rng, p)
    idx["insurance"] = _insurance(rng, p)
    frame = _drawn_frame(rng, p, contact_id, idx)
    contacts = _assemble_contacts(frame, email, phone, address, p.lists)
    person = np.arange(n, dtype=np.int64)
    person[dup] = src
    return _one_mailbox_per_person(contacts, person)


def _contact_ids(rng: np.random.Generator, n: int) -> pl.Series:
    """An affine permutation of the row number over 9 digits (unique, unordered)."""
    mult = int(rng.integers(10**8, 9 * 10**8)) | 1
    if mult % 5 == 0:
        mult += 2
    number = (np.arange(n, dtype=np.int64) * mult + int(rng.integers(0, 10**9))) % 10**9
    return _identifiers("contact_id", "C", number, 9)


def _first_names() -> list[str | None]:
    """Every spelling variant of every first name, then None (missing)."""
    return [v for name in _FIRST for v in _name_variants(name)] + [None]


def _last_names() -> list[str | None]:
    """Every spelling variant of every last name, then None (missing)."""
    return [v for name in _LAST for v in _name_variants(name)] + [None]


def _last_name_suffixes() -> list[str]:
    """No suffix, then ``-`` + every spelling variant of every last name (hyphenated)."""
    return [""] + [f"-{v}" for name in _LAST for v in _name_variants(name)]


def _name_indices(
    rng: np.random.Generator, p: _People, dup: np.ndarray, src: np.ndarray
) -> dict[str, np.ndarray]:
    """Indices into the name tables: one spelling variant per row, applied to first and
    last name alike (a duplicate record spells its person's name another way)."""
    n = p.n
    variant = _choice(rng, _NAME_VARIANT_SHARES, n).astype(np.int32)
    variant[dup] = (variant[src] + rng.integers(1, _NAME_VARIANTS, dup.size)) % _NAME_VARIANTS
    idx: dict[str, np.ndarray] = {}
    idx["first"] = np.where(
        _missing(rng, n, "first_name"), len(_first_names()) - 1, p.first * _NAME_VARIANTS + variant
    )
    # A hyphenated last name is written in one case, without the padding variant.
    hyphenated = p.last2 >= 0
    last_variant = np.where(hyphenated & (variant == 4), 0, variant)
    idx["last2"] = np.where(hyphenated, 1 + p.last2 * _NAME_VARIANTS + last_variant, 0)
    idx["last"] = np.where(
        _missing(rng, n, "last_name"),
        len(_last_names()) - 1,
        p.last * _NAME_VARIANTS + last_variant,
    )
    return idx


def _drawn_frame(
    rng: np.random.Generator, p: _People, contact_id: pl.Series, idx: dict[str, np.ndarray]
) -> pl.DataFrame:
    """The contact ids, the table indices (moved out of ``idx``), dates and consent flags."""
    n = p.n
    birth = p.as_of_day - p.age_days
    created_us = (p.as_of_day - p.created_ago).astype(np.int64) * _US_PER_DAY + rng.integers(
        7 * 3600, 21 * 3600, n
    ) * 1_000_000
    opt_in = rng.random(n, dtype=np.float32) < np.where(p.age < 18, 0.45, 0.64)
    authorized = rng.random(n, dtype=np.float32) < np.where(opt_in, 0.35, 0.10)
    # Authorizations are mostly recent (skewed towards as_of), never before the record.
    auth_span = np.minimum(p.created_ago, 1500).astype(np.float32)
    auth_day = p.as_of_day - (rng.random(n, dtype=np.float32) ** 2 * auth_span).astype(np.int32)
    expires = rng.random(n, dtype=np.float32) < 0.7
    expiry_day = auth_day + rng.integers(365, 3 * 365, n, dtype=np.int32)
    revoked = rng.random(n, dtype=np.float32) < 0.06
    revoked_day = auth_day + (rng.random(n, dtype=np.float32) * (p.as_of_day - auth_day)).astype(
        np.int32
    )
    idx["ad_consent"] = _choice(rng, (0.35, 0.20, 0.45), n)
    do_not_contact = rng.random(n, dtype=np.float32) < 0.03
    return pl.DataFrame(
        {
            "contact_id": contact_id,
            **{k: pl.Series(k, idx.pop(k)).cast(pl.UInt32) for k in list(idx)},
            "birth_date": pl.Series(birth, dtype=pl.Int32).cast(pl.Date),
            "no_birth_date": _missing(rng, n, "birth_date"),
            "created_at": pl.Series(created_us).cast(pl.Datetime("us")),
            "marketing_opt_in": opt_in,
            "authorized": authorized,
            "hipaa_auth_date": pl.Series(auth_day, dtype=pl.Int32).cast(pl.Date),
            "expires": expires,
            "hipaa_auth_expires": pl.Series(expiry_day, dtype=pl.Int32).cast(pl.Date),
            "revoked": revoked,
            "hipaa_auth_revoked_at": pl.Series(revoked_day, dtype=pl.Int32).cast(pl.Date),
            "do_not_contact": do_not_contact,
            "deceased": p.deceased,
            "combo": p.condition_key,
        }
    )


def _assemble_contacts(
    frame: pl.DataFrame,
    email: _Pieces,
    phone: _Pieces,
    address: _Pieces,
    lists: _ConditionLists,
) -> pl.DataFrame:
    """The contacts table: each column's strings gathered from its tables by the indices."""
    city_variants = [v for _, city, *_ in _CITIES for v in (city, city.upper(), city.lower())]
    states = [state for state, *_ in _CITIES]
    exprs = [
        pl.col("contact_id"),
        pl.concat_str(
            _gather(email.lead_word, "email_a"),
            _gather(email.sep_word, "email_b"),
            _gather(email.numbers, "email_n"),
            _gather(email.tail, "email_tail"),
        ),
        pl.concat_str(
            _gather(phone.prefixes, "phone_prefix"),
            pl.lit(pl.Series(_fixed_digits("", 4)).cast(pl.String)).gather(pl.col("phone_line")),
        ),
        _gather(_first_names(), "first"),
        pl.concat_str(_gather(_last_names(), "last"), _gather(_last_name_suffixes(), "last2")),
        pl.when(pl.col("no_birth_date")).then(None).otherwise(pl.col("birth_date")),
        _gather(("F", "M", None), "sex"),
        pl.concat_str(
            _gather(address.numbers, "street_no"),
            _gather(address.street_names, "street_name"),
            _gather(_UNITS, "unit"),
        ),
        _gather([*city_variants, None], "city"),
        _gather([*states, *(s.lower() for s in states), None], "state"),
        pl.concat_str(
            _gather(address.zip3, "zip3"),
            _gather(address.zip2, "zip2"),
            _gather(address.plus4, "plus4"),
        ),
        _gather([*_COUNTRIES, None], "country"),
        _gather(_LANGUAGES, "language"),
        pl.col("created_at"),
        pl.col("marketing_opt_in"),
        pl.when("authorized").then("hipaa_auth_date"),
        pl.when(pl.col("authorized") & pl.col("expires")).then("hipaa_auth_expires"),
        pl.when(pl.col("authorized") & pl.col("revoked")).then("hipaa_auth_revoked_at"),
        _gather(("granted", "denied", None), "ad_consent"),
        pl.col("do_not_contact"),
        pl.col("deceased"),
        pl.lit(lists.diagnosis_codes).gather(pl.col("combo")),
        pl.lit(lists.service_lines).gather(pl.col("combo")),
        pl.lit(lists.medication_classes).gather(pl.col("combo")),
        _gather(_INSURANCE, "insurance"),
    ]
    drawn = [c for c in CONTACTS_SCHEMA.names() if c not in PRIVACY_COLUMNS]
    named = [e.alias(c) for e, c in zip(exprs, drawn, strict=True)]
    # Assemble the strings a chunk at a time: the pieces of a chunk stay small.
    chunks = [
        frame.slice(lo, _CHUNK).lazy().select(named).collect()
        for lo in range(0, max(frame.height, 1), _CHUNK)
    ]
    return pl.concat(chunks, rechunk=False)


def _one_mailbox_per_person(contacts: pl.DataFrame, person: np.ndarray) -> pl.DataFrame:
    """Real mailboxes belong to one person: where two people drew the same mailbox (as
    Google canonicalizes it: case, gmail dots and +tags folded), all but the first get a
    number in the local part. A duplicate record keeps its person's mailbox."""
    from audiences.crm.identifiers import IdentityMapping, normalized_exprs

    mailbox = normalized_exprs(
        IdentityMapping(email="email"),  # type: ignore[arg-type]
        "google_ads",
        schema=pl.Schema({"email": pl.String}),
    )["hashed_email"]
    who = pl.Series("__person", person)
    clash = (
        contacts.select("email", who)
        .with_columns(mailbox.alias("__mailbox"))
        .select(
            pl.col("__mailbox").is_not_null()
            & (pl.col("__person") != pl.col("__person").min().over("__mailbox"))
        )
        .to_series()
    )
    head = pl.col("email").str.extract(r"^(\s*[^+@]*)", 1)
    rest = pl.col("email").str.extract(
        r"^\s*[^+@]*(.*)$",
        1,
    )
    renamed = pl.concat_str([head, who.cast(pl.String), rest])
    return contacts.with_columns(
        pl.when(clash).then(renamed).otherwise(pl.col("email")).alias("email")
    )


@dataclasses.dataclass
class _Pieces:
    indices: dict[str, np.ndarray]
    lead_word: list[str | None] = dataclasses.field(default_factory=list)
    sep_word: list[str] = dataclasses.field(default_factory=list)
    numbers: Sequence[str | None] = dataclasses.field(default_factory=list)
    tail: list[str] = dataclasses.field(default_factory=list)
    prefixes: list[str | None] = dataclasses.field(default_factory=list)
    street_names: list[str] = dataclasses.field(default_factory=list)
    zip3: list[str | None] = dataclasses.field(default_factory=list)
    zip2: list[str] = dataclasses.field(default_factory=list)
    plus4: list[str] = dataclasses.field(default_factory=list)


def _email_indices(
    rng: np.random.Generator, p: _People, dup: np.ndarray, src: np.ndarray
) -> _Pieces:
    """email = [ws] A + [sep] B + number + [+tag] @ domain [ws], as indices into 4 tables.

    A/B come from one word table (ASCII first name, first initial, ASCII last name, empty),
    each in 3 cases. Patterns: first.last, flast, first, lastf.
    """
    first_words = [_email_word(x) for x in _FIRST]
    last_words = [_email_word(x) for x in _LAST]
    initials = [w[:1] for w in first_words]
    words = [*first_words, *initials, *last_words, ""]
    cases = len(_EMAIL_CASE_SHARES)
    leads = ("", " ", "  ", "\t")
    seps = ("", ".", "_")
    lead_word: list[str | None] = [
        lead + c for lead in leads for w in words for c in _email_cases(w)
    ] + [None]
    sep_word = [s + c for s in seps for w in words for c in _email_cases(w)]
    # Numbers: none, the birth year (2 or 4 digits) or a random 1-4 digit number.
    numbers = ["", *(str(i) for i in range(10000))]
    m = _draw_mailboxes(rng, p, len(first_words), len(last_words))
    _respell_duplicate_mailboxes(rng, m, dup, src)

    n_words = len(words)
    tail_domains = [*_EMAIL_DOMAINS, "googlemail.com"]
    tail = [
        f"{t}@{c}{w}"
        for t in _EMAIL_TAGS
        for d in tail_domains
        for c in _email_cases(d)
        for w in ("", " ", "  ")
    ]
    lead_idx = (m.lead * n_words + m.word_a) * cases + m.case
    sep_idx = (m.sep * n_words + m.word_b) * cases + m.case
    tail_idx = ((m.tag * len(tail_domains) + m.domain) * cases + m.case) * 3 + m.trail
    lead_idx[~p.has_email] = len(lead_word) - 1
    return _Pieces(
        indices={"email_a": lead_idx, "email_b": sep_idx, "email_n": m.number, "email_tail": tail_idx},
        lead_word=lead_word, sep_word=sep_word, numbers=numbers, tail=tail,
    )  # fmt: skip


@dataclasses.dataclass
class _Mailboxes:
    """Per row: the pattern, the two words and their separator, the number, domain, +tag,
    letter case and leading / trailing whitespace of the e-mail address."""

    pattern: np.ndarray
    word_a: np.ndarray
    word_b: np.ndarray
    sep: np.ndarray
    domain: np.ndarray
    number: np.ndarray
    case: np.ndarray
    lead: np.ndarray
    trail: np.ndarray
    tag: np.ndarray


def _draw_mailboxes(rng: np.random.Generator, p: _People, n_first: int, n_last: int) -> _Mailboxes:
    """Draw every row's address; the word table holds ``n_first`` first names, as many
    initials, ``n_last`` last names and the empty word, in this order."""
    n = p.n
    off_initial, off_last, empty = n_first, 2 * n_first, 2 * n_first + n_last
    pattern = _choice(rng, (0.45, 0.25, 0.15, 0.15), n)
    word_a = np.select(
        [pattern == 0, pattern == 1, pattern == 2],
        [p.first, off_initial + p.first, p.first],
        off_last + p.last,
    )
    word_b = np.select(
        [pattern == 0, pattern == 1, pattern == 2], [off_last + p.last, off_last + p.last, empty],
        off_initial + p.first,
    )  # fmt: skip
    sep = np.where(pattern == 0, _choice(rng, (0.35, 0.5, 0.15), n), 0).astype(np.int32)
    domain = _choice(rng, _EMAIL_DOMAIN_SHARES, n).astype(np.int32)
    domain[(domain == _GMAIL) & (rng.random(n, dtype=np.float32) < 0.04)] = _GOOGLEMAIL
    kind = _choice(rng, (0.35, 0.12, 0.08, 0.45), n)
    birth_year = ((p.as_of_day - p.age_days) // 365.25 + 1970).astype(np.int64)
    number = np.select(
        [kind == 0, kind == 1, kind == 2],
        [0, 1 + birth_year % 100, 1 + birth_year],
        1 + rng.integers(1, 10000, n) // np.where(rng.random(n) < 0.5, 1, 100),
    )
    case = _choice(rng, _EMAIL_CASE_SHARES, n).astype(np.int32)
    lead = _choice(rng, (0.95, 0.03, 0.01, 0.01), n).astype(np.int32)
    trail = _choice(rng, (0.95, 0.04, 0.01), n).astype(np.int32)
    gmail = (domain == _GMAIL) | (domain == _GOOGLEMAIL)
    tag = np.where(gmail, _choice(rng, (0.85, 0.05, 0.03, 0.03, 0.02, 0.02), n), 0).astype(np.int32)
    return _Mailboxes(pattern, word_a, word_b, sep, domain, number, case, lead, trail, tag)


def _respell_duplicate_mailboxes(
    rng: np.random.Generator, m: _Mailboxes, dup: np.ndarray, src: np.ndarray
) -> None:
    """The duplicate row of a person has the same mailbox, written differently."""
    for arr in (m.pattern, m.word_a, m.word_b, m.sep, m.domain, m.number):
        arr[dup] = arr[src]
    gmail = (m.domain == _GMAIL) | (m.domain == _GOOGLEMAIL)
    change = rng.integers(0, 3, dup.size)
    dup_gmail = gmail[dup]
    # gmail: flip the dots (same mailbox for gmail) or add a +tag; others: case or spaces.
    new_sep = np.where(m.sep[dup] == 1, 0, 1)
    sep, tag, case, lead = m.sep, m.tag, m.case, m.lead
    sep[dup] = np.where(dup_gmail & (change == 0) & (m.pattern[dup] == 0), new_sep, sep[dup])
    tag[dup] = np.where(dup_gmail & (change == 1), 1 + (tag[src] % 5), tag[src])
    case[dup] = np.where(change == 2, (case[src] + 1) % len(_EMAIL_CASE_SHARES), case[src])
    lead[dup] = np.where(~dup_gmail | (change == 0), np.where(lead[src] == 0, 1, 0), lead[src])


def _phone_indices(
    rng: np.random.Generator, p: _People, dup: np.ndarray, src: np.ndarray
) -> _Pieces:
    """phone = prefix (format + area code + exchange 500-599) + 4-digit line.

    Exchange and line come from a permutation of the person's number, so two people in
    one area code share a phone only past a million people there (a duplicate record
    keeps its person's number). Synthetic numbers: never sync sample data to a real ad
    account.
    """
    n = p.n
    areas = sorted({a for *_, codes, _ in _CITIES for a in codes})
    area_index = {a: i for i, a in enumerate(areas)}
    city_areas = [[area_index[a] for a in c[3]] for c in _CITIES]
    sizes = np.array([len(a) for a in city_areas])
    starts = np.cumsum(sizes) - sizes
    flat = np.array([a for codes in city_areas for a in codes])
    area = flat[starts[p.city] + (rng.random(n, dtype=np.float32) * sizes[p.city]).astype(np.int64)]
    person = np.arange(n, dtype=np.int64)
    person[dup] = src
    # 388,837 is coprime with 10**6: an affine map permuting each block of a million people
    code = (person * 388_837 + int(rng.integers(0, 10**6))) % 10**6
    line = code % 10_000
    exchange = code // 10_000
    fmt = _choice(rng, _PHONE_FORMAT_SHARES, n).astype(np.int64)
    area[dup] = area[src]
    fmt[dup] = (fmt[src] + rng.integers(1, len(_PHONE_FORMATS), dup.size)) % len(_PHONE_FORMATS)
    prefixes: list[str | None] = [
        f"{pre}{open_}{a}{close}{500 + x}{mid}"
        for pre, open_, close, mid in _PHONE_FORMATS
        for a in areas
        for x in range(100)
    ] + [None]
    prefix = (fmt * len(areas) + area) * 100 + exchange
    prefix[_missing(rng, n, "phone")] = len(prefixes) - 1
    return _Pieces(indices={"phone_prefix": prefix, "phone_line": line}, prefixes=prefixes)


def _address_indices(
    rng: np.random.Generator, p: _People, dup: np.ndarray, src: np.ndarray
) -> _Pieces:
    n = p.n
    street_names = [f" {s} {x}" for s in _STREETS for x in _STREET_SUFFIXES]
    street_no = np.maximum(rng.integers(1, 10000, n) // np.where(rng.random(n) < 0.6, 1, 10), 1)
    street_name = rng.integers(0, len(street_names), n)
    unit = np.where(rng.random(n, dtype=np.float32) < 0.15, rng.integers(1, len(_UNITS), n), 0)
    zip2 = rng.integers(0, 100, n)
    plus4 = rng.integers(0, 10000, n)
    zip_form = _choice(rng, (0.90, 0.05, 0.02, 0.015, 0.015), n)  # plain, -4, " 4", lead, trail
    for arr in (street_no, street_name, unit, zip2, plus4):
        arr[dup] = arr[src]
    numbers = [None, *(str(i) for i in range(1, 10000))]
    street_no = np.where(_missing(rng, n, "street"), 0, street_no)
    city = p.city.astype(np.int64) * 3 + _choice(rng, (0.93, 0.04, 0.03), n)
    city[_missing(rng, n, "city")] = 3 * len(_CITIES)
    state = p.city.astype(np.int64) + np.where(
        rng.random(n, dtype=np.float32) < 0.02, len(_CITIES), 0
    )
    state[_missing(rng, n, "state")] = 2 * len(_CITIES)
    zip3_table: list[str | None] = [c[2] for c in _CITIES] + [" " + c[2] for c in _CITIES] + [None]
    zip3 = p.city.astype(np.int64) + np.where(zip_form == 3, len(_CITIES), 0)
    zip3[_missing(rng, n, "zip")] = len(zip3_table) - 1
    zip2_table = [f"{i:02d}" for i in range(100)] + [f"{i:02d} " for i in range(100)]
    zip2 = zip2 + np.where(zip_form == 4, 100, 0)
    plus4_table = ["", *(f"-{i:04d}" for i in range(10000)), *(f" {i:04d}" for i in range(10000))]
    plus4 = np.select([zip_form == 1, zip_form == 2], [1 + plus4, 10001 + plus4], 0)
    country = _choice(rng, _COUNTRY_SHARES, n).astype(np.int64)
    country[_missing(rng, n, "country")] = len(_COUNTRIES)
    return _Pieces(
        indices={"street_no": street_no, "street_name": street_name, "unit": unit, "city": city,
                 "state": state, "zip3": zip3, "zip2": zip2, "plus4": plus4, "country": country},
        numbers=numbers, street_names=street_names, zip3=zip3_table, zip2=zip2_table,
        plus4=plus4_table,
    )  # fmt: skip


def _choice_by(rng: np.random.Generator, shares: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Categorical draw whose shares depend on the row's group (``shares[group]``).

    One searchsorted over the groups' cumulative shares laid end to end (group g spans
    [g, g + 1]), so no (rows x categories) matrix is ever built.
    """
    n_groups, width = shares.shape
    cum = np.cumsum(shares / shares.sum(axis=1, keepdims=True), axis=1)
    flat = (cum + np.arange(n_groups)[:, None]).ravel()
    target = rng.random(group.size) + group
    codes = np.searchsorted(flat, target, side="right") - group.astype(np.int64) * width
    return np.minimum(codes, width - 1)


def _languages(rng: np.random.Generator, p: _People) -> np.ndarray:
    language_index = {lang: i for i, lang in enumerate(_LANGUAGES)}
    table = np.zeros((len(_NAME_GROUPS), len(_LANGUAGES)))
    for g, group in enumerate(_NAME_GROUPS):
        for lang, share in group.languages:
            table[g, language_index[lang]] = share
    return _choice_by(rng, table, p.group)


def _insurance(rng: np.random.Generator, p: _People) -> np.ndarray:
    bracket = np.select([p.age < 18, p.age < 26, p.age < 65], [0, 1, 2], 3)
    return _choice_by(rng, _INSURANCE_BY_AGE, bracket)


# --------------------------------------------------------------------------- abroad

# People living in the EEA and the UK (``generate(..., abroad=N)``): (spellings of the
# country, calling code, e-mail top-level domain, cities as (name, area code, postcodes),
# weight). The first spelling is the usual one; the others are what people also type.
_ABROAD: tuple[
    tuple[tuple[str, ...], str, str, tuple[tuple[str, str, tuple[str, ...]], ...], float], ...
] = (
    (("DE", "Germany", "Deutschland"), "49", "de",
     (("Berlin", "30", ("10115", "10178", "10435")), ("München", "89", ("80331", "80469")),
      ("Hamburg", "40", ("20095", "20354"))), 3.0),
    (("FR", "France"), "33", "fr",
     (("Paris", "1", ("75001", "75011", "75015")), ("Lyon", "4", ("69001", "69003"))), 2.5),
    (("IE", "Ireland"), "353", "ie",
     (("Dublin", "1", ("D02 X285", "D04 C932", "D08 VF8H")), ("Cork", "21", ("T12 X70A",))), 1.5),
    (("NL", "Netherlands"), "31", "nl",
     (("Amsterdam", "20", ("1012 AB", "1017 CT")), ("Rotterdam", "10", ("3011 AD",))), 1.5),
    (("ES", "Spain", "España"), "34", "es",
     (("Madrid", "91", ("28001", "28013")), ("Barcelona", "93", ("08001", "08008"))), 1.5),
    (("IT", "Italy"), "39", "it",
     (("Roma", "06", ("00184", "00186")), ("Milano", "02", ("20121",))), 1.5),
    (("SE", "Sweden"), "46", "se", (("Stockholm", "8", ("111 22", "114 35")),), 0.8),
    (("GB", "United Kingdom", "UK"), "44", "co.uk",
     (("London", "20", ("SW1A 1AA", "EC1A 1BB", "N1 9GU")),
      ("Manchester", "161", ("M1 1AE",))), 3.0),
)  # fmt: skip


def _abroad(
    n: int, seed: int, as_of: dt.date, contacts: pl.DataFrame, events: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` records of people living in the EEA and the UK, with their events.

    Drawn like the others (from a generator of their own), then moved abroad: country,
    city, postcode, no US state, the phone in the country's international form, the
    e-mail at the country's top-level domain (so no mailbox is shared with a US record).
    Contact and event ids avoid the ids of ``contacts`` and ``events``."""
    rng = np.random.default_rng([seed, 44])
    people = _draw_people(rng, n, as_of)
    drawn = _contacts_frame(rng, people)
    ids = _fresh_ids(rng, n, contacts.get_column("contact_id"), "contact_id", "C", 9)
    more_events = _events_frame(rng, people, ids)
    event_ids = _fresh_ids(
        rng, more_events.height, events.get_column("event_id"), "event_id", "E", 10
    )
    more_events = more_events.with_columns(event_ids)
    moved = drawn.with_columns(ids, *_abroad_columns(rng, people))
    return _privacy_consents(moved, seed, as_of, 1), more_events


def _abroad_columns(rng: np.random.Generator, p: _People) -> list[pl.Expr]:
    """Country, city, state (none), postcode, phone and e-mail of people abroad."""
    places = [
        (c, city, area, code, weight / len(cities) / len(codes))
        for c, (_, _, _, cities, weight) in enumerate(_ABROAD)
        for city, area, codes in cities
        for code in codes
    ]
    place = _choice(rng, [w for *_, w in places], p.n).astype(np.int64)
    dup = np.flatnonzero(p.duplicate)
    place[dup] = place[p.source[dup]]
    # the usual spelling of the country, or (one in five) another one
    country = np.array([c for c, *_ in places], dtype=np.int64)[place]
    others = np.array([len(entry[0]) - 1 for entry in _ABROAD])[country]
    other = rng.random(p.n, dtype=np.float32) < 0.2
    variant = np.where(other & (others > 0), 1 + rng.integers(0, 2, p.n) % np.maximum(others, 1), 0)
    first = np.cumsum([0, *(len(entry[0]) for entry in _ABROAD)])[:-1]
    spelling = pl.Series(first[country] + variant, dtype=pl.UInt32)
    at = pl.Series(place, dtype=pl.UInt32)

    def by_place(values: list[str]) -> pl.Expr:
        return pl.lit(pl.Series(values)).gather(at)

    digits = pl.col("phone").str.replace_all(r"\D", "").str.slice(-7)
    phone = pl.concat_str(
        by_place([f"+{_ABROAD[c][1]} {area} " for c, _, area, _, _ in places]),
        digits.str.slice(0, 3),
        pl.lit(" "),
        digits.str.slice(3),
    )
    email = pl.concat_str(
        pl.col("email").str.extract(r"^(.*)\.(?:com|net)\s*$", 1),
        pl.lit("."),
        by_place([_ABROAD[c][2] for c, *_ in places]),
        pl.col("email").str.extract(r"(\s*)$", 1),
    )
    return [
        pl.lit(pl.Series([s for entry in _ABROAD for s in entry[0]]))
        .gather(spelling)
        .alias("country"),
        by_place([city for _, city, *_ in places]).alias("city"),
        pl.lit(None, dtype=pl.String).alias("state"),
        by_place([code for *_, code, _ in places]).alias("zip"),
        pl.when(pl.col("phone").is_not_null()).then(phone).alias("phone"),
        pl.when(pl.col("email").is_not_null()).then(email).alias("email"),
    ]


def _fresh_ids(
    rng: np.random.Generator, n: int, taken: pl.Series, name: str, prefix: str, digits: int
) -> pl.Series:
    """``n`` distinct random ids (``prefix`` + ``digits`` digits) none of ``taken`` holds."""
    found = pl.Series(name, [], dtype=pl.String)
    while found.len() < n:
        want = n - found.len()
        drawn = _identifiers(name, prefix, rng.integers(0, 10**digits, 2 * want + 16), digits)
        fresh = drawn.unique(maintain_order=True)
        fresh = fresh.filter(~fresh.is_in(taken.implode()) & ~fresh.is_in(found.implode()))
        found = pl.concat([found, fresh.head(want)])
    return found


# --------------------------------------------------------------------------- events


def _events_frame(rng: np.random.Generator, p: _People, contact_ids: pl.Series) -> pl.DataFrame:
    """Events for every contact, built ``_CHUNK`` contacts at a time to bound memory."""
    n = p.n
    # Per-contact counts: more events for people with more conditions, gamma-Poisson spread.
    intensity = (1.0 + 0.6 * p.n_conditions.astype(np.float32)) * rng.gamma(1.5, 1 / 1.5, n).astype(
        np.float32
    )
    if n:
        intensity *= np.float32(_MEAN_EVENTS / max(float(intensity.mean()), 1e-9))
    counts = rng.poisson(intensity).astype(np.int64)
    del intensity
    first_event = np.cumsum(counts) - counts
    # event_id: an affine permutation of the event number over 10 digits (unique, unordered).
    mult = int(rng.integers(10**8, 9 * 10**8)) | 1
    if mult % 5 == 0:
        mult += 2
    shift = int(rng.integers(0, 10**10))
    # Per-contact lookups the chunks gather from.
    fallback = np.where(p.age < 18, _PEDIATRICS, _PRIMARY_CARE).astype(np.int8)
    line_counts = p.lists.line_counts[p.condition_key]
    line_offsets = p.lists.line_offsets[p.condition_key]
    chunks = []
    for lo in range(0, max(n, 1), _CHUNK):
        hi = min(lo + _CHUNK, n)
        total = int(counts[lo:hi].sum())
        owner = np.repeat(np.arange(lo, hi, dtype=np.int32), counts[lo:hi])
        number = np.arange(total, dtype=np.int64) + (int(first_event[lo]) if hi > lo else 0)
        number = (number * mult + shift) % 10**10
        frame = _event_chunk(rng, p, owner, fallback, line_counts, line_offsets)
        frame.insert_column(0, _identifiers("event_id", "E", number, 10))
        del number, owner
        chunks.append(
            frame.lazy()
            .select(
                pl.col("event_id"),
                pl.lit(contact_ids).gather(pl.col("owner")).alias("contact_id"),
                _gather(_EVENT_TYPES, "kind").alias("event_type"),
                pl.col("event_time"),
                _gather([*_SERVICE_LINES, None], "department").alias("department"),
                _gather([*_VISIT_TYPES, None], "visit_type").alias("visit_type"),
            )
            .collect()
        )
    return pl.concat(chunks, rechunk=False)


def _event_chunk(
    rng: np.random.Generator,
    p: _People,
    owner: np.ndarray,
    fallback: np.ndarray,
    line_counts: np.ndarray,
    line_offsets: np.ndarray,
) -> pl.DataFrame:
    """Index columns (owner, kind, time, department, visit type) for one chunk of events."""
    total = owner.size
    kind = _choice(rng, _EVENT_TYPE_SHARES, total)
    kind[(kind == 3) & ~p.has_email[owner]] = 2  # no email, no email clicks: a portal login
    # Days before as_of: exponential (most within 3 years), never before the record existed.
    scale = np.array([420.0, 300.0, 250.0, 200.0], dtype=np.float32)[kind]
    ago = (rng.standard_exponential(total, dtype=np.float32) * scale).astype(np.int32)
    del scale
    ago %= p.created_ago[owner]
    ago += 1
    # Some appointments are booked for the next 180 days (not for the deceased).
    future = (kind == 1) & (rng.random(total, dtype=np.float32) < 0.35) & ~p.deceased[owner]
    ago[future] = -rng.integers(1, 181, int(future.sum()), dtype=np.int32)
    del future
    time_us = (p.as_of_day - ago).astype(np.int64) * _US_PER_DAY
    del ago
    time_us += rng.integers(6 * 3600, 22 * 3600, total, dtype=np.int64) * 1_000_000

    # Department: one of the person's service lines (primary care / pediatrics if none).
    values = p.lists.line_values
    count = line_counts[owner]
    pick = (rng.random(total, dtype=np.float32) * count).astype(np.int64)
    if values.size:
        pick += line_offsets[owner]
        np.minimum(pick, values.size - 1, out=pick)
        department = np.where(count > 0, values[pick], fallback[owner])
    else:
        department = fallback[owner]
    del count, pick
    department[kind > 1] = len(_SERVICE_LINES)  # null for portal logins and email clicks
    visit_type = np.where(kind == 0, _choice(rng, _VISIT_TYPE_SHARES, total), 4).astype(np.int8)
    return pl.DataFrame(
        {
            "owner": owner,
            "kind": kind,
            "event_time": pl.Series(time_us).cast(pl.Datetime("us")),
            "department": department.astype(np.int8),
            "visit_type": visit_type,
        }
    )


# --------------------------------------------------------------------------- writing


def _csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """List columns as ``;``-joined strings (CSV has no lists)."""
    lists = [c for c in LIST_COLUMNS if c in frame.columns]
    return frame.with_columns(pl.col(c).list.join(LIST_SEPARATOR) for c in lists)


@contextlib.contextmanager
def _atomic_target(target: Path) -> Iterator[Path]:
    """A temp path beside ``target``; on success it is synced and renamed over ``target``."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # make the rename itself durable
        finally:
            os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)
