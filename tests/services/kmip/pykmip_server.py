"""Run the PyKMIP 0.11 server in the foreground, test-harness friendly.

    python pykmip_server.py CONFIG_FILE LOG_FILE

Differences from the stock `pykmip-server` entry point:
  * SIGTERM / SIGINT end the process at once (exit 0). Stock PyKMIP waits for
    its 10 s accept timeout and then joins every session thread (10 s each).
  * Every helper process PyKMIP forks (the multiprocessing Manager that holds
    the operation policies, and the policy directory monitor) gets
    PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILL of this process leaves no
    orphan behind.
  * Prints "PYKMIP READY 127.0.0.1:PORT" on stdout (flushed) once the TLS
    socket is listening; a harness may wait for that line or just poll the port
    with TCP connects (the port refuses connections until then).
"""
import ctypes
import os
import signal
import sys
import types
import warnings

PR_SET_PDEATHSIG = 1


def _die_with_parent():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    config_path, log_path = sys.argv[1], sys.argv[2]

    # ssl.PROTOCOL_TLSv1_2 is deprecated and cryptography warns about TripleDES,
    # ARC4, Camellia, OFB, CFB at PyKMIP import. Keep stderr quiet.
    warnings.filterwarnings("ignore")

    os.register_at_fork(after_in_child=_die_with_parent)

    from kmip.services.server import monitor as monitor_mod
    from kmip.services.server import server as server_mod

    def _exit_now(signum, frame):
        os._exit(0)

    # PyKMIP installs its own SIGINT/SIGTERM handlers (KmipServer.start(),
    # KmipServer.serve() and PolicyDirectoryMonitor.__init__, which runs in this
    # process) that only stop the policy monitor. Hand both modules a stand-in
    # `signal` module whose signal() does nothing.
    shim = types.SimpleNamespace(
        signal=lambda *a, **k: None,
        SIGINT=signal.SIGINT,
        SIGTERM=signal.SIGTERM,
    )
    server_mod.signal = shim
    monitor_mod.signal = shim
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)

    s = server_mod.KmipServer(
        config_path=config_path,
        log_path=log_path,
        live_policies=True,
    )
    s.start()
    # start() binds; serve() listens. Listen now so that READY means connectable
    # (serve() calling listen() again is harmless).
    s._socket.listen(5)
    signal.signal(signal.SIGTERM, _exit_now)  # again, in case anything re-set them
    signal.signal(signal.SIGINT, _exit_now)
    print(
        "PYKMIP READY {}:{}".format(
            s.config.settings.get("hostname"), s.config.settings.get("port")
        ),
        flush=True,
    )
    try:
        s.serve()
    finally:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
