"""What each rule kind and each evidence key means, in words a privacy officer reads.

Verdicts carry evidence as ``{key: count}`` (policies/rules.py, policies/difference.py,
the record-level export in policies/gate.py). The report shows every key with its label
and a one-line explanation from here; ``tests/test_report.py`` fails when a rule kind in
:data:`policies.rules.RULE_KINDS`, or an evidence key a rule reports, has no entry, so a
new rule cannot ship without one (docs/policy-rules.md describes the rules themselves).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Term:
    label: str
    explanation: str


@dataclass(frozen=True)
class KindEntry:
    """A rule kind: its plain name, what its funnel step removes, its evidence terms."""

    label: str
    removes: str  # the funnel step's label for a filter kind ("" for destination kinds)
    terms: dict[str, Term]


_CANDIDATES = Term("People selected", "people the segment selected, before any rule")
_EXCLUDED = Term(
    "Matched by this rule",
    "people this rule applies to, counted on their own; someone an earlier rule already "
    "removed is counted here too",
)
_REMOVED = Term(
    "Removed at this step",
    "people this rule took out of the audience that no earlier rule had removed: the "
    "funnel step (a warn-only rule removes nobody)",
)
_MEMBERS = Term("People to release", "people the release to this destination would carry")
_PHI = Term("PHI-derived", "1 when the segment reads health information, else 0")

GLOSSARY: dict[str, KindEntry] = {
    "consent": KindEntry(
        "Consent and opt-outs",
        "No marketing consent or opted out",
        {
            "candidates": _CANDIDATES,
            "no_opt_in": Term("No marketing opt-in", "never opted in to marketing"),
            "do_not_contact": Term("Do not contact", "asked not to be contacted"),
            "deceased": Term("Deceased", "recorded as deceased"),
            "ad_personalization_denied": Term(
                "Declined personalized ads", "said no to ad personalization (platform consent)"
            ),
            "duplicate_of_opt_out": Term(
                "Duplicate of an opt-out",
                "another CRM record of the person (the same email or phone, name and ZIP, or "
                "name, city and state) opted out",
            ),
            "excluded": _EXCLUDED,
            "removed": _REMOVED,
        },
    ),
    "suppression": KindEntry(
        "Suppression lists",
        "On a suppression list",
        {
            "candidates": _CANDIDATES,
            "lists": Term("Lists applied", "suppression lists read for this build"),
            "list_entries": Term("List entries", "entries across those lists"),
            "excluded": _EXCLUDED,
            "removed": _REMOVED,
        },
    ),
    "minors": KindEntry(
        "Minors",
        "Under age or age unknown",
        {
            "candidates": _CANDIDATES,
            "under_age": Term("Under the minimum age", "younger than the pack's minimum age"),
            "unknown_age": Term("Age unknown", "no birth date, so nobody can show they are adults"),
            "excluded": _EXCLUDED,
            "removed": _REMOVED,
        },
    ),
    "phi_authorization": KindEntry(
        "HIPAA marketing authorization",
        "No valid HIPAA authorization",
        {
            "candidates": _CANDIDATES,
            "phi_derived": _PHI,
            "lacking_authorization": Term(
                "Without authorization",
                "no signed HIPAA marketing authorization in force on the build day",
            ),
            "excluded": _EXCLUDED,
            "removed": _REMOVED,
        },
    ),
    "sensitive_destination": KindEntry(
        "Health-restricted destinations",
        "",
        {
            "phi_derived": _PHI,
            "applies": Term(
                "Destination restricted",
                "1 when this destination's platform forbids health-based customer lists",
            ),
        },
    ),
    "opaque_name": KindEntry(
        "Opaque audience name",
        "",
        {
            "words_checked": Term(
                "Segment words checked", "words of the segment that must not appear in the name"
            ),
            "words_found": Term("Words found", "segment words the platform name would reveal"),
        },
    ),
    "min_size": KindEntry(
        "Minimum audience size",
        "",
        {
            "members": _MEMBERS,
            "pack_k": Term("Pack minimum", "the smallest audience the policy pack allows (k)"),
            "platform_minimum": Term(
                "Platform minimum", "the smallest list the platform accepts (0: none)"
            ),
            "destination_minimum": Term(
                "Destination minimum", "a stricter minimum set for this destination (0: none)"
            ),
            "threshold": Term("Minimum applied", "the largest of the three minimums"),
            "no_identifier": Term(
                "Not counted: no identifier",
                "people the platform cannot match (Meta: no e-mail, phone, or first and last "
                "name with a ZIP code, birth date or city and state; a file: none in any "
                "layout it carries): left out of the count and the release",
            ),
            "google_no_identifier": Term(
                "Not counted: no identifier",
                "people Google cannot match (no e-mail, phone or full address): left out of "
                "the count and the upload",
            ),
            "google_consent_not_granted": Term(
                "Not counted: consent not granted",
                "people in the EEA, UK or Switzerland (or of unknown country) without both "
                "Google consent signals GRANTED: Google may not use them, left out",
            ),
        },
    ),
    "difference": KindEntry(
        "Difference protection",
        "",
        {
            "members": _MEMBERS,
            "k_diff": Term(
                "Smallest safe change",
                "two audiences on one account must differ by 0 or at least this many people",
            ),
            "earlier_releases_compared": Term(
                "Live audiences compared",
                "the newest release of each audience on the same account, this one's previous "
                "version and other projects' audiences included",
            ),
            "other_projects_audiences_compared": Term(
                "Other projects' audiences compared",
                "live audiences other projects (another salt, the same CRM or not) hold on the "
                "account, compared through hashed e-mail, phone and name",
            ),
            "other_projects_audiences_in_patterns": Term(
                "Other projects' audiences in the patterns",
                "of the audiences on the account, those other projects hold: their people "
                "joined with this project's through the hashed identifiers both send",
            ),
            "audiences_in_patterns_without_links": Term(
                "Audiences without link keys",
                "this project's audiences released before their people's link keys were "
                "kept: their people are not joined with other projects' (released again, "
                "they are)",
            ),
            "live_audiences": Term(
                "Audiences on the account",
                "live audiences of the account after this release, this one included",
            ),
            "membership_patterns": Term(
                "Membership patterns",
                "groups of people by which of the account's audiences they are in",
            ),
            "small_patterns": Term(
                "Groups too small",
                "patterns this release changes that would hold 1 to k_diff-1 people: "
                "combining audiences would single them out",
            ),
            "collisions": Term(
                "Unsafe differences", "earlier releases this one differs from by too few people"
            ),
            "held_comparisons": Term(
                "Small changes held back",
                "comparisons with the previous version where the change is held until it is "
                "large enough",
            ),
            "holds": Term(
                "People held back", "adds or removes the sync postpones until they reach k_diff"
            ),
            "exempt_removals": Term(
                "Removals that need no protection",
                "people the rules removed (opt-outs, suppression, …) who leave an audience "
                "already sent: removing them discloses nothing new",
            ),
        },
    ),
    "k_anonymity": KindEntry(
        "Record-level export anonymity",
        "",
        {
            "k": Term("Required k", "each released row must look like at least k-1 others"),
            "k_achieved": Term("k achieved", "the smallest group of look-alike rows released"),
            "l_achieved": Term(
                "l achieved", "the fewest distinct sensitive values in any group of rows"
            ),
            "rows_in": Term("Rows before anonymization", "one per person eligible"),
            "rows_out": Term("Rows released", "rows in the export file"),
            "suppressed": Term("Rows withheld", "rows left out so that the rest are anonymous"),
            "classes": Term("Groups of look-alike rows", "equivalence classes in the export"),
            "nodes_evaluated": Term(
                "Generalizations tried", "generalization levels the search evaluated"
            ),
            "nodes_total": Term("Generalizations possible", "size of the search lattice"),
        },
    ),
    "approval": KindEntry("Compliance approval", "", {}),
}

GLOSSARY.update(
    {
        "health_data_consent": KindEntry(
            "Consent for health data",
            "No consent for health data",
            {
                "candidates": _CANDIDATES,
                "health_derived": Term(
                    "Health-derived",
                    "1 when the segment reads or infers health (PHI or health-inferring "
                    "columns or event types), else 0",
                ),
                "lacking_consent": Term(
                    "Without consent",
                    "no recorded consent of the kind this rule requires (to share health "
                    "data, or explicit consent to health marketing), or consent withdrawn",
                ),
                "excluded": _EXCLUDED,
                "removed": _REMOVED,
            },
        ),
        "health_geofence": KindEntry(
            "Location targeting near health facilities",
            "Location-based segment",
            {
                "candidates": _CANDIDATES,
                "location_fields": Term(
                    "Location-based conditions",
                    "segment fields named like geofence, distance, near, radius or proximity",
                ),
                "excluded": _EXCLUDED,
                "removed": _REMOVED,
            },
        ),
        "ad_consent_signals": KindEntry(
            "Ad consent signals",
            "Ad consent not granted",
            {
                "candidates": _CANDIDATES,
                "ad_user_data_not_granted": Term(
                    "Ad user data not granted",
                    "consent to send their data to the ad platform is denied or not recorded",
                ),
                "ad_personalization_not_granted": Term(
                    "Ad personalization not granted",
                    "consent to personalized ads is denied or not recorded",
                ),
                "excluded": _EXCLUDED,
                "removed": _REMOVED,
            },
        ),
        "sale_authorization": KindEntry(
            "Authorization to sell health data",
            "No authorization to sell",
            {
                "candidates": _CANDIDATES,
                "sale_destinations": Term(
                    "Sale destinations",
                    "destinations of this release whose transfer is a sale (basis = "
                    '"sale", or an account a sale destination uploads to); the rule '
                    "removes people from these only",
                ),
                "health_derived": Term(
                    "Health-derived",
                    "1 when the segment reads or infers health (PHI or health-inferring "
                    "columns or event types), else 0",
                ),
                "lacking_authorization": Term(
                    "Without authorization to sell",
                    "no signed authorization to sell in force on the release day: none "
                    "recorded, signed later, revoked, expired, or signed more than a year ago",
                ),
                "excluded": _EXCLUDED,
                "removed": _REMOVED,
            },
        ),
        "sensitive_pi_opt_out": KindEntry(
            "Sensitive data and sharing opt-outs",
            "Limited sensitive data or opted out of sharing",
            {
                "candidates": _CANDIDATES,
                "limit_sensitive_pi": Term(
                    "Limit use of sensitive data",
                    "asked to limit the use of their sensitive personal information",
                ),
                "opt_out_of_sharing": Term(
                    "Opted out of sharing",
                    "opted out of sale or sharing, or sent a Global Privacy Control signal",
                ),
                "excluded": _EXCLUDED,
                "removed": _REMOVED,
            },
        ),
    }
)


def _jurisdiction_terms() -> dict[str, Term]:
    """Evidence a jurisdiction pack's rule adds, per jurisdiction it applies to."""
    from audiences.crm.jurisdiction import KNOWN, evidence_suffix

    terms: dict[str, Term] = {}
    for code in KNOWN:
        key = evidence_suffix(code)
        terms[f"in_{key}"] = Term(f"In {code}", f"people selected whose jurisdiction is {code}")
        terms[f"excluded_{key}"] = Term(
            f"Matched in {code}", f"people of {code} this rule applies to and matched"
        )
    terms["in_unknown"] = Term(
        "Jurisdiction unknown",
        "people whose state or country could not be determined: every jurisdiction pack in "
        "force applies to them (the strictest treatment)",
    )
    terms["excluded_unknown"] = Term(
        "Matched, jurisdiction unknown", "people of unknown jurisdiction this rule matched"
    )
    terms["linked_crm_records"] = Term(
        "Held out by a linked CRM record",
        "selected records held out because another CRM record — anywhere in the CRM, "
        "even one the segment did not select — shares their email, phone or name and "
        "postal code and carries the request this rule honours (either record in the "
        "rule's jurisdictions, or of unknown jurisdiction)",
    )
    terms["linked_records"] = Term(
        "Other records of the same people",
        "CRM records of the same person as a record this rule excludes (a shared email, "
        "phone, or name and ZIP): "
        "the request or the missing consent is the person's, so these records go too "
        "(counted in the figures above)",
    )
    terms["out_of_jurisdiction"] = Term(
        "Outside the jurisdiction", "people selected this jurisdiction rule does not apply to"
    )
    return terms


