"""Settings: yaml < RAGLOOP_* env < overrides, strict keys, errors that name the field, config_hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragloop.tasks.settings import ChunkingConfig, ConfigError, Settings, load_settings


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_settings_defaults_without_any_config(tmp_path):
    s = load_settings()
    assert s == Settings()
    assert s.chunking.strategy == "markdown"
    assert s.chunking.max_tokens is None


def test_load_settings_reads_ragloop_yaml_in_cwd(tmp_path):
    write_yaml(tmp_path / "ragloop.yaml", "chunking:\n  max_tokens: 100\n  overlap_tokens: 8\n")
    s = load_settings()
    assert s.chunking.max_tokens == 100
    assert s.chunking.overlap_tokens == 8
    assert s.chunking.strategy == "markdown"  # unset keys keep their defaults


def test_load_settings_reads_file_named_by_ragloop_config_env(tmp_path, monkeypatch):
    cfg = write_yaml(tmp_path / "elsewhere.yaml", "lake: /somewhere/lake\n")
    monkeypatch.setenv("RAGLOOP_CONFIG", str(cfg))
    assert load_settings().lake == "/somewhere/lake"


@pytest.mark.parametrize(
    ("env", "overrides", "expected"),
    [
        ({}, None, 100),  # yaml only
        ({"RAGLOOP_CHUNKING__MAX_TOKENS": "200"}, None, 200),  # env beats yaml
        ({"RAGLOOP_CHUNKING__MAX_TOKENS": "200"}, {"chunking": {"max_tokens": 50}}, 50),  # flags beat env
        ({}, {"chunking": {"max_tokens": 60}}, 60),  # flags beat yaml
    ],
)
def test_load_settings_precedence_yaml_env_overrides(tmp_path, monkeypatch, env, overrides, expected):
    write_yaml(tmp_path / "ragloop.yaml", "chunking:\n  max_tokens: 100\n  overlap_tokens: 10\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings(overrides=overrides)
    assert s.chunking.max_tokens == expected
    assert s.chunking.overlap_tokens == 10  # sibling keys from yaml survive the nested merge


def test_load_settings_override_none_means_not_given(tmp_path):
    write_yaml(tmp_path / "ragloop.yaml", "lake: from-yaml\n")
    assert load_settings(overrides={"lake": None}).lake == "from-yaml"


def test_load_settings_env_json_list(monkeypatch):
    monkeypatch.setenv("RAGLOOP_INGEST__SOURCES", '["a", "b"]')
    assert load_settings().ingest.sources == ["a", "b"]


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("chunking:\n  max_tokenz: 100\n", "chunking.max_tokenz"),
        ("lakes: x\n", "lakes"),
        ("ingest:\n  sources: [a]\n  follow_links: true\n", "ingest.follow_links"),
    ],
)
def test_load_settings_unknown_yaml_key_is_named(tmp_path, yaml_text, key):
    write_yaml(tmp_path / "ragloop.yaml", yaml_text)
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("RAGLOOP_CHUNKING__MAX_TOKEN", "chunking.max_token"),
        ("RAGLOOP_FOO", "foo"),
        ("RAGLOOP_EMBEDDING__MODLE", "embedding.modle"),
    ],
)
def test_load_settings_unknown_env_var_is_named(monkeypatch, name, key):
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"RAGLOOP_CHUNKING__MAX_TOKENS": "abc"}, r"chunking\.max_tokens"),
        ({"RAGLOOP_CHUNKING__MAX_TOKENS": "-5"}, r"chunking\.max_tokens"),
        ({"RAGLOOP_CHUNKING__STRATEGY": "semantic"}, r"chunking\.strategy"),
        ({"RAGLOOP_INGEST__INCLUDE_HIDDEN": "maybe"}, r"ingest\.include_hidden"),
        ({"RAGLOOP_INDEX__DOCS_PER_BATCH": "0"}, r"index\.docs_per_batch"),
    ],
)
def test_load_settings_bad_env_value_names_dotted_field(monkeypatch, env, field):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=field):
        load_settings()


def test_load_settings_bad_yaml_value_names_field_and_value(tmp_path):
    write_yaml(tmp_path / "ragloop.yaml", "chunking:\n  max_tokens: lots\n")
    with pytest.raises(ConfigError, match=r"chunking\.max_tokens: .*\(got 'lots'\)"):
        load_settings()


def test_load_settings_bad_override_value_names_field():
    with pytest.raises(ConfigError, match=r"embedding\.batch_size"):
        load_settings(overrides={"embedding": {"batch_size": 0}})


def test_load_settings_bad_env_list_value_is_config_error(monkeypatch):
    monkeypatch.setenv("RAGLOOP_INGEST__SOURCES", "datasets/x")
    with pytest.raises(ConfigError, match=r"ingest\.sources"):
        load_settings()


@pytest.mark.parametrize("how", ["argument", "env"])
def test_load_settings_explicit_missing_config_file_errors(tmp_path, monkeypatch, how):
    missing = tmp_path / "nope.yaml"
    if how == "env":
        monkeypatch.setenv("RAGLOOP_CONFIG", str(missing))
        with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
            load_settings()
    else:
        with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
            load_settings(str(missing))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("chunking: [\n", "not valid YAML"),
        ("chunking:\n  max_tokens: 1\n\tbad: tab\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping"),
    ],
)
def test_load_settings_invalid_yaml_errors(tmp_path, text, message):
    cfg = write_yaml(tmp_path / "broken.yaml", text)
    with pytest.raises(ConfigError, match=rf"broken\.yaml.*{message}"):
        load_settings(str(cfg))


def test_load_settings_empty_yaml_is_defaults(tmp_path):
    cfg = write_yaml(tmp_path / "empty.yaml", "")
    assert load_settings(str(cfg)) == Settings()


@pytest.mark.parametrize(("max_tokens", "overlap"), [(32, 32), (32, 40), (10, 32)])
def test_chunking_config_overlap_not_below_max_tokens_rejected(max_tokens, overlap):
    with pytest.raises(ValueError, match="overlap_tokens must be smaller than max_tokens"):
        ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)
    with pytest.raises(ConfigError, match=r"chunking: .*overlap_tokens must be smaller than max_tokens"):
        load_settings(overrides={"chunking": {"max_tokens": max_tokens, "overlap_tokens": overlap}})


def test_chunking_config_overlap_below_max_tokens_accepted():
    cfg = ChunkingConfig(max_tokens=33, overlap_tokens=32)
    assert (cfg.max_tokens, cfg.overlap_tokens) == (33, 32)


def test_settings_config_hash_stable_for_equal_settings(tmp_path, monkeypatch):
    a = load_settings(overrides={"lake": "L"})
    monkeypatch.setenv("RAGLOOP_LAKE", "L")
    b = load_settings()
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 64
    assert a.config_hash() == load_settings(overrides={"lake": "L"}).config_hash()


@pytest.mark.parametrize(
    "overrides",
    [
        {"lake": "other"},
        {"chunking": {"max_tokens": 200}},
        {"chunking": {"strategy": "none"}},
        {"chunking": {"overlap_tokens": 0}},
        {"embedding": {"model": "/models/other"}},
        {"ingest": {"sources": ["datasets/sample", "more"]}},
        {"index": {"fts": False}},
    ],
)
def test_settings_config_hash_changes_when_a_setting_changes(overrides):
    assert load_settings(overrides=overrides).config_hash() != load_settings().config_hash()


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(Exception, match="frozen"):
        s.chunking.max_tokens = 5  # type: ignore[misc]


# -- wrong values fail at load, naming the field (issue 17, kind 10) ----------------------------------
@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ('deployments:\n  nightly_cron: "0 25 * * *"\n', r"deployments: .*nightly_cron: not a valid cron expression '0 25 \* \* \*'"),
        ('deployments:\n  nightly_cron: "61 2 * * *"\n', r"nightly_cron: not a valid cron expression"),
        ('deployments:\n  nightly_cron: "0 2 * *"\n', r"nightly_cron: expected 5 cron fields"),
        ("ingest:\n  exclude: ['[z-a]']\n", r"ingest: .*exclude: bad glob '\[z-a\]'"),
        ("ingest:\n  markdown_dialect: gfm\n", r"ingest\.markdown_dialect"),
    ],
    ids=["hour-25", "minute-61", "four-fields", "bad-glob", "unknown-dialect"],
)
def test_wrong_values_fail_at_load_naming_the_field(tmp_path, yaml_text, match):
    (tmp_path / "ragloop.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_settings(str(tmp_path / "ragloop.yaml"))


def test_valid_cron_passes():
    assert load_settings(overrides={"deployments": {"nightly_cron": "30 3 * * 1-5"}}).deployments.nightly_cron == "30 3 * * 1-5"


@pytest.mark.parametrize("runner, field", [
    ({"kind": "spark"}, "runner.kind"),
    ({"kind": "dask", "workers": 0}, "runner.workers"),
    ({"kind": "dask", "address": "localhost:8786"}, "runner.address"),
    ({"address": "tcp://10.0.0.5:8786"}, "runner: "),  # an address with the local runner: a mistake, said so
    ({"kind": "dask", "threads": 2}, "runner.threads: unknown key"),
])
def test_a_bad_runner_names_its_field(runner, field):
    with pytest.raises(ConfigError, match=field):
        load_settings(overrides={"runner": runner})


def test_the_runner_is_local_by_default_and_not_part_of_the_config_hash():
    local = load_settings()
    dask = load_settings(overrides={"runner": {"kind": "dask", "address": "tcp://10.0.0.5:8786"}})
    assert local.runner.kind == "local" and dask.runner.workers == 2
    assert dask.config_hash() == local.config_hash(), "where the work runs does not change its results"


# -- ANN settings (issue 22) ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"eval": {"ann": {"ef": 0}}}, r"eval\.ann\.ef: Input should be greater than or equal to 1"),
    ({"eval": {"ann": {"refine_factor": 0}}}, r"eval\.ann\.refine_factor: Input should be greater than or equal to 1"),
    ({"eval": {"ann": {"nprobes": -2}}}, r"eval\.ann\.nprobes: Input should be greater than 0"),
    ({"eval": {"ann": {"ef": "wide"}}}, r"eval\.ann\.ef: Input should be a valid integer"),
    ({"eval": {"ann": {"nprobe": 4}}}, r"eval\.ann\.nprobe: unknown key"),
    ({"index": {"ann": {"type": "diskann"}}}, r"index\.ann\.type: Input should be 'hnsw_sq' or 'ivf_pq'"),
    ({"index": {"ann": {"m": 2}}}, r"index\.ann\.m: Input should be greater than or equal to 4"),
    ({"index": {"ann": {"num_partitions": 0}}}, r"index\.ann\.num_partitions: Input should be greater than 0"),
    ({"index": {"ann": {"type": "ivf_pq", "m": 16}}}, r"index\.ann: .*m: not a parameter of type 'ivf_pq'"),
    ({"index": {"ann": {"num_sub_vectors": 48}}}, r"index\.ann: .*num_sub_vectors: not a parameter of type 'hnsw_sq'"),
])
def test_a_bad_ann_setting_names_its_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_settings(overrides=overrides)


def test_ann_settings_from_env_and_their_defaults(monkeypatch):
    monkeypatch.setenv("RAGLOOP_EVAL__ANN__REFINE_FACTOR", "10")
    monkeypatch.setenv("RAGLOOP_INDEX__ANN__TYPE", "ivf_pq")
    s = load_settings()
    assert (s.eval.ann.ef, s.eval.ann.refine_factor, s.eval.ann.nprobes) == (100, 10, None)
    assert s.index.ann.build_params() == {"type": "ivf_pq", "num_partitions": None, "num_sub_vectors": None}
    assert Settings().index.ann.build_params() == {"type": "hnsw_sq", "num_partitions": None, "m": 20, "ef_construction": 300}


def test_load_settings_env_null_unsets_an_optional_value(tmp_path, monkeypatch):
    """`null` in a RAGLOOP_* variable is YAML's null, as in the file: an optional setting can be unset."""
    write_yaml(tmp_path / "ragloop.yaml", "eval:\n  ann: {refine_factor: 4}\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().eval.ann.refine_factor == 4
    monkeypatch.setenv("RAGLOOP_EVAL__ANN__REFINE_FACTOR", "null")
    assert load_settings().eval.ann.refine_factor is None
    monkeypatch.setenv("RAGLOOP_EVAL__K", "null")  # not optional: still an error naming the field
    with pytest.raises(ConfigError, match="eval.k"):
        load_settings()
