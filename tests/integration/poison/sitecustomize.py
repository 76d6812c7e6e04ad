"""Test-only: makes one marked image kill the process that decodes it, as a decoder crash or an OOM
kill would. Loaded by the chaos test's workers through PYTHONPATH, never by the project itself."""

import os
import signal

POISON = b"VP-CHAOS-POISON-KILLS-ITS-PROCESS"


def _install() -> None:
    from vehicle_core import images

    decode = images.decode

    def decode_or_die(data, settings, **kwargs):
        if POISON in bytes(data[-256:]):
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(data, settings, **kwargs)

    images.decode = decode_or_die


_install()
