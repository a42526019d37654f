"""Policy packs: YAML files of rules a compliance officer can read, validated at load time.

A pack file::

    name: hipaa-marketing
    version: "1"
    description: ...
    extends: baseline            # optional: a built-in pack
    rules:
      - id: min-size
        rule: min_size           # the rule kind (see policies/rules.py)
        severity: block          # block | warn
        params: {k: 100, platform_minimums: {meta: 100, google_ads: 100}}
        rationale: why, in plain words
        source: where a compliance officer can check it

Built-in packs live in ``policies/packs/`` (package data). A project picks one with
``[policy] pack = "..."`` in ``audiences.toml``: a built-in name, or a YAML file in the
project's ``policies/`` folder that ``extends`` a built-in. In a pack that extends
another, an entry whose ``id`` the base already has overrides it (params are merged key
by key; severity, rationale and source replace the base's); a new ``id`` adds a rule and
must be complete. Rules can't be removed or change kind: a project can only tighten,
re-tune or (visibly, in every report) relax a rule to ``warn``.

The pack digest is SHA-256 of the canonical resolved pack (JSON, sorted keys): any change
to any rule, parameter, rationale or source changes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from audiences.core.errors import ConfigError
from policies.rules import REQUIRED_CONSENT, RULE_KINDS, SALE_ONLY, Params, Rule
from policies.suppression import SuppressionSource, sources_from

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig

Severity = Literal["block", "warn"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleEntry(_Model):
    """A rule as written in a pack file (partial when it overrides a base rule)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    rule: str | None = None
    severity: Severity | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    rationale: str | None = None
    source: str | None = None


class BudgetSettings(_Model):
    """The differential-privacy budget for numbers shown to marketers (see policies.privacy.ledger)."""

    epsilon_per_period: float = Field(gt=0, allow_inf_nan=False)
    delta_per_period: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    period: Literal["day", "week", "month", "quarter"] = "month"
    max_epsilon_per_query: float = Field(1.0, gt=0, allow_inf_nan=False)
    refresh_on_unchanged_data: bool = False
    build_summary_epsilon: float = Field(
        0.05,
        ge=0,
        allow_inf_nan=False,
        description="ε spent on the noisy member count of each build summary (0: none)",
    )

    @model_validator(mode="after")
    def _query_within_period(self) -> BudgetSettings:
        if self.max_epsilon_per_query > self.epsilon_per_period:
            raise ValueError(
                f"max_epsilon_per_query ({self.max_epsilon_per_query}) exceeds "
                f"epsilon_per_period ({self.epsilon_per_period}): lower it too"
            )
        return self


class PackFile(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str
    description: str = ""
    extends: str | None = None
    require_approval: bool | None = None
    budget: BudgetSettings | None = None
    # a jurisdiction pack: listed after the base in [policy] packs, its rules apply to
    # the people of these jurisdictions (US-WA, EEA, UK …) and of unknown jurisdiction
    jurisdictions: list[str] = Field(default_factory=list)
    rules: list[RuleEntry] = Field(default_factory=list)

    @field_validator("jurisdictions")
    @classmethod
    def _known_jurisdictions(cls, value: list[str]) -> list[str]:
        from audiences.crm.jurisdiction import KNOWN

        unknown = [code for code in value if code not in KNOWN]
        if unknown:
            raise ValueError(f"unknown jurisdiction(s) {unknown} (use US-WA, EEA, UK …)")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


@dataclass(frozen=True)
class Pack:
    """A resolved pack (inheritance applied), plus the suppression lists in force."""

    name: str
    version: str
    description: str
    extends: tuple[str, ...]  # the chain of built-in packs it extends, nearest first
    rules: tuple[Rule, ...]
    origin: str  # "builtin:<name>" or the file path (not part of the digest)
    suppression_lists: tuple[SuppressionSource, ...] = ()
    require_approval: bool = False
    budget: BudgetSettings = field(default_factory=lambda: BudgetSettings(epsilon_per_period=10.0))
    jurisdictions: tuple[str, ...] = ()  # a jurisdiction pack's (see PackFile)

    def canonical(self) -> str:
        body: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "extends": list(self.extends),
            "require_approval": self.require_approval,
            "budget": self.budget.model_dump(mode="json"),
            "rules": [r.to_dict() for r in self.rules],
        }
        if self.jurisdictions:
            body["jurisdictions"] = list(self.jurisdictions)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @cached_property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def of_kind(self, kind: str) -> list[Rule]:
        return [r for r in self.rules if r.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {**json.loads(self.canonical()), "digest": self.digest, "origin": self.origin}


# ---------------------------------------------------------------------------------------
# Loading


def builtin_names() -> list[str]:
    folder = resources.files("policies") / "packs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(text: str, where: str) -> PackFile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark is not None else where
        raise ConfigError("malformed YAML", "fix the syntax", where=at) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "a policy pack must be a mapping", "see docs/policy-rules.md", where=where
        )
    try:
        return PackFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        loc = _rule_location(loc, data)
        if err["type"] == "extra_forbidden":
            raise ConfigError(
                f"unknown key {loc!r}", "remove it or check the spelling", where=where
            ) from None
        if err["type"] == "missing":
            raise ConfigError(f"missing key {loc!r}", "add it", where=where) from None
        raise ConfigError(f"{loc}: {err['msg']}", "fix the value", where=where) from None


