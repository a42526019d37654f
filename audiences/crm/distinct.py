"""Costly expressions over few distinct values, evaluated once per distinct value.

A CRM has millions of rows but a few hundred distinct (state, country) pairs. A segment's
``state: {in: [NY, NJ]}`` compares the *canonical* state (trimmed, Unicode NFC, letters
only, full names mapped to codes, checked against the row's country), and doing that on
every row cost about 1 s per million contacts — 10 s of a 12 s selection at 10M contacts
(measured 2026-12-05). :func:`predicate_by_distinct` evaluates such a predicate once per
distinct combination of the columns it reads and returns an expression that looks each
row's combination up: the same three-valued answer (true, false or null) for every row.

The lookup is exact: ``is_in`` on the row's values themselves (a struct of them when there
are several), where a null matches a null — no hashing, no string keys. A combination the
table does not hold (the data changed between the two reads) is null, which no condition
counts as a match, negated or not. When one column alone decides the answer — the
predicate, evaluated on every combination of the values each column was seen with (a few
hundred: 43 states × 6 countries in the sample), gives each of that column's values one
answer — the lookup is ``is_in`` on that column, the others only checked to hold values
seen (a struct per row cost about 0.1 s of a second segment's 2.1 s query at 10M
contacts); a row with a value never seen is null all the same. When a source has more
distinct combinations than :data:`MAX_DISTINCT`, or the first read fails, the predicate is
evaluated row by row as before (a failing read fails again in the main query, where read
errors are explained).
"""

from __future__ import annotations

import math

import polars as pl

# Above this many distinct combinations the lookup saves little and holds them in memory.
MAX_DISTINCT = 200_000
_RESULT = "__audiences_distinct_result"


def predicate_by_distinct(frame: pl.LazyFrame, predicate: pl.Expr) -> pl.Expr:
    """``predicate`` (a boolean expression over ``frame``'s columns, row by row: no
    aggregation or window) as a lookup of the answers computed once per distinct
    combination of the columns it reads."""
    roots = list(dict.fromkeys(predicate.meta.root_names()))
    if not roots:
        return predicate
    try:
        table = (
            frame.select(roots)
            .unique()
            .head(MAX_DISTINCT + 1)
            .with_columns(predicate.alias(_RESULT))
            .collect(engine="streaming")
        )
    except pl.exceptions.PolarsError:
        return predicate
    if table.height > MAX_DISTINCT or table.schema[_RESULT] != pl.Boolean:
        return predicate
    if len(roots) > 1:
        decided = _decided_by_one_column(table.drop(_RESULT), predicate)
        if decided is not None:
            return decided
    answer = pl.col(_RESULT)
    yes, no = table.filter(answer), table.filter(~answer)
    if len(roots) == 1:
        (root,) = roots

        def among(rows: pl.DataFrame) -> pl.Expr:
            return pl.col(root).is_in(rows.get_column(root).implode(), nulls_equal=True)
    else:

        def among(rows: pl.DataFrame) -> pl.Expr:
            # struct fields compare null to null as equal (tests/test_distinct.py)
            return pl.struct(roots).is_in(rows.select(roots).to_struct().implode())

    return pl.when(among(yes)).then(True).when(among(no)).then(False).otherwise(None)


def _decided_by_one_column(seen: pl.DataFrame, predicate: pl.Expr) -> pl.Expr | None:
    """The lookup of ``predicate`` on one column's values, when that column alone decides
    the answer over every combination of the values each column of ``seen`` (the
    distinct combinations read) holds — the product of them, evaluated here — else None.
    A row whose columns hold only values seen is answered as the predicate answers it
    (its combination is in the product, even one the read did not see); one with a value
    never seen is null, as in the table's lookup."""
    values = {c: seen.get_column(c).unique() for c in seen.columns}
    if math.prod(v.len() for v in values.values()) > MAX_DISTINCT:
        return None
    product = pl.DataFrame({seen.columns[0]: values[seen.columns[0]]})
    for column in seen.columns[1:]:
        product = product.join(pl.DataFrame({column: values[column]}), how="cross")
    try:
        product = product.with_columns(predicate.alias(_RESULT))
    except pl.exceptions.PolarsError:
        return None
    if product.schema[_RESULT] != pl.Boolean:
        return None
    for column in seen.columns:
        answers = product.group_by(column).agg(pl.col(_RESULT).n_unique().alias("n"))
        if answers.get_column("n").max() != 1:
            continue
        answer = pl.col(_RESULT)
        yes = product.filter(answer).get_column(column).unique()
        no = product.filter(~answer).get_column(column).unique()
        known = pl.all_horizontal(
            pl.col(other).is_in(values[other].implode(), nulls_equal=True)
            for other in seen.columns
            if other != column
        )
        here = pl.col(column)
        seen_here = pl.concat([yes, no]).implode()
        return pl.when(known & here.is_in(seen_here, nulls_equal=True)).then(
            here.is_in(yes.implode(), nulls_equal=True)
        )
    return None


# Which values repeat, when nearly none do. The gate asks it of its people (one label per
# candidate record, 933k of them for the benchmark's first segment at 10M contacts, 34k
# of them in a person with another record) and of the records' coarse link keys; polars'
# ``is_duplicated`` hashes and groups every value: 125–190 ms for those labels (medians
# of separate runs). A value that repeats has all its rows in one bucket of its hash's
# top bits, so only rows in a bucket of two or more can repeat: with about four buckets
# per row a fifth of the rows (collisions included) is left for the exact test, and the
# labels take 46–63 ms (``benchmarks/README.md``, "Which people have several records").
# Below this many rows the exact test alone is as fast (string labels: 0.66 against 0.72
# ms at 10k, 1.72 against 1.63 at 25k, 3.87 against 2.91 at 50k). Above it the filter
# never lost, even with most rows repeating (400k labels, 90 % of them repeated: 82.5 ms
# against 87.0 for polars alone after the filter's count).
_FEW_ROWS = 25_000
_MAX_BUCKET_BITS = 22  # 4M buckets: a 32 MB count, whatever the length


def duplicated(values: pl.Series) -> pl.Series:
    """Exactly ``values.is_duplicated()`` (a null repeats another null), computed faster
    on a long series of mostly distinct values."""
    import numpy as np

    n = values.len()
    if n < _FEW_ROWS:
        return values.is_duplicated()
    bits = min(_MAX_BUCKET_BITS, (n - 1).bit_length() + 2)
    bucket = (values.hash().to_numpy() >> np.uint64(64 - bits)).astype(np.intp)
    maybe = np.flatnonzero(np.bincount(bucket, minlength=1 << bits)[bucket] > 1)
    out = np.zeros(n, dtype=bool)
    if maybe.size:
        out[maybe] = values.gather(maybe).is_duplicated().to_numpy()
    return pl.Series(values.name, out, dtype=pl.Boolean)


__all__ = ["MAX_DISTINCT", "duplicated", "predicate_by_distinct"]
