"""The build's job written as a DuckDB SQL script: ``bench_build``'s engine baseline.

    python benchmarks/duckdb_job.py CONTACTS EVENTS OUT.csv AS_OF link|no-link STATES [--stages]

What a data engineer would write for the same release, by hand, against the same Parquet
files: the segment (age 25-64 on ``AS_OF``, state in ``STATES`` (comma-separated),
English or Spanish, an ``email_click`` in the 365 days up to ``AS_OF``); the default
pack's consent rule (a marketing opt-in, no do-not-contact, not deceased, ad
personalization not denied) and, with ``link``, its duplicate-of-opt-out linkage (no
other record that opted out shares the Google mailbox, the phone with its country code,
or first name + last name + country + postal code; nor, when it has neither e-mail nor
phone, Meta's first name + last name + city + state) and the person's own opt-out (no
record of the same person among the segment's records opted out); people, not records
(records sharing a normalized email or phone are one person, and so are records sharing
a name with a postal code that no other of them contradicts by e-mail or phone, with the
first of them another contradicts, else the first; a record with no e-mail, phone or
postal code joins the first record of its name, city and state that has one, else the
first of them — all over the segment's records, the
opted-out ones included, transitively — released once as the smallest CRM id of the
person's released records, with each identifier taken from the first of them, by CRM
id, that has it); the 19 hashed columns of the Meta and Google Ads layouts, written
as Parquet (``OUT.csv.parquet``) and CSV (``OUT.csv``), for the people one of the layouts
names to its platform (policies/sendable.py).

The identifiers are normalized as the release does (``audiences.crm.identifiers``:
trimming, placeholders, Google's gmail canonicalization, the email domain check, NANP
phones with their ``00`` / ``011`` prefixes and extensions, NFC names), restated in SQL;
the country handling is the sample's (every record is in the US), and the reserved e-mail
domains (``example.com``, ``.test``, …: never sent) are not restated — the sample has no
address at one. ``bench_build`` checks
that the row count and the hashed-email column agree exactly with the build's release
file, and reports any other column that does not. Prints ``{"rows", "rounds",
"seconds"}`` as JSON; ``--stages`` also prints each statement's wall seconds to stderr.

How it is written (issue #22: the baseline must be the job done well, not a straw man).
The first version took 216-315 s at 10M and spilled ~37 GB under its 4 GB limit: its
normalization macros bound intermediate values with scalar subqueries, which DuckDB runs
as correlated subqueries (a join with the DISTINCT of the input, per macro call), and its
linkage was a correlated ``NOT EXISTS`` computing the names of both sides per probe
plus ``NOT IN`` mark joins over temp tables holding every column of the 5.4M opted-out
records. Now:

* each value is normalized once: stacked SELECTs whose ``_`` columns hold the
  intermediate values (lowercase, gmail form, the phone's digits) for the next one;
  macros are plain expressions over columns (a macro repeats an argument expression
  wherever it names it);
* every regular expression sits behind a plain test that decides the common case
  exactly (a 64-hex value has 64 bytes; nothing to squeeze without two spaces or a tab;
  an ASCII country that is already a US name; ...), and trimming checks the first and
  last byte before calling ``trim`` (which, with a character set, is slower than a
  regular expression);
* low-cardinality columns are normalized per distinct value: the denying values of
  ``ad_personalization_consent`` (table ``denials``), first and last names (``names``,
  a few thousand in 10M records, joined back);
* the opted-out records (table ``o``) keep only their key columns; the segment's
  records (``seg``) are filtered (clicks as a semi-join) before their keys are computed;
  the linkage is three ``ANTI JOIN`` on equality of precomputed columns (hash joins;
  a NULL key never matches, as before);
* label propagation reads (contact id, email key, phone key) only.

At 10M (load 0-0.8, 2 cores; 2026-12-05) it took 16.2 s and 14.6 s (first, second segment), 1.8 and 1.2 GB peak RSS, without
spilling, under ``memory_limit = '4GB'`` (kept: the machine is shared). Linking people
over all the segment's records by name and ZIP too (2026-12-07): 29.0 s and 23.7 s,
2.1 and 1.4 GB, on a slower host (benchmarks/README.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time

import duckdb

PLACEHOLDERS = (
    "('', 'n/a', 'na', 'n.a.', 'n.a', 'none', 'null', 'nil', 'unknown', '-', '--', '---', "
    "'.', '..', '...', '?', '??', '???')"
)
DENIED = (
    "('denied', 'deny', 'false', 'no', 'n', '0', 'f', 'opted out', 'opt out', 'optedout', "
    "'optout', 'unsubscribed', 'not subscribed', 'declined', 'refused', 'withdrawn', "
    "'revoked', 'rejected', 'off')"
)
_END, _MID = r"[^\s!-/:-@\[-`{-~]", r"[^\s!-,./:-@\[-`{-~]"
DOMAIN = rf"@(?:{_END}(?:{_MID}*{_END})?\.)+(?:{_END}{{2,63}}|xn--[a-z0-9-]+)$"
HEX = "^[0-9a-fA-F]{64}$"
US = "('us', 'usa', 'unitedstates', 'unitedstatesofamerica')"

GMAIL = r"^[^@]*@(?:gmail\.com|googlemail\.com)$"
VALID_EMAIL = rf"^[^@\s]+{DOMAIN}"
EXTENSION = r"(?i)\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,6}$"

# Plain expressions only: a macro holding a scalar subquery (the obvious way to bind an
# intermediate value in SQL) is a correlated subquery that DuckDB decorrelates into a
# join with the DISTINCT of its input, one per call (at 10M, millions of values each).
# Intermediate values are columns of stacked SELECTs instead (``normalized``), so each
# regular expression runs at most once per value.
MACROS = [
    # trimming RE2's \s, which is exactly [\t\n\f\r ]: trim() with a character set is
    # slower than the regular expression, so only where the first byte is at most a space
    # (x < '!') or the last is one of them: 2.9 s instead of 7-12 s for 5 columns of 10M
    r"""CREATE MACRO tr(x) AS CASE WHEN x < '!' OR ends_with(x, ' ') OR ends_with(x, e'\t')
      OR ends_with(x, e'\n') OR ends_with(x, e'\f') OR ends_with(x, e'\r')
      THEN trim(x, e' \t\n\f\r') ELSE x END""",
    f"CREATE MACRO blank(lowered) AS lowered IS NULL OR lowered IN {PLACEHOLDERS}",
    # Each regular expression below is behind a plain test that decides the common case
    # exactly
    f"CREATE MACRO hexed(t) AS CASE WHEN strlen(t) = 64 THEN regexp_matches(t, '{HEX}') END",
    # any of RE2's \s
    r"""CREATE MACRO spaced(x) AS contains(x, ' ') OR contains(x, e'\t') OR contains(x, e'\n')
      OR contains(x, e'\f') OR contains(x, e'\r')""",
    # \s+ to one space: nothing to do without two spaces in a row or another \s
    r"""CREATE MACRO squeeze(x) AS CASE WHEN contains(x, '  ') OR contains(x, e'\t')
      OR contains(x, e'\n') OR contains(x, e'\f') OR contains(x, e'\r')
      THEN regexp_replace(x, '\s+', ' ', 'g') ELSE x END""",
    r"""CREATE MACRO zip5(t) AS CASE WHEN t IS NULL OR length(t) = 0 THEN NULL ELSE nullif(
      regexp_extract(CASE WHEN spaced(t) THEN regexp_replace(t, '\s+', '', 'g') ELSE t END,
        '^([0-9]{5})(?:-?[0-9]{4})?$', 1), '') END""",
    # an ASCII value whose lowercase is a name of the US has only letters to begin with
    f"""CREATE MACRO us(country) AS CASE WHEN country IS NULL THEN true
      WHEN strlen(country) = length(country) AND lower(country) IN {US} THEN true
      ELSE lower(regexp_replace(country, '[^A-Za-z]', '', 'g')) IN {US} END""",
    # [\s_-]+ to one space: nothing to do without any of them
    f"""CREATE MACRO denied(x) AS CASE
      WHEN spaced(x) OR contains(x, '_') OR contains(x, '-')
      THEN regexp_replace(x, '[\\s_\\-]+', ' ', 'g') ELSE x END IN {DENIED}""",
    "CREATE MACRO h(x) AS CASE WHEN x IS NOT NULL THEN sha256(x) END",
]


def place_keys(source: str) -> str:
    """``source`` (trimmed ``first_name``, ``last_name``, ``city``) with Meta's letters-only
    names and city (``m_fn``, ``m_ln``, ``m_ct``)."""
    return rf"""SELECT * EXCLUDE (_cl, _cc, _cm),
        {LETTERS.format(l="_cl", t="city", n="_cm")} AS m_ct
      FROM (SELECT *, regexp_replace(_cc, '[^\p{{L}}\p{{M}}]', '', 'g') AS _cm
      FROM (SELECT s.*, nf.m AS m_fn, nl.m AS m_ln, lower(city) AS _cl,
          nfc_normalize(lower(city)) AS _cc
        FROM ({source}) s LEFT JOIN names nf ON nf.t = s.first_name
          LEFT JOIN names nl ON nl.t = s.last_name))"""


# Meta's state (the sample's are two-letter codes in either case, or empty)
STATE = "nullif(lower(state), '')"
# a record with neither an e-mail nor a phone the platforms receive
BARE = "e_key IS NULL AND p_key IS NULL"


def normalized(source: str, release: bool = False, place: bool = False) -> str:
    """``source`` (trimmed ``email``, ``phone``, ``first_name``, ``last_name``, ``zip``,
    raw ``country``, other columns passed through) with its keys: ``e_key`` (Google's
    email), ``p_key`` (the phone with its country code), ``fn`` / ``ln`` (Google's
    names, from table ``names``), ``z`` (5-digit postal code), ``cc``; with ``release``,
    also Meta's email (``m_email``) and letters-only names and city (``m_fn``, ``m_ln``,
    ``m_ct``).

    Stacked SELECTs: each one's new columns (``_``-prefixed, dropped at the end) are
    computed once and read by the next. ``place``: Meta's names and city too (as
    :func:`place_keys`)."""
    if place:
        return place_keys(normalized(source, release=release))
    meta_lower = ", lower(city) AS _cl, nfc_normalize(lower(city)) AS _cc" if release else ""
    meta_letters = r", regexp_replace(_cc, '[^\p{L}\p{M}]', '', 'g') AS _cm" if release else ""
    meta = (
        f""", CASE WHEN blank(_el) THEN NULL WHEN hexed(email) THEN _el
            WHEN regexp_matches(_el, '{VALID_EMAIL}') THEN _el END AS m_email,
          {LETTERS.format(l="_cl", t="city", n="_cm")} AS m_ct"""
        if release
        else ""
    )
    names = ", nf.m AS m_fn, nl.m AS m_ln" if release else ""
    scratch = "_el, _pl, _num, _en, _d, _f" + (", _cl, _cc, _cm" if release else "")
    return f"""SELECT * EXCLUDE ({scratch}),
        -- the phone: digits; 00 / 011 prefixes; NANP numbers get 1 (at least 7 digits
        -- implies the raw value had a digit)
        CASE WHEN blank(_pl) THEN NULL WHEN hexed(phone) THEN _pl
          WHEN NOT starts_with(_f, '0') AND length(_f) BETWEEN 7 AND 15
            AND (NOT starts_with(_f, '1') OR (length(_f) = 11 AND regexp_matches(_f, '^1[2-9]')))
          THEN _f END AS p_key
      FROM (SELECT *,
        -- Google's email: lowercase; gmail local part without dots and +tag; valid
        CASE WHEN blank(_el) THEN NULL WHEN hexed(email) THEN _el
          WHEN regexp_matches(_en, '{VALID_EMAIL}') THEN _en END AS e_key,
        CASE WHEN starts_with(_num, '+') THEN _d WHEN _d LIKE '00%' THEN _d[3:]
          WHEN _d LIKE '011%' THEN _d[4:] WHEN length(_d) = 11 AND _d LIKE '1%' THEN _d
          ELSE '1' || _d END AS _f,
        zip5(zip) AS z,
        CASE WHEN us(country) THEN 'US' END AS cc
        {meta}
      FROM (SELECT *,
        CASE WHEN (ends_with(_el, '@gmail.com') OR ends_with(_el, '@googlemail.com'))
            AND regexp_matches(_el, '{GMAIL}')
          THEN replace(regexp_extract(_el, '^([^+@]*)', 1), '.', '')
            || CASE WHEN ends_with(_el, '@gmail.com') THEN '@gmail.com' ELSE '@googlemail.com' END
          ELSE _el END AS _en,
        regexp_replace(_num, '[^0-9]', '', 'g') AS _d
        {meta_letters}
      FROM (SELECT s.*, nf.g AS fn, nl.g AS ln {names}, lower(email) AS _el,
          lower(phone) AS _pl {meta_lower},
          -- an extension only after a letter or #: only then can upper and lower differ
          CASE WHEN (contains(phone, '#') OR upper(phone) <> lower(phone))
              AND regexp_matches(phone, '[A-Za-z#]')
            THEN regexp_replace(phone, '{EXTENSION}', '') ELSE phone END AS _num
        FROM ({source}) s LEFT JOIN names nf ON nf.t = s.first_name
          LEFT JOIN names nl ON nl.t = s.last_name)))"""


LETTERS = r"""CASE WHEN blank({l}) THEN NULL WHEN hexed({t}) THEN {l}
  WHEN length({n}) > 0 AND regexp_matches({n}, '\p{{L}}') THEN {n} END"""
G_NAME = r"""CASE WHEN blank({l}) THEN NULL WHEN hexed({t}) THEN {l}
  WHEN regexp_matches({n}, '\p{{L}}') THEN {n} END"""


def names_table(contacts: str) -> str:
    """Table ``names``: each distinct trimmed first or last name (``t``, a few thousand
    in 10M records) with its Google form (``g``) and Meta's letters-only form (``m``):
    normalized once per name instead of once per record."""
    return f"""CREATE TEMP TABLE names AS SELECT t,
      {G_NAME.format(l="_l", t="t", n="_g")} AS g, {LETTERS.format(l="_l", t="t", n="_m")} AS m
    FROM (SELECT *, squeeze(_c) AS _g, regexp_replace(_c, '[^\\p{{L}}\\p{{M}}]', '', 'g') AS _m
      FROM (SELECT t, lower(t) AS _l, nfc_normalize(lower(t)) AS _c
        FROM (SELECT DISTINCT tr(raw) AS t FROM (
          SELECT DISTINCT first_name AS raw FROM read_parquet({_quoted(contacts)})
          UNION SELECT DISTINCT last_name FROM read_parquet({_quoted(contacts)})))
        WHERE t IS NOT NULL))"""


class Stages:
    """Runs the statements; with ``--stages``, each one's wall seconds to stderr."""

    def __init__(self, con: duckdb.DuckDBPyConnection, show: bool) -> None:
        self.con, self.show = con, show

    def run(self, stage: str, sql: str) -> duckdb.DuckDBPyConnection:
        started = time.perf_counter()
        result = self.con.execute(sql)
        if self.show:
            print(f"{stage:<28}{time.perf_counter() - started:8.2f} s", file=sys.stderr)
        return result


