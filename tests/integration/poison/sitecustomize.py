"""Test-only faults for the chaos test's workers, loaded through PYTHONPATH, never by the project itself:

* one marked image kills the process that decodes it, as a decoder crash or an OOM kill would;
* while the file named by ``VP_CHAOS_SLOW_FILE`` exists, each classify batch takes a few seconds
  longer (a big model on a busy GPU), so a test can kill the process while it holds a batch;
* while the file named by ``VP_CHAOS_SLOW_DETECT_FILE`` exists, each detect batch likewise, so that a
  test sees a detect task in flight however fast the machine is;
* when the file named by ``VP_CHAOS_OOM_FILE`` exists, the next detector forward pass deletes it and
  fails as CUDA does when a GPU runs out of memory.
"""

import os
import signal
import time

POISON = b"VP-CHAOS-POISON-KILLS-ITS-PROCESS"
SLOW_FILE = "VP_CHAOS_SLOW_FILE"
SLOW_SECONDS = 5.0
SLOW_DETECT_FILE = "VP_CHAOS_SLOW_DETECT_FILE"
SLOW_DETECT_SECONDS = 2.0
OOM_FILE = "VP_CHAOS_OOM_FILE"


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
    slow_detect_file = os.environ.get(SLOW_DETECT_FILE)
    if slow_detect_file:
        from vehicle_core import pipeline

        slow_detect = pipeline.DetectStage.detect

        def slow_detect_batch(self, prepared):
            if os.path.exists(slow_detect_file):
                time.sleep(SLOW_DETECT_SECONDS)  # the slowness being simulated, not synchronisation
            return slow_detect(self, prepared)

        pipeline.DetectStage.detect = slow_detect_batch
    oom_file = os.environ.get(OOM_FILE)
    if oom_file:
        from vehicle_core import pipeline

        detect = pipeline.DetectStage.detect

        def detect_or_oom(self, prepared):
            try:
                os.remove(oom_file)
            except FileNotFoundError:
                return detect(self, prepared)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

        pipeline.DetectStage.detect = detect_or_oom


_install()
