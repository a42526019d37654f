"""Duplicates of opt-outs: which candidates share a matchable identifier with a CRM record
that opted out.

A person often has two CRM records. An opt-out (no marketing opt-in, do-not-contact,
deceased, ad personalization denied) on one of them must not be undone by the other, since
the platforms match people on any identifier. Records are linked the way the platforms
match: the mailbox as Google canonicalizes it (case, gmail dots and ``+tags`` folded), the
phone with its country code (Meta's layout), the first name, last name, country and
postal code tuple Customer Match matches on, and — to a record with neither e-mail nor
phone (``Link.blank_only``) — the first name, last name, city, state and country Meta
matches on.

Normalizing every opted-out record's identifiers on every build is the expensive part (43 %
of a CRM can be opted out), so each link first compares a *coarse key* — a cheap function
``g`` of the raw value with ``g(raw) == g(normalized(raw))`` for the rows it calls
*reliable* — and normalizes only the rows whose coarse key also occurs on the other side
(and the few unreliable rows, whose coarse key is taken from their normalized value).
Equal normalized values have equal coarse keys, so the prefilter never drops a true
match; it only saves work. ``tests/test_linkage.py`` checks the invariant on adversarial
values and the whole result against the direct computation.

Keys stay inside this module; only a boolean flag per candidate comes out, and the opt-out
index (row positions and keyed coarse hashes, see :func:`compute_opt_out_index`) that a
:class:`IndexStore` may keep between runs.

:func:`person_keys` uses the same exact keys to count people, not records: records that
share a normalized email or phone are one person (transitively), and so are records that
share a first and last name with a postal code, unless e-mails or phones tell them apart —
so ``min-size``, the difference checks and the release see each
person once, as the platforms do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from audiences.core.memory import own_strings
from audiences.crm.distinct import duplicated, predicate_by_distinct
from audiences.crm.identifiers import (
    RESERVED_EMAIL_DOMAINS,
    IdentityMapping,
    Layout,
    calling_code_known,
    normalized_layout,
    plainly_valid_email,
    plainly_valid_phone,
    reserved_email,
)

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig

__all__ = [
    "CoarseMemo",
    "IndexStore",
    "Link",
    "compute_opt_out_index",
    "flag_duplicates_of_opt_outs",
    "flag_linked_records",
    "index_identity",
    "links_for",
    "opted_out_expr",
    "person_keys",
    "prepare_opt_out_index",
]

_ROW = "__link_row"
_KEY = "__link_key"
_SEP = "\x1f"
_NON_ASCII = r"[^\x00-\x7f]"

# How many trailing digits of a phone number the coarse key keeps. National numbers have
# at least this many digits in most numbering plans; a shorter one is "unreliable" and
# normalized in full.
PHONE_TAIL = 10


def _text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String)


# Each stage adds two columns to a frame, named by ``out`` (lazily: the callers collect the
# stages of several links at once, side by side): ``{out}`` the coarse key ``g``
# of the given fields (raw CRM columns or normalized layout columns) as a 64-bit hash, null
# where the fields can have no link key, and ``{out}_ok`` whether ``g`` of these raw values
# provably equals ``g`` of their normalized values. ``g`` is a function of the values
# alone, so the same stage computes it for raw and for normalized fields; hash collisions
# only let more rows through to the exact join.
Stage = Callable[[pl.DataFrame, Sequence[pl.Expr], str], pl.LazyFrame]


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def _hash_unless_null(value: pl.Expr, present: pl.Expr) -> pl.Expr:
    """``value.hash()`` where ``present`` holds, else null (polars hashes a null too)."""
    return pl.when(present).then(value.hash())


def _email_stage(frame: pl.DataFrame, fields: Sequence[pl.Expr], out: str) -> pl.LazyFrame:
    """``g``: the address trimmed and lowercased, without any dot and without a ``+tag``
    (from the first ``+`` to the next ``@`` or the end).

    It forgets everything the Google email normalization does: trimming, lowercasing,
    and for gmail dot and ``+tag`` removal in the local part (a gmail address has no
    ``+`` in its domain); an already-hashed value keeps its lowercase hex. Every row is
    reliable.
    """
    folded = fields[0].str.strip_chars().str.to_lowercase().str.replace_all(".", "", literal=True)
    lf = frame.lazy().with_columns(folded.alias(out))
    folded = pl.col(out)
    g = _hash_unless_null(folded.str.replace(r"\+[^@]*", ""), folded.is_not_null())
    return lf.with_columns(g.alias(out), pl.lit(True).alias(f"{out}_ok"))


_PUNCTUATION = {" ": "", "(": "", ")": "", "+": "", ".": "", "-": ""}


def _phone_stage(frame: pl.DataFrame, fields: Sequence[pl.Expr], out: str) -> pl.LazyFrame:
    """``g``: the last ``PHONE_TAIL`` characters of the value once spaces, ``(``, ``)``,
    ``+``, ``.`` and ``-`` are removed; none for a value with nothing else.

    Reliable when what is left is only ASCII digits and the normalized number provably
    ends in the same digits. The normalization keeps the digits (``+`` given), drops a
    ``00`` (or, in the NANP, ``011``) international prefix, or prefixes the calling code
    to the digits with or without their leading zeros — so at least ``len - 2`` (``00``),
    ``len - 3`` (``011``) or the number of digits after the leading zeros survive at the
    end. Anything else (letters, an extension, a SHA-256, other characters) is normalized
    in full.
    """
    # one Aho-Corasick pass (a regex character class took 1.4x as long)
    lf = frame.lazy().with_columns(fields[0].str.replace_many(_PUNCTUATION).alias(out))
    digits = pl.col(out)
    length = digits.str.len_bytes()
    significant = digits.str.strip_chars_start("0").str.len_bytes()
    kept = (
        pl.when(digits.str.starts_with("011"))
        .then(length >= PHONE_TAIL + 3)
        .when(digits.str.starts_with("00"))
        .then(length >= PHONE_TAIL + 2)
        .otherwise(significant >= PHONE_TAIL)
    )
    only_digits = ~digits.str.contains("[^0-9]")
    reliable = (length == 0) | (only_digits & kept)
    g = _hash_unless_null(digits.str.slice(-PHONE_TAIL), length > 0)
    return lf.with_columns(g.alias(out), reliable.alias(f"{out}_ok"))


# Combining marks let NFC fold an ASCII letter into a precomposed one (e + U+0301 → é),
# and U+0130 lowercases to i + U+0307: such names are normalized in full.
_COMBINING = r"[\p{M}\x{0130}]"
# A name's part of ``g`` and whether the name is reliable share one 64-bit word: the
# hash of its letters with the lowest bit cleared, and that bit set for a name with a
# combining mark (``g`` uses the word without the bit).
_MARKED = 1
_UNMARKED = pl.lit(0xFFFF_FFFF_FFFF_FFFF ^ _MARKED, pl.UInt64)


def _name_parts(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """The distinct non-null names and, for each, the hash of the ASCII letters of the
    lowercased name with ``_MARKED`` set if it holds a combining mark."""
    distinct = values.unique().drop_nulls()
    letters = distinct.str.to_lowercase().str.replace_all(r"[^a-z]+", "").hash()
    marked = distinct.str.contains(_COMBINING).cast(pl.UInt64)
    words = pl.select((pl.lit(letters) & _UNMARKED) | pl.lit(marked)).to_series()
    return distinct, words


def _name_zip_stage(frame: pl.DataFrame, fields: Sequence[pl.Expr], out: str) -> pl.LazyFrame:
    """``g``: the ASCII letters of the lowercased first and last names, and the first five
    characters of the postal code if they are ASCII digits once leading whitespace is
    trimmed (else the trimmed code). The country is left out.

    A US ZIP normalizes to exactly those five digits, any other postal code keeps its
    leading digits through trimming, case and whitespace normalization. Reliable unless a
    name holds a combining mark (NFC may then fold a letter into a precomposed one) or
    the postal code does not start with five digits.

    The names' parts are computed once per distinct name (a CRM has far fewer distinct
    names than records) and mapped back.
    """
    lf, first, last, parts = _name_words(frame, fields, out)
    lf = lf.with_columns(fields[2].str.strip_chars_start().alias(out))
    postal = pl.col(out)
    five = postal.str.contains("^[0-9]{5}")
    zip_part = pl.when(five).then(postal.str.slice(0, 5).hash()).otherwise(postal.hash())
    present = first.is_not_null() & last.is_not_null() & postal.is_not_null()
    g = pl.struct(first & _UNMARKED, last & _UNMARKED, zip_part.alias("z")).hash()
    plain = ((first | last) & pl.lit(_MARKED, pl.UInt64)) == 0
    reliable = (plain & five) | ~present
    return lf.with_columns(pl.when(present).then(g).alias(out), reliable.alias(f"{out}_ok")).drop(
        *parts
    )


def _name_words(
    frame: pl.DataFrame, fields: Sequence[pl.Expr], out: str
) -> tuple[pl.LazyFrame, pl.Expr, pl.Expr, tuple[str, str]]:
    """``frame`` with the first and last names' words (:func:`_name_parts`, once per
    distinct name) as two columns; those columns and their names (to drop)."""
    distinct = frame.select(
        fields[0].unique().implode().alias("first"), fields[1].unique().implode().alias("last")
    ).row(0)
    mapped = []
    for values, field in zip(distinct, fields[:2], strict=True):
        names, words = _name_parts(pl.Series(values, dtype=pl.String))
        mapped.append(field.replace_strict(names, words, default=None, return_dtype=pl.UInt64))
    parts = (f"{out}_f", f"{out}_l")
    lf = frame.lazy().with_columns(mapped[0].alias(parts[0]), mapped[1].alias(parts[1]))
    return lf, pl.col(parts[0]), pl.col(parts[1]), parts


def _name_place_stage(frame: pl.DataFrame, fields: Sequence[pl.Expr], out: str) -> pl.LazyFrame:
    """``g``: the names' words (as in :func:`_name_zip_stage`), the lowercase ASCII letters
    of the city and those of the state. The country is left out.

    Meta's city is the NFC letters of the lowercased value, its state the same letters,
    a US state's name folded to its two-letter code: for a city of ASCII characters and a
    state whose letters are two ASCII letters, ``g`` of the raw values is ``g`` of the
    normalized ones. Anything else (an accent, a state's full name) is normalized in full,
    as is a name with a combining mark."""
    lf, first, last, parts = _name_words(frame, fields, out)
    places = (f"{out}_c", f"{out}_s")
    lf = lf.with_columns(
        *(
            f.str.to_lowercase().str.replace_all("[^a-z]+", "").alias(name)
            for f, name in zip(fields[2:4], places, strict=True)
        ),
        pl.any_horizontal(f.str.contains(_NON_ASCII) for f in fields[2:4]).alias(out),
    )
    city, state = pl.col(places[0]), pl.col(places[1])
    ascii_only = ~pl.col(out).fill_null(False)
    present = first.is_not_null() & last.is_not_null() & city.is_not_null() & state.is_not_null()
    g = pl.struct(first & _UNMARKED, last & _UNMARKED, city.hash(), state.hash()).hash()
    plain = ((first | last) & pl.lit(_MARKED, pl.UInt64)) == 0
    reliable = (plain & ascii_only & (state.str.len_bytes() == 2)) | ~present
    return lf.with_columns(pl.when(present).then(g).alias(out), reliable.alias(f"{out}_ok")).drop(
        *parts, *places
    )


@dataclass(frozen=True)
class Link:
    """One way two records can be the same person on a platform."""

    name: str
    identity: IdentityMapping
    layout: Layout
    fields: tuple[str, ...]  # the layout columns that make the key
    stage: Stage
    # followed CRM-wide only to a record with neither e-mail nor phone (a name with a city
    # and state: namesakes of one city are many, and an e-mail or phone of their own tells
    # them apart; a record without either is matched on the name alone)
    blank_only: bool = False

    @property
    def columns(self) -> list[str]:
        """The CRM columns the link reads (country last, if mapped)."""
        ident = self.identity
        order = ("email", "phone", "first_name", "last_name", "zip", "city", "state", "country")
        return [c for c in (getattr(ident, f) for f in order) if isinstance(c, str)]

    def raw_fields(self) -> list[pl.Expr]:
        """The CRM columns behind the key fields (the country aside), as text."""
        ident = self.identity
        names = {
            "hashed_email": ident.email,
            "PHONE": ident.phone,
            "hashed_first_name": ident.first_name,
            "hashed_last_name": ident.last_name,
            "postal_code": ident.zip,
            "FN": ident.first_name,
            "LN": ident.last_name,
            "CT": ident.city,
            "ST": ident.state,
        }
        return [_text(names[f]) for f in self.fields if f in names]  # type: ignore[arg-type]

    def norm_fields(self) -> list[pl.Expr]:
        """The normalized layout columns behind the key fields (the country aside)."""
        return [pl.col(f) for f in self.fields if f not in ("country_code", "COUNTRY")]

    def key(self) -> pl.Expr:
        """The exact link key over the normalized layout columns (null if any part is)."""
        return pl.concat_str([pl.col(f) for f in self.fields], separator=_SEP)

    @property
    def out(self) -> str:
        return f"__link_{self.name}"


def links_for(config: ProjectConfig, schema: pl.Schema) -> list[Link]:
    """The links the project's identity mapping allows."""
    identity = config.identity
    country = identity.country if identity.country in schema else None
    default = identity.default_country
    links: list[Link] = []
    if identity.email and identity.email in schema:
        only = IdentityMapping(email=identity.email, default_country=default)
        links.append(Link("email", only, "google_ads", ("hashed_email",), _email_stage))
    if identity.phone and identity.phone in schema:
        only = IdentityMapping(phone=identity.phone, country=country, default_country=default)
        links.append(Link("phone", only, "meta", ("PHONE",), _phone_stage))
    names = (identity.first_name, identity.last_name, identity.zip)
    if all(c and c in schema for c in names):
        only = IdentityMapping(
            first_name=identity.first_name,
            last_name=identity.last_name,
            zip=identity.zip,
            country=country,
            default_country=default,
        )
        fields = ("hashed_first_name", "hashed_last_name", "country_code", "postal_code")
        links.append(Link("name_zip", only, "google_ads", fields, _name_zip_stage))
    place = (identity.first_name, identity.last_name, identity.city, identity.state)
    if all(c and c in schema for c in place):
        only = IdentityMapping(
            first_name=identity.first_name,
            last_name=identity.last_name,
            city=identity.city,
            state=identity.state,
            country=country,
            default_country=default,
        )
        placed = ("FN", "LN", "CT", "ST", "COUNTRY")
        links.append(Link("name_place", only, "meta", placed, _name_place_stage, blank_only=True))
    return links


# a raw e-mail at a reserved domain (any case, trailing spaces): a placeholder
_RESERVED_RAW = (
    r"(?i)[@.](?:" + "|".join(d.replace(".", r"\.") for d in RESERVED_EMAIL_DOMAINS) + r")\s*$"
)


def _may_be_blank(frame: pl.DataFrame, links: Sequence[Link]) -> pl.Series:
    """:func:`_may_be_blank_query` of ``frame``, collected, less the rows whose phone is
    plainly valid (:func:`_without_plain_phone`)."""
    rows = _may_be_blank_query(frame.lazy(), links).collect().to_series()
    return _without_plain_phone(frame, rows, links)


def _without_plain_phone(frame: pl.DataFrame, rows: pl.Series, links: Sequence[Link]) -> pl.Series:
    """``rows`` (row numbers of ``frame``, which holds the links' columns) less those whose
    raw phone is plainly a valid number (:func:`plainly_valid_phone`): such a record has
    a phone the platforms receive. Judged on those rows only (a few per cent of a CRM,
    whose e-mail :func:`_may_be_blank_query` found wanting), the country's calling code
    once per distinct country. (The 10M sample: 729k records without a plainly valid
    e-mail, 692k of them with a phone; each went on to the exact keys.)"""
    phone = next((link for link in links if link.name == "phone"), None)
    if phone is None or rows.is_empty():
        return rows
    few = frame.select(phone.columns)[rows].lazy()
    known = predicate_by_distinct(few, calling_code_known(phone.identity))
    plain = plainly_valid_phone(_text(phone.columns[0]), known).fill_null(False)
    return rows.filter(few.select(~plain).collect().to_series())


def _may_be_blank_query(lf: pl.LazyFrame, links: Sequence[Link]) -> pl.LazyFrame:
    """The row numbers of ``lf`` (holding the links' columns) whose record may have
    neither a valid e-mail nor a valid phone as the platforms receive them, judged on the
    raw e-mail alone: a superset, every row but those whose e-mail is plainly a valid
    address (:func:`plainly_valid_email`) off the reserved domains — an ``@`` alone makes
    no address (``pat@``, ``pat@clinic``). :func:`_without_plain_phone` then drops the
    rows whose phone is plainly valid, and :func:`_blank_exact` decides on the exact keys
    of the rows left. (A phone that is not plainly valid is left to the exact test: a
    number of seven digits or more can still be no phone — too short for its country.)"""
    email = next((link.columns[0] for link in links if link.name == "email"), None)
    rows = pl.int_range(pl.len(), dtype=pl.UInt32)
    if email is None:
        return lf.select(rows)
    raw = _text(email)
    sent = plainly_valid_email(raw).fill_null(False) & ~raw.str.contains(_RESERVED_RAW)
    return lf.select(rows.filter(~sent))


def _blank_exact(rows: pl.DataFrame, links: Sequence[Link]) -> pl.Series:
    """The ``_ROW`` values of ``rows`` with neither a valid e-mail nor a valid phone (their
    exact keys, as the platforms would receive them: a placeholder e-mail is none)."""
    strong = [link for link in links if link.name in STRONG_PERSON_LINKS]
    if not strong or rows.is_empty():
        return rows.get_column(_ROW)
    keyed = exact_keys([rows] * len(strong), strong)
    has = pl.concat(
        [_sent(k, link).get_column(_ROW) for k, link in zip(keyed, strong, strict=True)]
    )
    return rows.get_column(_ROW).filter(~rows.get_column(_ROW).is_in(has.implode()))


def _sent(keyed: pl.DataFrame, link: Link) -> pl.DataFrame:
    """``keyed`` (exact keys of ``link``) less the e-mails no platform receives (at a
    reserved domain: the key of the e-mail link is the normalized address)."""
    if link.name != "email":
        return keyed
    return keyed.filter(~reserved_email(pl.col(_KEY)))


def opted_out_expr(config: ProjectConfig, schema: pl.Schema) -> pl.Expr | None:
    """True for a CRM record that opted out of marketing or ad personalization, or must
    not be contacted (do-not-contact, deceased); None when no consent column is mapped."""
    from audiences.crm.consent import consent_denied, truthy

    probe = pl.DataFrame(schema=schema)
    c = config.consent
    parts: list[pl.Expr] = []
    if c.marketing_opt_in and c.marketing_opt_in in schema:
        # no recorded opt-in is no opt-in, as in the consent rule
        parts.append(~truthy(probe, c.marketing_opt_in, "marketing_opt_in").fill_null(False))
    for column in (c.do_not_contact, c.deceased):
        if column and column in schema:
            parts.append(truthy(probe, column, column))
    if c.ad_personalization and c.ad_personalization in schema:
        parts.append(consent_denied(probe, c.ad_personalization))
    if not parts:
        return None
    return pl.any_horizontal([p.fill_null(False) for p in parts])


# Coarse keys kept for a later step over the same rows (:func:`coarse_keys`' ``memo``): the
# duplicate-of-opt-out flag keys every candidate for the links the gate's people follow,
# and the gate's :func:`person_keys` takes those keys back instead of computing them again
# (10M contacts, a second segment's 465k candidates: 130 + 150 ms of keying became 200).
# Per link (by its repr), the rows the keys were computed from and the keys; a later call
# takes them only where its rows equal those, value for value (16 ms for 933k
# candidates), so a memo of other rows is never used.
CoarseMemo = dict[str, tuple[pl.DataFrame, pl.DataFrame]]


def coarse_keys(
    frame: pl.DataFrame, links: Sequence[Link], memo: CoarseMemo | None = None
) -> dict[str, pl.DataFrame]:
    """Per link (by name), (row, ``g``) for every row of ``frame`` (``_ROW`` plus the
    links' columns): ``g`` of the raw values where that provably equals ``g`` of the
    normalized ones, else ``g`` of the normalized values. Rows whose ``g`` is null have no
    key. The links' raw stages run side by side.

    With a ``memo``, a link whose keys it holds for these very rows (``_ROW`` and the
    link's columns equal) is not keyed again, and the keys computed are put in it."""
    if memo is None:
        return _coarse_keys(frame, links)
    rows = {repr(link): frame.select(_ROW, *link.columns) for link in links}
    keys: dict[str, pl.DataFrame] = {}
    for link in links:
        kept = memo.get(repr(link))
        if kept is not None and kept[0].equals(rows[repr(link)]):
            keys[link.name] = kept[1]
    todo = [link for link in links if link.name not in keys]
    keys.update(_coarse_keys(frame, todo))
    memo.update({repr(link): (rows[repr(link)], keys[link.name]) for link in todo})
    return {link.name: keys[link.name] for link in links}


def _coarse_keys(frame: pl.DataFrame, links: Sequence[Link]) -> dict[str, pl.DataFrame]:
    if not links:
        return {}
    staged = pl.collect_all(
        [
            link.stage(frame.select(_ROW, *link.columns), link.raw_fields(), link.out)
            for link in links
        ],
        engine="streaming",
    )
    keys = {}
    for link, keyed in zip(links, staged, strict=True):
        out = link.out
        ok = keyed.get_column(f"{out}_ok").fill_null(True)
        easy = keyed.filter(ok).select(_ROW, out)
        hard = keyed.filter(~ok).select(_ROW, *link.columns)
        if hard.is_empty():
            keys[link.name] = easy.drop_nulls(out)
            continue
        hard = _collect(normalized_layout(hard.lazy(), link.identity, link.layout, keep=[_ROW]))
        hard = _collect(link.stage(hard, link.norm_fields(), out).select(_ROW, out))
        keys[link.name] = pl.concat([easy, hard]).drop_nulls(out)
    return keys


def exact_keys(frames: Sequence[pl.DataFrame], links: Sequence[Link]) -> list[pl.DataFrame]:
    """Per link, (row, exact link key, ``g`` of the normalized values) for every row of
    its frame that has a key (the normalizations run side by side)."""
    normalized = pl.collect_all(
        [
            normalized_layout(
                frame.lazy().select(_ROW, *link.columns),
                link.identity,
                link.layout,
                keep=[_ROW],
            )
            for frame, link in zip(frames, links, strict=True)
        ]
    )
    return pl.collect_all(
        [
            link.stage(staged, link.norm_fields(), link.out)
            .select(_ROW, link.key().alias(_KEY), link.out)
            .drop_nulls(_KEY)
            for staged, link in zip(normalized, links, strict=True)
        ],
        engine="streaming",
    )


# The opt-out index: what the linkage needs of the opted-out records, per export. It holds
# no identifier: per opted-out record its row position in the contacts source and, per
# link, a 32-bit *keyed* hash of its coarse key (``g`` rehashed with the store's secret
# seeds, its high half) and whether that ``g`` is reliable. The few records whose coarse
# key meets a candidate's are read again, by position, for their exact keys.
#
# 32 bits, not 64: a keyed key is only a prefilter, so a collision lets one more record
# through to the exact comparison and never flags anybody; with c distinct candidate keys
# at most c / 2^32 of the index's rows meet one by chance (the benchmark's first segment
# at 10M contacts: 460k candidates, so at most about 580 of the 5.41M rows per link,
# beside the 115k that genuinely meet). The file is 86 instead of 145 MB at 10M contacts,
# and writing and authenticating it cost by the byte.
_POS = "__link_pos"
# bump when the index's columns or the coarse keys change (2: 32-bit keys; 3: name with
# city and state, of records with neither e-mail nor phone; 4: of every record without a
# valid-looking e-mail, its phone judged exactly later; 5: an e-mail with an ``@`` that is
# no address is none; 6: nor of a record whose phone is plainly valid)
INDEX_FORMAT = 6
Seeds = tuple[int, int, int, int]
UNKEYED: Seeds = (0, 0, 0, 0)  # an index that never leaves the process
# the row index type of this polars build (UInt32, or UInt64 in the big-index build)
_INDEX_DTYPE = pl.DataFrame({"x": [0]}).with_row_index(_POS).schema[_POS]


class IndexStore(Protocol):
    """Where an opt-out index outlives the process (the pipeline's state-folder cache)."""

    def seeds(self) -> Seeds:
        """The secret seeds the index's coarse keys are rehashed with."""

    def load(self, identity: str) -> pl.DataFrame | None:
        """The stored index for ``identity`` if it is there, whole and authentic."""

    def save(self, identity: str, index: pl.DataFrame) -> None: ...


def index_identity(
    config: ProjectConfig,
    schema: pl.Schema,
    flags: Mapping[str, pl.Expr] | None = None,
    where: pl.Expr | None = None,
) -> str:
    """What an opt-out index depends on besides the data: the identity and consent mapping
    (the links and the opt-out expression, with the consent vocabulary), how the contacts
    source is read (row positions), the index format and the polars version (``g`` is a
    polars hash, which polars does not promise to keep across versions). An index of
    ``flags`` (:func:`flag_linked_records`) depends on those expressions instead — the
    columns, words and jurisdictions they read: another pack in force is another index."""
    import hashlib
    import json

    opted_out: str | dict[str, str] | None
    if flags is None:
        selected = opted_out_expr(config, schema)
        opted_out = None if selected is None else selected.meta.serialize(format="json")
    else:
        opted_out = {name: e.meta.serialize(format="json") for name, e in sorted(flags.items())}
        if where is not None:
            opted_out["\0where"] = where.meta.serialize(format="json")
    body = {
        "format": INDEX_FORMAT,
        "polars": pl.__version__,
        "phone_tail": PHONE_TAIL,
        "opted_out": opted_out,
        "links": [[k.name, k.identity.model_dump(mode="json")] for k in links_for(config, schema)],
        "contacts": config.sources.contacts.model_dump(mode="json"),
        "schema": [[name, str(dtype)] for name, dtype in schema.items()],
    }
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def index_schema(links: Sequence[Link], flags: Sequence[str] = ()) -> pl.Schema:
    """The columns of an opt-out index over ``links`` (and the ``flags`` it carries)."""
    columns: dict[str, pl.DataType] = {_POS: _INDEX_DTYPE}
    for link in links:
        columns |= {link.out: pl.UInt32(), f"{link.out}_ok": pl.Boolean()}
    columns |= {name: pl.Boolean() for name in flags}
    return pl.Schema(columns)


def _keyed(g: pl.Expr, seeds: Seeds) -> pl.Expr:
    """The index's key of a coarse key ``g``: the high 32 bits of ``g`` rehashed with
    ``seeds`` (null where ``g`` is)."""
    return pl.when(g.is_not_null()).then(g.hash(*seeds).floordiv(1 << 32).cast(pl.UInt32))


def compute_opt_out_index(
    contacts: pl.LazyFrame,
    config: ProjectConfig,
    seeds: Seeds,
    flags: Mapping[str, pl.Expr] | None = None,
    where: pl.Expr | None = None,
) -> pl.DataFrame:
    """The opt-out index of ``contacts``: (``_POS``, and per link its keyed ``g`` and
    whether ``g`` is reliable) for every opted-out record that has a key or is unreliable
    for some link — the others can match nobody. Reads only the consent and key columns;
    the raw key columns are dropped as soon as each link's ``g`` is taken.

    With ``flags`` (name → boolean expression over the contacts), the index is of the
    records any flag is true for, and carries each flag as a column; ``where``, a cheap
    expression true wherever a flag is, picks those records first (the flags, which may
    be costly, are then computed for them only)."""
    schema = contacts.collect_schema()
    links = links_for(config, schema)
    names = sorted(flags) if flags else []
    if flags:
        opted_out: pl.Expr | None = (
            where.fill_null(False)
            if where is not None
            else pl.any_horizontal([flags[n].fill_null(False) for n in names])
        )
    else:
        opted_out = opted_out_expr(config, schema)
    if opted_out is None or not links:
        return pl.DataFrame(schema=index_schema(links, names))
    columns = sorted({c for link in links for c in link.columns})
    read = {root for n in names for root in flags[n].meta.root_names()} if flags else set()
    read |= set(opted_out.meta.root_names())
    # The records stream through in ordered batches (positions counted along) and each
    # batch leaves only its index rows: the opted-out records' key columns are never all
    # held at once (a row index over the whole scan and one filter held them: 5.4M
    # records at 10M contacts).
    scan = contacts.select(*columns, *sorted(read - set(columns)))
    parts = [pl.DataFrame(schema=index_schema(links, names))]

    def index_rows(batch: pl.DataFrame, offset: int) -> None:
        records = batch.with_row_index(_POS, offset=offset).filter(opted_out)
        if records.height:
            parts.append(_index_rows(records, links, seeds, flags or {}, names))

    _in_batches(scan, _INDEX_CHUNK, index_rows)
    return pl.concat(parts)


# contacts per batch while computing an index: each batch costs some fixed work (its
# distinct names, the links' plans), so fewer, larger ones are faster; and hold more (10M
# contacts, index alone: 250k 3.5 s, 1.48 GB; 500k 3.1-3.2 s, 1.65 GB; 1M 3.0 s, 1.77 GB)
_INDEX_CHUNK = 500_000
_READ_CHUNK = 500_000  # rows per batch when reading records back by position


def _in_batches(lf: pl.LazyFrame, size: int, each: Callable[[pl.DataFrame, int], None]) -> None:
    """Call ``each(batch, offset)`` on ``lf``'s rows in order, ``size`` rows or so at a time
    (``offset``: the position of the batch's first row).

    ``sink_batches``, not ``collect_batches``: the latter (polars 1.36) ends the iteration
    as if the data had ended when the query fails part-way (a value that does not cast,
    a file that cannot be read) and reports the error only when the iterator is
    collected — an index over part of the contacts would then pass for the whole one.
    ``sink_batches`` raises the query's error, and any error of ``each``, to the caller
    (``tests/test_linkage.py``)."""
    seen = [0]

    def take(batch: pl.DataFrame) -> None:
        each(batch, seen[0])
        seen[0] += batch.height

    lf.sink_batches(take, chunk_size=size, maintain_order=True, lazy=False)


def _index_rows(
    records: pl.DataFrame,
    links: Sequence[Link],
    seeds: Seeds,
    flags: Mapping[str, pl.Expr],
    names: Sequence[str],
) -> pl.DataFrame:
    """The index rows of ``records`` (``_POS``, per link its keyed ``g`` and whether it is
    reliable, then the flags) that can match anybody."""
    if names:
        # the flags read a few low-cardinality columns (request flags, state, country):
        # each is computed once per distinct combination of the rows just read (deriving
        # the jurisdiction row by row cost about 1 s per 100k records)
        lookups = [predicate_by_distinct(records.lazy(), flags[n]) for n in names]
        records = records.with_columns(
            e.fill_null(False).alias(n) for e, n in zip(lookups, names, strict=True)
        )

    # the links' stages side by side: one after the other, a batch's keying left a core
    # idle part of the time (the index at 10M contacts: median 4.13 s, 3.89 s side by side)
    # a blank-only link keys only the records that may have neither e-mail nor phone
    # (a few per cent: found beside the other links' stages, staged alone after them,
    # then put back in place)
    def staged(link: Link, frame: pl.DataFrame) -> pl.LazyFrame:
        return link.stage(frame, link.raw_fields(), link.out).select(
            _keyed(pl.col(link.out), seeds).alias(link.out),
            pl.col(f"{link.out}_ok").fill_null(True),
        )

    queries = [staged(k, records.select(k.columns)) for k in links if not k.blank_only]
    blank_only = [link for link in links if link.blank_only]
    if blank_only:
        queries.append(_may_be_blank_query(records.lazy(), links))
    done = iter(pl.collect_all(queries))  # (a batch is in memory: no streaming engine)
    staged_frames = [pl.DataFrame() if link.blank_only else next(done) for link in links]
    blank = _without_plain_phone(records, next(done).to_series(), links) if blank_only else None
    for i, link in enumerate(links):
        if link.blank_only:
            assert blank is not None
            few = _collect(staged(link, records.select(link.columns)[blank]))
            n = records.height
            keys = pl.repeat(None, n, dtype=pl.UInt32, eager=True).alias(link.out)
            oks = pl.repeat(True, n, eager=True).alias(f"{link.out}_ok")
            staged_frames[i] = pl.DataFrame(
                [
                    keys.scatter(blank, few.get_column(link.out)),
                    oks.scatter(blank, few.get_column(f"{link.out}_ok")),
                ]
            )
    parts = [records.select(_POS), *staged_frames]
    if names:
        parts.append(records.select(names))  # the flags last, as index_schema has them
    index = pl.concat(parts, how="horizontal")
    can_match = [pl.col(k.out).is_not_null() | ~pl.col(f"{k.out}_ok") for k in links]
    return index.filter(pl.any_horizontal(can_match))


def _opt_out_index(
    contacts: pl.LazyFrame,
    config: ProjectConfig,
    cache: dict[str, Any] | None,
    store: IndexStore | None,
    flags: Mapping[str, pl.Expr] | None = None,
    where: pl.Expr | None = None,
) -> tuple[pl.DataFrame, Seeds]:
    """The opt-out index (or the index of ``flags``) and its seeds: from ``cache`` (the
    ``Sources`` object's, so ``build --all`` and ``sync --all`` read it once), else from
    ``store`` (computed once per export), else computed."""
    identity = index_identity(config, contacts.collect_schema(), flags, where)
    seeds = store.seeds() if store is not None else UNKEYED
    key = f"opt-out-index:{identity}:{hash(seeds)}"
    if cache is not None and key in cache:
        return cache[key], seeds
    index = store.load(identity) if store is not None else None
    links = links_for(config, contacts.collect_schema())
    if index is not None and index.schema != index_schema(links, sorted(flags or {})):
        index = None  # (an authentic index of another layout: never guessed at)
    if index is None:
        index = compute_opt_out_index(contacts, config, seeds, flags, where)
        if store is not None:
            store.save(identity, index)
    if cache is not None:
        cache[key] = index
    return index, seeds


def prepare_opt_out_index(
    contacts: pl.LazyFrame,
    config: ProjectConfig,
    *,
    cache: dict[str, Any],
    store: IndexStore | None = None,
) -> None:
    """Load or compute the opt-out index into ``cache`` now, for a later
    :func:`flag_duplicates_of_opt_outs` with the same ``cache`` and ``store``.

    Only the order changes: a caller that is about to hold a large frame (the segment's
    candidates) computes the index first, so the index's streaming buffers and the frame
    are not resident at the same time (10M contacts: the first build's peak fell from
    2.25 to 1.85 GB)."""
    schema = contacts.collect_schema()
    if opted_out_expr(config, schema) is None or not links_for(config, schema):
        return
    _opt_out_index(contacts, config, cache, store)


def _records_at(contacts: pl.LazyFrame, positions: pl.Series, columns: list[str]) -> pl.DataFrame:
    """The key columns of the contacts at ``positions`` (as ``_ROW``), in position order.

    The columns stream through in ordered batches (:func:`_in_batches`) and each batch
    keeps only its rows at ``positions``: a row index over the whole scan and a filter on
    it held every row of the key columns at once (47k records of 10M contacts: 1.07 s and
    1.6 GB more resident memory, against 0.84–0.89 s and 0.56–0.67 GB).
    """
    wanted = positions.sort().to_numpy()
    read = contacts.select(columns)
    parts = [pl.DataFrame(schema={_ROW: _INDEX_DTYPE, **read.collect_schema()})]

    def keep(batch: pl.DataFrame, offset: int) -> None:
        lo, hi = wanted.searchsorted([offset, offset + batch.height])
        if hi > lo:
            at = pl.Series(_ROW, wanted[lo:hi], dtype=_INDEX_DTYPE)
            rows = batch[(at - offset).to_numpy()]  # (views into the whole batch's bytes)
            parts.append(rows.with_columns(own_strings(rows.schema)).insert_column(0, at))

    _in_batches(read, _READ_CHUNK, keep)
    return pl.concat(parts)


def flag_duplicates_of_opt_outs(
    candidates: pl.DataFrame,
    contacts: pl.LazyFrame,
    config: ProjectConfig,
    flag: str,
    *,
    cache: dict[str, Any] | None = None,
    store: IndexStore | None = None,
    memo: CoarseMemo | None = None,
) -> pl.DataFrame:
    """``candidates`` with a boolean column ``flag``: true where a candidate who did not opt
    out shares an email, phone or name-and-postal-code key with a CRM record that did.

    Candidates who opted out themselves are not flagged: the consent rule excludes them
    under their own reason. With a ``memo``, every candidate is keyed for the links
    :func:`person_keys` keys (kept there for the gate's people), not only the candidates
    judged here.
    """
    schema = contacts.collect_schema()
    links = links_for(config, schema)
    opted_out = opted_out_expr(config, schema)
    if opted_out is None or not links or candidates.is_empty():
        return candidates.with_columns(pl.lit(False).alias(flag))
    columns = sorted({c for link in links for c in link.columns})
    own = opted_out_expr(config, candidates.collect_schema())
    # (numbered as person_keys numbers its rows, so that its keys are these)
    everyone = candidates.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW), *columns)
    judged = candidates.select(~own if own is not None else pl.lit(True)).to_series()
    cand = everyone.filter(judged)
    # 1. The candidates' coarse keys (normalizing only their unreliable rows).
    shared = (
        [link for link in links if link.name in _KEYED_PERSON_LINKS] if memo is not None else []
    )
    cand_coarse = {
        name: keys.filter(judged.gather(keys.get_column(_ROW)))
        for name, keys in coarse_keys(everyone, shared, memo).items()
    }
    cand_coarse.update(coarse_keys(cand, [link for link in links if link not in shared]))
    cand_coarse = {link.name: cand_coarse[link.name] for link in links}
    # 2. The opted-out records that are unreliable for a link or share a coarse key with
    #    a candidate (the index: once per export), read again by position.
    index, seeds = _opt_out_index(contacts, config, cache, store)
    meets = _meeting_rows(cand_coarse, links, index, seeds)
    wanted_rows = pl.concat(meets).unique()
    if wanted_rows.is_empty():  # no opted-out record can share a key with a candidate
        return candidates.with_columns(pl.lit(False).alias(flag))
    rows = _records_at(contacts, wanted_rows, columns)
    # 3. Exact keys for those few opted-out rows; their coarse keys pick the candidates to
    #    normalize; then the exact join, per link.
    theirs = _their_keys(rows, meets, links)
    # (Series operations and a semi join: the same as filter expressions took 5x longer)
    wanted = [
        cand_coarse[link.name].filter(
            cand_coarse[link.name].get_column(link.out).is_in(their.get_column(link.out).implode())
        )
        for link, their in zip(links, theirs, strict=True)
    ]
    mine = exact_keys([cand.join(rows.select(_ROW), on=_ROW, how="semi") for rows in wanted], links)
    hits = [
        m.filter(m.get_column(_KEY).is_in(t.get_column(_KEY).implode())).get_column(_ROW)
        for m, t in zip(mine, theirs, strict=True)
    ]
    flagged = pl.concat(hits)  # one Series per link (there is at least one link)
    mask = pl.Series(flag, range(candidates.height), dtype=pl.UInt32).is_in(flagged.implode())
    return candidates.with_columns(mask.alias(flag))


