"""The command line's --redis: every process of the CLI shares the account's limits."""

from __future__ import annotations

import pytest
import redis
from clitools import clean_env, run

from nanobanana.fleet import RedisGovernor
from nanobanana.testing import Simulator


def test_redis_option_shares_admission_through_redis(redis_server):
    with Simulator(concurrency_limit=2) as sim:
        result = run("--redis", redis_server.url, "generate", "a banana", sim=sim)
        assert result.code == 0, result.stderr
        prefix = RedisGovernor(redis_server.url).key_prefix(
            api_key=sim.api_key, base_url=sim.base_url
        )
    peek = redis.Redis.from_url(redis_server.url)
    try:
        assert peek.exists(prefix + "seq")  # it stood in the fleet's queue
    finally:
        peek.close()


def test_the_environment_variable_is_the_default_of_redis(redis_server):
    with Simulator() as sim:
        env = clean_env(NANOBANANA_REDIS_URL=redis_server.url)
        assert run("credits", sim=sim, env=env).code == 0
        prefix = RedisGovernor(redis_server.url).key_prefix(
            api_key=sim.api_key, base_url=sim.base_url
        )
    peek = redis.Redis.from_url(redis_server.url)
    try:
        assert peek.exists(prefix + "seq")
    finally:
        peek.close()


@pytest.mark.parametrize(
    ("url", "got"),
    [("http://x", "not a http:// one"), ("localhost:6379", "this one has no scheme")],
)
def test_a_redis_option_that_is_not_a_redis_url_is_a_usage_error_naming_it(url, got):
    result = run("--redis", url, "--simulate", "credits")
    assert result.code == 2
    # The option and the schemes it takes, not the library's words for governor=.
    assert "--redis takes a redis://, rediss:// or unix:// URL" in result.stderr
    assert got in result.stderr
    assert "governor" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_redis_url_is_reported_without_its_password():
    result = run("--redis", "http://:hunter2pw@x/0", "--simulate", "credits")
    assert result.code == 2
    assert "hunter2pw" not in result.stdout + result.stderr
