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


def _slow_while(flag_file, stage, method: str, seconds: float) -> None:
    """While ``flag_file`` exists, each call of ``stage.method`` takes ``seconds`` longer."""
    if not flag_file:
        return
    run = getattr(stage, method)

    def slow(self, *args):
        if os.path.exists(flag_file):
            time.sleep(seconds)  # the slowness being simulated, not synchronisation
        return run(self, *args)

    setattr(stage, method, slow)


def _install() -> None:
    from vehicle_core import images

    decode = images.decode

    def decode_or_die(data, settings, **kwargs):
        if POISON in bytes(data[-256:]):
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(data, settings, **kwargs)

    images.decode = decode_or_die
    if os.environ.get(SLOW_FILE) or os.environ.get(SLOW_DETECT_FILE):
        from vehicle_core import pipeline

        _slow_while(os.environ.get(SLOW_FILE), pipeline.ClassifyStage, "run", SLOW_SECONDS)
        _slow_while(os.environ.get(SLOW_DETECT_FILE), pipeline.DetectStage, "detect", SLOW_DETECT_SECONDS)
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
