"""Test-only faults for the chaos test's workers, loaded through PYTHONPATH, never by the project itself:

* one marked image kills the process that decodes it, as a decoder crash or an OOM kill would;
* while the file named by ``VP_CHAOS_SLOW_FILE`` exists, each classify batch takes a few seconds
  longer (a big model on a busy GPU), so a test can kill the process while it holds a batch.
"""

import os
import signal
import time

POISON = b"VP-CHAOS-POISON-KILLS-ITS-PROCESS"
SLOW_FILE = "VP_CHAOS_SLOW_FILE"
SLOW_SECONDS = 5.0


def _install() -> None:
    from vehicle_core import images

    decode = images.decode

    def decode_or_die(data, settings, **kwargs):
        if POISON in bytes(data[-256:]):
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(data, settings, **kwargs)

    images.decode = decode_or_die
    slow_file = os.environ.get(SLOW_FILE)
    if slow_file:
        from vehicle_core import pipeline

        run = pipeline.ClassifyStage.run

        def slow_run(self, crop_sets):
            if os.path.exists(slow_file):
                time.sleep(SLOW_SECONDS)  # the slowness being simulated, not synchronisation
            return run(self, crop_sets)

        pipeline.ClassifyStage.run = slow_run


_install()
