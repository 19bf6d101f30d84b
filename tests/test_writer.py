"""The background writer: puts are coalesced while it lingers, and drain() never waits the
linger."""
import time

from peewee_kvcache.invalidation.writer import BackgroundWriter, PutTask


def task():
    return PutTask(1, lambda now_s: [], lambda: True, 0)


def test_puts_submitted_together_go_out_in_one_batch():
    batches = []
    writer = BackgroundWriter(lambda tasks: batches.append(len(tasks)), lambda: None,
                              linger_s=0.3)
    for _ in range(5):
        writer.submit(task())
    time.sleep(0.6)
    assert batches == [5]
    writer.close()


def test_drain_cuts_the_linger_short():
    batches = []
    writer = BackgroundWriter(lambda tasks: batches.append(len(tasks)), lambda: None,
                              linger_s=5.0)
    for _ in range(10):
        writer.submit(task())
        started = time.monotonic()
        assert writer.drain(10)
        assert time.monotonic() - started < 1.0
    assert sum(batches) == 10
    writer.close()


def test_drain_times_out_when_work_hangs():
    writer = BackgroundWriter(lambda tasks: time.sleep(2), lambda: None, linger_s=0.0)
    writer.submit(task())
    assert writer.drain(0.2) is False
    assert writer.drain(5) is True
    writer.close()