def _rule_location(loc: str, data: dict[str, Any]) -> str:
    """``rules.2.params`` -> ``rule 'min-size' params`` when the id is known."""
    parts = loc.split(".")
    if len(parts) >= 2 and parts[0] == "rules" and parts[1].isdigit():
        rules = data.get("rules") or []
        i = int(parts[1])
        if i < len(rules) and isinstance(rules[i], dict) and "id" in rules[i]:
            rest = ".".join(parts[2:])
            return f"rule {rules[i]['id']!r}" + (f" {rest}" if rest else "")
    return loc


def _builtin_text(name: str) -> str:
    return (resources.files("policies") / "packs" / f"{name}.yaml").read_text(encoding="utf-8")


def _validate_params(kind: str, params: dict[str, Any], rule_id: str, where: str) -> Params:
    model = RULE_KINDS[kind].params
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "params"
        if err["type"] == "missing":
            what = f"rule {rule_id!r} ({kind}) is missing parameter {key!r}"
            fix = f"add params.{key} (parameters of {kind}: {', '.join(model.model_fields)})"
        elif err["type"] == "extra_forbidden":
            what = f"rule {rule_id!r} ({kind}) has unknown parameter {key!r}"
            fix = f"parameters of {kind} are: {', '.join(model.model_fields)}"
        else:
            what = f"rule {rule_id!r} ({kind}) parameter {key!r}: {err['msg']}"
            fix = "fix the value (see docs/policy-rules.md)"
            if (kind == "min_size" and key == "k") or (kind == "difference" and key == "k_diff"):
                fix = f"set {key} to 2 or more (100 is the usual floor for ad platforms)"
        raise ConfigError(what, fix, where=where) from None


def _resolve(pack_file: PackFile, where: str, chain: tuple[str, ...]) -> Pack:
    base = _base_pack(pack_file, where, chain)
    merged, order = _merge_rules(base, pack_file.rules, where)
    rules = tuple(
        Rule(
            id=rid,
            kind=merged[rid]["rule"],
            severity=merged[rid]["severity"],
            params=_validate_params(merged[rid]["rule"], merged[rid]["params"], rid, where),
            rationale=merged[rid]["rationale"],
            source=merged[rid]["source"],
        )
        for rid in order
    )
    extends = () if base is None else (base.name, *base.extends)
    budget = _budget(pack_file, base, where)
    return Pack(
        name=pack_file.name,
        version=pack_file.version,
        description=pack_file.description,
        extends=extends,
        rules=rules,
        origin=where,
        require_approval=_require_approval(pack_file, base, where),
        budget=budget,
        jurisdictions=tuple(pack_file.jurisdictions or (base.jurisdictions if base else ())),
    )


