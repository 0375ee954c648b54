"""The event loop the CLI, the daemon and SyncRepository run on."""
import gc
import logging

from ingest.sync import new_event_loop


class ClientRequest:                      # the qualname aiohttp's body writer task has
    async def write_bytes(self, exc):
        raise exc


async def _other(exc):
    raise exc


def _orphan(loop, coro) -> None:
    """Run a task to its failure and drop it unretrieved, as aiohttp does."""
    task = loop.create_task(coro)
    loop.run_until_complete(loop.create_task(_sleep0()))
    assert task.done()
    del task
    gc.collect()


async def _sleep0():
    import asyncio
    for _ in range(3):
        await asyncio.sleep(0)


def test_orphaned_body_writer_is_not_a_traceback(caplog):
    loop = new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            _orphan(loop, ClientRequest().write_bytes(ConnectionResetError("Cannot write to closing transport")))
        assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text
        assert any("body writer" in r.getMessage() for r in caplog.records if r.name == "ingest")
    finally:
        loop.close()


def test_other_orphaned_errors_still_reported(caplog):
    loop = new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            _orphan(loop, _other(ConnectionResetError("not aiohttp's")))
            _orphan(loop, ClientRequest().write_bytes(ValueError("a bug, not a lost connection")))
        errors = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
        assert len(errors) == 2, caplog.text
        assert "never retrieved" in errors[0].getMessage()
    finally:
        loop.close()
