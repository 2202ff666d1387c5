import os
import threading

from earmark.quiet import native_stderr_silenced


def _fd2_target() -> str:
    return os.readlink("/proc/self/fd/2") if os.path.exists("/proc/self/fd/2") else ""


def test_overlapping_silencers_in_two_threads_restore_stderr():
    # A enters, B enters, A leaves, B leaves: the order that left fd 2 on /dev/null when each
    # block saved and restored it alone
    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with native_stderr_silenced():
            seen.append(_fd2_target())
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with native_stderr_silenced():
            b_in.set()
            a_out.wait(5)
            seen.append(_fd2_target())  # still silenced after A left

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    if seen[0]:  # /proc available: both saw /dev/null inside their blocks
        assert seen == [os.devnull, os.devnull]
