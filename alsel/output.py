"""Writing outputs safely (SPEC §1): a temporary file in the target folder renamed into place when
complete, one writer per output (a lock file naming its host and pid), outputs checked before any work
(folder, free space, size limit, not an input), OS write failures as one-line errors, and the work file
of a resumable command."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import tempfile
from typing import Callable, Iterator

import h5py

from .errors import AlselError

def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def command_line() -> str:
    """The command line of this process (what files record as created_by)."""
    return shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else "python"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HELD: dict[str, int] = {}  # outputs whose writer lock this process holds (re-entrant)


WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for this file system or limit", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EIO: "input/output error"}


def _host_pid() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _stale(owner: str) -> bool:
    """A lock is stale when it names this host and a process that no longer exists."""
    host, _, pid = owner.rpartition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[None]:
    """One writer per output path: `.NAME.lock` beside it names the writer ("host pid"); it is made
    complete under a private name and hard-linked into place, which fails when it exists. A lock whose
    process is gone (same host) is taken over, and the dead writer's temporary files are removed; a
    live one (or one on another host) is an error that names it. Re-entrant within a process."""
    out = os.path.abspath(os.fspath(out))
    if _HELD.get(out):
        _HELD[out] += 1
        try:
            yield
        finally:
            _HELD[out] -= 1
        return
    folder, base = os.path.split(out)
    lock = os.path.join(folder, f".{base}.lock")
    me = _host_pid()
    try:
        fd, mine = tempfile.mkstemp(prefix=f".{base}.", suffix=".lock-new", dir=folder)
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        try:
            for attempt in range(3):
                try:
                    os.link(mine, lock)
                    break
                except FileExistsError:
                    owner = _read_text(lock)
                    if attempt < 2 and owner == "":  # released meanwhile
                        continue
                    if attempt < 2 and owner is not None and _stale(owner):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lock)
                        continue
                    raise AlselError(f"{out}: another alsel process ({owner or 'unknown'}) is writing this output; "
                                     f"if none is running, delete {lock}") from None
            else:
                raise AlselError(f"{out}: could not take the writer lock {lock}")
        finally:
            os.unlink(mine)
    except OSError as e:
        raise AlselError(f"{out}: output folder {folder} is not writable ({e.strerror or _short(e)})") from None
    _remove_leftovers(folder, base)
    _HELD[out] = 1
    try:
        yield
    finally:
        _HELD.pop(out, None)
        with contextlib.suppress(OSError):
            os.unlink(lock)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(200).strip() or None
    except FileNotFoundError:
        return ""  # released meanwhile: try again
    except OSError:
        return None


def _remove_leftovers(folder: str, base: str) -> None:
    """Temporary files of earlier writers of this output (killed before they could clean up): with the
    lock held, no live process owns them."""
    for name in os.listdir(folder):
        if name.startswith(f".{base}.") and (name.endswith(".tmp") or name.endswith(".lock-new")):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def write_failure(out: str, e: BaseException) -> AlselError | None:
    """The one-line error for an OS-level write failure (full disk, quota, size limit, read-only)."""
    code = getattr(e, "errno", None)
    text = str(e)
    if code not in WRITE_ERRNOS:
        code = next((c for c in WRITE_ERRNOS if f"errno = {c}," in text or f"[Errno {c}]" in text), None)
    if code is None and isinstance(e, OSError) and "write" in text.lower():
        return AlselError(f"{out}: writing failed ({_short(e)}); nothing was written")
    if code is None:
        return None
    return AlselError(f"{out}: writing failed: {WRITE_ERRNOS[code]}; nothing was written (a previous file "
                      f"at this path is unchanged)")


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike, inputs: tuple = ()) -> Iterator[str]:
    """Yield a temporary path in the target folder; rename it onto `out` only on success.

    A failure (or KeyboardInterrupt/SystemExit) removes the temporary file, so `out` holds either
    the previous file or the complete new one; a process killed outright leaves its temporary file,
    which the next writer of `out` removes. `out` may not be one of the inputs. The output's writer
    lock is held throughout (output_lock); OS-level write failures become one-line errors.
    """
    out = os.fspath(out)
    folder = check_output(out, inputs)
    with output_lock(out):
        try:
            fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=folder)
        except OSError as e:
            raise AlselError(f"{out}: output folder {folder} is not writable ({e.strerror or _short(e)})") from None
        os.close(fd)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            yield tmp
            os.replace(tmp, out)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            failure = write_failure(out, e) if isinstance(e, (OSError, RuntimeError)) else None
            if failure is not None:
                raise failure from None
            raise


def check_output(out: str, inputs: tuple = ()) -> str:
    """An output path alsel may write: not a folder, its folder exists and is writable, not an input.
    Returns the folder."""
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise AlselError(f"{out}: is a directory, expected an output file path")
    if not os.path.isdir(folder):
        raise AlselError(f"{out}: output folder {folder} does not exist")
    check_not_an_input(out, inputs)
    if not os.access(folder, os.W_OK):
        raise AlselError(f"{out}: output folder {folder} is not writable")
    return folder


def check_space(out: str, nbytes: int) -> None:
    """Refuse up front what cannot fit: HDF5 buffers writes, and a full disk found at flush time surfaces
    in object destructors (tracebacks on stderr), not as one error. Checks the free space of the output's
    file system and the process's file-size limit."""
    import resource

    folder = os.path.dirname(os.path.abspath(out))
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise AlselError(f"{out}: writing failed: no space left on device (needs {nbytes / 2**20:.1f} MiB, "
                         f"{free / 2**20:.1f} MiB free in {folder}); nothing was written")
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and nbytes > soft:
        raise AlselError(f"{out}: writing failed: file too large for this file system or limit (needs "
                         f"{nbytes / 2**20:.1f} MiB, the file-size limit is {soft / 2**20:.1f} MiB); nothing was written")


def check_not_an_input(out: str, inputs: tuple) -> None:
    """An output may not be one of the inputs (the same file under another name included)."""
    for p in inputs:
        if p is not None and os.path.exists(p) and os.path.exists(out) and os.path.samefile(p, out):
            raise AlselError(f"{out}: output path is also an input; choose another --out")


def open_partial(path: str, settings: dict, resume: bool, create: Callable[[h5py.File], None]
                 ) -> tuple[h5py.File, bool]:
    """The work file of a resumable command: reopened when resuming (its recorded settings must equal
    `settings`), else made anew by `create` (in a temporary file renamed into place). Returns (file, resumed)."""
    if resume and os.path.exists(path):
        try:
            f = h5py.File(path, "a", locking=False)
        except OSError as e:
            raise AlselError(f"{path}: cannot resume, the partial file is damaged ({str(e)[:80]}); "
                             f"delete it and run without --resume") from None
        saved = json.loads(f.attrs.get("settings", "{}"))
        if saved != settings:
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            f.close()
            raise AlselError(f"{path}: cannot resume: this run differs from the interrupted one in "
                             f"{', '.join(diff)}; run without --resume to start again")
        return f, True
    tmp = path + ".new"
    with h5py.File(tmp, "w", locking=False) as f:
        f.attrs["settings"] = json.dumps(settings, sort_keys=True)
        create(f)
    os.replace(tmp, path)
    return h5py.File(path, "a", locking=False), False
