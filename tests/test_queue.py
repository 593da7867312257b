"""How the worker's batches are read (service/queue.py Consumer.read_batch), on a real Redis:
synchronous posts first, riding with whatever queued posts are there, and never waiting for
more; queued posts alone wait for more, until a synchronous one comes."""

from __future__ import annotations

import threading
import uuid

import pytest

from service.queue import Consumer, Keys
from service.redisdb import connect

# far longer than any read takes: a read that returns before it did not wait it out
LONG_WAIT_MS = 10_000


@pytest.fixture
def queue(redis_url):
    client = connect(redis_url)
    keys = Keys(f"fgtest-{uuid.uuid4().hex[:10]}")
    consumer = Consumer(client, keys, "workers", "w1")
    consumer.ensure_group()
    yield client, keys, consumer
    for key in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(key)


def add(client, stream: str, post_id: str) -> None:
    client.xadd(stream, {"id": post_id, "post": '{"text": "hi"}', "t": "0"})


def read_in_thread(consumer: Consumer, size: int, max_wait_ms: int) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(consumer.read_batch(size, max_wait_ms, 500)))
    thread.start()
    return thread, out


def test_synchronous_posts_come_first_and_ride_with_the_queued_ones_there(queue):
    client, keys, consumer = queue
    for i in range(3):
        add(client, keys.posts, f"q{i}")
    add(client, keys.sync_posts, "s0")
    thread, batch = read_in_thread(consumer, 64, LONG_WAIT_MS)
    thread.join(LONG_WAIT_MS / 2000)
    assert not thread.is_alive(), "a batch with a synchronous post waited for more"
    assert [e.post_id for e in batch] == ["s0", "q0", "q1", "q2"]
    assert [e.stream for e in batch] == [keys.sync_posts] + [keys.posts] * 3


def test_synchronous_posts_fill_a_batch_before_queued_ones(queue):
    client, keys, consumer = queue
    for i in range(5):
        add(client, keys.sync_posts, f"s{i}")
        add(client, keys.posts, f"q{i}")
    batch = consumer.read_batch(4, 0)
    assert [e.post_id for e in batch] == ["s0", "s1", "s2", "s3"]
    batch = consumer.read_batch(4, 0)
    assert [e.post_id for e in batch] == ["s4", "q0", "q1", "q2"]


def test_queued_posts_wait_for_more_until_a_synchronous_one_comes(queue):
    client, keys, consumer = queue
    add(client, keys.posts, "q0")
    thread, batch = read_in_thread(consumer, 64, LONG_WAIT_MS)
    add(client, keys.posts, "q1")  # while it waits: taken into the batch
    add(client, keys.sync_posts, "s0")  # a caller waits: the batch goes now
    thread.join(LONG_WAIT_MS / 2000)
    assert not thread.is_alive(), "a synchronous post waited for the queued batch to fill"
    assert sorted(e.post_id for e in batch) == ["q0", "q1", "s0"]


def test_queued_posts_alone_are_read_after_the_wait(queue):
    client, keys, consumer = queue
    add(client, keys.posts, "q0")
    assert [e.post_id for e in consumer.read_batch(64, 30)] == ["q0"]
    assert consumer.read_batch(64, 30, first_block_ms=50) == []