def _quoted(path: str) -> str:
    return "'" + path.replace("'", "''") + "'"


def select_records(
    con: Stages,
    contacts: str,
    events: str,
    as_of: dt.date,
    states: list[str],
    link: bool,
) -> None:
    """Table ``cand``: the segment's records (``opted``: this record opted out), with their
    keys and Meta's name, city and state; with ``link``, table ``o``: the keys of every
    record that opted out, and nothing else, and table ``ob``: the name, city and state of
    those with neither e-mail nor phone."""
    since, until = as_of - dt.timedelta(days=365), as_of + dt.timedelta(days=1)
    md = as_of.month * 100 + as_of.day
    in_states = ", ".join(f"'{s}'" for s in states)
    # the few values of ad_personalization_consent that deny it, normalized once each (in
    # a macro, an argument is repeated wherever it is named: 9 lower(tr()) per record)
    con.run(
        "denials",
        f"""CREATE TEMP TABLE denials AS SELECT v FROM (SELECT DISTINCT
      ad_personalization_consent AS v FROM read_parquet({_quoted(contacts)}))
      WHERE denied(lower(tr(v)))""",
    )
    con.run("names", names_table(contacts))
    out = """(NOT coalesce(marketing_opt_in, false) OR coalesce(do_not_contact, false)
      OR coalesce(deceased, false)
      OR coalesce(ad_personalization_consent IN (SELECT v FROM denials), false))"""
    segment = f"""SELECT contact_id, tr(email) AS email, tr(phone) AS phone,
      tr(first_name) AS first_name, tr(last_name) AS last_name, tr(zip) AS zip,
      tr(city) AS city, tr(state) AS state, country, birth_date, tr(sex) AS sex,
      {out} AS opted
    FROM read_parquet({_quoted(contacts)})
    WHERE year(birth_date) BETWEEN {as_of.year - 65} AND {as_of.year - 24}
      AND upper(tr(state)) IN ({in_states}) AND preferred_language IN ('en', 'es')
      AND {as_of.year} - year(birth_date)
        - CASE WHEN month(birth_date) * 100 + day(birth_date) > {md} THEN 1 ELSE 0 END
        BETWEEN 25 AND 64
      AND contact_id IN (SELECT contact_id FROM read_parquet({_quoted(events)})
        WHERE event_type = 'email_click' AND event_time >= DATE '{since}'
        AND event_time < DATE '{until}')"""
    con.run(
        "cand: segment + keys",
        f"""CREATE TEMP TABLE cand AS SELECT *, {STATE} AS st
      FROM ({normalized(segment, place=True)})""",
    )
    if not link:
        return
    opted_out = f"""SELECT tr(email) AS email, tr(phone) AS phone,
      tr(first_name) AS first_name, tr(last_name) AS last_name, tr(zip) AS zip, country,
      tr(city) AS city, tr(state) AS state
    FROM read_parquet({_quoted(contacts)}) WHERE {out}"""
    # only the key columns: all that the linkage compares (half the CRM opted out); the
    # name, city and state only of the few with neither e-mail nor phone
    bare = BARE
    con.run(
        "o: opted-out keys",
        f"""CREATE TEMP TABLE o AS SELECT e_key, p_key, fn, ln, cc, z,
      CASE WHEN {bare} THEN first_name END AS first_name,
      CASE WHEN {bare} THEN last_name END AS last_name,
      CASE WHEN {bare} THEN city END AS city, CASE WHEN {bare} THEN state END AS state
    FROM ({normalized(opted_out)})""",
    )
    con.run(
        "ob: bare opted-out places",
        f"""CREATE TEMP TABLE ob AS SELECT DISTINCT m_fn, m_ln, m_ct, {STATE} AS st
      FROM ({place_keys(f"SELECT * FROM o WHERE {bare}")})
      WHERE m_fn IS NOT NULL AND m_ln IS NOT NULL AND m_ct IS NOT NULL""",
    )