def _their_keys(
    rows: pl.DataFrame, meets: Sequence[pl.Series], links: Sequence[Link]
) -> list[pl.DataFrame]:
    """Per link, the exact keys of the records read back (``rows``) that met a candidate
    on it — for a ``blank_only`` link, only of those with neither e-mail nor phone."""
    met = [rows.filter(pl.col(_ROW).is_in(meet.implode())) for meet in meets]
    met = [
        m.filter(pl.col(_ROW).is_in(_blank_exact(m, links).implode())) if link.blank_only else m
        for m, link in zip(met, links, strict=True)
    ]
    return exact_keys(met, links)


def _meeting_rows(
    cand_coarse: Mapping[str, pl.DataFrame], links: Sequence[Any], index: pl.DataFrame, seeds: Any
) -> list[pl.Series]:
    """Per link, the index's row positions that may share a key with a candidate: the
    ones unreliable for the link, and the ones whose coarse key a candidate has."""
    from concurrent.futures import ThreadPoolExecutor

    # (Series operations: as one any_horizontal filter expression they took 2.5x longer;
    # as lazy queries side by side they need an index of one chunk, and a loaded one has
    # a chunk per page. polars runs each without the GIL: the links side by side in
    # threads, 288 -> 165 ms for 5.4M index rows and 450k candidates per link)
    def meeting(link: Link) -> pl.Series:
        keyed = cand_coarse[link.name].select(_keyed(pl.col(link.out), seeds)).to_series()
        meet = ~index.get_column(f"{link.out}_ok") | index.get_column(link.out).is_in(
            keyed.implode()
        )
        return index.get_column(_POS).filter(meet.fill_null(False))

    with ThreadPoolExecutor(max_workers=max(1, len(links))) as pool:
        return list(pool.map(meeting, links))


