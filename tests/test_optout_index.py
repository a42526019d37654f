"""The opt-out index kept in the state folder (audiences.pipeline.optout_index).

Computed once per export and reused by later builds; recomputed when the data or the
identity / consent mapping changes; never trusted when damaged or forged (a marketer who
edits it to drop opt-outs gets them back, with a warning); and free of raw identifiers.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, SEED

import audiences.crm.linkage as linkage
import audiences.pipeline.build as build_module
from audiences.core.config import ProjectConfig, load_config
from audiences.crm.sources import load_sources
from audiences.pipeline import optout_index
from audiences.pipeline.select import flag_opt_out_duplicates
from policies.rules import DUPLICATE_OF_OPT_OUT as FLAG

ROWS = 3000


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from audiences.demo.sample import write

    out = tmp_path_factory.mktemp("optout-crm")
    write(out, ROWS, seed=SEED, as_of=AS_OF, formats=("parquet",))
    return out


@pytest.fixture
def project(tmp_path: Path, sample: Path) -> Path:
    from audiences.pipeline.project import init_project

    root = tmp_path / "project"
    init_project(root)
    data = root / "data"
    data.mkdir(exist_ok=True)
    for name in ("contacts.parquet", "events.parquet"):
        (data / name).write_bytes((sample / name).read_bytes())
    return root


def config_of(root: Path) -> ProjectConfig:
    return load_config(root / "audiences.toml")


def index_file(root: Path) -> Path:
    return config_of(root).state_dir / optout_index.INDEX_NAME


def flags(root: Path) -> tuple[set[str], optout_index.StateIndexStore]:
    """Ids flagged with every contact a candidate, through the state-folder index (a fresh
    load of the sources: a new process as far as the cache is concerned)."""
    config = config_of(root)
    sources = load_sources(config)
    frame = sources.contacts.collect()
    out = flag_opt_out_duplicates(config, sources, frame)
    store = optout_index.store_for(config, sources)
    return set(out.filter(FLAG).get_column("contact_id")), store


def reference(root: Path) -> set[str]:
    """The same flags computed in memory, without any stored index."""
    config = config_of(root)
    contacts = pl.read_parquet(root / "data" / "contacts.parquet")
    out = linkage.flag_duplicates_of_opt_outs(contacts, contacts.lazy(), config, FLAG)
    return set(out.filter(FLAG).get_column("contact_id"))


def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the opt-out index was computed again")

    monkeypatch.setattr(linkage, "compute_opt_out_index", refuse)


def test_second_build_reuses_the_index_of_the_same_export(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = reference(project)
    assert len(expected) > 10  # the sample has duplicates of opt-outs
    first, store = flags(project)
    assert first == expected and store.computed == 1
    path = index_file(project)
    stamp = path.stat().st_mtime_ns
    assert path.stat().st_mode & 0o777 == 0o600
    no_compute(monkeypatch)  # the second "process" must not compute it
    second, store = flags(project)
    assert second == expected and store.computed == 0
    assert path.stat().st_mtime_ns == stamp


def test_changed_data_invalidates_the_index(project: Path) -> None:
    flags(project)
    data = project / "data" / "contacts.parquet"
    contacts = pl.read_parquet(data)
    # a flagged candidate's opted-out twin opts back in, an untouched person opts out
    flagged = sorted(reference(project))
    opted = contacts.filter(pl.col("marketing_opt_in").not_()).get_column("contact_id")
    changed = contacts.with_columns(
        pl.when(pl.col("contact_id").is_in(opted.head(200).implode()))
        .then(True)
        .otherwise(pl.col("marketing_opt_in"))
        .alias("marketing_opt_in")
    )
    changed.write_parquet(data)
    expected = reference(project)
    assert expected != set(flagged)
    after, store = flags(project)
    assert after == expected and store.computed == 1


def test_changed_consent_mapping_invalidates_the_index(project: Path) -> None:
    before, _ = flags(project)
    toml = project / "audiences.toml"
    text = toml.read_text()
    assert re.search(r'(?m)^do_not_contact = "do_not_contact"$', text)
    toml.write_text(re.sub(r'(?m)^do_not_contact = "do_not_contact"$', "", text))
    expected = reference(project)
    assert expected != before  # fewer opt-outs: fewer duplicates of them
    after, store = flags(project)
    assert after == expected and store.computed == 1


def test_changed_identity_mapping_invalidates_the_index(project: Path) -> None:
    flags(project)
    toml = project / "audiences.toml"
    text = toml.read_text()
    assert re.search(r'(?m)^phone = "phone"$', text)
    toml.write_text(re.sub(r'(?m)^phone = "phone"$', "", text))
    after, store = flags(project)
    assert after == reference(project) and store.computed == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated
        lambda data: data[:-40] + bytes(b ^ 0xFF for b in data[-40:]),  # bits flipped
        lambda data: b"",  # emptied
        lambda data: b"PAR1" + data[4:],  # not ours
    ],
    ids=["truncated", "flipped", "empty", "magic"],
)
def test_a_damaged_index_is_recomputed_with_a_warning(
    project: Path, damage: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    expected, _ = flags(project)
    path = index_file(project)
    path.write_bytes(damage(path.read_bytes()))
    with caplog.at_level(logging.WARNING):
        again, store = flags(project)
    assert again == expected and store.computed == 1
    assert "opt-out index" in caplog.text and "recomputed" in caplog.text
    assert flags(project)[1].computed == 0  # and rewritten whole


def forged(path: Path, index: pl.DataFrame, key: bytes) -> None:
    """The stored index replaced by ``index`` with the header kept and a MAC under ``key``
    (what someone without the project secret can do)."""
    import io

    import blake3

    data = path.read_bytes()
    magic = optout_index._MAGIC
    body = data[len(magic) + 32 :]
    (size,) = struct.unpack(">I", body[:4])
    buffer = io.BytesIO()
    index.write_parquet(buffer)
    new_body = body[: 4 + size] + buffer.getvalue()
    path.write_bytes(magic + blake3.blake3(new_body, key=key).digest() + new_body)


def test_attack_an_index_edited_to_drop_opt_outs_is_not_used(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    expected, store = flags(project)
    path = index_file(project)
    stored = store.load(linkage.index_identity(config_of(project), _schema(project)))
    assert stored is not None and stored.height > 100
    # the marketer empties the index (no opt-outs: nobody flagged) and signs it with a key
    # of their own, then with a MAC under a key derived the way the project's is, but
    # from a guessed secret
    for key in (bytes(32), optout_index._derived(b"guess" * 8, b"file mac")):
        forged(path, stored.clear(), key)
        with caplog.at_level(logging.WARNING):
            again, store = flags(project)
        assert again == expected and store.computed == 1
        assert "fails its authentication" in caplog.text
        caplog.clear()


def test_attack_an_authentic_index_of_other_data_or_mapping_is_not_used(project: Path) -> None:
    """Replaying the project's own index made under a narrower consent mapping (fewer
    opt-outs) over the current one: it names another mapping, so it is recomputed."""
    toml = project / "audiences.toml"
    text = toml.read_text()
    toml.write_text(re.sub(r'(?m)^do_not_contact = "do_not_contact"$', "", text))
    flags(project)
    narrow = index_file(project).read_bytes()
    toml.write_text(text)
    expected, _ = flags(project)
    index_file(project).write_bytes(narrow)
    again, store = flags(project)
    assert again == expected == reference(project) and store.computed == 1


def _schema(root: Path) -> pl.Schema:
    return load_sources(config_of(root)).contacts.collect_schema()


def raw_needles(contacts: pl.DataFrame) -> list[bytes]:
    """Every raw email and phone of the sample, and their obvious normalizations."""
    values: set[str] = set()
    for raw in contacts.get_column("email").drop_nulls().to_list():
        values.update({raw, raw.strip(), raw.strip().lower()})
    for raw in contacts.get_column("phone").drop_nulls().to_list():
        digits = re.sub(r"\D", "", raw)
        values.update({raw, raw.strip(), digits, digits[-10:]})
    for column in ("first_name", "last_name"):
        values.update(n.strip() for n in contacts.get_column(column).drop_nulls() if len(n) >= 7)
    return sorted(v.encode("utf-8") for v in values if len(v) >= 7)


def test_the_index_holds_no_raw_identifier(project: Path) -> None:
    flags(project)
    contacts = pl.read_parquet(project / "data" / "contacts.parquet")
    needles = raw_needles(contacts)
    assert len(needles) > 5000
    data = index_file(project).read_bytes()
    assert [n for n in needles if n in data] == []
    # nor the unkeyed coarse keys the in-memory index uses: they are rehashed with the
    # project's secret seeds
    config = config_of(project)
    plain = linkage.compute_opt_out_index(contacts.lazy(), config, linkage.UNKEYED)
    stored = optout_index.store_for(config, load_sources(config)).load(
        linkage.index_identity(config, contacts.collect_schema())
    )
    assert stored is not None and stored.height == plain.height
    keys = [c for c in plain.columns if plain.schema[c] == pl.UInt32 and c != linkage._POS]
    # email, phone, name + postal code, and name + city + state (of the opted-out records
    # with neither e-mail nor phone: far fewer)
    assert len(keys) == 4
    for column in keys:
        mine = stored.get_column(column).drop_nulls()
        shared = mine.is_in(plain.get_column(column).implode())
        # 32-bit keys: a few may coincide by chance (n^2 / 2^32 expected), never most
        assert mine.len() > (0 if column.endswith("name_place") else 1000)
        assert shared.sum() <= 3


def test_attack_rewritten_data_with_the_old_size_and_time_is_not_matched_to_the_old_index(
    project: Path,
) -> None:
    """The source digest is cached by size, modification time, ctime and inode: where a
    file system does not keep those honest, a rewritten export keeps its cached digest. The index must
    not: a newly opted-out record's duplicates would otherwise go through."""
    import os

    data = project / "data" / "contacts.parquet"
    contacts = pl.read_parquet(data)
    contacts.write_parquet(data, compression="uncompressed", statistics=False)
    before_flags, _ = flags(project)
    before = data.stat()
    digest = load_sources(config_of(project)).digest
    cache_path = config_of(project).state_dir / "digests.json"
    (old_digest,) = [
        v for k, v in json.loads(cache_path.read_text()).items() if k.startswith(f"{data}:")
    ]
    # two opted-in records of one mailbox, neither flagged: one of them now opts out
    mailbox = pl.col("email").str.strip_chars().str.to_lowercase()
    pairs = contacts.filter(
        pl.col("marketing_opt_in").fill_null(False)
        & ~pl.col("do_not_contact")
        & ~pl.col("deceased")
        & pl.col("email").is_not_null()
        & ~pl.col("contact_id").is_in(sorted(before_flags))
    ).filter(mailbox.is_duplicated())
    target = pairs.sort(mailbox, "contact_id").get_column("contact_id")[0]
    flip = pl.col("contact_id") == target
    changed = contacts.with_columns(
        pl.when(flip).then(False).otherwise(pl.col("marketing_opt_in")).alias("marketing_opt_in")
    )
    changed.write_parquet(data, compression="uncompressed", statistics=False)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (data.stat().st_size, data.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    # the digest cache sees the new ctime and inode; a file system that keeps neither honest
    # (some network mounts) would fool it: make it so by hand, the index must still see it
    assert load_sources(config_of(project)).digest != digest
    cache = json.loads(cache_path.read_text())
    (key,) = [k for k in cache if k.startswith(f"{data}:")]
    cache[key] = old_digest
    cache_path.write_text(json.dumps(cache))
    assert load_sources(config_of(project)).digest == digest  # the digest cache is fooled
    expected = reference(project)
    assert expected - before_flags  # the other record is now a duplicate of an opt-out
    after, store = flags(project)
    assert after == expected and store.computed == 1


_SERIALIZED_EXPRESSIONS = """
import polars as pl
from audiences.core.config import IdentityMapping
from audiences.crm.identifiers import canonical_expr, normalized_exprs
columns = ("email", "phone", "fn", "ln", "zip", "city", "state", "country", "sex")
identity = IdentityMapping.model_validate({
    "email": "email", "phone": "phone", "first_name": "fn", "last_name": "ln", "zip": "zip",
    "city": "city", "state": "state", "country": "country", "gender": "sex", "birth_date": "born"})
schema = {**{c: pl.String() for c in columns}, "born": pl.Date()}
for layout in ("meta", "google_ads"):
    for name, e in sorted(normalized_exprs(identity, layout, schema=schema).items()):
        print(layout, name, e.meta.serialize(format="json"))
for field in ("state", "country", "zip", "gender"):
    print(field, canonical_expr(identity, field, schema=schema).meta.serialize(format="json"))
"""


def test_the_expressions_an_index_identity_serializes_do_not_depend_on_the_hash_seed():
    """An index is found again by its identity, which serializes the flag expressions;
    a set iterated into an expression (the ISO country list did) gives each interpreter
    its own identity, and the index is recomputed on every build (the request index at
    1M: 27 s a build instead of a read)."""
    import os
    import subprocess
    import sys

    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _SERIALIZED_EXPRESSIONS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_candidates_come_back_in_one_chunk_per_column(project: Path) -> None:
    """The streaming scan leaves a chunk per morsel; every later step (gate, hashing,
    files) is faster over one contiguous chunk, so the candidates are rechunked once. A
    contacts file of many small row groups gives the scan many morsels."""
    from audiences.pipeline.select import collect_candidates, select_segments

    path = project / "data" / "contacts.parquet"
    contacts = pl.read_parquet(path)
    contacts.write_parquet(path, row_group_size=10)  # 300 row groups
    config = config_of(project)
    sources = load_sources(config)
    (segment,) = select_segments(config, ["flu-shot-reminder"])
    cand = collect_candidates(config, segment, sources, AS_OF, b"s" * 32)
    assert cand.height > 10  # more than one row group's worth of candidates
    assert cand.n_chunks("all") == [1] * cand.width
    assert cand.get_column("contact_id").is_in(contacts.get_column("contact_id").implode()).all()


def test_candidates_hold_their_own_strings_not_the_scans(project: Path) -> None:
    """A string longer than 12 bytes is a view into a shared buffer: candidates that kept
    the scan's buffers held the e-mail and phone bytes of every contact read (at 100M
    contacts most of a 14 GB peak). Their string columns are copied into buffers of their
    own: the bytes held are the views plus the candidates' own bytes."""
    from audiences.pipeline.select import collect_candidates, select_segments

    config = config_of(project)
    (segment,) = select_segments(config, ["flu-shot-reminder"])
    cand = collect_candidates(config, segment, load_sources(config), AS_OF, b"s" * 32)
    contacts = pl.read_parquet(project / "data" / "contacts.parquet")
    assert 0 < cand.height < contacts.height / 5  # a filter left most rows behind
    for column in ("email", "phone"):
        series = cand.get_column(column)
        held = series.to_arrow(compat_level=pl.CompatLevel.newest()).get_total_buffer_size()
        own = 16 * series.len() + int(series.str.len_bytes().sum())
        assert held <= 1.1 * own, (column, held, own)


def test_an_authentic_index_of_the_old_layout_is_recomputed_not_read(project: Path) -> None:
    """An index written before the keys were cut to 32 bits (64-bit keys), even one that
    passes authentication under this export's identity, is not guessed at: it is
    recomputed, and the flags are those of the data."""
    expected = reference(project)
    _, store = flags(project)
    config = config_of(project)
    identity = linkage.index_identity(config, _schema(project))
    current = store.load(identity)
    assert current is not None
    keys = [c for c in current.columns if current.schema[c] == pl.UInt32 and c != linkage._POS]
    old = current.with_columns(pl.col(c).cast(pl.UInt64) for c in keys).with_columns(
        pl.lit(None, pl.UInt64).alias(keys[0])  # and it would meet nobody by e-mail
    )
    store.save(identity, old)
    assert store.load(identity) is not None  # authentic, under this identity
    after, store = flags(project)
    assert after == expected and store.computed == 1
    reread = store.load(identity)
    assert reread is not None and reread.schema == current.schema


def test_a_build_keys_the_candidates_for_its_people_once(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate-of-opt-out flag keys every candidate for the links the gate's people
    follow and hands the keys to the gate (``select.candidate_keys``): a review, which
    runs the whole gate, keys each of those links once, and lets the keys go after it."""
    from audiences.compliance import workflow
    from audiences.pipeline.build import review
    from audiences.pipeline.select import CANDIDATE_KEYS

    keyed: list[str] = []
    real = linkage._coarse_keys

    def counted(frame: pl.DataFrame, links: Any) -> dict[str, pl.DataFrame]:
        keyed.extend(link.name for link in links)
        return real(frame, links)

    monkeypatch.setattr(linkage, "_coarse_keys", counted)
    held: list[object] = []
    real_gate = build_module._gate

    def gate(run: Any, *args: Any) -> Any:
        outcome = real_gate(run, *args)
        held.append(run.sources.cache.get(CANDIDATE_KEYS))
        return outcome

    monkeypatch.setattr(build_module, "_gate", gate)
    # (who may review is tests/test_approvals.py's matter; this one counts the keying)
    monkeypatch.setattr(workflow, "require_reviewer", lambda *_, **__: None)
    result = review(config_of(project), "flu-shot-reminder")
    assert result.status in ("reviewed", "blocked")
    assert sorted(n for n in keyed if n != "name_place") == ["email", "name_zip", "phone"]
    assert held == [None]  # the keys did not outlive the gate


def test_only_a_build_keeps_the_candidates_keys(project: Path) -> None:
    """The removal path flags the CRM rows of a live audience with no gate after it: it
    keeps no keys in the sources' cache (they would be held to the process's end)."""
    from audiences.pipeline.select import CANDIDATE_KEYS, candidate_keys

    config = config_of(project)
    sources = load_sources(config)
    frame = sources.contacts.collect()
    flag_opt_out_duplicates(config, sources, frame)
    assert CANDIDATE_KEYS not in sources.cache
    flag_opt_out_duplicates(config, sources, frame, keep_keys=True)
    assert candidate_keys(sources) and CANDIDATE_KEYS not in sources.cache