def apply_consent(con: Stages, link: bool) -> None:
    """Table ``kept``: the segment's records that did not opt out and (``link``) share no
    email, phone or name + country + postal code with a record that opted out, nor a name,
    city and state with one that has neither e-mail nor phone."""
    if not link:
        con.run("kept", "CREATE TEMP TABLE kept AS SELECT * FROM cand WHERE NOT opted")
        return
    # hash anti-joins on precomputed columns (NULL keys never match, as in the rule);
    # written as NOT EXISTS, DuckDB made the one-column ones mark joins that hash the 5M
    # opted-out records instead of the segment's few hundred thousand
    con.run(
        "kept: linkage",
        """CREATE TEMP TABLE kept AS SELECT s.* FROM cand s
    ANTI JOIN o ON o.e_key = s.e_key
    ANTI JOIN o o2 ON o2.p_key = s.p_key
    ANTI JOIN o o3 ON o3.fn = s.fn AND o3.ln = s.ln AND o3.cc = s.cc AND o3.z = s.z
    ANTI JOIN ob ON ob.m_fn = s.m_fn AND ob.m_ln = s.m_ln AND ob.m_ct = s.m_ct
      AND ob.st = s.st AND s.cc = 'US'
    WHERE NOT s.opted""",
    )


def namesakes_query(key: str, present: str) -> str:
    """(contact_id, k) of the records a name key ``key`` links among the segment's records
    (``cand``; ``present``: the key is complete): in each group sharing it, every record
    whose e-mail and phone no other of them contradicts, and the first by CRM id of those
    another contradicts (the first of the group if none is). Plain SQL that PostgreSQL
    runs too (benchmarks/pg_job.py)."""
    return f"""WITH g AS (SELECT contact_id, e_key, p_key, {key} AS k FROM cand WHERE {present}),
        s AS (SELECT k, count(DISTINCT e_key) AS ne, count(DISTINCT p_key) AS np
          FROM g GROUP BY k HAVING count(*) > 1),
        a AS (SELECT g.contact_id, g.k,
            (g.e_key IS NULL OR s.ne = 1) AND (g.p_key IS NULL OR s.np = 1) AS agrees
          FROM g JOIN s USING (k)),
        f AS (SELECT k, coalesce(min(contact_id) FILTER (WHERE NOT agrees), min(contact_id))
            AS first FROM a GROUP BY k)
      SELECT a.contact_id, a.k FROM a JOIN f USING (k)
      WHERE a.agrees OR a.contact_id = f.first"""