def _base_pack(pack_file: PackFile, where: str, chain: tuple[str, ...]) -> Pack | None:
    """The resolved built-in pack ``pack_file`` extends, if any."""
    if pack_file.extends is None:
        return None
    names = builtin_names()
    if pack_file.extends not in names:
        raise ConfigError(
            f"extends unknown pack {pack_file.extends!r}",
            f"extend a built-in pack: {', '.join(names)}",
            where=where,
        )
    if pack_file.extends in chain:
        raise ConfigError(
            f"packs extend each other in a loop ({' -> '.join(chain)})",
            "break the loop",
            where=where,
        )
    return _resolve(
        _read(_builtin_text(pack_file.extends), f"builtin:{pack_file.extends}"),
        f"builtin:{pack_file.extends}",
        (*chain, pack_file.extends),
    )


def _merge_rules(
    base: Pack | None, entries: list[RuleEntry], where: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The base pack's rules with ``entries`` applied (rule id -> raw rule), in order:
    base rules first, then new rules in file order."""
    merged: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    if base is not None:
        for r in base.rules:
            merged[r.id] = {**r.to_dict(), "params": r.params.model_dump(mode="python")}
            order.append(r.id)
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ConfigError(
                f"rule {entry.id!r} appears twice", "merge the two entries", where=where
            )
        seen.add(entry.id)
        if entry.rule is not None and entry.rule not in RULE_KINDS:
            raise ConfigError(
                f"rule {entry.id!r} has unknown rule kind {entry.rule!r}",
                f"use one of: {', '.join(RULE_KINDS)}",
                where=where,
            )
        if entry.id in merged:
            _override_rule(merged[entry.id], entry, where)
            continue
        merged[entry.id] = _new_rule(entry, where)
        order.append(entry.id)
    return merged, order


def _override_rule(current: dict[str, Any], entry: RuleEntry, where: str) -> None:
    """Apply an entry to the base rule of its id: params merge key by key; severity,
    rationale and source replace the base's. The kind can't change."""
    if entry.rule is not None and entry.rule != current["rule"]:
        raise ConfigError(
            f"rule {entry.id!r} is a {current['rule']} rule in the base pack and can't "
            f"become {entry.rule}",
            "give the new rule its own id",
            where=where,
        )
    current["params"] = {**current["params"], **entry.params}
    for key in ("severity", "rationale", "source"):
        value = getattr(entry, key)
        if value is not None:
            current[key] = value


def _new_rule(entry: RuleEntry, where: str) -> dict[str, Any]:
    """A rule the base pack doesn't have: it must be complete."""
    missing = [k for k in ("rule", "rationale", "source") if getattr(entry, k) in (None, "")]
    if missing:
        raise ConfigError(
            f"new rule {entry.id!r} is missing {', '.join(missing)}",
            "a new rule needs its kind (`rule`), a rationale and a source; to change a base "
            "rule, use its id",
            where=where,
        )
    return {
        "id": entry.id,
        "rule": entry.rule,
        "severity": entry.severity or "block",
        "params": dict(entry.params),
        "rationale": entry.rationale,
        "source": entry.source,
    }


def _require_approval(pack_file: PackFile, base: Pack | None, where: str) -> bool:
    """The pack's own setting, else the base's; a pack can't turn off its base's."""
    require_approval = pack_file.require_approval
    if require_approval is None:
        return base.require_approval if base is not None else False
    if base is not None and base.require_approval and not require_approval:
        raise ConfigError(
            f"pack {pack_file.name!r} turns off require_approval, which {base.name!r} requires",
            "a project pack may tighten a built-in pack, not loosen this; remove the line",
            where=where,
        )
    return require_approval


_PERIODS = ("day", "week", "month", "quarter")  # shortest first: a shorter one renews sooner


def _budget(pack_file: PackFile, base: Pack | None, where: str) -> BudgetSettings:
    """The pack's privacy budget: the base's, with what the pack sets itself; a pack may
    tighten its base's budget, not loosen it. Previews and overlaps need no approval: a
    project pack that raised ε (any user who can edit ``policies/`` and ``audiences.toml``
    can write one) gave exact counts to whoever asked, with no officer in the loop."""
    own = pack_file.budget
    if base is None:
        return own or BudgetSettings(epsilon_per_period=10.0)
    if own is None:
        return base.budget
    ours = base.budget.model_dump() | own.model_dump(include=own.model_fields_set)
    try:
        merged = BudgetSettings.model_validate(ours)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"pack {pack_file.name!r} budget: {err['msg']}",
            "fix the budget (see docs/policy-rules.md)",
            where=where,
        ) from None
    was = base.budget
    looser = [
        name
        for name, loosened in (
            ("epsilon_per_period", merged.epsilon_per_period > was.epsilon_per_period),
            ("delta_per_period", merged.delta_per_period > was.delta_per_period),
            ("max_epsilon_per_query", merged.max_epsilon_per_query > was.max_epsilon_per_query),
            ("build_summary_epsilon", merged.build_summary_epsilon > was.build_summary_epsilon),
            ("period", _PERIODS.index(merged.period) < _PERIODS.index(was.period)),
            (
                "refresh_on_unchanged_data",
                merged.refresh_on_unchanged_data and not was.refresh_on_unchanged_data,
            ),
        )
        if loosened
    ]
    if looser:
        raise ConfigError(
            f"pack {pack_file.name!r} loosens the privacy budget of {base.name!r} "
            f"({', '.join(looser)})",
            "a pack may tighten its base's budget (less ε, a longer period), not loosen it; "
            "remove those settings",
            where=where,
        )
    return merged


