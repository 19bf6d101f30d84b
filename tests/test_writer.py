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


def test_unordered_work_does_not_split_a_batch_of_puts():
    """An exploring read queued between two entry writes runs after them, which go out in one
    batch; work in submission order still ends a batch."""
    sent = []
    writer = BackgroundWriter(lambda tasks: sent.append(("puts", len(tasks))), lambda: None,
                              linger_s=5.0)
    writer.submit(task())
    writer.submit_unordered(lambda: sent.append(("unordered", 0)))
    writer.submit(task())
    writer.submit(lambda: sent.append(("ordered", 0)))
    writer.submit(task())
    assert writer.drain(10)
    assert sent == [("puts", 2), ("unordered", 0), ("ordered", 0), ("puts", 1)]
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