def bare_places_query(zip_present: str) -> str:
    """(contact_id, k) of the records Meta's name, city and state links among ``cand``:
    each record with no e-mail, phone or name + ZIP, with the first record by CRM id of
    its name and place that has one (the first of them if none has). PostgreSQL too."""
    return f"""WITH g AS (SELECT contact_id, concat_ws(chr(31), m_fn, m_ln, m_ct, st) AS k,
          {BARE} AND NOT coalesce({zip_present}, false) AS bare
          FROM cand WHERE m_fn IS NOT NULL AND m_ln IS NOT NULL AND m_ct IS NOT NULL
            AND st IS NOT NULL AND cc = 'US'),
        f AS (SELECT k, coalesce(min(contact_id) FILTER (WHERE NOT bare), min(contact_id))
            AS first FROM g GROUP BY k HAVING bool_or(bare) AND count(*) > 1)
      SELECT g.contact_id, g.k FROM g JOIN f USING (k) WHERE g.bare OR g.contact_id = f.first"""


# a record whose name with its country and postal code is complete
ZIP_PRESENT = "fn IS NOT NULL AND ln IS NOT NULL AND cc IS NOT NULL AND z IS NOT NULL"
# label propagation over the segment's records (``cand``, with the name links ``nz`` and
# ``np``): the start, and one round (``lab`` → ``lab2``; ``old``: the label before it)
LABELS = """SELECT c.contact_id, e_key, p_key, nz.k AS gz, np.k AS gp,
      c.contact_id AS label FROM cand c LEFT JOIN nz USING (contact_id)
      LEFT JOIN np USING (contact_id)"""
