"""The build's job written as a DuckDB SQL script: ``bench_build``'s engine baseline.

    python benchmarks/duckdb_job.py CONTACTS EVENTS OUT.csv AS_OF link|no-link STATES

What a data engineer would write for the same release, by hand, against the same Parquet
files: the segment (age 25-64 on ``AS_OF``, state in ``STATES`` (comma-separated),
English or Spanish, an ``email_click`` in the 365 days up to ``AS_OF``); the default
pack's consent rule (a marketing opt-in, no do-not-contact, not deceased, ad
personalization not denied) and, with ``link``, its duplicate-of-opt-out linkage (no
other record that opted out shares the Google mailbox, the phone with its country code,
or first name + last name + country + postal code); people, not records (records
sharing a normalized email or phone are one person, transitively, released once as the
smallest CRM id with each identifier taken from the first of the person's records, by
CRM id, that has it); the 19 hashed columns of the Meta and Google Ads layouts, written
as Parquet (``OUT.csv.parquet``) and CSV (``OUT.csv``).

The identifiers are normalized as the release does (``audiences.crm.identifiers``:
trimming, placeholders, Google's gmail canonicalization, the email domain check, NANP
phones with their ``00`` / ``011`` prefixes and extensions, NFC names), restated in SQL;
the country handling is the sample's (every record is in the US). ``bench_build`` checks
that the row count and the hashed-email column agree exactly with the build's release
file, and reports any other column that does not. Prints ``{"rows", "rounds",
"seconds"}`` as JSON.
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

MACROS = [
    r"CREATE MACRO tr(x) AS regexp_replace(CAST(x AS VARCHAR), '^\s+|\s+$', '', 'g')",
    f"CREATE MACRO blank(x) AS x IS NULL OR lower(x) IN {PLACEHOLDERS}",
    # Google's email: lowercase; gmail local part without dots and +tag; a valid address
    f"""CREATE MACRO g_email(t) AS CASE WHEN blank(t) THEN NULL
      WHEN regexp_matches(t, '{HEX}') THEN lower(t)
      ELSE (SELECT CASE WHEN regexp_matches(n, '^[^@\\s]+{DOMAIN}') THEN n END FROM (SELECT
        CASE WHEN regexp_matches(lower(t), '^[^@]*@(?:gmail\\.com|googlemail\\.com)$')
          THEN replace(regexp_extract(lower(t), '^([^+@]*)', 1), '.', '')
               || CASE WHEN ends_with(lower(t), '@gmail.com') THEN '@gmail.com'
                  ELSE '@googlemail.com' END
          ELSE lower(t) END AS n)) END""",
    f"""CREATE MACRO m_email(t) AS CASE WHEN blank(t) THEN NULL
      WHEN regexp_matches(t, '{HEX}') THEN lower(t)
      WHEN regexp_matches(lower(t), '^[^@\\s]+{DOMAIN}') THEN lower(t) END""",
    # the phone with its country code: digits; 00 / 011 prefixes; NANP numbers get 1
    r"""CREATE MACRO phone_full(t) AS (SELECT CASE
        WHEN plus THEN d WHEN d LIKE '00%' THEN d[3:] WHEN d LIKE '011%' THEN d[4:]
        WHEN length(d) = 11 AND d LIKE '1%' THEN d ELSE '1' || d END
      FROM (SELECT starts_with(num, '+') AS plus, regexp_replace(num, '[^0-9]', '', 'g') AS d
        FROM (SELECT CASE WHEN regexp_matches(t, '[A-Za-z#]')
          THEN regexp_replace(t, '(?i)\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,6}$', '')
          ELSE t END AS num)))""",
    f"""CREATE MACRO phone(t) AS CASE
      WHEN t IS NULL OR length(t) = 0 OR lower(t) IN {PLACEHOLDERS} THEN NULL
      WHEN regexp_matches(t, '{HEX}') THEN lower(t)
      ELSE (SELECT CASE WHEN length(regexp_replace(t, '[^0-9]', '', 'g')) > 0
          AND NOT starts_with(f, '0') AND length(f) BETWEEN 7 AND 15
          AND (NOT starts_with(f, '1') OR (length(f) = 11 AND regexp_matches(f, '^1[2-9]')))
        THEN f END FROM (SELECT phone_full(t) AS f)) END""",
    r"""CREATE MACRO nfc(x) AS
      CASE WHEN regexp_matches(x, '[^\x00-\x7f]') THEN nfc_normalize(x) ELSE x END""",
    f"""CREATE MACRO g_name(t) AS CASE WHEN blank(t) THEN NULL
      WHEN regexp_matches(t, '{HEX}') THEN lower(t)
      ELSE (SELECT CASE WHEN regexp_matches(n, '\\p{{L}}') THEN n END
        FROM (SELECT regexp_replace(nfc(lower(t)), '\\s+', ' ', 'g') AS n)) END""",
    f"""CREATE MACRO letters(t) AS CASE WHEN blank(t) THEN NULL
      WHEN regexp_matches(t, '{HEX}') THEN lower(t)
      ELSE (SELECT CASE WHEN length(n) > 0 AND regexp_matches(n, '\\p{{L}}') THEN n END
        FROM (SELECT regexp_replace(nfc(lower(t)), '[^\\p{{L}}\\p{{M}}]', '', 'g') AS n)) END""",
    r"""CREATE MACRO zip5(t) AS CASE WHEN t IS NULL OR length(t) = 0 THEN NULL ELSE nullif(
      regexp_extract(regexp_replace(t, '\s+', '', 'g'), '^([0-9]{5})(?:-?[0-9]{4})?$', 1),
      '') END""",
    "CREATE MACRO h(x) AS CASE WHEN x IS NOT NULL THEN sha256(x) END",
    f"""CREATE MACRO opted_out(opt_in, dnc, dead, ad) AS NOT coalesce(opt_in, false)
      OR coalesce(dnc, false) OR coalesce(dead, false)
      OR coalesce(regexp_replace(lower(tr(ad)), '[\\s_\\-]+', ' ', 'g') IN {DENIED}, false)""",
]


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
    """Table ``k``: the segment's records (``selected``) and, for the linkage, every
    opted-out record, with their email and phone keys and country."""
    since, until = as_of - dt.timedelta(days=365), as_of + dt.timedelta(days=1)
    md = as_of.month * 100 + as_of.day
    in_states = ", ".join(f"'{s}'" for s in states)
    born = f"year(birth_date) BETWEEN {as_of.year - 65} AND {as_of.year - 24}"
    out = "opted_out(marketing_opt_in, do_not_contact, deceased, ad_personalization_consent)"
    attributes = (
        f"{born} AND upper(tr(state)) IN ({in_states}) AND preferred_language IN ('en', 'es')"
    )
    con.run(
        "c: records",
        f"""CREATE TEMP TABLE c AS
    SELECT contact_id, tr(email) AS email, tr(phone) AS phone, tr(first_name) AS first_name,
      tr(last_name) AS last_name, tr(zip) AS zip, tr(city) AS city, tr(state) AS state,
      country, birth_date, tr(sex) AS sex, {out} AS out,
      {attributes} AND {as_of.year} - year(birth_date)
        - CASE WHEN month(birth_date) * 100 + day(birth_date) > {md} THEN 1 ELSE 0 END
        BETWEEN 25 AND 64
      AND contact_id IN (SELECT contact_id FROM read_parquet({_quoted(events)})
        WHERE event_type = 'email_click' AND event_time >= DATE '{since}'
        AND event_time < DATE '{until}') AS selected
    FROM read_parquet({_quoted(contacts)})
    WHERE ({"true" if link else "false"} AND {out}) OR ({attributes})""",
    )
    con.run(
        "k: keys",
        """CREATE TEMP TABLE k AS SELECT *, g_email(email) AS e_key, phone(phone) AS p_key,
      CASE WHEN country IS NULL OR lower(regexp_replace(country, '[^A-Za-z]', '', 'g'))
        IN ('us', 'usa', 'unitedstates', 'unitedstatesofamerica') THEN 'US' END AS cc
      FROM c""",
    )


def apply_consent(con: Stages, link: bool) -> None:
    """Table ``kept``: the selected records that did not opt out and (``link``) share no
    email, phone or name + country + postal code with a record that did."""
    if not link:
        con.run("kept", "CREATE TEMP TABLE kept AS SELECT * FROM k WHERE selected AND NOT out")
        return
    con.run(
        "kept: consent + linkage",
        """CREATE TEMP TABLE kept AS
    WITH o AS (SELECT e_key, p_key, g_name(first_name) AS fn, g_name(last_name) AS ln, cc,
                      zip5(zip) AS z FROM k WHERE out)
    SELECT * FROM k WHERE selected AND NOT out
      AND (e_key IS NULL OR e_key NOT IN (SELECT e_key FROM o WHERE e_key IS NOT NULL))
      AND (p_key IS NULL OR p_key NOT IN (SELECT p_key FROM o WHERE p_key IS NOT NULL))
      AND NOT EXISTS (SELECT 1 FROM o WHERE o.fn = g_name(k.first_name)
        AND o.ln = g_name(k.last_name) AND o.cc = k.cc AND o.z = zip5(k.zip))""",
    )


def one_row_per_person(con: Stages) -> int:
    """Table ``people``: records sharing an email or phone key are one person (label
    propagation to the smallest CRM id); each identifier from the person's first record
    (by CRM id) that has one. Returns the rounds it took."""
    con.run("lab", "CREATE TEMP TABLE lab AS SELECT contact_id, contact_id AS label FROM kept")
    rounds = 0
    for rounds in range(1, 65):
        con.run(
            f"lab2: round {rounds}",
            """CREATE OR REPLACE TEMP TABLE lab2 AS
          WITH j AS (SELECT contact_id, e_key, p_key, label FROM kept JOIN lab USING (contact_id)),
            e AS (SELECT e_key, min(label) AS m FROM j WHERE e_key IS NOT NULL GROUP BY 1),
            p AS (SELECT p_key, min(label) AS m FROM j WHERE p_key IS NOT NULL GROUP BY 1)
          SELECT contact_id, label AS old,
            least(label, coalesce(e.m, label), coalesce(p.m, label)) AS label
          FROM j LEFT JOIN e USING (e_key) LEFT JOIN p USING (p_key)""",
        )
        moved = con.run("  moved", "SELECT count(*) FROM lab2 WHERE label <> old").fetchone()
        con.run("  lab", "CREATE OR REPLACE TEMP TABLE lab AS SELECT contact_id, label FROM lab2")
        if not moved or not moved[0]:
            break
    columns = ("email", "phone", "first_name", "last_name", "zip", "city", "state", "country")
    firsts = ", ".join(
        f"first({c} ORDER BY contact_id) FILTER (WHERE {c} IS NOT NULL) AS {c}"
        for c in (*columns, "birth_date", "sex")
    )
    con.run(
        "people",
        f"""CREATE TEMP TABLE people AS SELECT label AS contact_id, {firsts}
      FROM kept JOIN lab USING (contact_id) GROUP BY label""",
    )
    return rounds


RELEASE = """SELECT contact_id AS meta_EXTERN_ID, h(m_email(email)) AS meta_EMAIL,
  h(phone(phone)) AS meta_PHONE, h(letters(first_name)) AS meta_FN,
  h(letters(last_name)) AS meta_LN, h(zip5(zip)) AS meta_ZIP, h(letters(city)) AS meta_CT,
  h(lower(state)) AS meta_ST, h('us') AS meta_COUNTRY, h(strftime(birth_date, '%Y')) AS meta_DOBY,
  h(strftime(birth_date, '%m')) AS meta_DOBM, h(strftime(birth_date, '%d')) AS meta_DOBD,
  h(lower(sex)) AS meta_GEN, h(g_email(email)) AS google_ads_hashed_email,
  h('+' || phone(phone)) AS google_ads_hashed_phone_number,
  h(g_name(first_name)) AS google_ads_hashed_first_name,
  h(g_name(last_name)) AS google_ads_hashed_last_name,
  'US' AS google_ads_country_code, zip5(zip) AS google_ads_postal_code FROM people"""


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
    rounds = one_row_per_person(job)
    job.run("rel: release columns", f"CREATE TEMP TABLE rel AS {RELEASE}")
    job.run("parquet", f"COPY rel TO {_quoted(out + '.parquet')} (FORMAT parquet)")
    job.run("csv", f"COPY rel TO {_quoted(out)} (HEADER, DELIMITER ',')")
    row = con.execute("SELECT count(*) FROM rel").fetchone()
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": row[0] if row else 0, "rounds": rounds, "seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])