def flag_linked_records(
    candidates: pl.DataFrame,
    contacts: pl.LazyFrame,
    config: ProjectConfig,
    flags: Mapping[str, pl.Expr],
    *,
    where: pl.Expr | None = None,
    cache: dict[str, Any] | None = None,
    store: IndexStore | None = None,
) -> pl.DataFrame:
    """``candidates`` with a boolean column per entry of ``flags`` (name → boolean
    expression over the contacts' columns): true where the candidate shares an email,
    phone or name-and-postal-code key with a CRM record — anywhere in ``contacts``, the
    candidate itself included — for which the flag is true. One hop, as the opt-out
    linkage; the index of flagged records is kept per export and per ``flags`` (and
    ``where``, a cheap prefilter true wherever any flag is: see
    :func:`compute_opt_out_index`)."""
    names = sorted(flags)
    schema = contacts.collect_schema()
    links = links_for(config, schema)
    if not names or not links or candidates.is_empty():
        return candidates.with_columns(pl.lit(False).alias(n) for n in names)
    columns = sorted({c for link in links for c in link.columns})
    cand = candidates.lazy().with_row_index(_ROW).select(_ROW, *columns).collect()
    cand_coarse = coarse_keys(cand, links)
    index, seeds = _opt_out_index(contacts, config, cache, store, flags, where)
    meets = _meeting_rows(cand_coarse, links, index, seeds)
    wanted_rows = pl.concat(meets).unique()
    if wanted_rows.is_empty():
        return candidates.with_columns(pl.lit(False).alias(n) for n in names)
    rows = _records_at(contacts, wanted_rows, columns)
    theirs = _their_keys(rows, meets, links)
    carried = index.select(pl.col(_POS).alias(_ROW), *names)
    hits = []
    for link, their in zip(links, theirs, strict=True):
        # per exact key, which flags its records carry (one row per key: no blow-up
        # when many records share one key)
        by_key = their.join(carried, on=_ROW).group_by(_KEY).agg(pl.col(n).any() for n in names)
        coarse = cand_coarse[link.name]
        wanted = coarse.filter(
            coarse.get_column(link.out).is_in(their.get_column(link.out).implode())
        )
        (mine,) = exact_keys([cand.join(wanted.select(_ROW), on=_ROW, how="semi")], [link])
        hits.append(mine.join(by_key, on=_KEY).select(_ROW, *names))
    found = pl.concat(hits).group_by(_ROW).agg(pl.col(n).any() for n in names)
    flagged = (
        pl.DataFrame({_ROW: pl.int_range(candidates.height, dtype=pl.UInt32, eager=True)})
        .join(found.with_columns(pl.col(_ROW).cast(pl.UInt32)), on=_ROW, how="left")
        .select(pl.col(n).fill_null(False) for n in names)
    )
    return candidates.with_columns(flagged.get_columns())