LABEL_ROUND = """WITH e AS (SELECT e_key, min(label) AS m FROM lab WHERE e_key IS NOT NULL GROUP BY 1),
      p AS (SELECT p_key, min(label) AS m FROM lab WHERE p_key IS NOT NULL GROUP BY 1),
      z AS (SELECT gz, min(label) AS m FROM lab WHERE gz IS NOT NULL GROUP BY 1),
      c AS (SELECT gp, min(label) AS m FROM lab WHERE gp IS NOT NULL GROUP BY 1)
    SELECT contact_id, e_key, p_key, gz, gp, label AS old,
      least(label, coalesce(e.m, label), coalesce(p.m, label), coalesce(z.m, label),
        coalesce(c.m, label)) AS label
    FROM lab LEFT JOIN e USING (e_key) LEFT JOIN p USING (p_key)
      LEFT JOIN z USING (gz) LEFT JOIN c USING (gp)"""


def one_row_per_person(con: Stages, link: bool) -> int:
    """Table ``people``: the segment's records linked into people (label propagation to
    the smallest CRM id over all of them, the opted-out ones included: e-mail, phone, and
    the name with a postal code of :func:`namesakes_query`, and with a city and state of
    :func:`bare_places_query`); with ``link``, a person one of whose records opted out is left
    out; each person released as their smallest kept CRM id, each identifier from their
    first kept record (by CRM id) that has one. Returns the rounds it took."""
    key = "concat_ws(chr(31), fn, ln, cc, z)"
    con.run("nz", f"CREATE TEMP TABLE nz AS {namesakes_query(key, ZIP_PRESENT)}")
    con.run("np", f"CREATE TEMP TABLE np AS {bare_places_query(ZIP_PRESENT)}")
    con.run("lab", f"CREATE TEMP TABLE lab AS {LABELS}")
    rounds = 0
    for rounds in range(1, 65):
        con.run(f"lab2: round {rounds}", f"CREATE TEMP TABLE lab2 AS {LABEL_ROUND}")
        moved = con.run("  moved", "SELECT count(*) FROM lab2 WHERE label <> old").fetchone()
        con.run("  swap", "DROP TABLE lab; ALTER TABLE lab2 RENAME TO lab")
        if not moved or not moved[0]:
            break
    refusing = (
        "WHERE label NOT IN (SELECT label FROM lab JOIN cand USING (contact_id) WHERE opted)"
        if link
        else ""
    )
    columns = ("email", "phone", "first_name", "last_name", "zip", "city", "state", "country")
    firsts = ", ".join(
        f"first(k.{c} ORDER BY k.contact_id) FILTER (WHERE k.{c} IS NOT NULL) AS {c}"
        for c in (*columns, "birth_date", "sex")
    )
    con.run(
        "people",
        f"""CREATE TEMP TABLE people AS SELECT min(k.contact_id) AS contact_id, {firsts}
      FROM kept k JOIN lab USING (contact_id) {refusing} GROUP BY label""",
    )
    return rounds


