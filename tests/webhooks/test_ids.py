"""The ids a webhook carries: the delivery id is the documented UUID 5, and the ``jti`` a fresh
random UUID 4 in every process, a forked one included."""

from __future__ import annotations

import hashlib
import os
import uuid

from cascade.webhooks.delivery import delivery_id
from cascade.webhooks.signing import random_uuid

#: the namespace delivery ids have always been made in (a receiver may have stored them)
NAMESPACE = uuid.UUID("5f0c7c1e-3c8a-4d55-9a53-0e6b2b1d7a42")


def test_delivery_id_is_uuid5_of_the_row_id_and_the_body_digest() -> None:
    """delivery_id(id, body) == uuid5(namespace, "id:sha256(body)"), with or without the
    digest handed in, for ids and bodies of every size."""
    for webhook_id in (1, 9, 1234, 2**40):
        for body in (b"", b"{}", b'{"status":"delivered"}' * 50):
            digest = hashlib.sha256(body).hexdigest()
            expected = str(uuid.uuid5(NAMESPACE, f"{webhook_id}:{digest}"))
            assert delivery_id(webhook_id, body) == expected
            assert delivery_id(webhook_id, body, digest) == expected


def test_random_uuid_is_a_fresh_version_4_uuid_each_time() -> None:
    """Each jti parses as a version 4 RFC 4122 UUID written as str(UUID) writes it, and none
    repeats across several refills of the random buffer."""
    ids = [random_uuid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    """A process forked with a half-used random buffer (serve forks its children) does not
    hand out the ids its parent hands out next."""
    random_uuid()  # the buffer is filled and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next ids and leave at once
        try:
            os.write(write, ",".join(random_uuid() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {random_uuid() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent
