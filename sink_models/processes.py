"""How a process started by `accelerate launch` ends."""

import os
import sys


def exit_launched(code: int) -> None:
    """End this process with `code` at once if it is one of several launched processes; return otherwise.

    torch's gloo process group does not tear down cleanly with the interpreter: left alive at exit it now and then
    aborts a rank ("terminate called without an active exception"), and destroyed, its destructor can deadlock,
    joining a worker thread that waits for the GIL the destructor holds (both seen here under load). Called once a
    run's files are in place (after the last barrier) or it has failed, so the process skips the teardown with
    `os._exit`.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