RELEASE = f"""SELECT contact_id AS meta_EXTERN_ID, h(m_email) AS meta_EMAIL,
  h(p_key) AS meta_PHONE, h(m_fn) AS meta_FN, h(m_ln) AS meta_LN, h(z) AS meta_ZIP,
  h(m_ct) AS meta_CT, h(lower(state)) AS meta_ST, h('us') AS meta_COUNTRY,
  h(strftime(birth_date, '%Y')) AS meta_DOBY, h(strftime(birth_date, '%m')) AS meta_DOBM,
  h(strftime(birth_date, '%d')) AS meta_DOBD, h(lower(sex)) AS meta_GEN,
  h(e_key) AS google_ads_hashed_email, h('+' || p_key) AS google_ads_hashed_phone_number,
  h(fn) AS google_ads_hashed_first_name, h(ln) AS google_ads_hashed_last_name,
  'US' AS google_ads_country_code, z AS google_ads_postal_code
  FROM ({normalized("SELECT * FROM people", release=True)})"""
# only the people a layout names to its platform (policies/sendable.py): Meta, an e-mail, a
# phone, or first and last name with a ZIP, a full birth date, or city and state; Google,
# an e-mail, a phone, or first and last name with country and postal code
RELEASE = f"""SELECT * FROM ({RELEASE}) WHERE meta_EMAIL IS NOT NULL
  OR meta_PHONE IS NOT NULL
  OR (meta_FN IS NOT NULL AND meta_LN IS NOT NULL AND (meta_ZIP IS NOT NULL
      OR (meta_DOBY IS NOT NULL AND meta_DOBM IS NOT NULL AND meta_DOBD IS NOT NULL)
      OR (meta_CT IS NOT NULL AND meta_ST IS NOT NULL)))
  OR google_ads_hashed_email IS NOT NULL OR google_ads_hashed_phone_number IS NOT NULL
  OR (google_ads_hashed_first_name IS NOT NULL AND google_ads_hashed_last_name IS NOT NULL
      AND google_ads_postal_code IS NOT NULL)"""


