"""The switch interval a Repository holds while it is open (ingest.gil)."""
import asyncio
import sys

import pytest

from ingest import Repository, gil


@pytest.fixture
def host_interval():
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_lower_and_release_give_the_host_its_interval_back(host_interval):
    gil.lower(0.0005)
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    gil.lower(0.001)                  # a second holder never raises it
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.0005)
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(host_interval)
    with pytest.raises(RuntimeError):
        gil.release()


def test_an_interval_the_host_set_meanwhile_is_kept(host_interval):
    gil.lower(0.0005)
    sys.setswitchinterval(0.002)
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.002)


def test_a_lower_host_interval_is_left_alone(host_interval):
    sys.setswitchinterval(0.0001)
    gil.lower(0.0005)
    assert sys.getswitchinterval() == pytest.approx(0.0001)
    gil.release()
    assert sys.getswitchinterval() == pytest.approx(0.0001)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_a_bad_interval_is_refused(bad):
    with pytest.raises(ValueError):
        gil.lower(bad)


def test_an_open_repository_holds_the_lower_interval(tmp_path, host_interval):
    async def go():
        a = await Repository.open(tmp_path / "s")
        b = await Repository.open(tmp_path / "s")
        try:
            assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
            await a.close()
            assert sys.getswitchinterval() == pytest.approx(gil.SWITCH_INTERVAL)
        finally:
            await b.close()
        assert sys.getswitchinterval() == pytest.approx(host_interval)
        await b.close()                       # a second close gives nothing back twice
        assert sys.getswitchinterval() == pytest.approx(host_interval)
        c = await Repository.open(tmp_path / "s", switch_interval=None)
        assert sys.getswitchinterval() == pytest.approx(host_interval)
        await c.close()
    asyncio.run(go())