# The keys a platform matches a customer-list row on: two records sharing one reach one
# platform user, so they are one person to ``min-size``, the difference checks and the
# release. E-mail and phone link records outright; a name with a postal code links them
# unless e-mails or phones tell them apart; a name with a city and state links a record
# that has no e-mail, phone or postal code (what Meta matches it on) to its namesakes of
# that place (see person_keys). (Followed among every record sharing a name, city and
# state, that key took the gate's people from 0.26 to 1.0 s for 434k records, and from
# 0.69 to 1.35-1.73 s for 933k: namesakes of one city are many, and an e-mail, phone
# or postal code of their own tells them apart.)
STRONG_PERSON_LINKS = ("email", "phone")
NAME_PERSON_LINKS = ("name_zip",)
BARE_PERSON_LINKS = ("name_place",)
PERSON_LINKS = STRONG_PERSON_LINKS + NAME_PERSON_LINKS + BARE_PERSON_LINKS
_KEYED_PERSON_LINKS = STRONG_PERSON_LINKS + NAME_PERSON_LINKS  # coarse-keyed over every record


def person_links(config: ProjectConfig, schema: pl.Schema) -> list[Link]:
    """The links :func:`person_keys` follows: e-mail, phone, name + postal code and
    (for records with none of those) name + city + state."""
    return [link for link in links_for(config, schema) if link.name in PERSON_LINKS]


