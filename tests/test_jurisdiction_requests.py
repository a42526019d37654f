"""A request a jurisdiction rule honours holds for the whole person, CRM-wide (issue #23).

A GPC or "limit use" flag, or a withdrawn consent to share, on a CRM record the
segment's filters dropped (an older duplicate with another ZIP or tag) still holds out
every selected record linked to it one hop: a shared email, phone, or name + postal code
(docs/policy-rules.md, "Requests hold CRM-wide"). Either record in the rule's
jurisdiction suffices. The index of flagged records is kept in the state folder, keyed on
the flags of the packs in force.

Real files: the CRM is a Parquet file, read through the pipeline's own source loader,
candidate selection and state-folder index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from test_gate import (  # noqa: F401  (project: the fixture; _stopped_clock: AS_OF's clock)
    AS_OF,
    _stopped_clock,
    make_config,
    project,
    run,
    segment,
    verdict,
)
from test_jurisdictions import CONSENT, IDENTITY, crowd, released

from audiences.crm.sources import load_sources
from audiences.pipeline import optout_index
from audiences.pipeline.removals import current_rows
from audiences.pipeline.select import collect_candidates
from policies.gate import RemovalInput, forced_removals
from policies.pack import load_pack

__all__ = ["project"]

SPRING = segment("name: spring\ndestinations: [meta]\nwhere:\n  list_tag: {eq: spring}\n")
SPRING_DIABETES = segment(
    "name: spring-diabetes\ndestinations: [meta]\nwhere:\n  list_tag: {eq: spring}\n"
    "  diagnosis_codes: {contains: E11.9}\n"
)
SALT = b"requests-test-salt-0000000000000"


def config(root: Path, packs: list[str], **consent: Any) -> Any:
    return make_config(
        root,
        identity=IDENTITY,
        consent={**CONSENT, **consent},
        sources={"contacts": {"path": "contacts.parquet"}},
        policy={"packs": packs},
    )


def twin(of: pl.DataFrame, row: int, start: int, by: str, **columns: Any) -> pl.DataFrame:
    """Another CRM record of the person on ``row`` of ``of`` (sharing their ``by``: email
    or phone), outside the segment (tag "fall", another ZIP)."""
    base = {"list_tag": "fall", "zip": "94105", **columns}
    return crowd(1, start=start, **base).with_columns(pl.lit(of[by][row]).alias(by))


def write(root: Path, *frames: pl.DataFrame) -> pl.DataFrame:
    crm = pl.concat(frames, how="diagonal_relaxed")
    crm.write_parquet(root / "contacts.parquet")
    return crm


def build(
    project: dict[str, Any], seg: Any, packs: list[str], consent: Any = None, **kw: Any
) -> Any:
    """Select through the pipeline (a fresh load: a new process), then run the gate."""
    cfg = config(project["root"], packs, **(consent or {}))
    sources = load_sources(cfg)
    cand = collect_candidates(cfg, seg, sources, AS_OF, SALT, pack=load_pack(cfg))
    outcome = run(project, seg, cand, ["meta"], config=cfg, **kw)
    return outcome, cand, optout_index.store_for(cfg, sources, optout_index.REQUESTS_INDEX_NAME)


def ids(cand: pl.DataFrame, outcome: Any) -> set[str]:
    out = released(outcome)
    return set(cand.filter(pl.col("member_key").is_in(list(out))).get_column("contact_id"))


def spring(n: int, **columns: Any) -> pl.DataFrame:
    return crowd(n, list_tag="spring", **columns)


def test_a_gpc_flag_on_a_record_outside_the_segment_holds_out_the_person(project):
    state = ["CA", "CA", "NY", "NY", "CA"] + ["CA"] * 145
    crm = spring(150, state=state)
    write(
        project["root"],
        crm,
        twin(crm, 0, 5000, "email", state="CA", gpc=True),  # CA both: held out
        twin(crm, 1, 5001, "phone", state="NY", limit=True),  # the candidate is in CA
        twin(crm, 2, 5002, "email", state="CA", gpc=True),  # the flagged record is in CA
        twin(crm, 3, 5003, "email", state="NY", gpc=True),  # neither in CA: kept
        # shares only a ZIP (and a state) with record 4: another person
        crowd(1, start=5004, list_tag="fall", zip=crm["zip"][4], state="CA", gpc=True),
    )
    outcome, cand, _ = build(project, SPRING, ["baseline", "ccpa-sensitive"])
    held = {f"C{i:09d}" for i in (0, 1, 2)}
    assert ids(cand, outcome) == set(cand["contact_id"]) - held
    v = verdict(outcome, "ccpa-opt-outs")
    assert v.evidence["linked_crm_records"] == 3 and v.evidence["excluded"] == 3
    assert v.evidence["removed"] == 3
    # the report carries the figure, with its glossary entry
    entry = next(e for e in outcome.report["verdicts"] if e["id"] == "ccpa-opt-outs")
    assert entry["evidence"]["linked_crm_records"] == 3


def test_a_withdrawn_consent_to_share_outside_the_segment_holds_out_the_person(project):
    crm = spring(150, state="WA")
    write(
        project["root"],
        crm,
        twin(crm, 0, 6000, "email", state="WA", share="withdrawn"),  # held out
        twin(crm, 1, 6001, "phone", state="WA", share="denied"),  # held out
        twin(crm, 2, 6002, "email", state="WA", share=None),  # no answer is no request
    )
    packs = ["hipaa-marketing", "wa-mhmda"]
    outcome, cand, _ = build(project, SPRING_DIABETES, packs)
    assert ids(cand, outcome) == set(cand["contact_id"]) - {"C000000000", "C000000001"}
    assert verdict(outcome, "mhmda-consent-to-share").evidence["linked_crm_records"] == 2
    # a segment that reaches no health data needs no consent to share: nobody held out
    outcome, cand, _ = build(project, SPRING, packs)
    assert len(released(outcome)) == 150
    assert verdict(outcome, "mhmda-consent-to-share").evidence["linked_crm_records"] == 0


def test_attack_adding_a_pack_never_reuses_an_index_of_other_flags(project):
    # The attack: the first build (Washington only) leaves an index of the records with
    # a withdrawn consent to share; with ccpa-sensitive added the next build must not
    # read that index as "nobody linked has a request" — it is keyed on the flags.
    crm = spring(150, state="CA")
    write(project["root"], crm, twin(crm, 0, 7000, "email", state="CA", gpc=True))
    first, cand, store = build(project, SPRING_DIABETES, ["hipaa-marketing", "wa-mhmda"])
    assert store.computed == 1 and store.path.exists()
    assert "C000000000" in ids(cand, first)  # no pack honours GPC yet
    packs = ["hipaa-marketing", "wa-mhmda", "ccpa-sensitive"]
    second, cand, store = build(project, SPRING_DIABETES, packs)
    assert store.computed == 1  # recomputed for the new flags (a fresh store)
    assert "C000000000" not in ids(cand, second)
    assert verdict(second, "ccpa-opt-outs").evidence["linked_crm_records"] == 1
    # and the same packs again read the stored index (computed nothing)
    third, cand, store = build(project, SPRING_DIABETES, packs)
    assert store.computed == 0 and "C000000000" not in ids(cand, third)


def test_a_gpc_flag_appearing_after_a_release_is_a_forced_removal_on_the_next_sync(project):
    crm = spring(150, state="CA")
    old = twin(crm, 7, 8000, "email", state="CA", gpc=False)
    write(project["root"], crm, old)
    packs = ["baseline", "ccpa-sensitive"]
    first, cand, _ = build(project, SPRING, packs, keep=True)
    assert len(released(first)) == 150
    # the person sends GPC; the CRM records it on their older record only
    write(project["root"], crm, old.with_columns(pl.lit(True).alias("gpc")))
    cfg = config(project["root"], packs)
    sources = load_sources(cfg)
    pack = load_pack(cfg)
    keys = first.releases["meta"].members.get_column("member_key")
    current = current_rows(cfg, sources, keys, AS_OF, SALT, link_opt_outs=True, pack=pack)
    removal = forced_removals(
        RemovalInput(
            "b-gpc-later",
            SPRING,
            cfg,
            pack,
            current,
            {"meta": first.releases["meta"].members},
            AS_OF,
            project["state_dir"],
        )
    )
    person = cand.filter(pl.col("contact_id") == "C000000007").get_column("member_key")
    assert removal.releases["meta"].members.get_column("member_key").to_list() == person.to_list()


def test_attack_remapping_a_flag_column_never_reuses_the_index_of_the_old_one(project):
    # Same packs, same rule ids: only the column the GPC flag is read from changes (a
    # column that never says yes, then the real one). The index is keyed on the flags'
    # expressions, not on their names: the stale index (nobody flagged) is not reused.
    crm = spring(150, state="CA", quiet=False)
    write(project["root"], crm, twin(crm, 0, 7100, "email", state="CA", gpc=True, quiet=False))
    packs = ["baseline", "ccpa-sensitive"]
    quiet = {"opt_out_of_sharing": "quiet"}
    first, cand, store = build(project, SPRING, packs, consent=quiet)
    assert "C000000000" in ids(cand, first) and store.computed == 1
    second, cand, store = build(project, SPRING, packs)
    assert store.computed == 1 and "C000000000" not in ids(cand, second)


def test_a_sale_authorization_revoked_on_another_record_keeps_the_person_off_a_sale(project):
    # The attack: the person revoked their authorization to sell; the CRM recorded it on
    # an older duplicate (another tag, another ZIP) the segment does not select, while the
    # selected record still shows the authorization it signed first. Selling to the
    # broker on the strength of that record would outlive the revocation.
    import datetime as dt

    from test_jurisdictions import DESTINATIONS, SALE_CONSENT

    signed, before, after = dt.date(2025, 1, 1), dt.date(2025, 5, 1), dt.date(2025, 6, 2)
    crm = spring(150, state="WA", sold_on=signed, sale_expires=None, sale_revoked=None)
    write(
        project["root"],
        crm,
        twin(crm, 0, 9000, "email", state="WA", sold_on=signed, sale_revoked=before),
        # the candidate is in Washington: either record in scope suffices
        twin(crm, 1, 9001, "phone", state="NY", sold_on=signed, sale_revoked=before),
        # revoked only after the release day: the authorization is still in force today
        twin(crm, 2, 9002, "email", state="WA", sold_on=signed, sale_revoked=after),
    )
    cfg = make_config(
        project["root"],
        identity=IDENTITY,
        consent=SALE_CONSENT,
        sources={"contacts": {"path": "contacts.parquet"}},
        destinations=DESTINATIONS,
        policy={"packs": ["hipaa-marketing", "wa-mhmda"]},
    )
    cand = collect_candidates(
        cfg, SPRING_DIABETES, load_sources(cfg), AS_OF, SALT, pack=load_pack(cfg)
    )
    outcome = run(project, SPRING_DIABETES, cand, ["meta", "broker"], config=cfg)
    assert not outcome.blocked, outcome.block_reasons
    everyone = set(cand["contact_id"])
    assert len(everyone) == 150
    sold = set(
        cand.filter(pl.col("member_key").is_in(list(released(outcome, "broker"))))["contact_id"]
    )
    assert sold == everyone - {"C000000000", "C000000001"}
    # the share destination of the same release still carries them (consent to share)
    assert ids(cand, outcome) == everyone
    v = verdict(outcome, "mhmda-sale-authorization")
    assert v.evidence["linked_crm_records"] == 2 and v.evidence["excluded"] == 2
    # a segment that reaches no health data is no sale of health data: nobody held out
    outcome = run(
        project,
        SPRING,
        collect_candidates(cfg, SPRING, load_sources(cfg), AS_OF, SALT, pack=load_pack(cfg)),
        ["broker"],
        config=cfg,
    )
    assert len(released(outcome, "broker")) == 150


def test_current_rows_are_the_keys_records_in_crm_order_once_each(project):
    """The removal path's CRM rows (a semi join since it left ``is_in``): the records of
    the given people, in the CRM's order, each once however often its key is given; a key
    nobody has, and a null key, match no record."""
    crm = spring(40)
    write(project["root"], crm)
    cfg = config(project["root"], ["baseline"])
    sources = load_sources(cfg)
    everyone = collect_candidates(cfg, SPRING, sources, AS_OF, SALT, link_opt_outs=False)
    keys_of = dict(everyone.select("contact_id", "member_key").iter_rows())
    chosen = ["C000000031", "C000000002", "C000000017", "C000000002"]
    keys = pl.Series(
        "anything",
        [keys_of[c] for c in chosen] + [12345, None],
        dtype=pl.UInt64,
    )
    current = current_rows(cfg, sources, keys, AS_OF, SALT, link_opt_outs=False)
    assert current.get_column("contact_id").to_list() == ["C000000002", "C000000017", "C000000031"]
    assert current.get_column("member_key").to_list() == [
        keys_of[c] for c in ("C000000002", "C000000017", "C000000031")
    ]