# Any filter rule of a jurisdiction pack reports its evidence per jurisdiction.
for _kind in (
    "consent",
    "suppression",
    "minors",
    "phi_authorization",
    "health_data_consent",
    "health_geofence",
    "ad_consent_signals",
    "sale_authorization",
    "sensitive_pi_opt_out",
):
    GLOSSARY[_kind].terms.update(_jurisdiction_terms())

# The report's "By jurisdiction" section: what each jurisdiction is called, and its columns.
JURISDICTION_NAMES: dict[str, str] = {
    "US-WA": "Washington",
    "US-CA": "California",
    "US-NV": "Nevada",
    "US-CT": "Connecticut",
    "EEA": "European Economic Area",
    "UK": "United Kingdom",
    "unknown": "Jurisdiction unknown",
}
JURISDICTION_TERMS: dict[str, Term] = {
    "jurisdiction": Term(
        "Jurisdiction",
        "where a person lives, from the normalized state and country (or the "
        "[policy] jurisdiction_column override); it decides which jurisdiction packs apply",
    ),
    "people": Term(
        "People selected there",
        "people the segment selected whose jurisdiction this is, before any rule",
    ),
    "pack": Term(
        "Pack",
        "the jurisdiction pack the rule comes from; the base pack applies to everyone",
    ),
    "matched": Term(
        "Matched by this rule",
        "people of this jurisdiction the rule excludes, counted on their own (someone an "
        "earlier rule already removed is counted here too)",
    ),
    "unknown": Term(
        "Jurisdiction unknown",
        "people whose state or country could not be determined: every jurisdiction pack in "
        "force applies to them (the strictest treatment)",
    ),
}