def person_columns(config: ProjectConfig, schema: pl.Schema) -> list[str]:
    """The columns :func:`person_keys` reads besides the id."""
    return sorted({c for link in person_links(config, schema) for c in link.columns})


def person_keys(
    records: pl.DataFrame, config: ProjectConfig, by: str, memo: CoarseMemo | None = None
) -> pl.Series:
    """For each row of ``records``, the person it belongs to, named by the smallest value of
    column ``by`` (the CRM id) among the records linked to it, transitively.

    Records sharing a normalized e-mail or phone are linked. Records sharing a first and
    last name with a postal code (what a platform matches a row without an e-mail or
    phone on) are linked unless e-mails or phones tell them apart: among the records
    sharing such a key, each record whose e-mail and phone no other of them contradicts
    (a different e-mail, a different phone; having none contradicts nothing) joins the
    first of them by ``by`` that another contradicts, or the first of them if none is —
    all of them when none contradicts another. A father and son of one name at one
    address, each with an e-mail of their own, stay two people; the same person entered
    twice without an e-mail, or once with the e-mail and once with the phone, is one.

    A record with no e-mail, phone or postal code the platforms receive, which Meta
    matches on a first and last name with a city and state, joins the first record by
    ``by`` of that name and place that has one of them (the first of them if none has):
    the same person entered once with a ZIP and once without is one, and a record that
    could be any of several namesakes of one city is one of them, never a person of its
    own. A record linked to no other is its own person.

    ``memo``: coarse keys an earlier step computed for these records
    (:func:`coarse_keys`; taken only where the rows are the same)."""
    schema = records.collect_schema()
    links = person_links(config, schema)
    labels = records.get_column(by).alias(by)
    if not links or records.height < 2:
        return labels
    columns = person_columns(config, schema)
    rows = records.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW), *columns)
    keyed = [link for link in links if link.name in _KEYED_PERSON_LINKS]
    # Equal exact keys have equal coarse keys: only rows whose coarse key another row
    # shares can be linked, and only they are normalized (a few per cent of a CRM).
    coarse = coarse_keys(rows, keyed, memo) if keyed else {}
    shared = pl.concat(
        [
            pl.Series(_ROW, [], dtype=pl.UInt32),
            *(
                keys.get_column(_ROW).filter(duplicated(keys.get_column(link.out)))
                for link, keys in zip(keyed, coarse.values(), strict=True)
            ),
        ]
    )
    edges = []
    if not shared.is_empty():
        some = rows.filter(pl.col(_ROW).is_in(shared.unique().implode()))
        exact = {
            link.name: k.select(_ROW, _KEY)
            for link, k in zip(keyed, exact_keys([some] * len(keyed), keyed), strict=True)
        }
        edges = [
            exact[name].filter(pl.col(_KEY).is_duplicated())
            for name in STRONG_PERSON_LINKS
            if name in exact
        ]
        # (a placeholder e-mail links the records that share it, but tells no one apart:
        # the platform never receives it)
        sent = {link.name: _sent(exact[link.name], link) for link in keyed if link.name in exact}
        strong = {n: sent[n] for n in STRONG_PERSON_LINKS if n in sent}
        edges += [_namesakes(exact[n], strong, labels) for n in NAME_PERSON_LINKS if n in exact]
    place = next((link for link in links if link.name in BARE_PERSON_LINKS), None)
    if place is not None:
        edges.append(_bare_namesakes(rows, keyed, place, labels))
    edges = [e for e in edges if e.height]
    if not edges:
        return labels
    linked = pl.concat([e.get_column(_ROW) for e in edges]).unique()
    return labels.scatter(*_components(labels, linked, edges))


