"""The Redis settings and flags: one URL, Sentinel (addresses + service) or a cluster node, and
WAIT's replica count; each bad mix is refused with the CLI's usage exit code (2) and a message
saying what to give instead, never a traceback. In-process: nothing is started or reached."""
from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import cli
from sidecar.config import Settings
from sidecar.stores.redisconn import RedisSpec, parse_sentinels, spec_from

POLICIES = str(Path(__file__).resolve().parents[1] / "policies")


def test_sentinel_addresses_parse_and_bad_ones_say_why() -> None:
    assert parse_sentinels("10.0.0.1:26379, s2:26380,[::1]:26381") == (
        ("10.0.0.1", 26379), ("s2", 26380), ("::1", 26381))
    for bad in ("s1", "s1:", ":26379", "s1:0", "s1:70000", "s1:26379,", "s1:abc"):
        with pytest.raises(ValueError, match="host:port"):
            parse_sentinels(bad)


def test_settings_build_the_spec_of_each_kind() -> None:
    assert spec_from(Settings()) is None
    url = spec_from(Settings.from_env({}, redis_url="redis://r:6379/0", redis_min_replicas=1))
    assert url == RedisSpec(url="redis://r:6379/0", timeout_s=1.0, min_replicas=1)
    env = {"CHATAUTHZ_REDIS_SENTINEL": "s1:26379,s2:26379", "CHATAUTHZ_REDIS_SERVICE": "main",
           "CHATAUTHZ_REDIS_TIMEOUT_S": "0.5"}
    sentinel = spec_from(Settings.from_env(env))
    assert sentinel == RedisSpec(sentinels=(("s1", 26379), ("s2", 26379)), service="main", timeout_s=0.5)
    assert sentinel.identity == "sentinel://s1:26379,s2:26379/main"
    cluster = spec_from(Settings.from_env({"CHATAUTHZ_REDIS_URL": "redis://n1:7000", "CHATAUTHZ_REDIS_CLUSTER": "yes"}))
    assert cluster is not None and cluster.cluster and "cluster" in cluster.describe()
    assert Settings.from_env(env).redis_enabled and not Settings().redis_enabled


@pytest.mark.parametrize(("values", "message"), [
    ({"redis_url": "redis://r", "redis_sentinel": "s:26379", "redis_service": "m"}, "give one of them"),
    ({"redis_sentinel": "s:26379"}, "needs redis_service"),
    ({"redis_service": "m"}, "needs redis_sentinel"),
    ({"redis_cluster": True}, "redis_cluster needs redis_url"),
    ({"redis_cluster": True, "redis_sentinel": "s:26379", "redis_service": "m"}, "redis_cluster needs redis_url"),
    ({"redis_min_replicas": 1}, "needs redis_url or redis_sentinel"),
    ({"redis_url": "redis://r", "redis_min_replicas": -1}, "0 or more"),
    ({"redis_url": "redis://r", "redis_prefix": ""}, "hash tag"),
    ({"redis_sentinel": "s", "redis_service": "m"}, "host:port"),
    ({"redis_url": "notaurl"}, "must start with redis://"),
    ({"redis_url": "redis://127.0.0.1:notaport"}, "is not a Redis URL: Port could not be cast"),
    ({"redis_url": "redis://127.0.0.1:99999/0"}, "is not a Redis URL: Port out of range"),
    ({"redis_url": "unix:///tmp/r.sock?db=x"}, "is not a Redis URL: Invalid value for 'db'"),
    # found by an outside attack: each started, on another app's database, on none, or nowhere
    ({"redis_url": "redis://"}, "names no host"),
    ({"redis_url": "unix://"}, "names no host"),
    ({"redis_url": "redis://127.0.0.1:6379/x"}, "the database must be a number 0 or more"),
    ({"redis_url": "redis://127.0.0.1:6379/-1"}, "the database must be a number 0 or more"),
    ({"max_staleness_s": float("nan")}, "max_staleness_s must be a number"),  # silently no bound, before
    ({"max_staleness_s": -1.0}, "max_staleness_s must be 0 or more"),  # every decision denied, before
    ({"max_staleness_s": 0.0}, "max_staleness_s must be more than 0"),
    ({"sync_interval_s": float("inf")}, "sync_interval_s must be a number"),
    ({"sync_interval_s": 0.0}, "sync_interval_s must be more than 0"),
    ({"revision_wait_s": -1.0}, "revision_wait_s must be 0 or more"),  # every float setting is a time or a share
    ({"redis_recovery_grace_s": -0.5}, "redis_recovery_grace_s must be 0 or more"),
    ({"policy_watch_s": -1.0}, "policy_watch_s must be 0 or more"),
    ({"decision_log": "/nonexistent/dir/decisions.log"}, "is not a folder this process may write in"),
    ({"redis_url": "redis://r", "redis_prefix": "{chatauthz}:members:"}, "hash tag"),
])
def test_bad_mixes_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env({}, **values)


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--redis-url", "redis://r", "--redis-sentinel", "s:26379", "--redis-service", "m"], "give one"),
    (["serve", "--redis-sentinel", "s:26379"], "needs redis_service"),
    (["serve", "--redis-cluster"], "redis_cluster needs redis_url"),
    (["serve", "--redis-min-replicas", "1"], "needs redis_url or redis_sentinel"),
    (["serve", "--redis-sentinel", "nope", "--redis-service", "m"], "host:port"),
    (["export", "--policies", POLICIES, "--redis-sentinel", "s:26379"], "needs redis_service"),
    (["authorize", "--uid", "u", "--action", "createGroup", "--policies", POLICIES, "--redis-service", "m"],
     "needs redis_sentinel"),
    (["import", "-", "--policies", POLICIES, "--redis-min-replicas", "1"], "needs redis_url or redis_sentinel"),
    (["serve", "--redis-url", "notaurl"], "must start with redis://"),  # a traceback in a worker, exit 1, before
    (["import", "-", "--policies", POLICIES, "--redis-url", "notaurl"], "must start with redis://"),
    # a traceback in every worker, then granian's crash loop and exit 1, before
    (["serve", "--redis-url", "redis://127.0.0.1:notaport"], "is not a Redis URL"),
    (["export", "--policies", POLICIES, "--redis-url", "redis://127.0.0.1:99999"], "is not a Redis URL"),
    (["serve", "--max-staleness", "nan"], "max_staleness_s must be a number"),
    (["serve", "--redis-url", "redis://127.0.0.1:6379/x"], "the database must be a number"),
    (["serve", "--decision-log", "/nonexistent/dir/decisions.log"], "is not a folder this process may write in"),
])
def test_the_cli_refuses_bad_mixes_with_exit_2_and_no_traceback(argv: list[str], message: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_url_and_sentinel_flags_exclude_each_other_in_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        cli.main(["export", "--redis-url", "redis://r", "--redis-sentinel", "s:26379", "--redis-service", "m"])
    assert ended.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_import_into_a_data_folder_that_cannot_be_one_is_exit_2_and_no_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by an outside attack: a FileNotFoundError / FileExistsError traceback, exit 1."""
    records = tmp_path / "ok.ndjson"
    records.write_text('{"user": "u1", "role": "support"}\n')
    (tmp_path / "afile").write_text("")
    for folder in ("/proc/nope", str(tmp_path / "afile")):
        assert cli.main(["import", str(records), "--policies", POLICIES, "--data-dir", folder]) == 2
        err = capsys.readouterr().err
        assert "cannot open the store" in err and "Traceback" not in err, err
