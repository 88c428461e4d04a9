"""The timing worker: a fresh Python process that times the models it is sent and does nothing else.

Started by :func:`hardware_models.measure.interleaved_rounds` as ``python -m hardware_models.timing_worker``. Each
request on stdin and each reply on stdout is a plain pickle framed by :mod:`hardware_models.messages`: the request
``(measurer, models, input_shape, rounds, batch_size)``, the reply ``("ok", rounds of LatencyStats)`` or
``("error", message)``. The worker exits when its stdin closes, so it never outlives the process that started it.
Anything a library prints goes to stderr, not into the replies.
"""

from __future__ import annotations

import os
import pickle
import sys

from hardware_models.messages import read_message, write_message


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the replies

    import torch

    from hardware_models.measure import time_rounds

    torch.set_num_threads(1)  # measurers set their own thread count around each timing
    while (request := read_message(sys.stdin.buffer)) is not None:
        try:
            measurer, models, input_shape, rounds, batch_size = pickle.loads(request)  # from our own parent only
            reply: tuple[str, object] = ("ok", time_rounds(measurer, models, input_shape, rounds, batch_size))
        except Exception as exc:  # reported to the parent, which raises it there
            reply = ("error", f"{type(exc).__name__}: {exc}")
        write_message(replies, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
