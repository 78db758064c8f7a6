"""Configuration, read in one place: the fast tier (no server)."""

import re
import textwrap
from pathlib import Path

import pytest

from tenantfleet import config, scaffold
from tenantfleet.errors import ConfigError


def test_the_state_directory_is_found_as_git_finds_dot_git(tmp_path: Path) -> None:
    deep = tmp_path / "app" / "src" / "pkg"
    deep.mkdir(parents=True)
    # none yet: here, unless a directory above the test's temp dir has one (then that one)
    above = [p / ".tenantfleet" for p in tmp_path.parents if (p / ".tenantfleet").is_dir()]
    assert config.state_dir(None, start=deep) == (above[0] if above else deep / ".tenantfleet")
    (tmp_path / "app" / ".tenantfleet").mkdir()
    assert config.state_dir(None, start=deep) == tmp_path / "app" / ".tenantfleet"
    assert config.state_dir("elsewhere", start=deep) == Path("elsewhere").absolute()


def test_a_tenant_environment_that_is_not_a_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TENANTFLEET_TENANT_ALEMBIC names no file"):
        config.load_settings({"TENANTFLEET_TENANT_ALEMBIC": str(tmp_path / "nope.ini")})


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_the_file_is_found_from_below_env_wins_and_each_value_says_where_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "envdir").mkdir()
    write(tmp_path / "envdir" / "alembic.ini", "[alembic]\n")
    write(
        tmp_path / "pyproject.toml",
        """
        [project]
        name = "app"

        [tool.tenantfleet]
        tenant_alembic = "envdir/alembic.ini"
        lock_timeout = 2
        tenants = "discover"
        database_url = "env:APP_DB"
        """,
    )
    below = tmp_path / "src" / "app"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    env = {"APP_DB": "postgresql://app:s3cret@db/app", "TENANTFLEET_LOCK_TIMEOUT": "7"}
    settings = config.load_settings(env)
    assert settings.tenant_alembic == tmp_path / "envdir" / "alembic.ini"  # from the file's folder
    assert (settings.lock_timeout, settings.tenants) == (7.0, "discover")
    assert settings.database_url == "postgresql://app:s3cret@db/app"
    shown = {key: (value, source) for key, value, source in config.describe(settings)}
    assert shown["lock_timeout"] == ("7.0", "env TENANTFLEET_LOCK_TIMEOUT")
    assert shown["tenants"][1] == f"{tmp_path / 'pyproject.toml'} [tool.tenantfleet]"
    assert shown["database_url"][0] == "postgresql://app:***@db/app"
    assert shown["stall_resume"] == ("30.0", "default")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[tool.tenantfleet]\nlock_timout = 3\n", "unknown key 'lock_timout'"),
        (
            "[tool.tenantfleet]\ndatabase_url = 'env:NOPE_NOT_SET'\n",
            "NOPE_NOT_SET, which is not set",
        ),
        ("[tool.tenantfleet]\ntenants = 'query'\n", "needs tenants_query"),
        ("[tool.tenantfleet]\ntenants = 'everyone'\n", "must be one of registry, query, discover"),
        ("[tool.tenantfleet]\nmax_retries = 'many'\n", "must be a whole number"),
        ("[tool.tenantfleet\n", "cannot read"),
    ],
)
def test_a_wrong_config_file_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path / "pyproject.toml", body)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load_settings({}, config=path)


def test_init_writes_the_section_and_an_environment_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "app"\n')
    written = scaffold.init(tmp_path, tmp_path / "tenant_env")
    assert {p.name for p in written} >= {"pyproject.toml", "alembic.ini", "env.py", "versions"}
    monkeypatch.chdir(tmp_path)
    settings = config.load_settings({})
    assert settings.tenant_alembic == tmp_path / "tenant_env" / "alembic.ini"
    assert "run_tenant_migrations" in (tmp_path / "tenant_env" / "env.py").read_text()
    with pytest.raises(ConfigError, match="already has a \\[tool.tenantfleet\\] table"):
        scaffold.init(tmp_path)


def test_tenant_databases_are_keys_with_urls_from_the_environment_and_caps(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "tenantfleet.toml",
        """
        max_concurrent = 4
        [databases.shard1]
        url = "env:SHARD1_URL"
        max_concurrent = 1
        [databases.shard2]
        url = "postgresql://app:s3cret@db2/app"
        [databases.default]
        max_concurrent = 6
        """,
    )
    env = {"SHARD1_URL": "postgresql://app:hidden@db1/app"}
    settings = config.load_settings(env, config=path)
    assert settings.database("shard1").url == env["SHARD1_URL"]
    assert (settings.cap("shard1"), settings.cap("shard2"), settings.cap(None)) == (1, 4, 6)
    shown = {key: value for key, value, _ in config.describe(settings)}
    assert shown["databases.shard2.url"] == "postgresql://app:***@db2/app"
    assert shown["databases.shard1.max_concurrent"] == "1"
    assert "hidden" not in str(config.describe(settings))
    with pytest.raises(ConfigError, match="no database 'shard9'.*configured: shard1, shard2"):
        settings.database("shard9")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[databases."Bad-Key"]\nurl = "postgresql://x/y"', "a database key is 1-31 characters"),
        ("[databases.s1]\nmax_concurrent = 2", "needs a url"),
        ('[databases.s1]\nurl = "postgresql://x/y"\nmax_concurrent = 0', "at least 1"),
        ('[databases.s1]\nurl = "postgresql://x/y"\nweight = 2', "unknown key 'weight'"),
        ('[databases.default]\nurl = "postgresql://x/y"', "may only set max_concurrent"),
        ('[databases.s1]\nurl = "env:NOT_SET_ANYWHERE"', "NOT_SET_ANYWHERE, which is not set"),
        ("databases = 3", "must be a table of tables"),
    ],
)
def test_a_bad_database_table_is_one_clear_error(tmp_path: Path, table: str, message: str) -> None:
    path = write(tmp_path / "tenantfleet.toml", table + "\n")
    with pytest.raises(ConfigError, match=message):
        config.load_settings({}, config=path)
