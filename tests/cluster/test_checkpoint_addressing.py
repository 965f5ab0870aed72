"""What the remote checkpointer ships to the writer: the checkpoint's address, never LangGraph's runtime."""

from __future__ import annotations

import pickle
import threading

from rolegraph.cluster.checkpointer import addressing


def test_addressing_keeps_the_checkpoint_address_and_drops_the_runtime() -> None:
    config = {
        "configurable": {
            "thread_id": "e1",
            "checkpoint_ns": "",
            "checkpoint_id": "1f0",
            "checkpoint_map": {"": "1f0"},
            "__pregel_runtime": threading.Lock(),  # unpicklable, as a run's context may be
            "__pregel_send": print,
        },
        "callbacks": [threading.Lock()],
    }
    shipped = addressing(config)
    assert shipped == {
        "configurable": {
            "thread_id": "e1",
            "checkpoint_ns": "",
            "checkpoint_id": "1f0",
            "checkpoint_map": {"": "1f0"},
        }
    }
    assert pickle.loads(pickle.dumps(shipped)) == shipped
    assert addressing(None) is None