def _bare_namesakes(
    rows: pl.DataFrame, keyed: Sequence[Link], place: Link, labels: pl.Series
) -> pl.DataFrame:
    """(row, key) of the records the name with city and state links (:func:`person_keys`):
    each record with no e-mail, phone or name + postal code key the platforms receive,
    with the first record by label of its name and place that has one (the first of them
    if none has). The few records that may be such (:func:`_may_be_blank`) are confirmed
    on their exact keys (a postal code's coarse key is no proof: five digits can still be
    no postal code in the record's country); only the records whose name, city and state
    meet theirs are normalized."""
    none = pl.DataFrame(schema={_ROW: pl.UInt32, _KEY: pl.String})
    maybe = _may_be_blank(rows, keyed)
    if maybe.is_empty():
        return none
    few = rows[maybe]
    bare = _blank_exact(few, keyed)
    postal = [link for link in keyed if link.name in NAME_PERSON_LINKS]
    if postal and not bare.is_empty():
        with_postal = exact_keys([few], postal)[0].get_column(_ROW)
        bare = bare.filter(~bare.is_in(with_postal.implode()))
    if bare.is_empty():
        return none
    # the records whose name, city and state may be a bare record's, then their exact keys
    places = coarse_keys(rows, [place])[place.name]
    theirs = places.filter(pl.col(_ROW).is_in(bare.implode())).get_column(place.out)
    met = places.filter(pl.col(place.out).is_in(theirs.implode())).get_column(_ROW)
    (exact,) = exact_keys([rows.filter(pl.col(_ROW).is_in(met.implode()))], [place])
    lone = pl.col(_ROW).is_in(bare.implode())
    group = exact.select(_ROW, _KEY).with_columns(
        labels.gather(exact.get_column(_ROW)).alias("__label"), lone.alias("__bare")
    )
    # (False sorts first: the first record that has an e-mail, phone or postal code)
    lead = pl.col(_ROW).sort_by("__bare", "__label", _ROW).first().over(_KEY)
    return (
        group.filter(pl.col("__bare").any().over(_KEY))
        .filter(pl.col("__bare") | (pl.col(_ROW) == lead))
        .select(_ROW, _KEY)
        .filter(pl.col(_KEY).is_duplicated())
    )