def main(argv: list[str]) -> None:
    stages = "--stages" in argv
    contacts, events, out, as_of_text, mode, states = [a for a in argv if a != "--stages"]
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    # spills go beside the output (the benchmark's data folder), not into the caller's cwd
    spill = os.path.join(os.path.dirname(os.path.abspath(out)), ".duckdb-spill")
    con.execute(f"SET temp_directory = {_quoted(spill)}")
    # DuckDB's default limit is 80 % of RAM: at 10M this job grew past 20 GB of the 23.5 GB
    # machine (2026-12-05) while other work ran; 4 GB is twice the build's budget
    con.execute("SET memory_limit = '4GB'")
    for macro in MACROS:
        con.execute(macro)
    job = Stages(con, stages)
    select_records(
        job, contacts, events, dt.date.fromisoformat(as_of_text), states.split(","), mode == "link"
    )
    apply_consent(job, mode == "link")
    rounds = one_row_per_person(job, mode == "link")
    job.run("rel: release columns", f"CREATE TEMP TABLE rel AS {RELEASE}")
    job.run("parquet", f"COPY rel TO {_quoted(out + '.parquet')} (FORMAT parquet)")
    job.run("csv", f"COPY rel TO {_quoted(out)} (HEADER, DELIMITER ',')")
    row = con.execute("SELECT count(*) FROM rel").fetchone()
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": row[0] if row else 0, "rounds": rounds, "seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