def jurisdiction_label(code: str) -> str:
    """``Washington (US-WA)``; a code with no name here reads as itself."""
    name = JURISDICTION_NAMES.get(code)
    if code == "unknown":
        return name or code
    return f"{name} ({code})" if name else code


#: Kinds of verdicts the gate makes that are not pack rule kinds.
GATE_KINDS = frozenset({"k_anonymity", "approval"})


def kind_label(kind: str) -> str:
    entry = GLOSSARY.get(kind)
    return entry.label if entry else kind.replace("_", " ").capitalize()


def term(kind: str, key: str) -> Term:
    """The term for one evidence key; an unknown one reads as its own words (the test
    suite makes sure none is unknown)."""
    entry = GLOSSARY.get(kind)
    found = entry.terms.get(key) if entry else None
    return found or Term(key.replace("_", " ").capitalize(), "")


def ordered(kind: str, evidence: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """Evidence in the glossary's order (the order a person reads it in), unknown keys last."""
    entry = GLOSSARY.get(kind)
    order = {key: i for i, key in enumerate(entry.terms)} if entry else {}
    return sorted(evidence.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


__all__ = [
    "GATE_KINDS",
    "GLOSSARY",
    "JURISDICTION_NAMES",
    "JURISDICTION_TERMS",
    "KindEntry",
    "Term",
    "jurisdiction_label",
    "kind_label",
    "ordered",
    "term",
]