def _namesakes(
    keyed: pl.DataFrame, told_by: Mapping[str, pl.DataFrame], labels: pl.Series
) -> pl.DataFrame:
    """(row, key) of the records a name key links (:func:`person_keys`): in each group of
    records sharing the key, every record none of the group contradicts by a key of
    ``told_by`` (the e-mails and phones the platforms receive), and the first by label of
    those another contradicts, or the first of the group if none is (a record that could
    be any of them is one of them, never a person of its own)."""
    group = keyed.filter(pl.col(_KEY).is_duplicated())
    if group.is_empty():
        return group
    agree = []
    for name, strong in told_by.items():
        group = group.join(strong.rename({_KEY: name}), on=_ROW, how="left")
        # a record no other contradicts: it has none, or the group holds only its value
        agree.append(
            pl.col(name).is_null() | (pl.col(name).drop_nulls().n_unique().over(_KEY) == 1)
        )
    agrees = pl.all_horizontal(agree) if agree else pl.lit(True)
    group = group.with_columns(
        labels.gather(group.get_column(_ROW)).alias("__label"), agrees.alias("__agrees")
    )
    # (False sorts first: the first contradicted record, if any)
    lead = pl.col(_ROW).sort_by("__agrees", "__label", _ROW).first().over(_KEY)
    return (
        group.filter(pl.col("__agrees") | (pl.col(_ROW) == lead))
        .select(_ROW, _KEY)
        .filter(pl.col(_KEY).is_duplicated())
    )


def _components(
    labels: pl.Series, linked: pl.Series, edges: list[pl.DataFrame]
) -> tuple[pl.Series, pl.Series]:
    """(row, smallest label of its component) for the ``linked`` rows, the components
    those rows form when the rows of each ``edges`` frame sharing a ``_KEY`` are joined.

    Union by minimum with pointer jumping, vectorized (numpy): the rows are numbered in
    label order, so a row's label is the number of the smallest row it reaches; each round
    hooks every key's rows, and the trees they belonged to, onto the key's smallest row,
    then halves every path until nothing moves. A chain of records settles in a few rounds
    (the label propagation it replaces took a round of joins on the labels per link in
    the chain: 2.5 s for 928k records that each had one duplicate)."""
    import numpy as np

    order = labels.gather(linked).arg_sort()  # stable: equal labels keep row order
    rows = linked.gather(order).to_numpy()
    n = rows.size
    local = np.full(labels.len(), -1, dtype=np.int64)
    local[rows] = np.arange(n)
    groups = []
    for edge in edges:
        members = local[edge.get_column(_ROW).to_numpy()]
        keys = edge.get_column(_KEY).rank("dense").to_numpy().astype(np.int64) - 1
        groups.append((members, keys, int(keys.max()) + 1 if keys.size else 0))
    parent = np.arange(n)
    while True:  # labels only decrease: it settles
        before = parent.copy()
        for members, keys, count in groups:
            roots = parent[members]
            smallest = np.full(count, n, dtype=np.int64)
            np.minimum.at(smallest, keys, roots)
            np.minimum.at(parent, roots, smallest[keys])  # hook the trees
            np.minimum.at(parent, members, smallest[keys])
        while True:  # pointer jumping
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    named = labels.gather(pl.Series(rows)).gather(pl.Series(parent))
    by_row = np.argsort(rows)  # (Series.scatter wants its indices in order)
    return pl.Series(rows[by_row], dtype=pl.UInt32), named.gather(pl.Series(by_row))
