"""monerod's ZMQ chain_main frames, as paymentd reads them (issue #16)."""

from __future__ import annotations

import pytest

from services.paymentd.daemon_blocks import parse_chain_main

# published by monerod 0.18 (regtest) for `generateblocks 1`, as received
ONE_BLOCK = (b'json-minimal-chain_main:{"first_height":2,"first_prev_id":"10f715cd78fe757b7b'
             b'96966e8c3888ed56c4eb36cf6fcd1ccac653be251375e7","ids":["6f4757c9b37cfe17655'
             b'064ba80f9d5477c60f64c6f7c36d816f0df2830aa6348"]}')


def test_one_block_gives_its_height():
    assert parse_chain_main(ONE_BLOCK) == 2


def test_several_blocks_give_the_top_height():
    frame = b'json-minimal-chain_main:{"first_height":7,"first_prev_id":"00","ids":["a","b","c"]}'
    assert parse_chain_main(frame) == 9


@pytest.mark.parametrize("frame", [
    b'json-full-chain_main:{"first_height":2,"ids":["a"]}',      # another topic
    b'json-minimal-chain_main',                                   # no body
    b'json-minimal-chain_main:{"first_height":2,"ids":["a"]',     # not JSON
    b'json-minimal-chain_main:{"first_height":"2","ids":["a"]}',  # height not a number
    b'json-minimal-chain_main:{"first_height":true,"ids":["a"]}',
    b'json-minimal-chain_main:{"first_height":-1,"ids":["a"]}',
    b'json-minimal-chain_main:{"first_height":2,"ids":[]}',       # no block
    b'json-minimal-chain_main:{"ids":["a"]}',
    b'json-minimal-chain_main:[1,2]',
])
def test_what_is_not_understood_is_none(frame):
    assert parse_chain_main(frame) is None