def builtin_pack(name: str) -> Pack:
    names = builtin_names()
    if name not in names:
        raise ConfigError(f"no built-in policy pack {name!r}", f"use one of: {', '.join(names)}")
    where = f"builtin:{name}"
    return _resolve(_read(_builtin_text(name), where), where, (name,))


def pack_from_file(path: Path) -> Pack:
    """A project pack: it must extend a built-in pack."""
    where = str(path)
    if not path.is_file():
        raise ConfigError(
            f"policy pack file {path} does not exist",
            f"create it, or set [policy] pack to a built-in pack ({', '.join(builtin_names())})",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8", "save it as UTF-8", where=where) from None
    pack_file = _read(text, where)
    if pack_file.extends is None:
        raise ConfigError(
            "a project policy pack must extend a built-in pack",
            f"add `extends: {builtin_names()[0]}` (or another built-in pack)",
            where=where,
        )
    return _resolve(pack_file, where, ())


def _project_pack_path(config: ProjectConfig, spec: str) -> Path:
    folder = config.policies_dir.resolve()
    path = config.path(spec)
    if not path.exists() and (folder / spec).exists():
        path = folder / spec
    resolved = path.resolve()
    if folder not in resolved.parents:
        raise ConfigError(
            f"[policy] pack {spec!r} is neither a built-in pack ({', '.join(builtin_names())}) "
            f"nor a file in the project's policies/ folder",
            "put the pack in policies/<name>.yaml (compliance officers own that folder) and set "
            '[policy] pack = "policies/<name>.yaml"',
        )
    return resolved


def load_pack(config: ProjectConfig) -> Pack:
    """Resolve ``[policy] pack`` (or ``packs``: a base and jurisdiction packs), validate
    every rule and the suppression lists in force."""
    specs = config.policy.pack_specs
    pack = _combine(_pack_of(config, specs[0]), [_pack_of(config, s) for s in specs[1:]])
    _check_against_config(pack, config)
    lists = sources_from(
        ((s.path, s.column, s.kind) for s in config.policy.suppression),
        config.root,
        "audiences.toml [policy] suppression",
    )
    for rule in pack.of_kind("suppression"):
        lists += sources_from(
            ((s.path, s.column, s.kind) for s in rule.params.lists),  # type: ignore[attr-defined]
            config.root,
            f"{pack.origin} rule {rule.id!r}",
        )
    for source in lists:
        source.check()
    if lists and not pack.of_kind("suppression"):
        raise ConfigError(
            "suppression lists are configured but the policy pack has no suppression rule",
            "add a rule of kind `suppression` to the pack",
            where=pack.origin,
        )
    return Pack(
        name=pack.name,
        version=pack.version,
        description=pack.description,
        extends=pack.extends,
        rules=pack.rules,
        origin=pack.origin,
        suppression_lists=tuple(lists),
        require_approval=pack.require_approval,
        budget=pack.budget,
    )


def _pack_of(config: ProjectConfig, spec: str) -> Pack:
    if spec in builtin_names():
        return builtin_pack(spec)
    return pack_from_file(_project_pack_path(config, spec))


def _combine(base: Pack, extra: list[Pack]) -> Pack:
    """The base pack plus jurisdiction packs whose (filter) rules apply to the people of
    their jurisdictions only; min-size and difference stay the base's, on the whole release."""
    if base.jurisdictions:
        raise ConfigError(
            f"{base.name!r} is a jurisdiction pack ({', '.join(base.jurisdictions)}) and "
            "can't be the base",
            f'list it after a base pack: [policy] packs = ["hipaa-marketing", "{base.name}"]',
            where=base.origin,
        )
    rules = list(base.rules)
    for pack in extra:
        _check_jurisdiction_pack(pack, rules)
        rules += [replace(r, jurisdictions=pack.jurisdictions, pack=pack.name) for r in pack.rules]
    if not extra:
        return base
    return replace(
        base,
        name=" + ".join([base.name, *(p.name for p in extra)]),
        description=" ".join([base.description, *(p.description for p in extra)]),
        rules=tuple(rules),
        require_approval=base.require_approval or any(p.require_approval for p in extra),
    )


def _check_jurisdiction_pack(pack: Pack, rules: list[Rule]) -> None:
    if not pack.jurisdictions:
        raise ConfigError(
            f"pack {pack.name!r} is not a jurisdiction pack: only the first of [policy] packs "
            "applies to everyone",
            "put it first, or give it `jurisdictions:` (e.g. [US-WA])",
            where=pack.origin,
        )
    ids = {r.id for r in rules}
    for rule in pack.rules:
        if rule.scope != "filter":
            raise ConfigError(
                f"rule {rule.id!r} of jurisdiction pack {pack.name!r} is a {rule.kind} rule: "
                "destination rules (min size, difference …) apply to the whole release",
                "move it to the base pack",
                where=pack.origin,
            )
        if rule.id in ids:
            raise ConfigError(
                f"rule id {rule.id!r} of pack {pack.name!r} is already used by an earlier pack",
                "give the rule its own id",
                where=pack.origin,
            )
        ids.add(rule.id)


def _check_against_config(pack: Pack, config: ProjectConfig) -> None:
    for rule in pack.of_kind("consent"):
        if rule.params.require_opt_in and config.consent.marketing_opt_in is None:  # type: ignore[attr-defined]
            raise ConfigError(
                f"rule {rule.id!r} requires marketing opt-in but [consent] marketing_opt_in is "
                "not set in audiences.toml",
                "name the CRM column that records marketing opt-in in [consent] marketing_opt_in",
                where=pack.origin,
            )
    sells = any(spec.basis == "sale" for spec in config.destinations.values())
    for rule in pack.rules:
        reads = REQUIRED_CONSENT.get(rule.kind)
        if rule.kind in SALE_ONLY and not sells:
            continue  # judges sale-basis destinations only, and the project has none
        for key in reads(rule.params) if reads is not None else ():
            if getattr(config.consent, key) is None:
                raise ConfigError(
                    f"rule {rule.id!r} ({rule.kind}) reads [consent] {key}, which is not set in "
                    "audiences.toml",
                    f"name the CRM column that records it in [consent] {key}",
                    where=pack.origin,
                )
    for kind in ("consent", "suppression"):
        if not pack.of_kind(kind):
            raise ConfigError(
                f"the policy pack has no {kind} rule",
                f"packs must keep a {kind} rule (extend a built-in pack)",
                where=pack.origin,
            )


__all__ = [
    "Pack",
    "PackFile",
    "Rule",
    "RuleEntry",
    "builtin_names",
    "builtin_pack",
    "load_pack",
    "pack_from_file",
]
