"""The build's job written as SQL run inside PostgreSQL: ``bench_warehouse``'s floor.

    python benchmarks/pg_job.py URL SCHEMA OUT.csv AS_OF link|no-link STATES

``benchmarks/duckdb_job.py`` ported to PostgreSQL (read its docstring: the same segment,
the default pack's consent rule with its duplicate-of-opt-out linkage, people not records,
the release's identifier normalization, the 19 hashed columns), run as statements through
psycopg against the ``contacts`` / ``events`` tables of ``SCHEMA`` that ``bench_warehouse``
loads (``audiences.demo.warehouse.load_postgres``). Temp tables hold each step; the
macros are SQL functions in ``pg_temp`` that PostgreSQL inlines (each takes plain column
arguments, so the planner may repeat them inside the expression). The release leaves the
server once, through ``COPY (...) TO STDOUT (FORMAT csv, HEADER)``, into ``OUT.csv``;
``OUT.csv.parquet`` is that CSV read back with polars (every column text, as the build
writes them) — PostgreSQL has no Parquet writer.

Where PostgreSQL's regular expressions differ from DuckDB's (RE2): ``\\p{L}`` is
``[[:alpha:]]`` (letters by the server's ``LC_CTYPE``: ``C.UTF-8`` on this machine), and
``[^\\p{L}\\p{M}]`` is ``[^[:alpha:]]`` — a combining mark left after NFC is dropped here,
kept by DuckDB; the sample has none. ``sha256()`` hashes the UTF-8 bytes
(``convert_to``); ``normalize(x, NFC)`` runs only on non-ASCII text, as DuckDB's ``nfc``.
CRM ids compare as bytes (``COLLATE "C"``: the smallest id of a person is DuckDB's).

Prints ``{"rows", "rounds", "seconds", "transferred"}`` as JSON (``transferred``: the rows
that left the server — the release only).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time

import psycopg

# what both hand-written jobs share, one copy in duckdb_job.py beside this file: the
# vocabulary they restate from audiences.crm (placeholders, denying words, the email
# domain, a SHA-256 in hex, Meta's state) and the plain-SQL queries that link people
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from duckdb_job import (
    BARE,
    DENIED,
    DOMAIN,
    HEX,
    LABEL_ROUND,
    LABELS,
    PLACEHOLDERS,
    STATE,
    ZIP_PRESENT,
    bare_places_query,
    namesakes_query,
)

SPACES = "E' \\t\\n\\f\\r'"
VALID = rf"^[^@\s]+{DOMAIN}"
# cheap tests before PostgreSQL's (slow) regular expressions, exact: 64 hex digits; an
# address whose only @ starts @gmail.com or @googlemail.com (the ends)
IS_HEX = f"length(t) = 64 AND t ~ '{HEX}'"
GMAIL = """((lower(t) LIKE '%@gmail.com' AND strpos(lower(t), '@') = length(lower(t)) - 9)
  OR (lower(t) LIKE '%@googlemail.com' AND strpos(lower(t), '@') = length(lower(t)) - 14))"""
# the gmail local part: lowercase, up to a +tag, without dots
GMAIL_LOCAL = r"replace(substring(lower(t) from '^([^+@]*)'), '.', '')"


# the number with its country code, from the number without its extension (``num``) and
# its digits (``d``): 00 / 011 prefixes dropped; NANP numbers get 1
FULL = """(CASE WHEN num LIKE '+%' THEN d WHEN d LIKE '00%' THEN substr(d, 3)
  WHEN d LIKE '011%' THEN substr(d, 4) WHEN length(d) = 11 AND d LIKE '1%' THEN d
  ELSE '1' || d END)"""


def _function(name: str, params: str, body: str) -> str:
    # LANGUAGE sql, one SELECT of an expression, no sub-query: the planner inlines it;
    # PARALLEL SAFE is read before inlining (parallel plans stay possible)
    return (
        f"CREATE FUNCTION {name}({params}) RETURNS text LANGUAGE sql STABLE "
        f"PARALLEL SAFE AS $fn$ SELECT {body} $fn$"
    )


FUNCTIONS = [
    # DuckDB's (RE2's) \s is these five ASCII characters; btrim / translate are exact for
    # them and much cheaper than PostgreSQL's regular expressions
    _function("tr", "x text", f"btrim(x, {SPACES})"),
    # Google's email: lowercase; gmail local part without dots and +tag; a valid address
    # (the canonical gmail address is valid when its local part is non-empty, no space)
    _function(
        "g_email",
        "t text",
        f"""CASE WHEN t IS NULL OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN {IS_HEX} THEN lower(t)
      WHEN {GMAIL} THEN
        CASE WHEN {GMAIL_LOCAL} ~ '^[^@\\s]+$' THEN {GMAIL_LOCAL}
          || CASE WHEN lower(t) LIKE '%@gmail.com' THEN '@gmail.com'
             ELSE '@googlemail.com' END END
      WHEN lower(t) ~ '{VALID}' THEN lower(t) END""",
    ),
    _function(
        "m_email",
        "t text",
        f"""CASE WHEN t IS NULL OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN {IS_HEX} THEN lower(t) WHEN lower(t) ~ '{VALID}' THEN lower(t) END""",
    ),
    # the phone with its country code, in steps (PHONE_STEPS): the number without an
    # extension, its digits, then the 00 / 011 prefixes dropped; NANP numbers get 1
    _function(
        "phone_num",
        "t text",
        r"""CASE WHEN t ~ '[A-Za-z#]'
      THEN regexp_replace(t, '\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,6}$', '', 'i')
      ELSE t END""",
    ),
    _function("digits", "x text", "translate(x, translate(x, '0123456789', ''), '')"),
    _function(
        "phone",
        "t text, num text, d text",
        f"""CASE WHEN t IS NULL OR length(t) = 0 OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN {IS_HEX} THEN lower(t)
      WHEN d <> '' AND {FULL} NOT LIKE '0%' AND length({FULL}) BETWEEN 7 AND 15
        AND ({FULL} NOT LIKE '1%'
          OR (length({FULL}) = 11 AND substr({FULL}, 2, 1) NOT IN ('0', '1')))
      THEN {FULL} END""",
    ),
    _function(
        "nfc", "x text", "CASE WHEN octet_length(x) <> length(x) THEN normalize(x, NFC) ELSE x END"
    ),
    _function(
        "g_name",
        "t text",
        f"""CASE WHEN t IS NULL OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN {IS_HEX} THEN lower(t)
      WHEN t ~ '[[:alpha:]]'
        THEN regexp_replace(nfc(lower(t)), '[ \\t\\n\\f\\r]+', ' ', 'g') END""",
    ),
    _function(
        "letters",
        "t text",
        f"""CASE WHEN t IS NULL OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN {IS_HEX} THEN lower(t)
      WHEN t ~ '[[:alpha:]]'
        THEN regexp_replace(nfc(lower(t)), '[^[:alpha:]]', '', 'g') END""",
    ),
    _function(
        "zip5",
        "t text",
        f"""CASE WHEN translate(t, {SPACES}, '') ~ '^[0-9]{{5}}(?:-?[0-9]{{4}})?$'
      THEN left(translate(t, {SPACES}, ''), 5) END""",
    ),
    # NULL stays NULL (each function is strict); ``x`` once, so an expression inlines
    _function("h", "x text", "encode(sha256(convert_to(x, 'UTF8')), 'hex')"),
]
# the phone key of a row with a ``phone`` column: each step once (a LATERAL sub-query per
# step; OFFSET 0 keeps the planner from pasting one step's expression into the next)
PHONE_STEPS = """LATERAL (SELECT phone_num(phone) AS pn OFFSET 0) AS s1,
  LATERAL (SELECT digits(pn) AS pd OFFSET 0) AS s2"""
# the consent rule's opt-out, as SQL on the contacts table's columns
OPTED_OUT = f"""(NOT coalesce(marketing_opt_in, false) OR coalesce(do_not_contact, false)
  OR coalesce(deceased, false) OR coalesce(regexp_replace(lower(
    tr(ad_personalization_consent)), '[-_ \\t\\n\\f\\r]+', ' ', 'g') IN {DENIED}, false))"""


def select_records(
    cur: psycopg.Cursor, schema: str, as_of: dt.date, states: list[str], link: bool
) -> None:
    """Tables ``k``: the records the segment's contact conditions hold for (``candidate``)
    and, for the linkage, every opted-out record, with their email and phone keys and
    country; ``clicked``: the contacts with an email click in the window.

    Each step reads one table, so PostgreSQL computes its expressions in the parallel
    workers (above a join they run in the leader alone); the event condition joins the
    few candidates in ``apply_consent``."""
    since, until = as_of - dt.timedelta(days=365), as_of + dt.timedelta(days=1)
    md = as_of.month * 100 + as_of.day
    in_states = ", ".join(f"'{s}'" for s in states)
    year = "extract(year FROM birth_date)"
    born = f"{year} BETWEEN {as_of.year - 65} AND {as_of.year - 24}"
    attributes = (
        f"{born} AND upper(tr(state)) IN ({in_states}) AND preferred_language IN ('en', 'es')"
    )
    cur.execute(f"""CREATE UNLOGGED TABLE c AS
    SELECT contact_id COLLATE "C" AS contact_id, tr(email) AS email, tr(phone) AS phone,
      tr(first_name) AS first_name, tr(last_name) AS last_name, tr(zip) AS zip,
      tr(city) AS city, tr(state) AS state, country, birth_date, tr(sex) AS sex,
      phone_num(tr(phone)) AS pn,
      digits(phone_num(tr(phone))) AS pd, {OPTED_OUT} AS out, {attributes} AND {as_of.year} - {year}
        - CASE WHEN extract(month FROM birth_date) * 100 + extract(day FROM birth_date) > {md}
          THEN 1 ELSE 0 END BETWEEN 25 AND 64 AS candidate
    FROM "{schema}".contacts
    WHERE ({"true" if link else "false"} AND {OPTED_OUT}) OR ({attributes})""")
    cur.execute("ANALYZE c")
    cur.execute("""CREATE UNLOGGED TABLE k AS SELECT c.*, g_email(email) AS e_key,
      phone(phone, pn, pd) AS p_key,
      CASE WHEN country IS NULL OR lower(regexp_replace(country, '[^A-Za-z]', '', 'g'))
        IN ('us', 'usa', 'unitedstates', 'unitedstatesofamerica') THEN 'US' END AS cc
      FROM c""")
    cur.execute("ANALYZE k")
    cur.execute(f"""CREATE UNLOGGED TABLE clicked AS
    SELECT DISTINCT contact_id COLLATE "C" AS contact_id FROM "{schema}".events
    WHERE event_type = 'email_click' AND event_time >= DATE '{since}'
      AND event_time < DATE '{until}'""")
    cur.execute("ANALYZE clicked")


# the segment's records, the opted-out ones included (people are linked over all of them)
SEGMENT = "candidate AND contact_id IN (SELECT contact_id FROM clicked)"


def apply_consent(cur: psycopg.Cursor, link: bool) -> None:
    """Tables ``cand``: the segment's records with their name keys (Google's ``fn``,
    ``ln``, ``z``; Meta's letters-only ``m_fn``, ``m_ln``, ``m_ct`` and ``st``);
    ``kept``: those that did not opt out and (``link``) share no email, phone or name +
    country + postal code with a record that did, nor a name, city and state with one
    that has neither e-mail nor phone."""
    cur.execute(f"""CREATE UNLOGGED TABLE cand AS SELECT k.*, g_name(first_name) AS fn,
      g_name(last_name) AS ln, zip5(zip) AS z, letters(first_name) AS m_fn,
      letters(last_name) AS m_ln, letters(city) AS m_ct, {STATE} AS st
      FROM k WHERE {SEGMENT}""")
    cur.execute("ANALYZE cand")
    if not link:
        cur.execute("CREATE UNLOGGED TABLE kept AS SELECT * FROM cand WHERE NOT out")
        return
    cur.execute("""CREATE UNLOGGED TABLE o AS SELECT e_key, p_key, g_name(first_name) AS fn,
      g_name(last_name) AS ln, cc, zip5(zip) AS z FROM k WHERE out""")
    cur.execute("ANALYZE o")
    # the names, city and state only of the few with neither e-mail nor phone
    cur.execute(f"""CREATE UNLOGGED TABLE ob AS SELECT DISTINCT * FROM (
      SELECT letters(first_name) AS m_fn, letters(last_name) AS m_ln, letters(city) AS m_ct,
        {STATE} AS st FROM k WHERE out AND {BARE}) b
      WHERE m_fn IS NOT NULL AND m_ln IS NOT NULL AND m_ct IS NOT NULL""")
    cur.execute("ANALYZE ob")
    # no nested loops: after the first anti join the planner expects one row left and
    # probed the opted-out records once per candidate (100k contacts: 32 s, not 0.1 s)
    cur.execute("SET enable_nestloop = off")
    cur.execute("""CREATE UNLOGGED TABLE kept AS
    SELECT * FROM cand s WHERE NOT out
      AND NOT EXISTS (SELECT 1 FROM o WHERE o.e_key = s.e_key)
      AND NOT EXISTS (SELECT 1 FROM o WHERE o.p_key = s.p_key)
      AND NOT EXISTS (SELECT 1 FROM o WHERE o.fn = s.fn AND o.ln = s.ln AND o.cc = s.cc
        AND o.z = s.z)
      AND NOT EXISTS (SELECT 1 FROM ob WHERE ob.m_fn = s.m_fn AND ob.m_ln = s.m_ln
        AND ob.m_ct = s.m_ct AND ob.st = s.st AND s.cc = 'US')""")
    cur.execute("RESET enable_nestloop")
    cur.execute("ANALYZE kept")


def name_links(cur: psycopg.Cursor) -> None:
    """Tables ``nz``, ``np``: (contact_id, k) of the segment's records linked by a name
    with a postal code, and by a name with a city and state (the DuckDB script's own
    queries: ``duckdb_job.namesakes_query``, ``duckdb_job.bare_places_query``)."""
    key = "concat_ws(chr(31), fn, ln, cc, z)"
    cur.execute(f"CREATE UNLOGGED TABLE nz AS {namesakes_query(key, ZIP_PRESENT)}")
    cur.execute(f"CREATE UNLOGGED TABLE np AS {bare_places_query(ZIP_PRESENT)}")


def one_row_per_person(cur: psycopg.Cursor, link: bool) -> int:
    """Table ``people``: the segment's records linked into people (label propagation to
    the smallest CRM id over all of them, the opted-out ones included: e-mail, phone, and
    the names of :func:`name_links`); with ``link``, a person one of whose records opted
    out is left out; each person released as their smallest kept CRM id, each identifier
    from their first kept record (by CRM id) that has one. Returns the rounds it took."""
    name_links(cur)
    cur.execute(f"CREATE UNLOGGED TABLE lab AS {LABELS}")
    rounds = 0
    for rounds in range(1, 65):  # noqa: B007 (reported)
        cur.execute(f"CREATE UNLOGGED TABLE lab2 AS {LABEL_ROUND}")
        moved = cur.execute("SELECT count(*) FROM lab2 WHERE label <> old").fetchone()
        cur.execute("DROP TABLE lab")
        cur.execute("ALTER TABLE lab2 RENAME TO lab")
        if not moved or not moved[0]:
            break
    refusing = (
        "WHERE label NOT IN (SELECT label FROM lab JOIN cand USING (contact_id) WHERE out)"
        if link
        else ""
    )
    columns = ("email", "phone", "first_name", "last_name", "zip", "city", "state", "country")
    firsts = ", ".join(
        f"(array_agg(k.{c} ORDER BY k.contact_id) FILTER (WHERE k.{c} IS NOT NULL))[1] AS {c}"
        for c in (*columns, "birth_date", "sex")
    )
    cur.execute(f"""CREATE UNLOGGED TABLE people AS SELECT min(k.contact_id) AS contact_id,
      {firsts} FROM kept k JOIN lab USING (contact_id) {refusing} GROUP BY label""")
    return rounds


def _part(field: str) -> str:
    width = 4 if field == "year" else 2
    return f"lpad(extract({field} FROM birth_date)::int::text, {width}, '0')"


RELEASE = f"""SELECT contact_id AS "meta_EXTERN_ID", h(m_email(email)) AS "meta_EMAIL",
  h(phone(phone, pn, pd)) AS "meta_PHONE",
  h(letters(first_name)) AS "meta_FN", h(letters(last_name)) AS "meta_LN",
  h(zip5(zip)) AS "meta_ZIP", h(letters(city)) AS "meta_CT", h(lower(state)) AS "meta_ST",
  h('us') AS "meta_COUNTRY", h({_part("year")}) AS "meta_DOBY",
  h({_part("month")}) AS "meta_DOBM", h({_part("day")}) AS "meta_DOBD",
  h(lower(sex)) AS "meta_GEN", h(g_email(email)) AS google_ads_hashed_email,
  h('+' || phone(phone, pn, pd)) AS google_ads_hashed_phone_number,
  h(g_name(first_name)) AS google_ads_hashed_first_name,
  h(g_name(last_name)) AS google_ads_hashed_last_name,
  'US' AS google_ads_country_code, zip5(zip) AS google_ads_postal_code
  FROM people, {PHONE_STEPS}"""


def run(url: str, schema: str, out: str, as_of: dt.date, states: list[str], link: bool) -> dict:
    """The job; (rows released, label-propagation rounds, rows that left the server)."""
    work = f"sql_job_{os.getpid()}"  # the job's own schema: its functions and tables
    with psycopg.connect(url, autocommit=True) as connection, connection.cursor() as cur:
        # a hand-written job sizes its session: hash joins in memory; parallel workers for
        # every step (the planner prices the inlined regular expressions as cheap operators
        # and would otherwise keep the steps' big projections in one process)
        for setting in ("work_mem = '256MB'", "parallel_setup_cost = 0", "parallel_tuple_cost = 0"):
            cur.execute(f"SET {setting}")
        cur.execute(f"CREATE SCHEMA {work}")
        cur.execute(f"SET search_path = {work}, public")
        try:
            for function in FUNCTIONS:
                cur.execute(function)
            steps: dict[str, float] = {}
            started = time.perf_counter()
            select_records(cur, schema, as_of, states, link)
            steps["select"] = time.perf_counter() - started
            apply_consent(cur, link)
            steps["consent"] = time.perf_counter() - started - sum(steps.values())
            rounds = one_row_per_person(cur, link)
            steps["people"] = time.perf_counter() - started - sum(steps.values())
            with open(out, "wb") as file:
                copy = f"COPY ({RELEASE}) TO STDOUT (FORMAT csv, HEADER)"
                with cur.copy(copy) as reader:
                    for block in reader:
                        file.write(block)
            steps["release"] = time.perf_counter() - started - sum(steps.values())
        finally:
            cur.execute(f"DROP SCHEMA {work} CASCADE")
    import polars as pl

    # every column as text (the build writes them as text; a postal code keeps its zeros)
    release = pl.read_csv(out, infer_schema=False)
    release.write_parquet(out + ".parquet")
    steps["parquet"] = time.perf_counter() - started - sum(steps.values())
    return {
        "rows": release.height,
        "rounds": rounds,
        "transferred": release.height,
        "steps": {name: round(seconds, 3) for name, seconds in steps.items()},
    }


def main(argv: list[str]) -> None:
    url, schema, out, as_of_text, mode, states = argv
    started = time.perf_counter()
    result = run(
        url, schema, out, dt.date.fromisoformat(as_of_text), states.split(","), mode == "link"
    )
    print(json.dumps({**result, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1:])
