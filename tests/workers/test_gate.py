"""The gate: batches share the engine; a suspect row has it alone, and is not starved."""

from __future__ import annotations

import threading
import time

from workers.gate import Gate


def test_a_suspect_waits_for_running_batches_and_new_batches_wait_for_it() -> None:
    gate = Gate()
    events: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def batch(name: str, hold: threading.Event | None = None) -> None:
        with gate.shared():
            events.append(f"{name} in")
            if hold is not None:
                first_in.set()
                hold.wait(5)
            events.append(f"{name} out")

    def suspect() -> None:
        with gate.exclusive():
            events.append("suspect in")
            time.sleep(0.05)
            events.append("suspect out")

    a = threading.Thread(target=batch, args=("a", release_first))
    a.start()
    first_in.wait(5)
    s = threading.Thread(target=suspect)
    s.start()
    time.sleep(0.05)  # the suspect now waits for batch a
    b = threading.Thread(target=batch, args=("b",))
    b.start()
    time.sleep(0.05)  # batch b waits behind the waiting suspect
    assert events == ["a in"]
    release_first.set()
    for t in (a, s, b):
        t.join(5)
    assert events == ["a in", "a out", "suspect in", "suspect out", "b in", "b out"]


def test_batches_share_the_gate() -> None:
    gate = Gate()
    with gate.shared(), gate.shared():
        pass
